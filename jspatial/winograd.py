"""Winograd F(2x2, 3x3): a stride-1 3x3 convolution with 2.25x fewer multiplies.

The direct loop spends 9 multiplies per output pixel per (input, output)
channel pair. Winograd's minimal filtering algorithm computes a 2x2 block of
outputs from a 4x4 input tile with 16 multiplies instead of 36 (Lavin & Gray,
2015; cuDNN and oneDNN use it for the same layers):

    V = B^T d B        the 4x4 input tile, transformed (adds and subtracts only)
    U = G g G^T        the 3x3 kernel, transformed once to 4x4
    M = U * V          16 element-wise products, summed over input channels
    y = A^T M A        back to the 2x2 output block (adds only)

Summed over input channels, each of the 16 element-wise products is a matrix
product ``(tiles, C_in) @ (C_in, C_out)``: 16 transformed taps instead of 9 kernel
taps, each on a quarter as many rows. Unlike the direct loop's taps, which add into
one sum, the 16 products are independent of each other, so they run as one batched
matrix product (``_products``) rather than a ``lax.fori_loop``: a loop would write
each product and then copy it into the stack of all 16, an extra pass over four
times the output. The transforms are cheap element-wise passes, which is why it
wins for wide layers and loses for narrow ones. The hand-written backward runs the
same three steps transposed, recomputing ``V`` from the input instead of storing it.

Tiles are 4x4 windows with stride 2, so the tile geometry is exactly the
window geometry of ``jspatial._windows`` with kernel 4 and stride 2: row ``r`` of
tile ``a`` is phase ``r % 2`` of block row ``a + r // 2``.

Internal: ``jspatial.conv2d(..., algorithm='winograd')`` is the way in; this module is
there to read.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jspatial import _tuning
from jspatial import _windows as win
from jspatial._linear import defbilinear

# F(2x2, 3x3) transform matrices.
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)


def _supports(geom: win.Geometry, groups: int) -> bool:
    """Winograd F(2x2, 3x3) applies to ungrouped 3x3 convolutions with stride and dilation 1."""
    return (
        geom.kernel == (3, 3) and geom.stride == (1, 1) and geom.dilation == (1, 1) and groups == 1
    )


def _tile_geometry(geom: win.Geometry) -> win.Geometry:
    tiles = (-(-geom.out_hw[0] // 2), -(-geom.out_hw[1] // 2))
    return win.Geometry(geom.in_hw, tiles, (4, 4), (2, 2), (1, 1), geom.padding)


# Each transform acts on one axis of a stack of 4 (or 2) slices; applied to rows
# and then to columns it is the 2-D transform. All are adds and subtracts.


def _bt(d):  # B^T d: input tile -> transformed tile
    return [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]


def _b(v):  # B v: transpose of _bt, for the input gradient
    return [v[0], v[1] - v[2] + v[3], v[2] + v[1] - v[0], -v[3]]


def _at(m):  # A^T m: transformed products -> 2 outputs
    return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def _a(y):  # A y: transpose of _at, for the output gradient
    return [y[0], y[0] + y[1], y[0] - y[1], -y[1]]


def _on_axis(transform, parts, axis):
    """Apply a 1-D transform to the stack of slices ``parts`` along ``axis``."""
    return jnp.stack(
        transform([jnp.take(parts, i, axis=axis) for i in range(parts.shape[axis])]), axis
    )


def _input_transform(x, tg):
    """``(N, H, W, C)`` -> ``V`` of shape ``(16, N * tiles_h * tiles_w, C)``."""
    n, c = x.shape[0], x.shape[-1]
    th, tw = tg.out_hw
    xph = win.to_phases(x, tg, 0)  # (N, th + 1, 2, tw + 1, 2, C)
    # Tile rows r = 0..3 are (block offset r // 2, phase r % 2): four static slices per axis.
    rows = jnp.stack(
        [xph[:, r // 2 : r // 2 + th, r % 2] for r in range(4)]
    )  # (4, N, th, tw+1, 2, C)
    rows = _on_axis(_bt, rows, 0)
    cols = jnp.stack([rows[:, :, :, s // 2 : s // 2 + tw, s % 2] for s in range(4)], 1)
    cols = _on_axis(_bt, cols, 1)  # (4, 4, N, th, tw, C)
    return cols.reshape(16, n * th * tw, c)


def _input_transform_transpose(dv, x_shape, tg):
    """Gradient of ``_input_transform``: ``(16, T, C)`` -> ``(N, H, W, C)``."""
    n, _, _, c = x_shape
    th, tw = tg.out_hw
    dv = dv.reshape(4, 4, n, th, tw, c)
    dcols = _on_axis(_b, dv, 1)
    # Overlapping tiles: slice s of tile b lands in block column b + s // 2, phase s % 2.
    pad = lambda v, lo: jnp.pad(v, [(0, 0)] * 3 + [(lo, 1 - lo)] + [(0, 0)])  # noqa: E731
    drows = jnp.stack(
        [pad(dcols[:, 0], 0) + pad(dcols[:, 2], 1), pad(dcols[:, 1], 0) + pad(dcols[:, 3], 1)],
        axis=4,
    )  # (4, N, th, tw + 1, 2, C)
    drows = _on_axis(_b, drows, 0)
    pad = lambda v, lo: jnp.pad(v, [(0, 0), (lo, 1 - lo)] + [(0, 0)] * 3)  # noqa: E731
    dxph = jnp.stack(
        [pad(drows[0], 0) + pad(drows[2], 1), pad(drows[1], 0) + pad(drows[3], 1)], axis=2
    )  # (N, th + 1, 2, tw + 1, 2, C)
    return win.from_phases(dxph, tg)


def _output_transform(m, n, geom, tg):
    """``(16, T, O)`` -> ``(N, H_out, W_out, O)``."""
    th, tw = tg.out_hw
    o = m.shape[-1]  # spelled out: a -1 cannot be resolved for an empty batch
    m = m.reshape(4, 4, n, th, tw, o)
    y = _on_axis(_at, _on_axis(_at, m, 0), 1)  # (2, 2, N, th, tw, O)
    y = jnp.transpose(y, (2, 3, 0, 4, 1, 5)).reshape(n, 2 * th, 2 * tw, o)
    return y[:, : geom.out_hw[0], : geom.out_hw[1]]


def _output_transform_transpose(g, geom, tg):
    """Gradient of ``_output_transform``: ``(N, H_out, W_out, O)`` -> ``(16, T, O)``."""
    n, o = g.shape[0], g.shape[-1]
    th, tw = tg.out_hw
    g = jnp.pad(g, [(0, 0), (0, 2 * th - geom.out_hw[0]), (0, 2 * tw - geom.out_hw[1]), (0, 0)])
    y = jnp.transpose(g.reshape(n, th, 2, tw, 2, o), (2, 4, 0, 1, 3, 5))  # (2, 2, N, th, tw, O)
    return _on_axis(_a, _on_axis(_a, y, 0), 1).reshape(16, n * th * tw, o)


def _weight_transform(weight):
    """OIHW ``(O, C, 3, 3)`` -> ``U`` of shape ``(16, C, O)``."""
    u = jnp.einsum("ia,jb,ocab->ijco", _G, _G, weight.astype(win.accum_dtype(weight.dtype)))
    return u.reshape(16, weight.shape[1], weight.shape[0])


def _weight_transform_transpose(du, c_out, c_in):
    du = du.reshape(4, 4, c_in, c_out)
    return jnp.einsum("ia,jb,ijco->ocab", _G, _G, du)


def _forward_loop(i, y, *, x, u, geom, chunks):
    """Batch chunk ``i``: transform its tiles, the 16 products, back to outputs."""
    tg = _tile_geometry(geom)
    acc = y.dtype
    xc = win.to_nhwc(win.batch_chunk(x, i, chunks), geom.layout)
    v = _input_transform(xc.astype(acc), tg).astype(x.dtype)
    yc = _output_transform(_products(v, u, acc), xc.shape[0], geom, tg)
    return win.set_batch_chunk(y, i, win.from_nhwc(yc, geom.layout), chunks)


def _backward_loop(i, carry, *, x, g, u, geom, chunks):
    """Batch chunk ``i`` of both gradients, the three steps transposed."""
    dx, du = carry
    tg = _tile_geometry(geom)
    acc = du.dtype
    xc, gc = win.batch_chunk(x, i, chunks), win.batch_chunk(g, i, chunks)
    xc, gc = win.to_nhwc(xc, geom.layout), win.to_nhwc(gc, geom.layout)
    v = _input_transform(xc.astype(acc), tg).astype(x.dtype)
    dm = _output_transform_transpose(gc.astype(acc), geom, tg).astype(x.dtype)
    # _products transposed, for each k: dU[k] += V[k].T @ dM[k], dV[k] = dM[k] @ U[k].T.
    du = du + jnp.einsum("ktc,kto->kco", v, dm, preferred_element_type=acc)
    dv = jnp.einsum("kto,kco->ktc", dm, u, preferred_element_type=acc)
    out = win.from_nhwc(_input_transform_transpose(dv, xc.shape, tg), geom.layout)
    return win.set_batch_chunk(dx, i, out, chunks), du


@partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv3x3(x, weight, geom, groups=1):
    """Winograd convolution of ``x`` (in ``geom.layout``, NCHW or NHWC) with OIHW ``weight``
    (``groups`` must be 1); ``geom`` from ``jspatial._conv_args``.

    Returns ``geom.layout`` in the accumulation dtype. The batch is processed in chunks
    (``jspatial._windows.batch_chunks``): the transformed tiles take four times the
    memory of the input, and the products four times that of the output, so they are
    only ever held for one chunk.
    """
    acc = win.accum_dtype(x.dtype)
    u = _weight_transform(weight).astype(x.dtype)
    y = jnp.zeros(win.image_shape(x.shape[0], weight.shape[0], geom.out_hw, geom.layout), acc)
    loop = partial(_forward_loop, x=x, u=u, geom=geom)
    return win.chunk_loop_fn(_chunks(x.shape[0], _tile_geometry(geom)), loop)(y)


def _chunks(n, tg):
    # Finer than the direct loop's: a chunk's tiles and products take 12 times its input.
    tiles = tg.out_hw[0] * tg.out_hw[1]
    return win.batch_chunks(n, tiles, _tuning.WINOGRAD_MIN_CHUNK_TILES, _tuning.WINOGRAD_MAX_CHUNKS)


def _products(v, u, acc):
    """The 16 transformed taps, ``M[k] = V[k] @ U[k]`` for ``k < 16``: one batched
    matrix product ``(16, tiles, C_in) @ (16, C_in, C_out)``.

    ``16 * tiles * C_in * C_out`` MACs, against the direct loop's
    ``9 * (4 * tiles) * C_in * C_out`` for the same outputs: the 2.25x.
    """
    return jnp.einsum("ktc,kco->kto", v, u, preferred_element_type=acc)


def _bwd(geom, groups, residuals, g):
    x, weight = residuals
    acc = win.accum_dtype(x.dtype)
    u = _weight_transform(weight).astype(x.dtype)
    du = jnp.zeros(u.shape, acc)
    loop = partial(_backward_loop, x=x, g=g, u=u, geom=geom)
    chunks = _chunks(x.shape[0], _tile_geometry(geom))
    dx, du = win.chunk_loop_fn(chunks, loop)((win.overwritten(x.shape, x.dtype, g), du))
    dw = _weight_transform_transpose(du, weight.shape[0], weight.shape[1])
    return dx, dw.astype(weight.dtype)


defbilinear(_conv3x3, _bwd)
