"""The textbook versions: convolution and pooling as explicit nested NumPy loops.

These are the definitions written out one multiply at a time, the baseline the
fast ops are tested against and the code a course starts from. They are slow
(pure Python: seconds for a few thousand outputs), so use them on tiny inputs.
Each takes the same arguments as its fast twin (``jspatial.conv2d``,
``conv_transpose2d``, ``max_pool2d``, ``avg_pool2d``), ints or pairs alike, so one
can be swapped for the other; they return float64 NumPy arrays.

>>> import numpy as np
>>> x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
>>> conv2d(x, np.array([[[[1.0, 0.0], [0.0, 1.0]]]]))[0, 0]
array([[ 6.,  8.],
       [12., 14.]])
"""

from __future__ import annotations

import numpy as np

from jspatial import _args
from jspatial.shapes import conv_output_size


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Seven nested loops: batch, output channel, output row, output column, input
    channel, kernel row, kernel column. ``x: (N, C, H, W)``, ``weight: (O, C/groups, kh, kw)``.

    A tap that falls in the padding reads a zero. ``padding`` takes every form
    ``jspatial.conv2d`` does (int, pair, ``((top, bottom), (left, right))``,
    ``'same'``, ``'valid'``).
    """
    op = "reference.conv2d"
    x = np.asarray(x, np.float64)
    weight = np.asarray(weight, np.float64)
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    (sh, sw), (dh, dw) = _args.pair(stride, op, "stride"), _args.pair(dilation, op, "dilation")
    (top, bottom), (left, right) = _args.conv_padding(padding, (kh, kw), (sh, sw), (dh, dw), op)
    ho = conv_output_size(h, kh, sh, (top, bottom), dh)
    wo = conv_output_size(w, kw, sw, (left, right), dw)
    out = np.zeros((n, o, ho, wo))
    per_group = o // groups
    for b in range(n):
        for oc in range(o):
            first_in = (oc // per_group) * cg
            for oy in range(ho):
                for ox in range(wo):
                    total = 0.0 if bias is None else float(bias[oc])
                    for ic in range(cg):
                        for i in range(kh):
                            for j in range(kw):
                                row, col = oy * sh - top + i * dh, ox * sw - left + j * dw
                                if 0 <= row < h and 0 <= col < w:
                                    total += x[b, first_in + ic, row, col] * weight[oc, ic, i, j]
                    out[b, oc, oy, ox] = total
    return out


def conv_transpose2d(
    x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1
):
    """The scatter form: every input pixel stamps ``value * kernel`` into the output.

    ``x: (N, C_in, H, W)``, ``weight: (C_in, C_out/groups, kh, kw)``. Input pixel
    ``(iy, ix)`` adds ``x[iy, ix] * weight[i, j]`` at output cell
    ``(iy * stride + i * dilation, ix * stride + j * dilation)`` of the full output;
    ``padding`` rows and columns are then cut from each side (``output_padding``
    keeps extra ones at the bottom and right). It is ``conv2d`` read backwards: the
    same cells, the same weights, summed at the other end.
    """
    op = "reference.conv_transpose2d"
    x = np.asarray(x, np.float64)
    weight = np.asarray(weight, np.float64)
    n, c_in, h, w = x.shape
    _, og, kh, kw = weight.shape
    (sh, sw), (dh, dw) = _args.pair(stride, op, "stride"), _args.pair(dilation, op, "dilation")
    ph, pw = _args.pair(padding, op, "padding", minimum=0)
    oph, opw = _args.pair(output_padding, op, "output_padding", minimum=0)
    full = np.zeros((n, og * groups, (h - 1) * sh + dh * (kh - 1) + 1 + oph,
                     (w - 1) * sw + dw * (kw - 1) + 1 + opw))  # fmt: skip
    per_group = c_in // groups
    for b in range(n):
        for ic in range(c_in):
            first_out = (ic // per_group) * og
            for iy in range(h):
                for ix in range(w):
                    for oc in range(og):
                        for i in range(kh):
                            for j in range(kw):
                                row, col = iy * sh + i * dh, ix * sw + j * dw
                                full[b, first_out + oc, row, col] += (
                                    x[b, ic, iy, ix] * weight[ic, oc, i, j]
                                )
    out = full[:, :, ph : full.shape[2] - ph, pw : full.shape[3] - pw]
    return out if bias is None else out + np.asarray(bias, np.float64)[:, None, None]


def _pool(x, kernel_size, stride, padding, dilation, ceil_mode, reduce_window, op):
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    kernel, strides, pads, dil = _args.pool_params(kernel_size, stride, padding, dilation, op)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, strides, pads, dil
    ho = conv_output_size(h, kh, sh, ph, dh, ceil_mode)
    wo = conv_output_size(w, kw, sw, pw, dw, ceil_mode)
    out = np.zeros((n, c, ho, wo))
    for b in range(n):
        for ch in range(c):
            for oy in range(ho):
                for ox in range(wo):
                    cells = []  # (row, col) of every tap, possibly outside the input
                    for i in range(kh):
                        for j in range(kw):
                            cells.append((oy * sh - ph + i * dh, ox * sw - pw + j * dw))
                    out[b, ch, oy, ox] = reduce_window(x[b, ch], cells, (ph, pw))
    return out


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Max over each window's real cells (padding never wins); ``-inf`` if there are none.

    ``stride=None`` means the kernel size, as in ``jspatial.max_pool2d``.
    """
    h, w = np.shape(x)[2:]

    def window_max(plane, cells, pads):
        values = [plane[r, c] for r, c in cells if 0 <= r < h and 0 <= c < w]
        return max(values) if values else -np.inf

    op = "reference.max_pool2d"
    return _pool(x, kernel_size, stride, padding, dilation, ceil_mode, window_max, op)


def avg_pool2d(
    x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
    divisor_override=None,
):  # fmt: skip
    """Mean over each window; the divisor follows PyTorch (see ``jspatial.avg_pool2d``)."""
    h, w = np.shape(x)[2:]

    def window_mean(plane, cells, pads):
        ph, pw = pads
        real = [(r, c) for r, c in cells if 0 <= r < h and 0 <= c < w]
        total = sum(plane[r, c] for r, c in real)
        if divisor_override is not None:
            return total / divisor_override
        if not count_include_pad:
            return total / len(real)
        # Cells inside the explicit padding count; cells that ceil_mode adds past it do not.
        inside = [(r, c) for r, c in cells if -ph <= r < h + ph and -pw <= c < w + pw]
        return total / len(inside)

    op = "reference.avg_pool2d"
    return _pool(x, kernel_size, stride, padding, 1, ceil_mode, window_mean, op)
