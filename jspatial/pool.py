"""Max, average and adaptive pooling as loops over window taps, and max unpooling.

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
gradient of the cells it won. The tap that won, plus where its window starts,
is PyTorch's ``return_indices`` (``h * W + w``), and ``max_unpool2d`` writes
values back to those cells.

Adaptive pooling chooses the windows from the sizes instead: window ``i`` covers
rows ``floor(i * H / H_out)`` to ``ceil((i + 1) * H / H_out)``. When ``H_out``
divides ``H`` that is the ordinary pool with ``kernel_size = stride = H // H_out``;
otherwise the windows differ in length by a cell, and the loop runs over the
``ceil(H / H_out) + 1`` (at most) tap offsets with a mask for the windows that
are shorter.

The loop bodies (``max_pool_tap``, ``max_pool_start``, ``avg_pool_tap``) are public for
reading (the notebook prints them); the API is ``jspatial.__all__``, and the names with a
leading underscore are internal.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from jspatial import _args, _tuning
from jspatial import _windows as win
from jspatial._accel import dispatch
from jspatial._args import IntOrPair, OutputSize
from jspatial._linear import Fn, float0_zeros, linear_call, linear_jvp
from jspatial.shapes import output_hw


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
    return _max_pool2d_checked(
        x, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
        op="max_pool2d", data_format=data_format,
    )  # fmt: skip


@_args.unbatched(0)
def _max_pool2d_checked(
    x, kernel_size, stride, padding, dilation, ceil_mode, return_indices, *, op,
    data_format="NCHW",
):  # fmt: skip
    """``max_pool2d`` with errors attributed to ``op`` (the layer uses ``"MaxPool2d"``)."""
    x, geom = _pool_geometry(
        x, kernel_size, stride, padding, dilation, ceil_mode, op, integers=True,
        data_format=data_format,
    )  # fmt: skip
    # The GPU's compute capability is read here, outside the cached trace (dispatch).
    gpu = dispatch.gpu_target() if _tuning.STAGE_GPU else None
    return _max_pool2d(x, geom, _args.check_bool(return_indices, op, "return_indices"), gpu)


# Compiled once per shape and configuration, so eager calls do not re-trace the loops.
@partial(jax.jit, static_argnums=(1, 2, 3))
def _max_pool2d(x, geom, return_indices, gpu=None):
    if not return_indices:
        # Lowered for a TPU, non-overlapping windows run as a Pallas kernel (jspatial/_accel),
        # and for a GPU whose convolutions run NCHW, the same loop on the N * C planes;
        # everywhere else this is the tap loop below.
        def portable(x):
            return win.from_nhwc(_max_pool_nhwc(win.to_nhwc(x, geom.layout), geom)[0], geom.layout)

        kernels = {
            "tpu": dispatch.kernel_for("max_pool2d", "tpu", geom),
            "cuda": dispatch.kernel_for("max_pool2d", "cuda", geom, gpu=gpu),
        }
        return dispatch.per_target(portable, kernels, x)
    y, arg = _max_pool_nhwc(win.to_nhwc(x, geom.layout), geom)
    (sh, sw), (dh, dw) = geom.stride, geom.dilation
    row0 = np.arange(geom.out_hw[0]) * sh - geom.padding[0][0]
    col0 = np.arange(geom.out_hw[1]) * sw - geom.padding[1][0]
    width = geom.in_hw[1]
    indices = _flat_indices(arg, row0, col0, geom.kernel[1], geom.dilation, width)
    if geom.reads_outside:
        # A window with no real cell keeps PyTorch's starting index: its first row
        # and column past the padding (which may lie outside the plane).
        first = lambda start, d: start + d * np.maximum(0, -(start // d))  # noqa: E731
        start = first(row0, dh)[:, None] * width + first(col0, dw)[None, :]
        indices = jnp.where(arg < 0, jnp.asarray(start, indices.dtype)[:, :, None], indices)
    return win.from_nhwc(y, geom.layout), win.from_nhwc(indices, geom.layout)


def _flat_indices(arg, row0, col0, kw, step, width):
    """PyTorch's indices ``h * W + w`` of the cells that won, from the winning taps.

    ``arg: (N, H_out, W_out, C)`` holds tap numbers (row-major over windows ``kw``
    wide); ``row0``/``col0`` the input row/column of each window's first tap;
    ``step`` the spacing between taps. Int64 in JAX's 64-bit mode, int32 otherwise.
    """
    dtype = _index_dtype()
    t = arg.astype(dtype)
    rows = jnp.asarray(row0, dtype)[:, None, None] + (t // kw) * step[0]
    cols = jnp.asarray(col0, dtype)[:, None] + (t % kw) * step[1]
    return rows * width + cols


def _index_dtype():
    # PyTorch's indices are int64; JAX has 64-bit integers only in its 64-bit mode.
    return jax.dtypes.canonicalize_dtype(jnp.int64)


@partial(jax.jit, static_argnums=(1, 2))
def _avg_pool2d(x, geom, divisor):
    return win.from_nhwc(_avg_pool_nhwc(win.to_nhwc(x, geom.layout), geom, divisor), geom.layout)


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
    return _avg_pool2d_checked(
        x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
        op="avg_pool2d", data_format=data_format,
    )  # fmt: skip


@_args.unbatched(0)
def _avg_pool2d_checked(
    x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, *, op,
    data_format="NCHW",
):  # fmt: skip
    """``avg_pool2d`` with errors attributed to ``op`` (the layer uses ``"AvgPool2d"``)."""
    checked = _check_avg_pool2d(
        x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, op,
        data_format=data_format,
    )  # fmt: skip
    return _avg_pool2d(*checked)


def _check_avg_pool2d(
    x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, op,
    data_format="NCHW",
):  # fmt: skip
    """Every check of ``avg_pool2d`` (``jspatial.steps`` runs them too): the input, the
    window geometry and the divisor, ``(count_include_pad, divisor_override)``."""
    x, geom = _pool_geometry(
        x, kernel_size, stride, padding, 1, ceil_mode, op, data_format=data_format
    )
    include = _args.check_bool(count_include_pad, op, "count_include_pad")
    return x, geom, (include, _args.check_divisor_override(divisor_override, op))


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
    return _global_avg_pool2d_checked(x, op="global_avg_pool2d", data_format=data_format)


def _global_avg_pool2d_checked(x, *, op, data_format="NCHW"):
    """``global_avg_pool2d`` with errors attributed to ``op`` (the layer's name)."""
    data_format = _args.check_data_format(data_format, op)
    # As an array: a NumPy float64 input is float32 here, as the jitted ops make it.
    x = jnp.asarray(_args.check_input(x, op, data_format=data_format))
    spatial = (2, 3) if data_format == "NCHW" else (1, 2)
    return jnp.mean(x, axis=spatial, dtype=win.accum_dtype(x.dtype)).astype(x.dtype)


def _pool_geometry(
    x, kernel_size, stride, padding, dilation, ceil_mode, op, integers=False, data_format="NCHW"
):
    """Validate pooling arguments: the input as an array, and the window geometry.

    ``integers``: the op takes integer input too (max pooling, as PyTorch's);
    ``data_format``: the layout of ``x`` (the geometry's ``layout``).
    """
    data_format = _args.check_data_format(data_format, op)
    x = _args.check_input(x, op, integers=integers, data_format=data_format)
    kernel, strides, pads, dil = _args.pool_params(kernel_size, stride, padding, dilation, op)
    ceil_mode = _args.check_bool(ceil_mode, op, "ceil_mode")
    hw = _args.spatial_shape(x.shape, data_format)
    padded = (hw[0] + 2 * pads[0], hw[1] + 2 * pads[1])
    _args.check_fits(hw, padded, kernel, dil, op)
    out_hw = output_hw(hw, kernel, strides, pads, dil, ceil_mode)
    pads = ((pads[0],) * 2, (pads[1],) * 2)
    return x, win.Geometry(hw, out_hw, kernel, strides, dil, pads, layout=data_format)


def _unroll(taps):
    # Unrolling a small window's loop lets XLA fuse all its taps into one pass over
    # memory instead of one pass per tap; large windows keep a rolled loop.
    return min(taps, _tuning.POOL_UNROLL_TAPS)


# ---------------------------------------------------------------------------- max


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def _max_pool_nhwc(x, geom):
    """``(max, winning tap)`` per output cell; the tap numbers carry no gradient."""
    return _max_fwd(x, geom)[0]


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
    # PyTorch's rule: a strictly larger value or a NaN takes over, and the first real
    # cell of the window is the winner until then.
    take = (xw > best) | jnp.isnan(xw) | (arg < 0)
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


def _max_fwd(x, geom):
    xph, real, init = max_pool_start(x, geom)
    tap = partial(max_pool_tap, xph=xph, real=real, geom=geom)
    best, arg = win.tap_loop(geom.taps, tap, init, _unroll(geom.taps))
    return (best, arg), arg


def _tap_dtype(taps):
    # One byte per output cell while the tap numbers fit, like PyTorch's indices but smaller.
    return jnp.int8 if taps < 127 else jnp.int32


def _max_tangent(geom, res, tangents):
    """Forward mode: every output takes the tangent of the cell that won its window."""
    (arg,), (dx,) = res, tangents
    xph = win.to_phases(dx, geom, 0)

    def tap(t, dy):
        return jnp.where(arg == t, win.window(xph, t, geom), dy)

    init = jnp.zeros(arg.shape, dx.dtype)
    return [win.tap_loop(geom.taps, tap, init, _unroll(geom.taps))]


def _max_bwd(geom, res, cotangents):
    """The transpose of ``_max_tangent``: each tap sends back the gradient of the cells
    it won (the winning taps ``res[0]`` are all it needs)."""
    (arg,), (g,) = res, cotangents
    n, c = g.shape[0], g.shape[-1]
    acc = win.accum_dtype(g.dtype)
    hq_shape = win.to_phases(jnp.zeros((n, *geom.in_hw, c), acc), geom, 0).shape

    def tap(t, dxph):
        return win.add_to_window(dxph, t, jnp.where(arg == t, g, 0), geom)

    dxph = win.tap_loop(geom.taps, tap, jnp.zeros(hq_shape, acc), _unroll(geom.taps))
    return [win.from_phases(dxph, geom).astype(g.dtype)]


def _winner_jvp(op, tangent, bwd, config, primals, tangents):
    """The JVP of a max pool ``op(x, config) -> (best, arg)``: the tangent of each winner,
    ``tangent(config, [arg], [dx])``, a ``linear_call`` whose transpose is ``bwd``."""
    best, arg = op(primals[0], config)
    fun, transpose = Fn(tangent, config), Fn(bwd, config)
    (dbest,) = linear_call(fun, transpose, [arg], list(tangents))
    return (best, arg), (dbest, float0_zeros(arg))


_max_pool_nhwc.defjvp(partial(_winner_jvp, _max_pool_nhwc, _max_tangent, _max_bwd))


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


@partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _avg_pool_nhwc(x, geom, divisor):
    n, c = x.shape[0], x.shape[-1]
    xph = win.to_phases(x, geom, 0)
    acc = win.accum_dtype(x.dtype)
    tap = partial(avg_pool_tap, xph=xph, geom=geom)
    total = win.tap_loop(geom.taps, tap, jnp.zeros((n, *geom.out_hw, c), acc), _unroll(geom.taps))
    return (total * _avg_scale(geom, divisor, acc)).astype(x.dtype)


def _avg_bwd(geom, divisor, res, cotangents):
    # Averaging is linear: the backward needs only the input's shape (no residuals).
    (g,) = cotangents
    n, c = g.shape[0], g.shape[-1]
    acc = win.accum_dtype(g.dtype)
    gs = g.astype(acc) * _avg_scale(geom, divisor, acc)
    hq_shape = win.to_phases(jnp.zeros((n, *geom.in_hw, c), acc), geom, 0).shape

    def tap(t, dxph):
        return win.add_to_window(dxph, t, gs, geom)

    dxph = win.tap_loop(geom.taps, tap, jnp.zeros(hq_shape, acc), _unroll(geom.taps))
    return [win.from_phases(dxph, geom).astype(g.dtype)]


_avg_pool_nhwc.defjvp(partial(linear_jvp, _avg_pool_nhwc, _avg_bwd))


# ---------------------------------------------------------------------------- adaptive


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

    See also: the loop over tap offsets, ``jspatial.pool._adaptive_avg_nhwc`` (each
    tap's cells from ``jspatial.pool._adaptive_tap``); ``jspatial.loop_jaxpr`` prints
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
    return _adaptive_avg_pool2d_checked(
        x, output_size, op="adaptive_avg_pool2d", data_format=data_format
    )


@_args.unbatched(0)
def _adaptive_avg_pool2d_checked(x, output_size, *, op, data_format="NCHW"):
    """``adaptive_avg_pool2d`` with errors attributed to ``op`` (the layer's name)."""
    x, out_hw = _adaptive_geometry(x, output_size, op, data_format)
    return _adaptive_avg_pool2d(x, out_hw, data_format)


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

    See also: the loop over tap offsets, ``jspatial.pool._adaptive_max_fwd`` (each
    tap's cells from ``jspatial.pool._adaptive_tap``); ``jspatial.loop_jaxpr`` prints
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
    return _adaptive_max_pool2d_checked(
        x, output_size, return_indices, op="adaptive_max_pool2d", data_format=data_format
    )


@_args.unbatched(0)
def _adaptive_max_pool2d_checked(x, output_size, return_indices, *, op, data_format="NCHW"):
    """``adaptive_max_pool2d`` with errors attributed to ``op`` (the layer's name)."""
    x, out_hw = _adaptive_geometry(x, output_size, op, data_format)
    indices = _args.check_bool(return_indices, op, "return_indices")
    return _adaptive_max_pool2d(x, out_hw, indices, data_format)


def _adaptive_geometry(x, output_size, op, data_format="NCHW"):
    """Validate adaptive pooling arguments: the input as an array, and ``(H_out, W_out)``."""
    data_format = _args.check_data_format(data_format, op)
    x = _args.check_input(x, op, data_format=data_format)
    out = _args.adaptive_output_size(output_size, op)
    hw = _args.spatial_shape(x.shape, data_format)
    if 0 in hw:
        raise ValueError(f"{op} expected an input with non-empty planes, got {tuple(x.shape)}")
    return x, tuple(hw[a] if out[a] is None else out[a] for a in range(2))


def _uniform_geometry(in_hw, out_hw, layout):
    """The ordinary pool's geometry when every adaptive window has the same size, else None."""
    if in_hw[0] % out_hw[0] or in_hw[1] % out_hw[1]:
        return None
    k = (in_hw[0] // out_hw[0], in_hw[1] // out_hw[1])
    return win.Geometry(in_hw, out_hw, k, k, (1, 1), ((0, 0), (0, 0)), layout=layout)


def _pooled_shape(shape, out_hw, layout):
    """``shape`` of a batched 4-D array in ``layout`` with its plane replaced by ``out_hw``."""
    return win.image_shape(shape[0], shape[_args.channel_axis(layout)], out_hw, layout)


@partial(jax.jit, static_argnums=(1, 2))
def _adaptive_avg_pool2d(x, out_hw, layout):
    in_hw = _args.spatial_shape(x.shape, layout)
    if 0 in out_hw:
        return jnp.zeros(_pooled_shape(x.shape, out_hw, layout), x.dtype)
    geom = _uniform_geometry(in_hw, out_hw, layout)
    if geom is not None:
        return _avg_pool2d(x, geom, (True, None))
    # As an array: under jax.disable_jit a NumPy input reaches the gathers as it is.
    y = _adaptive_avg_nhwc(win.to_nhwc(jnp.asarray(x), layout), (in_hw, out_hw))
    return win.from_nhwc(y, layout)


@partial(jax.jit, static_argnums=(1, 2, 3))
def _adaptive_max_pool2d(x, out_hw, return_indices, layout):
    in_hw = _args.spatial_shape(x.shape, layout)
    if 0 in out_hw:
        y = jnp.zeros(_pooled_shape(x.shape, out_hw, layout), x.dtype)
        return (y, jnp.zeros(y.shape, _index_dtype())) if return_indices else y
    geom = _uniform_geometry(in_hw, out_hw, layout)
    if geom is not None:
        return _max_pool2d(x, geom, return_indices)
    y, arg = _adaptive_max_nhwc(win.to_nhwc(jnp.asarray(x), layout), (in_hw, out_hw))
    if not return_indices:
        return win.from_nhwc(y, layout)
    (rows, _), (cols, _), (_, kw) = _adaptive_plan((in_hw, out_hw))
    indices = _flat_indices(arg, rows, cols, kw, (1, 1), in_hw[1])
    return win.from_nhwc(y, layout), win.from_nhwc(indices, layout)


def _adaptive_plan(sizes):
    """``(starts, lengths)`` of the windows along each axis, and the taps ``(kh, kw)``
    of the longest window: every window reads tap offsets ``0 .. kh - 1`` and masks
    those past its own length."""
    (h, w), (oh, ow) = sizes
    rows, cols = win.adaptive_windows(h, oh), win.adaptive_windows(w, ow)
    return rows, cols, (max(rows[1]), max(cols[1]))


def _adaptive_tap(t, sizes):
    """Input rows ``(H_out,)`` and columns ``(W_out,)`` that tap ``t`` reads for each
    window, and whether the tap lies inside the window, ``(1, H_out, W_out, 1)``."""
    (h, w), _ = sizes
    (row0, len_h), (col0, len_w), (_, kw) = _adaptive_plan(sizes)
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


def _adaptive_taps(sizes):
    return int(np.prod(_adaptive_plan(sizes)[2]))


def _adaptive_scale(sizes, dtype):
    """``1 / window size`` per output cell, ``(1, H_out, W_out, 1)``."""
    (_, len_h), (_, len_w), _ = _adaptive_plan(sizes)
    return jnp.asarray((1.0 / np.outer(len_h, len_w))[None, :, :, None], dtype)


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def _adaptive_avg_nhwc(x, sizes):
    n, c = x.shape[0], x.shape[-1]
    acc = win.accum_dtype(x.dtype)

    def tap(t, total):
        rows, cols, inside = _adaptive_tap(t, sizes)
        return total + jnp.where(inside, _gather(x, rows, cols).astype(acc), 0)

    taps = _adaptive_taps(sizes)
    init = jnp.zeros((n, *sizes[1], c), acc)
    total = win.tap_loop(taps, tap, init, _unroll(taps))
    return (total * _adaptive_scale(sizes, acc)).astype(x.dtype)


def _adaptive_avg_bwd(sizes, res, cotangents):
    # Linear, like the ordinary average: no residuals.
    (g,) = cotangents
    n, c = g.shape[0], g.shape[-1]
    acc = win.accum_dtype(g.dtype)
    gs = g.astype(acc) * _adaptive_scale(sizes, acc)

    def tap(t, dx):
        rows, cols, inside = _adaptive_tap(t, sizes)
        return _scatter_add(dx, rows, cols, jnp.where(inside, gs, 0))

    taps = _adaptive_taps(sizes)
    dx = win.tap_loop(taps, tap, jnp.zeros((n, *sizes[0], c), acc), _unroll(taps))
    return [dx.astype(g.dtype)]


_adaptive_avg_nhwc.defjvp(partial(linear_jvp, _adaptive_avg_nhwc, _adaptive_avg_bwd))


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def _adaptive_max_nhwc(x, sizes):
    """``(max, winning tap)`` per output cell, as ``_max_pool_nhwc``."""
    return _adaptive_max_fwd(x, sizes)[0]


def _adaptive_max_fwd(x, sizes):
    n, c = x.shape[0], x.shape[-1]

    def tap(t, carry):
        best, arg = carry
        rows, cols, inside = _adaptive_tap(t, sizes)
        xw = _gather(x, rows, cols)
        # max_pool2d's rule; tap 0 lies in every window, so arg < 0 only before it.
        take = inside & ((xw > best) | jnp.isnan(xw) | (arg < 0))
        return jnp.where(take, xw, best), jnp.where(take, t, arg).astype(arg.dtype)

    taps = _adaptive_taps(sizes)
    shape = (n, *sizes[1], c)
    init = (jnp.full(shape, -jnp.inf, x.dtype), jnp.full(shape, -1, _tap_dtype(taps)))
    best, arg = win.tap_loop(taps, tap, init, _unroll(taps))
    return (best, arg), arg


def _adaptive_max_tangent(sizes, res, tangents):
    """Forward mode: every output takes the tangent of the cell that won its window."""
    (arg,), (dx,) = res, tangents

    def tap(t, dy):
        rows, cols, _ = _adaptive_tap(t, sizes)
        return jnp.where(arg == t, _gather(dx, rows, cols), dy)

    taps = _adaptive_taps(sizes)
    init = jnp.zeros(arg.shape, dx.dtype)
    return [win.tap_loop(taps, tap, init, _unroll(taps))]


def _adaptive_max_bwd(sizes, res, cotangents):
    """The transpose of ``_adaptive_max_tangent``."""
    (arg,), (g,) = res, cotangents
    n, c = g.shape[0], g.shape[-1]
    acc = win.accum_dtype(g.dtype)

    def tap(t, dx):
        rows, cols, _ = _adaptive_tap(t, sizes)
        return _scatter_add(dx, rows, cols, jnp.where(arg == t, g, 0))

    taps = _adaptive_taps(sizes)
    dx = win.tap_loop(taps, tap, jnp.zeros((n, *sizes[0], c), acc), _unroll(taps))
    return [dx.astype(g.dtype)]


_adaptive_max_nhwc.defjvp(
    partial(_winner_jvp, _adaptive_max_nhwc, _adaptive_max_tangent, _adaptive_max_bwd)
)


# ---------------------------------------------------------------------------- unpooling


def max_unpool2d(
    x: ArrayLike,
    indices: ArrayLike,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    output_size: Sequence[int] | None = None,
    *,
    data_format: str = "NCHW",
) -> jax.Array:
    """The partial inverse of ``max_pool2d``, with ``torch.nn.functional.max_unpool2d``'s semantics.

    Every value of ``x`` is written to the cell its index names in an output plane
    of zeros: ``y.reshape(N, C, -1)[n, c, indices[n, c, i, j]] = x[n, c, i, j]``
    (in ``'NHWC'``: ``y.reshape(N, -1, C)[n, indices[n, i, j, c], c] = x[n, i, j, c]``).
    The pooling arguments only set the default output size,
    ``(H_in - 1) * stride - 2 * padding + kernel_size`` per axis. No window loop:
    one scatter forward, and the gradient is one gather (each value receives the
    output gradient at its cell, as in PyTorch, also where two values share a cell;
    the value kept in such a cell is one of them, unspecified, as on PyTorch's GPU).

    Indices out of the plane raise a ``ValueError`` when their values are known
    (outside ``jax.jit``); under ``jax.jit`` such values are dropped.

    See also: no loop here, one scatter (``jspatial.pool._scatter_planes``);
    ``jspatial.steps`` watches the loop of ``max_pool2d``, which this inverts;
    ``jspatial.reference.max_unpool2d`` writes the cells one by one.

    Args:
        x: input ``(N, C, H_in, W_in)``, or ``(N, H_in, W_in, C)`` with
            ``data_format='NHWC'``.
        indices: integers of ``x``'s shape, as returned by ``max_pool2d(...,
            return_indices=True)`` (flat ``h * W + w`` in either layout); int32 or int64.
        kernel_size: int or ``(kh, kw)`` of the pooling being inverted.
        stride: int or ``(sh, sw)``; ``None`` means ``kernel_size``.
        padding: int or ``(ph, pw)``.
        output_size: ``(H, W)`` or a full 4-D shape in ``data_format`` (e.g. the
            pooling's input shape), which must be within ``stride`` of the default.
        data_format: ``'NCHW'`` (PyTorch's layout) or ``'NHWC'`` (channels last), of
            ``x``, ``indices`` and the result; keyword only.

    Returns:
        ``(N, C, H, W)`` (``(N, H, W, C)`` in ``'NHWC'``) in the dtype of ``x``.

    Example:
        >>> import jax.numpy as jnp, jspatial as js
        >>> x = jnp.arange(16.0).reshape(1, 1, 4, 4)
        >>> y, indices = js.max_pool2d(x, 2, return_indices=True)
        >>> js.max_unpool2d(y, indices, 2)[0, 0].tolist()
        [[0.0, 0.0, 0.0, 0.0], [0.0, 5.0, 0.0, 7.0], [0.0, 0.0, 0.0, 0.0], [0.0, 13.0, 0.0, 15.0]]
    """
    return _max_unpool2d_checked(
        x, indices, kernel_size, stride, padding, output_size,
        op="max_unpool2d", data_format=data_format,
    )  # fmt: skip


@_args.unbatched(0, 1)
def _max_unpool2d_checked(
    x, indices, kernel_size, stride, padding, output_size, *, op, data_format="NCHW"
):
    """``max_unpool2d`` with errors attributed to ``op`` (the layer uses ``"MaxUnpool2d"``)."""
    data_format = _args.check_data_format(data_format, op)
    x = _args.check_input(x, op, data_format=data_format)
    kernel, strides, pads = _unpool_params(kernel_size, stride, padding, op)
    in_hw = _args.spatial_shape(x.shape, data_format)
    out_hw = _args.unpool_output_size(
        output_size, in_hw, kernel, strides, pads, op, data_format=data_format
    )
    indices = _args.check_indices(indices, x.shape, out_hw[0] * out_hw[1], op)
    return _max_unpool2d(x, indices, out_hw, data_format)


def _unpool_params(kernel_size, stride, padding, op):
    """``max_unpool2d``'s ``kernel_size``, ``stride`` (``None``: the kernel) and ``padding``."""
    kernel = _args.pair(kernel_size, op, "kernel_size")
    strides = kernel if stride is None else _args.pair(stride, op, "stride")
    return kernel, strides, _args.pair(padding, op, "padding", minimum=0)


@partial(jax.jit, static_argnums=(2, 3))
def _max_unpool2d(x, indices, out_hw, layout):
    if layout == "NHWC":  # channels stay last: each (n, c) plane is a column of (N, H*W, C)
        n, h, w, c = x.shape
        flat = (n, h * w, c)
        planes = _scatter_planes(x.reshape(flat), indices.reshape(flat), out_hw[0] * out_hw[1])
        return planes.reshape(n, *out_hw, c)
    n, c, h, w = x.shape
    planes = _scatter_planes(
        x.reshape(n * c, h * w), indices.reshape(n * c, h * w), out_hw[0] * out_hw[1]
    )
    return planes.reshape(n, c, *out_hw)


def _plane_cells(idx):
    """Where ``_scatter_planes`` writes: ``idx`` along axis 1, every other axis as it is."""
    return tuple(
        idx if a == 1 else lax.broadcasted_iota(idx.dtype, idx.shape, a) for a in range(idx.ndim)
    )


@partial(jax.custom_jvp, nondiff_argnums=(2,))
def _scatter_planes(x, idx, size):
    """Row ``r``: ``size`` zeros with ``x[r, k]`` written at ``idx[r, k]``; with a third
    axis (NHWC's channels), the same for every ``x[r, :, c]``."""
    return (
        jnp.zeros((x.shape[0], size, *x.shape[2:]), x.dtype)
        .at[_plane_cells(idx)]
        .set(x, mode="drop", wrap_negative_indices=False)
    )


def _scatter_tangent(size, res, tangents):
    return [_scatter_planes(tangents[0], res[0], size)]  # linear: the scatter of the tangent


def _scatter_planes_bwd(size, res, cotangents):
    # PyTorch's derivative: every value gets the gradient of the cell it names, even
    # where two values name one cell (autodiff of the scatter would pick one of them).
    (idx,), (g,) = res, cotangents
    cells = _plane_cells(idx)
    return [g.at[cells].get(mode="fill", fill_value=0, wrap_negative_indices=False)]


@_scatter_planes.defjvp
def _scatter_planes_jvp(size, primals, tangents):
    (x, idx), dx = primals, tangents[0]
    y = _scatter_planes(x, idx, size)
    fun, transpose = Fn(_scatter_tangent, size), Fn(_scatter_planes_bwd, size)
    return y, linear_call(fun, transpose, [idx], [dx])[0]
