"""The textbook versions: every op of jspatial as explicit nested NumPy loops.

These are the definitions written out one multiply (or one cell) at a time, the
baseline the fast ops are tested against and the code a course starts from. They
are slow (pure Python: seconds for a few thousand outputs), so use them on tiny
inputs. Each takes the same arguments as its fast twin, ints or pairs alike, so one
can be swapped for the other: ``conv2d``, ``conv_transpose2d``, ``max_pool2d`` (with
``return_indices``), ``avg_pool2d``, ``adaptive_avg_pool2d``, ``adaptive_max_pool2d``,
``max_unpool2d``, ``batch_norm`` (which returns ``(y, new_running_mean,
new_running_var)`` too), ``pad`` and ``global_avg_pool2d``. They return float64 NumPy
arrays (indices as int64).

>>> import numpy as np
>>> x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
>>> conv2d(x, np.array([[[[1.0, 0.0], [0.0, 1.0]]]]))[0, 0]
array([[ 6.,  8.],
       [12., 14.]])
"""

from __future__ import annotations

import numpy as np

from jspatial import _args
from jspatial.pad import _check_pad
from jspatial.shapes import conv_output_size
from jspatial.unpool import _unpool_params


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
    """Every window's cells, in tap order; ``reduce_window`` returns a tuple of values."""
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    kernel, strides, pads, dil = _args.pool_params(kernel_size, stride, padding, dilation, op)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, strides, pads, dil
    ho = conv_output_size(h, kh, sh, ph, dh, ceil_mode)
    wo = conv_output_size(w, kw, sw, pw, dw, ceil_mode)
    out = None
    for b in range(n):
        for ch in range(c):
            for oy in range(ho):
                for ox in range(wo):
                    cells = []  # (row, col) of every tap, possibly outside the input
                    for i in range(kh):
                        for j in range(kw):
                            cells.append((oy * sh - ph + i * dh, ox * sw - pw + j * dw))
                    values = reduce_window(x[b, ch], cells, (ph, pw), (dh, dw))
                    if out is None:
                        out = np.zeros((len(values), n, c, ho, wo))
                    out[:, b, ch, oy, ox] = values
    return np.zeros((2, n, c, ho, wo)) if out is None else out


def _window_max(plane, cells):
    """``(max, flat index)`` over the cells inside the plane, in order; ``None`` if none.

    The first maximum wins a tie; a NaN wins its window (the last NaN, if several).
    """
    h, w = plane.shape
    best, index = -np.inf, None
    for r, c in cells:
        if 0 <= r < h and 0 <= c < w:
            v = plane[r, c]
            if index is None or v > best or np.isnan(v):
                best, index = v, r * w + c
    return None if index is None else (best, index)


def max_pool2d(
    x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False
):
    """Max over each window's real cells (padding never wins); ``-inf`` if there are none.

    ``stride=None`` means the kernel size, as in ``jspatial.max_pool2d``. With
    ``return_indices``, also the flat index ``h * W + w`` of each maximum in its plane;
    a window with no real cell gets PyTorch's index of it: its first tap row and column
    at or past the padding.
    """
    w = np.shape(x)[3]

    def window_max(plane, cells, pads, dilation):
        found = _window_max(plane, cells)
        if found is not None:
            return found
        (r, c), (dh, dw) = cells[0], dilation
        while r < 0:  # only padding: the first tap row and column not in the padding
            r += dh
        while c < 0:
            c += dw
        return -np.inf, r * w + c

    op = "reference.max_pool2d"
    y, indices = _pool(x, kernel_size, stride, padding, dilation, ceil_mode, window_max, op)
    return (y, indices.astype(np.int64)) if return_indices else y


def avg_pool2d(
    x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
    divisor_override=None,
):  # fmt: skip
    """Mean over each window; the divisor follows PyTorch (see ``jspatial.avg_pool2d``)."""
    h, w = np.shape(x)[2:]

    def window_mean(plane, cells, pads, dilation):
        ph, pw = pads
        real = [(r, c) for r, c in cells if 0 <= r < h and 0 <= c < w]
        total = sum(plane[r, c] for r, c in real)
        if divisor_override is not None:
            return (total / divisor_override,)
        if not count_include_pad:
            return (total / len(real),)
        # Cells inside the explicit padding count; cells that ceil_mode adds past it do not.
        inside = [(r, c) for r, c in cells if -ph <= r < h + ph and -pw <= c < w + pw]
        return (total / len(inside),)

    op = "reference.avg_pool2d"
    return _pool(x, kernel_size, stride, padding, 1, ceil_mode, window_mean, op)[0]


def _adaptive(x, output_size, reduce_window, op):
    """Output cell ``(i, j)`` reduces input rows ``floor(i * H / H_out)`` up to
    ``ceil((i + 1) * H / H_out)`` (exclusive) and the matching columns."""
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    sizes = _args.adaptive_output_size(output_size, op)
    ho, wo = (size if want is None else want for size, want in zip((h, w), sizes))
    out = np.zeros((2, n, c, ho, wo))
    for b in range(n):
        for ch in range(c):
            for oy in range(ho):
                for ox in range(wo):
                    rows = range((oy * h) // ho, -(-((oy + 1) * h) // ho))
                    cols = range((ox * w) // wo, -(-((ox + 1) * w) // wo))
                    cells = [(r, col) for r in rows for col in cols]
                    out[:, b, ch, oy, ox] = reduce_window(x[b, ch], cells)
    return out


def adaptive_avg_pool2d(x, output_size):
    """The mean of each of PyTorch's uneven windows (see ``jspatial.adaptive_avg_pool2d``)."""

    def window_mean(plane, cells):
        return sum(plane[r, c] for r, c in cells) / len(cells), 0

    return _adaptive(x, output_size, window_mean, "reference.adaptive_avg_pool2d")[0]


def adaptive_max_pool2d(x, output_size, return_indices=False):
    """The max of each adaptive window, and with ``return_indices`` its flat index
    ``h * W + w``; ties and NaNs as ``max_pool2d``."""
    y, indices = _adaptive(x, output_size, _window_max, "reference.adaptive_max_pool2d")
    return (y, indices.astype(np.int64)) if return_indices else y


def max_unpool2d(x, indices, kernel_size, stride=None, padding=0, output_size=None):
    """Zeros, then every value written to the cell its index names in its plane.

    ``x, indices: (N, C, H_in, W_in)``; the output is ``(N, C, H, W)`` with
    ``(H_in - 1) * stride - 2 * padding + kernel_size`` per axis unless ``output_size``
    says otherwise. Where two values name one cell, the later one in row-major order
    is kept (``jspatial.max_unpool2d`` keeps one of them, unspecified).
    """
    op = "reference.max_unpool2d"
    x = np.asarray(x, np.float64)
    indices = np.asarray(indices)
    n, c, h_in, w_in = x.shape
    kernel, strides, pads = _unpool_params(kernel_size, stride, padding, op)
    h, w = _args.unpool_output_size(output_size, (h_in, w_in), kernel, strides, pads, op)
    _args.check_indices(indices, x.shape, h * w, op)
    out = np.zeros((n, c, h, w))
    for b in range(n):
        for ch in range(c):
            for i in range(h_in):
                for j in range(w_in):
                    row, col = divmod(int(indices[b, ch, i, j]), w)
                    out[b, ch, row, col] = x[b, ch, i, j]
    return out


def batch_norm(
    x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
    eps=1e-5,
):  # fmt: skip
    """``(x - mean) / sqrt(var + eps) * weight + bias`` per channel, with sums written out.

    ``x: (N, C, H, W)``. In training the mean and the biased variance are the batch's,
    over ``(N, H, W)``, and the running statistics move towards the batch's (the
    unbiased variance): ``new = (1 - momentum) * running + momentum * batch``. In
    evaluation the running statistics are used and come back unchanged. Returns
    ``(y, new_running_mean, new_running_var)``, ``None`` statistics staying ``None``.
    """
    op = "reference.batch_norm"
    momentum, eps = _args.check_momentum(momentum, op), _args.check_eps(eps, op)
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    tracked = running_mean is not None
    new_mean = None if not tracked else np.array(running_mean, np.float64)
    new_var = None if not tracked else np.array(running_var, np.float64)
    y = np.zeros(x.shape)
    count = n * h * w
    for ch in range(c):
        cells = [x[b, ch, i, j] for b in range(n) for i in range(h) for j in range(w)]
        if training:
            if count == 0:
                continue  # an empty batch: an empty output, the statistics as they were
            mean = sum(cells) / count
            squares = sum((v - mean) ** 2 for v in cells)
            var = squares / count
            if tracked:
                unbiased = squares / (count - 1) if count > 1 else np.nan
                new_mean[ch] = (1 - momentum) * new_mean[ch] + momentum * mean
                new_var[ch] = (1 - momentum) * new_var[ch] + momentum * unbiased
        else:
            mean, var = float(running_mean[ch]), float(running_var[ch])
        scale = 1.0 if weight is None else float(weight[ch])
        shift = 0.0 if bias is None else float(bias[ch])
        for b in range(n):
            for i in range(h):
                for j in range(w):
                    normalised = (x[b, ch, i, j] - mean) / np.sqrt(var + eps)
                    y[b, ch, i, j] = normalised * scale + shift
    return y, new_mean, new_var


def _source(o, size, lo, hi, mode):
    """The input cell that output cell ``o`` of a padded axis copies, or ``None`` (fill)."""
    if mode == "circular":  # PyTorch wraps what is left after cropping
        start, kept = max(-lo, 0), size - max(-lo, 0) - max(-hi, 0)
        return start + (o - max(lo, 0)) % kept
    i = o - lo  # the others pad the whole input, then crop
    if 0 <= i < size:
        return i
    if mode == "constant":
        return None
    if mode == "replicate":
        return min(max(i, 0), size - 1)
    return -i if i < 0 else 2 * (size - 1) - i  # reflect: the edge cell is not repeated


def pad(x, pad, mode="constant", value=None):
    """Each output cell copies one input cell (or is ``value``): ``x: (N, C, H, W)``,
    ``pad = (left, right, top, bottom)`` or ``(left, right)``, negative amounts crop;
    modes ``'constant'``, ``'reflect'``, ``'replicate'``, ``'circular'`` as in
    ``jspatial.pad``."""
    op = "reference.pad"
    _args.one_of(mode, ("constant", "reflect", "replicate", "circular"), op, "mode")
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    pads = _check_pad(x.shape, pad, mode, op)  # ((lo, hi), ...) of the last len(pad) // 2 axes
    (top, bottom), (left, right) = ((0, 0),) * (2 - len(pads)) + tuple(pads)
    fill = 0.0 if value is None else float(value)
    out = np.full((n, c, h + top + bottom, w + left + right), fill)
    for oy in range(out.shape[2]):
        row = _source(oy, h, top, bottom, mode)
        for ox in range(out.shape[3]):
            col = _source(ox, w, left, right, mode)
            if row is not None and col is not None:
                out[:, :, oy, ox] = x[:, :, row, col]
    return out


def global_avg_pool2d(x):
    """The mean of each plane: ``(N, C, H, W) -> (N, C)``."""
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    out = np.zeros((n, c))
    for b in range(n):
        for ch in range(c):
            out[b, ch] = sum(x[b, ch, i, j] for i in range(h) for j in range(w)) / (h * w)
    return out
