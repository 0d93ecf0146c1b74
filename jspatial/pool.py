"""Max and average pooling as loops over window taps.

Pooling is the convolution loop without the matrix product: for every tap of
the window take the block of the padded input that the tap sees for every
output cell, and fold it into the result with ``max`` or ``+``::

    y = -inf
    for t in range(kh * kw):                       # lax.fori_loop
        y = max(y, window(x, t))

The bodies of those loops are ``max_pool_tap`` and ``avg_pool_tap``, each a few
lines; ``jspatial.steps`` runs them one tap at a time, in Python, to watch.

Cost: ``N * C * H_out * W_out * kh * kw`` comparisons (or adds) and no weights.
The max-pool forward also records which tap won (an int8 per output cell), so
its backward needs neither the input nor the output: each tap sends back the
gradient of the cells it won. The backward of both pools is one loop,
``pool_grad_tap``: average pooling sends every cell's share back instead. The tap
that won, plus where its window starts, is PyTorch's ``return_indices``
(``h * W + w``), which ``jspatial.unpool.max_unpool2d`` writes values back to.

A call runs ``max_pool2d_args`` (every check, before anything is traced,
``jspatial._pool_args``), then the program of those arguments (``max_pool2d_program``):
the custom-JVP op ``_max_pool``,
whose loop ``_max_pool_loop`` calls ``max_pool_tap`` once per tap.

The loop bodies (``max_pool_tap``, ``max_pool_start``, ``avg_pool_tap``,
``pool_grad_tap``) are public for reading (the notebook prints them); the API is
``jspatial.__all__``, and the names with a leading underscore are internal.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jspatial import _args, _tuning
from jspatial import _windows as win
from jspatial._accel import dispatch
from jspatial._args import IntOrPair
from jspatial._linear import Fn, float0_zeros, linear_call, linear_jvp
from jspatial._pool_args import AvgPool2dArgs, MaxPool2dArgs, avg_pool2d_args, max_pool2d_args
from jspatial.unpool import flat_indices


def max_pool2d(
    x: ArrayLike,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
    *,
    data_format: str = "NCHW",
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """2-D max pooling with PyTorch's ``torch.nn.functional.max_pool2d`` semantics.

    Padded cells never win (they act as ``-inf``); a window lying entirely in
    padding (possible only with dilation) outputs ``-inf`` and passes no gradient.
    Ties send the gradient to the first maximum in window order, a NaN wins its
    window (the last NaN, if several), as PyTorch does.

    See also: the loop body, ``jspatial.pool.max_pool_tap``; ``jspatial.steps`` runs it
    tap by tap and ``jspatial.loop_jaxpr`` prints it as compiled;
    ``jspatial.reference.max_pool2d``.

    Args:
        x: input ``(N, C, H, W)``, or ``(N, H, W, C)`` with ``data_format='NHWC'``.
        kernel_size: int or ``(kh, kw)``.
        stride: int or ``(sh, sw)``; ``None`` means ``kernel_size``.
        padding: int or ``(ph, pw)``, at most half the kernel on each axis.
        dilation: int or ``(dh, dw)``: spacing between window taps.
        ceil_mode: round the output size up instead of down.
        return_indices: also return where each maximum was.
        data_format: ``'NCHW'`` (PyTorch's layout) or ``'NHWC'`` (channels last, which
            runs the loops on ``x`` as it is, with no transposes); keyword only.

    Returns:
        ``y: (N, C, H_out, W_out)`` (``(N, H_out, W_out, C)`` in ``'NHWC'``) in the
        dtype of ``x``; with ``return_indices`` the pair ``(y, indices)``, ``indices``
        of the same shape holding PyTorch's flat position ``h * W + w`` of each
        maximum in its input plane, in either layout (int64 in JAX's 64-bit mode,
        int32 otherwise). A window entirely in padding gets PyTorch's index of it
        too (its first row and column past the padding).

    Example:
        >>> import jax.numpy as jnp, jspatial as js
        >>> x = jnp.arange(16.0).reshape(1, 1, 4, 4)
        >>> js.max_pool2d(x, 2)[0, 0].tolist()
        [[5.0, 7.0], [13.0, 15.0]]
        >>> js.max_pool2d(x, 2, return_indices=True)[1][0, 0].tolist()
        [[5, 7], [13, 15]]
        >>> x_nhwc = x.reshape(1, 4, 4, 1)
        >>> y, indices = js.max_pool2d(x_nhwc, 2, return_indices=True, data_format="NHWC")
        >>> y[0, :, :, 0].tolist(), indices[0, :, :, 0].tolist()
        ([[5.0, 7.0], [13.0, 15.0]], [[5, 7], [13, 15]])
    """
    a = max_pool2d_args(
        x, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
        op="max_pool2d", data_format=data_format,
    )  # fmt: skip
    return _args.unbatch(max_pool2d_program(a)(a.x), a.unbatched)


def avg_pool2d(
    x: ArrayLike,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: float | None = None,
    *,
    data_format: str = "NCHW",
) -> jax.Array:
    """2-D average pooling with PyTorch's ``torch.nn.functional.avg_pool2d`` semantics.

    See also: the loop body, ``jspatial.pool.avg_pool_tap``; ``jspatial.steps`` runs it
    tap by tap and ``jspatial.loop_jaxpr`` prints it as compiled;
    ``jspatial.reference.avg_pool2d``.

    Args:
        x: input ``(N, C, H, W)``, or ``(N, H, W, C)`` with ``data_format='NHWC'``.
        kernel_size: int or ``(kh, kw)``.
        stride: int or ``(sh, sw)``; ``None`` means ``kernel_size``.
        padding: int or ``(ph, pw)`` of zeros, at most half the kernel on each axis.
        ceil_mode: round the output size up instead of down.
        count_include_pad: divide by the window size including the explicit
            zero padding (never the extra cells ``ceil_mode`` adds past it);
            ``False`` divides by the number of real input cells in the window.
        divisor_override: divide every window sum by this number instead.
        data_format: ``'NCHW'`` (PyTorch's layout) or ``'NHWC'`` (channels last);
            keyword only.

    Returns:
        ``(N, C, H_out, W_out)`` (``(N, H_out, W_out, C)`` in ``'NHWC'``) in the dtype
        of ``x`` (summed in float32).

    Example:
        >>> import jax.numpy as jnp, jspatial as js
        >>> x = jnp.arange(16.0).reshape(1, 1, 4, 4)
        >>> js.avg_pool2d(x, 2)[0, 0].tolist()
        [[2.5, 4.5], [10.5, 12.5]]
        >>> js.avg_pool2d(x.reshape(1, 4, 4, 1), 2, data_format="NHWC")[0, :, :, 0].tolist()
        [[2.5, 4.5], [10.5, 12.5]]
    """
    a = avg_pool2d_args(
        x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
        op="avg_pool2d", data_format=data_format,
    )  # fmt: skip
    return _args.unbatch(avg_pool2d_program(a)(a.x), a.unbatched)


def max_pool2d_program(a: MaxPool2dArgs):
    """The function of ``x`` that runs the checked max pooling ``a``: the loop
    (``_max_pool``, compiled once per shape and geometry), or a kernel where one applies."""
    static = dict(geom=a.geom, return_indices=a.return_indices)
    return dispatch.program("max_pool2d", _max_pool_jit, **static)


def avg_pool2d_program(a: AvgPool2dArgs):
    """The function of ``x`` that runs the checked average pooling ``a``."""
    return partial(_avg_pool_jit, geom=a.geom, divisor=a.divisor)


def _unroll(taps):
    # Unrolling a small window's loop lets XLA fuse all its taps into one pass over
    # memory instead of one pass per tap; large windows keep a rolled loop.
    return min(taps, _tuning.POOL_UNROLL_TAPS)


def _tap_loop(taps):
    """The loop over ``taps`` window taps, a function of ``(body, init)`` (pooling's unroll)."""
    return win.loop_over_taps(taps, _unroll(taps))


# ---------------------------------------------------------------------------- max


@partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _max_pool(x, geom, return_indices):
    """Max pooling of ``x`` in ``geom.layout``: ``y``, with ``return_indices`` ``(y, indices)``."""
    best, arg = _max_pool_loop(win.to_nhwc(x, geom.layout), geom)
    return _max_pool_out(best, arg, geom, return_indices)


# Compiled once per shape and configuration, so eager calls do not re-trace the loops.
_max_pool_jit = jax.jit(_max_pool, static_argnames=("geom", "return_indices"))


def _max_pool_loop(x, geom):
    """``(best, arg)`` of an ``(N, H, W, C)`` input: each window's maximum and its tap."""
    xph, real, init = max_pool_start(x, geom)
    tap = partial(max_pool_tap, xph=xph, real=real, geom=geom)
    return _tap_loop(geom.taps)(tap, init)


def max_pool_tap(t, carry, xph, real, geom):
    """Window tap ``t`` of max pooling: ``best = max(best, window(x, t))``, noting who won.

    Tap ``t = i * kw + j`` is the cell at offset ``(i, j)`` of every window, so
    ``window(xph, t, geom)`` is one ``(N, H_out, W_out, C)`` block of the input (padded
    with ``-inf``), one cell per output. Each tap costs one comparison per output cell.

    Args:
        t: the tap number.
        carry: ``(best, arg)``: the maximum so far, ``(N, H_out, W_out, C)``, and the tap
            it came from (``-1``: no tap yet).
        xph: the input padded with ``-inf`` and split into stride phases
            (``jspatial._windows.to_phases``).
        real: the same split of a mask of the real (unpadded) cells, or ``None`` when
            no window reaches into the padding.
        geom: the window geometry.
    """
    best, arg = carry
    xw = win.window(xph, t, geom)
    # PyTorch's rule (win.takes_max); the first real cell of the window wins until then.
    take = win.takes_max(xw, best, arg)
    if real is not None:
        take = take & win.window(real, t, geom)
    return jnp.where(take, xw, best), jnp.where(take, t, arg).astype(arg.dtype)


def max_pool_start(x, geom):
    """What ``max_pool_tap`` loops over: the phased input, its mask (or ``None``) and
    the initial ``(best, arg)`` for an ``(N, H, W, C)`` input."""
    n, c = x.shape[0], x.shape[-1]
    lowest = _lowest(x.dtype)
    xph = win.to_phases(x, geom, lowest)
    real = None
    if geom.reads_outside:  # which cells are real input; broadcast over batch and channels
        real = win.to_phases(jnp.ones((1, *geom.in_hw, 1), jnp.bool_), geom, False)
    shape = (n, *geom.out_hw, c)
    init = (jnp.full(shape, lowest, x.dtype), jnp.full(shape, -1, _tap_dtype(geom.taps)))
    return xph, real, init


def _lowest(dtype):
    """What padding is in max pooling: ``-inf``, or an integer dtype's smallest value."""
    return jnp.iinfo(dtype).min if jnp.issubdtype(dtype, jnp.integer) else -jnp.inf


def _tap_dtype(taps):
    # One byte per output cell while the tap numbers fit, like PyTorch's indices but smaller.
    return jnp.int8 if taps < 127 else jnp.int32


def _max_pool_out(best, arg, geom, return_indices):
    """The loop's ``(best, arg)`` as the op returns them, in ``geom.layout``."""
    if not return_indices:
        return win.from_nhwc(best, geom.layout)
    (sh, sw), (dh, dw) = geom.stride, geom.dilation
    row0 = np.arange(geom.out_hw[0]) * sh - geom.padding[0][0]
    col0 = np.arange(geom.out_hw[1]) * sw - geom.padding[1][0]
    width = geom.in_hw[1]
    indices = flat_indices(arg, row0, col0, geom.kernel[1], geom.dilation, width)
    if geom.reads_outside:
        # A window with no real cell keeps PyTorch's starting index: its first row
        # and column past the padding (which may lie outside the plane).
        first = lambda start, d: start + d * np.maximum(0, -(start // d))  # noqa: E731
        start = first(row0, dh)[:, None] * width + first(col0, dw)[None, :]
        indices = jnp.where(arg < 0, jnp.asarray(start, indices.dtype)[:, :, None], indices)
    return win.from_nhwc(best, geom.layout), win.from_nhwc(indices, geom.layout)


@_max_pool.defjvp
def _max_pool_jvp(geom, return_indices, primals, tangents):
    # The tangent of each window's winner: a linear_call whose transpose is the backward.
    best, arg = _max_pool_loop(win.to_nhwc(primals[0], geom.layout), geom)
    fun, transpose = Fn(_max_tangent, geom), Fn(_pool_bwd, geom, None)
    (dy,) = linear_call(fun, transpose, [arg], list(tangents))
    out = _max_pool_out(best, arg, geom, return_indices)
    return out, ((dy, float0_zeros(out[1])) if return_indices else dy)


def _max_tangent(geom, res, tangents):
    """Forward mode: every output takes the tangent of the cell that won its window."""
    (arg,), (dx,) = res, tangents
    xph = win.to_phases(win.to_nhwc(dx, geom.layout), geom, 0)
    tap = partial(max_tangent_tap, xph=xph, arg=arg, geom=geom)
    dy = _tap_loop(geom.taps)(tap, jnp.zeros(arg.shape, dx.dtype))
    return [win.from_nhwc(dy, geom.layout)]


def max_tangent_tap(t, dy, xph, arg, geom):
    """Tap ``t`` of max pooling's forward mode: the tangent ``window(dx, t)`` where ``t`` won."""
    return jnp.where(arg == t, win.window(xph, t, geom), dy)


# ---------------------------------------------------------------------------- average


@partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _avg_pool(x, geom, divisor):
    """Average pooling of ``x`` in ``geom.layout``; ``divisor`` as in ``_avg_scale``."""
    x = win.to_nhwc(x, geom.layout)
    n, c = x.shape[0], x.shape[-1]
    xph = win.to_phases(x, geom, 0)
    acc = win.accum_dtype(x.dtype)
    tap = partial(avg_pool_tap, xph=xph, geom=geom)
    total = _tap_loop(geom.taps)(tap, jnp.zeros((n, *geom.out_hw, c), acc))
    y = (total * _avg_scale(geom, divisor, acc)).astype(x.dtype)
    return win.from_nhwc(y, geom.layout)


_avg_pool_jit = jax.jit(_avg_pool, static_argnames=("geom", "divisor"))


def avg_pool_tap(t, total, xph, geom):
    """Window tap ``t`` of average pooling: ``total += window(x, t)``.

    Tap ``t = i * kw + j`` is the cell at offset ``(i, j)`` of every window: one
    ``(N, H_out, W_out, C)`` block of the zero-padded, phase-split input ``xph``, one
    cell per output. Each tap costs one addition per output cell; the sum is divided
    by the window size once, after the loop.

    Args:
        t: the tap number.
        total: ``(N, H_out, W_out, C)`` sum so far, in float32 (or float64).
        xph: the input padded with zeros and split into stride phases.
        geom: the window geometry.
    """
    return total + win.window(xph, t, geom).astype(total.dtype)


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


# ---------------------------------------------------------------------------- backward


def _pool_bwd(geom, divisor, res, cotangents):
    """``jax.grad``'s loop of both pools: every tap sends a gradient back through its window.

    Max pooling (``res = [arg]``, the winning taps; ``divisor`` ``None``): the gradient
    of the cells the tap won. Average pooling (``res = []``): every output cell's
    gradient divided by its window size. ``g`` and the result are in ``geom.layout``.
    """
    g = win.to_nhwc(cotangents[0], geom.layout)
    n, c = g.shape[0], g.shape[-1]
    acc = win.accum_dtype(g.dtype)
    if res:
        arg, value = res[0], g
    else:
        arg, value = None, g.astype(acc) * _avg_scale(geom, divisor, acc)
    tap = partial(pool_grad_tap, g=value, arg=arg, geom=geom)
    dxph = _tap_loop(geom.taps)(tap, jnp.zeros(win.phased_shape(n, c, geom), acc))
    return [win.from_nhwc(win.from_phases(dxph, geom).astype(g.dtype), geom.layout)]


def pool_grad_tap(t, dxph, g, arg, geom):
    """Window tap ``t`` of the pools' backward: ``dx[window t] += g`` (``add_to_window``).

    Args:
        t: the tap number.
        dxph: the input gradient so far, split into stride phases (``win.phased_shape``).
        g: ``(N, H_out, W_out, C)``: the output gradient (average pooling: already
            divided by each window's size).
        arg: max pooling's winning taps, ``(N, H_out, W_out, C)``: only the cells tap ``t``
            won get their gradient; ``None`` for average pooling (every cell does).
        geom: the window geometry.
    """
    value = g if arg is None else jnp.where(arg == t, g, 0)
    return win.add_to_window(dxph, t, value, geom)


# Averaging is linear: its tangent is the op itself, and its transpose needs no residuals.
_avg_pool.defjvp(partial(linear_jvp, _avg_pool, _pool_bwd))
