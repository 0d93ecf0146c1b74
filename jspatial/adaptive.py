"""Adaptive average and max pooling, and the global average pool.

Adaptive pooling chooses the windows from the sizes: window ``i`` covers rows
``floor(i * H / H_out)`` to ``ceil((i + 1) * H / H_out)``. When ``H_out`` divides
``H`` that is the ordinary pool with ``kernel_size = stride = H // H_out``
(``jspatial.pool``); otherwise the windows differ in length by a cell, and the loop
runs over the ``ceil(H / H_out) + 1`` (at most) tap offsets of the longest window,
gathering each tap's cells and masking the windows that are shorter::

    for t in range(kh * kw):                       # lax.fori_loop
        y = y + where(inside(t), gather(x, rows(t), cols(t)), 0)

The loop bodies are ``adaptive_avg_tap``, ``adaptive_max_tap`` and, for the backward of
both, ``adaptive_grad_tap``. ``global_avg_pool2d`` (the adaptive average to a single
cell, flattened) is one mean, no loop.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jspatial import _args, pool
from jspatial import _windows as win
from jspatial._accel import dispatch
from jspatial._args import OutputSize
from jspatial._linear import Fn, float0_zeros, linear_call, linear_jvp
from jspatial.unpool import flat_indices, index_dtype


class AdaptivePool2dArgs(NamedTuple):
    """The arguments of ``adaptive_avg_pool2d`` or ``adaptive_max_pool2d``, checked."""

    x: Any  # (N, C, H, W), or (N, H, W, C) in 'NHWC'; unbatched input gets N = 1
    sizes: tuple[tuple[int, int], tuple[int, int]]  # ((H, W), (H_out, W_out))
    layout: str
    reduce: str  # 'avg' or 'max'
    return_indices: bool
    unbatched: bool  # the input was (C, H, W): every result loses its batch axis again

    def program(self):
        """The function of ``x`` that runs the op: zeros for an empty output, the ordinary
        pool when every window has the same size, else the adaptive loop."""
        (in_hw, out_hw), layout, indices = self.sizes, self.layout, self.return_indices
        if 0 in out_hw:
            return partial(_empty_jit, out_hw=out_hw, layout=layout, return_indices=indices)
        geom = _uniform_geometry(in_hw, out_hw, layout)
        if self.reduce == "avg":
            if geom is not None:
                return partial(pool._avg_pool_jit, geom=geom, divisor=(True, None))
            return partial(_adaptive_avg_jit, sizes=self.sizes, layout=layout)
        if geom is not None:
            static = dict(geom=geom, return_indices=indices)
            return dispatch.program("max_pool2d", pool._max_pool_jit, **static)
        return partial(_adaptive_max_jit, sizes=self.sizes, layout=layout, return_indices=indices)


def adaptive_avg_pool2d(
    x: ArrayLike, output_size: OutputSize, *, data_format: str = "NCHW"
) -> jax.Array:
    """Adaptive average pooling with ``torch.nn.functional.adaptive_avg_pool2d``'s semantics.

    Output cell ``(i, j)`` is the mean of input rows ``floor(i * H / H_out)`` to
    ``ceil((i + 1) * H / H_out)`` (exclusive) and the matching columns, so the output
    has the size asked for whatever the input size; it may be larger than the input
    (windows then repeat).

    Cost: ``N * C * H_out * W_out * kh * kw`` additions with ``kh <= ceil(H / H_out) + 1``.
    When ``H_out`` divides ``H`` and ``W_out`` divides ``W`` this is ``avg_pool2d``
    with ``kernel_size = stride = (H // H_out, W // W_out)``; otherwise each tap
    gathers its cells, which is slower than the strided slices of the ordinary pool.

    See also: the loop over tap offsets, ``jspatial.adaptive.adaptive_avg_tap`` (each
    tap's cells from ``jspatial.adaptive._tap_cells``); ``jspatial.loop_jaxpr`` prints
    its body as compiled (``jspatial.steps`` takes the four window ops, not this one);
    ``jspatial.reference.adaptive_avg_pool2d``.

    Args:
        x: input ``(N, C, H, W)``, or ``(N, H, W, C)`` with ``data_format='NHWC'``.
        output_size: int or ``(H_out, W_out)``; an entry ``None`` keeps that input size.
        data_format: ``'NCHW'`` (PyTorch's layout) or ``'NHWC'`` (channels last);
            keyword only.

    Returns:
        ``(N, C, H_out, W_out)`` (``(N, H_out, W_out, C)`` in ``'NHWC'``) in the dtype
        of ``x`` (summed in float32).

    Example:
        >>> import jax.numpy as jnp, jspatial as js
        >>> x = jnp.arange(5.0).reshape(1, 1, 1, 5)
        >>> js.adaptive_avg_pool2d(x, (1, 3))[0, 0].tolist()  # windows [0, 2), [1, 4), [3, 5)
        [[0.5, 2.0, 3.5]]
    """
    a = adaptive_pool2d_args(
        x, output_size, "avg", op="adaptive_avg_pool2d", data_format=data_format
    )
    return _args.unbatch(a.program()(a.x), a.unbatched)


def adaptive_max_pool2d(
    x: ArrayLike,
    output_size: OutputSize,
    return_indices: bool = False,
    *,
    data_format: str = "NCHW",
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Adaptive max pooling with ``torch.nn.functional.adaptive_max_pool2d``'s semantics.

    The windows are those of ``adaptive_avg_pool2d``; ties and NaNs follow
    ``max_pool2d`` (the first maximum in row-major order wins, a NaN wins its window).

    See also: the loop over tap offsets, ``jspatial.adaptive.adaptive_max_tap`` (each
    tap's cells from ``jspatial.adaptive._tap_cells``); ``jspatial.loop_jaxpr`` prints
    its body as compiled (``jspatial.steps`` takes the four window ops, not this one);
    ``jspatial.reference.adaptive_max_pool2d``.

    Args:
        x: input ``(N, C, H, W)``, or ``(N, H, W, C)`` with ``data_format='NHWC'``.
        output_size: int or ``(H_out, W_out)``; an entry ``None`` keeps that input size.
        return_indices: also return where each maximum was.
        data_format: ``'NCHW'`` (PyTorch's layout) or ``'NHWC'`` (channels last);
            keyword only.

    Returns:
        ``y: (N, C, H_out, W_out)`` (``(N, H_out, W_out, C)`` in ``'NHWC'``) in the
        dtype of ``x``; with ``return_indices`` the pair ``(y, indices)``, laid out
        like ``y``, with PyTorch's flat indices ``h * W + w`` into the input plane
        (int64 in JAX's 64-bit mode, int32 otherwise).

    Example:
        >>> import jax.numpy as jnp, jspatial as js
        >>> x = jnp.array([[[[3.0, 1.0, 4.0, 1.0, 5.0]]]])
        >>> y, indices = js.adaptive_max_pool2d(x, (1, 2), return_indices=True)
        >>> y[0, 0].tolist(), indices[0, 0].tolist()  # windows [0, 3) and [2, 5)
        ([[4.0, 5.0]], [[2, 4]])
    """
    a = adaptive_pool2d_args(
        x, output_size, "max", return_indices, op="adaptive_max_pool2d", data_format=data_format
    )
    return _args.unbatch(a.program()(a.x), a.unbatched)


def adaptive_pool2d_args(
    x, output_size, reduce, return_indices=False, *, op, data_format="NCHW"
) -> AdaptivePool2dArgs:
    """Every check of adaptive pooling (``reduce``: ``'avg'`` or ``'max'``), errors
    attributed to ``op`` (the layers' ``"AdaptiveAvgPool2d"``, ``"AdaptiveMaxPool2d"``)."""
    data_format = _args.check_data_format(data_format, op)
    x, unbatched = _args.batched(x, op, data_format)
    x = _args.check_input(x, op, data_format=data_format)
    out = _args.adaptive_output_size(output_size, op)
    hw = _args.spatial_shape(x.shape, data_format)
    if 0 in hw:
        raise ValueError(f"{op} expected an input with non-empty planes, got {tuple(x.shape)}")
    out_hw = tuple(hw[a] if out[a] is None else out[a] for a in range(2))
    indices = _args.check_bool(return_indices, op, "return_indices")
    return AdaptivePool2dArgs(x, (hw, out_hw), data_format, reduce, indices, unbatched)


def _uniform_geometry(in_hw, out_hw, layout):
    """The ordinary pool's geometry when every adaptive window has the same size, else None."""
    if in_hw[0] % out_hw[0] or in_hw[1] % out_hw[1]:
        return None
    k = (in_hw[0] // out_hw[0], in_hw[1] // out_hw[1])
    return win.Geometry(in_hw, out_hw, k, k, (1, 1), ((0, 0), (0, 0)), layout=layout)


@partial(jax.jit, static_argnames=("out_hw", "layout", "return_indices"))
def _empty_jit(x, *, out_hw, layout, return_indices):
    """An output with no cells: zeros of the output's shape (and indices)."""
    shape = win.image_shape(x.shape[0], x.shape[_args.channel_axis(layout)], out_hw, layout)
    y = jnp.zeros(shape, x.dtype)
    return (y, jnp.zeros(y.shape, index_dtype())) if return_indices else y


def _plan(sizes):
    """``(starts, lengths)`` of the windows along each axis, and the taps ``(kh, kw)``
    of the longest window: every window reads tap offsets ``0 .. kh - 1`` and masks
    those past its own length."""
    (h, w), (oh, ow) = sizes
    rows, cols = win.adaptive_windows(h, oh), win.adaptive_windows(w, ow)
    return rows, cols, (max(rows[1]), max(cols[1]))


def _taps(sizes):
    return int(np.prod(_plan(sizes)[2]))


def _tap_cells(t, sizes):
    """Input rows ``(H_out,)`` and columns ``(W_out,)`` that tap ``t`` reads for each
    window, and whether the tap lies inside the window, ``(1, H_out, W_out, 1)``."""
    (h, w), _ = sizes
    (row0, len_h), (col0, len_w), (_, kw) = _plan(sizes)
    i, j = t // kw, t % kw
    dtype = jnp.result_type(t)  # t is a Python int where the loop runs eagerly (disable_jit)
    # Taps past a short window are clipped into the plane and masked out.
    rows = jnp.minimum(jnp.asarray(row0, dtype) + i, h - 1)
    cols = jnp.minimum(jnp.asarray(col0, dtype) + j, w - 1)
    inside = (i < jnp.asarray(len_h))[:, None] & (j < jnp.asarray(len_w))[None, :]
    return rows, cols, inside[None, :, :, None]


def _gather(x, rows, cols):
    """``x[:, rows[a], cols[b], :]`` for every ``(a, b)``: ``(N, H_out, W_out, C)``."""
    return x.at[:, rows[:, None], cols[None, :], :].get(
        mode="promise_in_bounds", wrap_negative_indices=False
    )


def _scatter_add(buf, rows, cols, value):
    """The transpose of ``_gather``: ``buf[:, rows[a], cols[b], :] += value[:, a, b, :]``."""
    return buf.at[:, rows[:, None], cols[None, :], :].add(
        value, mode="promise_in_bounds", wrap_negative_indices=False
    )


def _scale(sizes, dtype):
    """``1 / window size`` per output cell, ``(1, H_out, W_out, 1)``."""
    (_, len_h), (_, len_w), _ = _plan(sizes)
    return jnp.asarray((1.0 / np.outer(len_h, len_w))[None, :, :, None], dtype)


# ---------------------------------------------------------------------------- average


@partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _adaptive_avg(x, sizes, layout):
    """Adaptive average pooling of ``x`` in ``layout``; ``sizes``: ``((H, W), (H_out, W_out))``."""
    # As an array: under jax.disable_jit a NumPy input reaches the gathers as it is.
    x = win.to_nhwc(jnp.asarray(x), layout)
    n, c = x.shape[0], x.shape[-1]
    acc = win.accum_dtype(x.dtype)
    taps = _taps(sizes)
    tap = partial(adaptive_avg_tap, x=x, sizes=sizes)
    total = pool._tap_loop(taps)(tap, jnp.zeros((n, *sizes[1], c), acc))
    return win.from_nhwc((total * _scale(sizes, acc)).astype(x.dtype), layout)


_adaptive_avg_jit = jax.jit(_adaptive_avg, static_argnames=("sizes", "layout"))


def adaptive_avg_tap(t, total, x, sizes):
    """Tap offset ``t`` of adaptive average pooling: ``total += x[cells of t]`` inside each window.

    Args:
        t: the tap offset, ``i * kw + j`` over the longest window ``(kh, kw)``.
        total: ``(N, H_out, W_out, C)`` sum so far, in float32 (or float64).
        x: the input, ``(N, H, W, C)``.
        sizes: ``((H, W), (H_out, W_out))``.
    """
    rows, cols, inside = _tap_cells(t, sizes)
    return total + jnp.where(inside, _gather(x, rows, cols).astype(total.dtype), 0)


# ---------------------------------------------------------------------------- max


@partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def _adaptive_max(x, sizes, layout, return_indices):
    """Adaptive max pooling of ``x`` in ``layout``: ``y``, or ``(y, indices)``."""
    best, arg = _adaptive_max_loop(win.to_nhwc(jnp.asarray(x), layout), sizes)
    return _adaptive_max_out(best, arg, sizes, layout, return_indices)


_adaptive_max_jit = jax.jit(_adaptive_max, static_argnames=("sizes", "layout", "return_indices"))


def _adaptive_max_loop(x, sizes):
    """``(best, arg)`` of an ``(N, H, W, C)`` input: each window's maximum and its tap."""
    n, c = x.shape[0], x.shape[-1]
    taps = _taps(sizes)
    shape = (n, *sizes[1], c)
    init = (jnp.full(shape, -jnp.inf, x.dtype), jnp.full(shape, -1, pool._tap_dtype(taps)))
    tap = partial(adaptive_max_tap, x=x, sizes=sizes)
    return pool._tap_loop(taps)(tap, init)


def adaptive_max_tap(t, carry, x, sizes):
    """Tap offset ``t`` of adaptive max pooling: ``best = max(best, x[cells of t])`` inside
    each window, noting who won (``jspatial.pool.max_pool_tap``'s rule).

    Args:
        t: the tap offset, ``i * kw + j`` over the longest window ``(kh, kw)``.
        carry: ``(best, arg)``: the maximum so far and the tap it came from (``-1``: none).
        x: the input, ``(N, H, W, C)``.
        sizes: ``((H, W), (H_out, W_out))``.
    """
    best, arg = carry
    rows, cols, inside = _tap_cells(t, sizes)
    xw = _gather(x, rows, cols)
    # Tap 0 lies in every window, so arg < 0 only before it.
    take = inside & win.takes_max(xw, best, arg)
    return jnp.where(take, xw, best), jnp.where(take, t, arg).astype(arg.dtype)


def _adaptive_max_out(best, arg, sizes, layout, return_indices):
    """The loop's ``(best, arg)`` as the op returns them, in ``layout``."""
    if not return_indices:
        return win.from_nhwc(best, layout)
    (rows, _), (cols, _), (_, kw) = _plan(sizes)
    indices = flat_indices(arg, rows, cols, kw, (1, 1), sizes[0][1])
    return win.from_nhwc(best, layout), win.from_nhwc(indices, layout)


@_adaptive_max.defjvp
def _adaptive_max_jvp(sizes, layout, return_indices, primals, tangents):
    # The tangent of each window's winner: a linear_call whose transpose is the backward.
    best, arg = _adaptive_max_loop(win.to_nhwc(jnp.asarray(primals[0]), layout), sizes)
    fun, transpose = Fn(_max_tangent, sizes, layout), Fn(_adaptive_bwd, sizes, layout)
    (dy,) = linear_call(fun, transpose, [arg], list(tangents))
    out = _adaptive_max_out(best, arg, sizes, layout, return_indices)
    return out, ((dy, float0_zeros(out[1])) if return_indices else dy)


def _max_tangent(sizes, layout, res, tangents):
    """Forward mode: every output takes the tangent of the cell that won its window."""
    (arg,), dx = res, win.to_nhwc(tangents[0], layout)
    tap = partial(adaptive_tangent_tap, dx=dx, arg=arg, sizes=sizes)
    dy = pool._tap_loop(_taps(sizes))(tap, jnp.zeros(arg.shape, dx.dtype))
    return [win.from_nhwc(dy, layout)]


def adaptive_tangent_tap(t, dy, dx, arg, sizes):
    """Tap offset ``t`` of adaptive max pooling's forward mode: ``dx``'s cell where ``t`` won."""
    rows, cols, _ = _tap_cells(t, sizes)
    return jnp.where(arg == t, _gather(dx, rows, cols), dy)


# ---------------------------------------------------------------------------- backward


def _adaptive_bwd(sizes, layout, res, cotangents):
    """``jax.grad``'s loop of both adaptive pools: every tap offset scatters a gradient back.

    Max (``res = [arg]``, the winning taps): the gradient of the cells the tap won.
    Average (``res = []``): every cell's gradient divided by its window's size, where
    the tap lies inside the window. ``g`` and the result are in ``layout``.
    """
    g = win.to_nhwc(cotangents[0], layout)
    n, c = g.shape[0], g.shape[-1]
    acc = win.accum_dtype(g.dtype)
    if res:
        arg, value = res[0], g
    else:
        arg, value = None, g.astype(acc) * _scale(sizes, acc)
    tap = partial(adaptive_grad_tap, g=value, arg=arg, sizes=sizes)
    dx = pool._tap_loop(_taps(sizes))(tap, jnp.zeros((n, *sizes[0], c), acc))
    return [win.from_nhwc(dx.astype(g.dtype), layout)]


def adaptive_grad_tap(t, dx, g, arg, sizes):
    """Tap offset ``t`` of the adaptive pools' backward: ``dx[cells of t] += g``.

    Args:
        t: the tap offset.
        dx: ``(N, H, W, C)``: the input gradient so far.
        g: ``(N, H_out, W_out, C)``: the output gradient (average: already divided by
            each window's size).
        arg: max pooling's winning taps (only the cells tap ``t`` won get theirs), or
            ``None`` for the average (every window the tap lies inside).
        sizes: ``((H, W), (H_out, W_out))``.
    """
    rows, cols, inside = _tap_cells(t, sizes)
    keep = inside if arg is None else arg == t
    return _scatter_add(dx, rows, cols, jnp.where(keep, g, 0))


_adaptive_avg.defjvp(partial(linear_jvp, _adaptive_avg, _adaptive_bwd))


# ---------------------------------------------------------------------------- global


def global_avg_pool2d(x: ArrayLike, *, data_format: str = "NCHW") -> jax.Array:
    """Mean over the spatial axes: ``(N, C, H, W) -> (N, C)``, summed in float32.

    See also: no loop here, one mean; ``jspatial.reference.global_avg_pool2d``.

    Args:
        x: input ``(N, C, H, W)``, or ``(N, H, W, C)`` with ``data_format='NHWC'``.
        data_format: ``'NCHW'`` (PyTorch's layout) or ``'NHWC'`` (channels last);
            keyword only.

    Returns:
        ``(N, C)`` in either layout, in the dtype of ``x``.

    Example:
        >>> import jax.numpy as jnp, jspatial as js
        >>> js.global_avg_pool2d(jnp.ones((2, 8, 5, 5))).shape
        (2, 8)
        >>> js.global_avg_pool2d(jnp.ones((2, 5, 5, 8)), data_format="NHWC").shape
        (2, 8)
    """
    a = global_avg_pool2d_args(x, op="global_avg_pool2d", data_format=data_format)
    return a.program()(a.x)


class GlobalAvgPool2dArgs(NamedTuple):
    """``global_avg_pool2d``'s arguments, checked (``global_avg_pool2d_args``)."""

    x: Any  # (N, C, H, W), or (N, H, W, C) in 'NHWC'
    layout: str

    def program(self):
        """The function of ``x`` that runs the op: one mean."""
        return partial(_spatial_mean, spatial=(2, 3) if self.layout == "NCHW" else (1, 2))


def _spatial_mean(x, spatial):
    return jnp.mean(x, axis=spatial, dtype=win.accum_dtype(x.dtype)).astype(x.dtype)


def global_avg_pool2d_args(x, *, op, data_format="NCHW") -> GlobalAvgPool2dArgs:
    """Every check of ``global_avg_pool2d``, errors attributed to ``op`` (the layer's name)."""
    data_format = _args.check_data_format(data_format, op)
    # As an array: a NumPy float64 input is float32 here, as the jitted ops make it.
    x = jnp.asarray(_args.check_input(x, op, data_format=data_format))
    return GlobalAvgPool2dArgs(x, data_format)
