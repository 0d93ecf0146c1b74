"""Max and average pooling as loops over window taps.

Pooling is the convolution loop without the matrix product: for every tap of
the window take the block of the padded input that the tap sees for every
output cell, and fold it into the result with ``max`` or ``+``::

    y = -inf
    for t in range(kh * kw):                       # lax.fori_loop
        y = max(y, window(x, t))

Cost: ``N * C * H_out * W_out * kh * kw`` comparisons (or adds) and no weights.
The max-pool forward also records which tap won (an int8 per output cell, like
PyTorch's indices), so its backward needs neither the input nor the output:
each tap sends back the gradient of the cells it won.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jspatial import _args
from jspatial import _windows as win
from jspatial.shapes import output_hw

# Windows with at most this many taps have their loop unrolled (see _unroll).
UNROLL_TAPS = 16


def max_pool2d(x, kernel_size, stride=None, padding=0, *, dilation=1, ceil_mode=False):
    """2-D max pooling with PyTorch's ``torch.nn.functional.max_pool2d`` semantics.

    Padded cells never win (they act as ``-inf``); a window lying entirely in
    padding (possible only with dilation) outputs ``-inf`` and passes no gradient.
    Ties send the gradient to the first maximum in window order, as PyTorch does.

    Args:
        x: input ``(N, C, H, W)``.
        kernel_size: int or ``(kh, kw)``.
        stride: int or ``(sh, sw)``; ``None`` means ``kernel_size``.
        padding: int or ``(ph, pw)``, at most half the kernel on each axis.
        dilation: int or ``(dh, dw)``: spacing between window taps.
        ceil_mode: round the output size up instead of down.

    Returns:
        ``(N, C, H_out, W_out)`` in the dtype of ``x``.

    Example:
        >>> import jax.numpy as jnp, jspatial as js
        >>> x = jnp.arange(16.0).reshape(1, 1, 4, 4)
        >>> js.max_pool2d(x, 2)[0, 0].tolist()
        [[5.0, 7.0], [13.0, 15.0]]
    """
    return max_pool2d_checked(x, kernel_size, stride, padding, dilation, ceil_mode, op="max_pool2d")


def max_pool2d_checked(x, kernel_size, stride, padding, dilation, ceil_mode, *, op):
    """``max_pool2d`` with errors attributed to ``op`` (the layer uses ``"MaxPool2d"``)."""
    geom = pool_geometry(x, kernel_size, stride, padding, dilation, ceil_mode, op)
    return _max_pool2d(x, geom)


# Compiled once per shape and configuration, so eager calls do not re-trace the loops.
@partial(jax.jit, static_argnums=(1,))
def _max_pool2d(x, geom):
    return win.nhwc_to_nchw(_max_pool_nhwc(win.nchw_to_nhwc(x), geom))


@partial(jax.jit, static_argnums=(1, 2))
def _avg_pool2d(x, geom, divisor):
    return win.nhwc_to_nchw(_avg_pool_nhwc(win.nchw_to_nhwc(x), geom, divisor))


def avg_pool2d(
    x,
    kernel_size,
    stride=None,
    padding=0,
    *,
    ceil_mode=False,
    count_include_pad=True,
    divisor_override=None,
):
    """2-D average pooling with PyTorch's ``torch.nn.functional.avg_pool2d`` semantics.

    Args:
        x: input ``(N, C, H, W)``.
        kernel_size: int or ``(kh, kw)``.
        stride: int or ``(sh, sw)``; ``None`` means ``kernel_size``.
        padding: int or ``(ph, pw)`` of zeros, at most half the kernel on each axis.
        ceil_mode: round the output size up instead of down.
        count_include_pad: divide by the window size including the explicit
            zero padding (never the extra cells ``ceil_mode`` adds past it);
            ``False`` divides by the number of real input cells in the window.
        divisor_override: divide every window sum by this number instead.

    Returns:
        ``(N, C, H_out, W_out)`` in the dtype of ``x`` (summed in float32).

    Example:
        >>> import jax.numpy as jnp, jspatial as js
        >>> x = jnp.arange(16.0).reshape(1, 1, 4, 4)
        >>> js.avg_pool2d(x, 2)[0, 0].tolist()
        [[2.5, 4.5], [10.5, 12.5]]
    """
    return avg_pool2d_checked(
        x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
        op="avg_pool2d",
    )  # fmt: skip


def avg_pool2d_checked(
    x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, *, op
):
    """``avg_pool2d`` with errors attributed to ``op`` (the layer uses ``"AvgPool2d"``)."""
    geom = pool_geometry(x, kernel_size, stride, padding, 1, ceil_mode, op)
    _args.check_divisor_override(divisor_override, op)
    return _avg_pool2d(x, geom, (bool(count_include_pad), divisor_override))


def global_avg_pool2d(x):
    """Mean over the spatial axes: ``(N, C, H, W) -> (N, C)``, summed in float32.

    Example:
        >>> import jax.numpy as jnp, jspatial as js
        >>> js.global_avg_pool2d(jnp.ones((2, 8, 5, 5))).shape
        (2, 8)
    """
    _args.check_input(x, "global_avg_pool2d")
    return jnp.mean(x, axis=(2, 3), dtype=win.accum_dtype(x.dtype)).astype(x.dtype)


def pool_geometry(x, kernel_size, stride, padding, dilation, ceil_mode, op):
    """Validate pooling arguments and return the window geometry."""
    _args.check_input(x, op)
    kernel, strides, pads, dil = _args.pool_params(kernel_size, stride, padding, dilation, op)
    if not isinstance(ceil_mode, (bool, np.bool_)):
        raise TypeError(f"{op} ceil_mode must be a bool, got {ceil_mode!r}")
    hw = tuple(x.shape[2:])
    padded = (hw[0] + 2 * pads[0], hw[1] + 2 * pads[1])
    _args.check_fits(hw, padded, kernel, dil, op)
    out_hw = output_hw(hw, kernel, strides, pads, dil, bool(ceil_mode))
    return win.Geometry(hw, out_hw, kernel, strides, dil, ((pads[0],) * 2, (pads[1],) * 2))


def _unroll(geom):
    # Unrolling a small window's loop lets XLA fuse all its taps into one pass over
    # memory instead of one pass per tap; large windows keep a rolled loop.
    return min(geom.taps, UNROLL_TAPS)


def _has_padding(geom):
    """Whether any window reads cells outside the input (explicit or ceil_mode padding)."""
    return any(
        geom.padding[a][0] > 0
        or (geom.out_hw[a] - 1) * geom.stride[a] + (geom.kernel[a] - 1) * geom.dilation[a]
        >= geom.in_hw[a] + geom.padding[a][0]
        for a in range(2)
    )


# ---------------------------------------------------------------------------- max


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool_nhwc(x, geom):
    return _max_fwd(x, geom)[0]


def _max_fwd(x, geom):
    n, c = x.shape[0], x.shape[-1]
    xph = win.to_phases(x, geom, -jnp.inf)
    # Which cells are real input (not padding); broadcast over batch and channels.
    real = win.to_phases(jnp.ones((1, *geom.in_hw, 1), jnp.bool_), geom, False)
    padded = _has_padding(geom)

    def tap(t, carry):
        best, arg = carry
        xw = win.window(xph, t, geom)
        # PyTorch's rule: a strictly larger value or a NaN takes over, and the first
        # real cell of the window is the winner until then.
        take = (xw > best) | jnp.isnan(xw) | (arg < 0)
        if padded:
            take = take & win.window(real, t, geom)
        return jnp.where(take, xw, best), jnp.where(take, t, arg).astype(arg.dtype)

    shape = (n, *geom.out_hw, c)
    arg_dtype = jnp.int8 if geom.taps < 127 else jnp.int32
    init = (jnp.full(shape, -jnp.inf, x.dtype), jnp.full(shape, -1, arg_dtype))
    best, arg = lax.fori_loop(0, geom.taps, tap, init, unroll=_unroll(geom))
    return best, arg


def _max_bwd(geom, arg, g):
    n, c = g.shape[0], g.shape[-1]
    acc = win.accum_dtype(g.dtype)
    hq_shape = win.to_phases(jnp.zeros((n, *geom.in_hw, c), acc), geom, 0).shape

    def tap(t, dxph):
        return win.add_to_window(dxph, t, jnp.where(arg == t, g, 0), geom)

    dxph = lax.fori_loop(0, geom.taps, tap, jnp.zeros(hq_shape, acc), unroll=_unroll(geom))
    return (win.from_phases(dxph, geom).astype(g.dtype),)


_max_pool_nhwc.defvjp(_max_fwd, _max_bwd)


# ---------------------------------------------------------------------------- average


def _avg_scale(geom, divisor, dtype):
    """``1 / divisor`` per output cell, ``(1, H_out, W_out, 1)``, built once at trace time.

    ``divisor`` is ``(count_include_pad, divisor_override)``.
    """
    count_include_pad, divisor_override = divisor
    if divisor_override is not None:
        return jnp.full((1, *geom.out_hw, 1), 1.0 / divisor_override, dtype)
    counts = []
    for axis in range(2):
        size, k, s = geom.in_hw[axis], geom.kernel[axis], geom.stride[axis]
        pad = geom.padding[axis][0]
        start = np.arange(geom.out_hw[axis]) * s - pad
        end = np.minimum(start + k, size + pad)  # ceil_mode cells past the padding never count
        if not count_include_pad:
            start, end = np.maximum(start, 0), np.minimum(end, size)
        counts.append(end - start)
    return jnp.asarray((1.0 / np.outer(counts[0], counts[1]))[None, :, :, None], dtype)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _avg_pool_nhwc(x, geom, divisor):
    n, c = x.shape[0], x.shape[-1]
    xph = win.to_phases(x, geom, 0)
    acc = win.accum_dtype(x.dtype)

    def tap(t, total):
        return total + win.window(xph, t, geom).astype(acc)

    scale = _avg_scale(geom, divisor, acc)
    total = lax.fori_loop(
        0, geom.taps, tap, jnp.zeros((n, *geom.out_hw, c), acc), unroll=_unroll(geom)
    )
    return (total * scale).astype(x.dtype)


def _avg_fwd(x, geom, divisor):
    # Averaging is linear: the backward needs only the input's shape and dtype.
    return _avg_pool_nhwc(x, geom, divisor), jnp.zeros((0,), x.dtype)


def _avg_bwd(geom, divisor, token, g):
    n, c = g.shape[0], g.shape[-1]
    acc = win.accum_dtype(g.dtype)
    gs = g.astype(acc) * _avg_scale(geom, divisor, acc)
    hq_shape = win.to_phases(jnp.zeros((n, *geom.in_hw, c), acc), geom, 0).shape

    def tap(t, dxph):
        return win.add_to_window(dxph, t, gs, geom)

    dxph = lax.fori_loop(0, geom.taps, tap, jnp.zeros(hq_shape, acc), unroll=_unroll(geom))
    return (win.from_phases(dxph, geom).astype(token.dtype),)


_avg_pool_nhwc.defvjp(_avg_fwd, _avg_bwd)
