"""The textbook versions: convolution and pooling as explicit nested NumPy loops.

These are the definitions written out one multiply at a time, the baseline the
fast ops are tested against and the code a course starts from. They are slow
(pure Python: seconds for a few thousand outputs), so use them on tiny inputs.
Semantics match ``jspatial.conv2d``/``max_pool2d``/``avg_pool2d`` with canonical
arguments: ``stride``, ``dilation`` and per-side ``padding`` as ``(h, w)`` pairs.

>>> import numpy as np
>>> x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
>>> conv2d(x, np.array([[[[1.0, 0.0], [0.0, 1.0]]]]))[0, 0]
array([[ 6.,  8.],
       [12., 14.]])
"""

from __future__ import annotations

import numpy as np

from jspatial.shapes import conv_output_size


def conv2d(x, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """Seven nested loops: batch, output channel, output row, output column, input
    channel, kernel row, kernel column. ``x: (N, C, H, W)``, ``weight: (O, C/groups, kh, kw)``."""
    x = np.asarray(x, np.float64)
    weight = np.asarray(weight, np.float64)
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho = conv_output_size(h, kh, sh, ph, dh)
    wo = conv_output_size(w, kw, sw, pw, dw)
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
                                row, col = oy * sh + i * dh, ox * sw + j * dw
                                total += xp[b, first_in + ic, row, col] * weight[oc, ic, i, j]
                    out[b, oc, oy, ox] = total
    return out


def _pool(x, kernel_size, stride, padding, dilation, ceil_mode, reduce_window):
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
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
                    out[b, ch, oy, ox] = reduce_window(x[b, ch], cells, oy, ox)
    return out


def max_pool2d(x, kernel_size, stride, padding=(0, 0), dilation=(1, 1), ceil_mode=False):
    """Max over each window's real cells (padding never wins); ``-inf`` if there are none."""
    h, w = np.shape(x)[2:]

    def window_max(plane, cells, oy, ox):
        values = [plane[r, c] for r, c in cells if 0 <= r < h and 0 <= c < w]
        return max(values) if values else -np.inf

    return _pool(x, kernel_size, stride, padding, dilation, ceil_mode, window_max)


def avg_pool2d(
    x, kernel_size, stride, padding=(0, 0), ceil_mode=False, count_include_pad=True,
    divisor_override=None,
):  # fmt: skip
    """Mean over each window; the divisor follows PyTorch (see ``jspatial.avg_pool2d``)."""
    h, w = np.shape(x)[2:]
    (ph, pw) = padding

    def window_mean(plane, cells, oy, ox):
        real = [(r, c) for r, c in cells if 0 <= r < h and 0 <= c < w]
        total = sum(plane[r, c] for r, c in real)
        if divisor_override is not None:
            return total / divisor_override
        if not count_include_pad:
            return total / len(real)
        # Cells inside the explicit padding count; cells that ceil_mode adds past it do not.
        inside = [(r, c) for r, c in cells if -ph <= r < h + ph and -pw <= c < w + pw]
        return total / len(inside)

    return _pool(x, kernel_size, stride, padding, (1, 1), ceil_mode, window_mean)
