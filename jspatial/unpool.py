"""Max unpooling: the values of a max pool written back to the cells they came from.

``max_unpool2d`` takes ``max_pool2d``'s output and ``return_indices`` (PyTorch's flat
``h * W + w``, which ``flat_indices`` makes from the pools' winning taps) and writes
every value to its cell in a plane of zeros: one scatter per call, no window loop
(``_scatter_planes``), and its gradient one gather.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from jspatial import _args
from jspatial._args import IntOrPair
from jspatial._linear import Fn, linear_call


class MaxUnpool2dArgs(NamedTuple):
    """``max_unpool2d``'s arguments, checked (``max_unpool2d_args``)."""

    x: Any  # (N, C, H_in, W_in), or (N, H_in, W_in, C) in 'NHWC'; unbatched input gets N = 1
    indices: Any  # of x's shape: flat h * W + w in the output plane
    out_hw: tuple[int, int]
    layout: str
    unbatched: bool  # the input was (C, H_in, W_in): the result loses its batch axis again

    def program(self):
        """The function of ``(x, indices)`` that runs the op."""
        return partial(_max_unpool2d, out_hw=self.out_hw, layout=self.layout)


def flat_indices(arg, row0, col0, kw, step, width):
    """PyTorch's indices ``h * W + w`` of the cells that won, from the winning taps.

    ``arg: (N, H_out, W_out, C)`` holds tap numbers (row-major over windows ``kw``
    wide); ``row0``/``col0`` the input row/column of each window's first tap;
    ``step`` the spacing between taps. Int64 in JAX's 64-bit mode, int32 otherwise.
    """
    dtype = index_dtype()
    t = arg.astype(dtype)
    rows = jnp.asarray(row0, dtype)[:, None, None] + (t // kw) * step[0]
    cols = jnp.asarray(col0, dtype)[:, None] + (t % kw) * step[1]
    return rows * width + cols


def index_dtype():
    # PyTorch's indices are int64; JAX has 64-bit integers only in its 64-bit mode.
    return jax.dtypes.canonicalize_dtype(jnp.int64)


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

    See also: no loop here, one scatter (``jspatial.unpool._scatter_planes``);
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
    a = max_unpool2d_args(
        x, indices, kernel_size, stride, padding, output_size,
        op="max_unpool2d", data_format=data_format,
    )  # fmt: skip
    return _args.unbatch(a.program()(a.x, a.indices), a.unbatched)


def max_unpool2d_args(
    x, indices, kernel_size, stride, padding, output_size, *, op, data_format="NCHW"
) -> MaxUnpool2dArgs:
    """Every check of ``max_unpool2d``, errors attributed to ``op`` (the layer uses its name)."""
    data_format = _args.check_data_format(data_format, op)
    x, unbatched = _args.batched(x, op, data_format)
    if unbatched:
        indices = _args.check_array(indices, op, "indices", floating=False)[None]
    x = _args.check_input(x, op, data_format=data_format)
    kernel, strides, pads = _unpool_params(kernel_size, stride, padding, op)
    in_hw = _args.spatial_shape(x.shape, data_format)
    out_hw = _args.unpool_output_size(
        output_size, in_hw, kernel, strides, pads, op, data_format=data_format
    )
    indices = _args.check_indices(indices, x.shape, out_hw[0] * out_hw[1], op)
    return MaxUnpool2dArgs(x, indices, out_hw, data_format, unbatched)


def _unpool_params(kernel_size, stride, padding, op):
    """``max_unpool2d``'s ``kernel_size``, ``stride`` (``None``: the kernel) and ``padding``."""
    kernel = _args.pair(kernel_size, op, "kernel_size")
    strides = kernel if stride is None else _args.pair(stride, op, "stride")
    return kernel, strides, _args.pair(padding, op, "padding", minimum=0)


@partial(jax.jit, static_argnames=("out_hw", "layout"))
def _max_unpool2d(x, indices, *, out_hw, layout):
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
