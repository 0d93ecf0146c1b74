"""The tap loop as a Pallas kernel: activations read from HBM once, the taps taken on-chip.

On a CPU the tap loop of ``jspatial.conv`` copies one window per tap and runs a
matrix product on it, which is what a CPU cache likes. On a TPU every such copy
is a round trip to HBM. This kernel keeps the same loop but moves it on-chip, in
the order a TPU stores activations: ``(H, W, C, N)``, the batch on the 128-wide
lanes and the channels on the sublanes, so that every pixel is one ``(C, N)``
tile of 128 images (XLA stores a convolution's activations that way itself, and
the ``NCHW -> HWCN`` (or ``NHWC -> HWCN``, in ``data_format='NHWC'``) transposes
around the kernel then cost nothing). A block of
128 images is loaded into VMEM once, and for every output pixel::

    for t in range(kh * kw):                          # the taps, unrolled
        tile[t] = x[h + di[t], w + dj[t]]             # (C, 128); zeros off the image
    y[h, w] = W @ concat(tile)                        # (C_out, kh*kw*C) @ (kh*kw*C, 128)

The taps of one pixel are stacked into a single product of depth ``kh*kw*C``
(im2col on-chip, one tile per tap) so that even a 24-channel layer fills the
matrix unit; a tap whose pixel falls off the image reads zeros, which is the zero
padding, and no padded copy of the input is ever made.

The backward pass is the same loop transposed:

- input gradient: output pixel ``(h, w)`` fed input pixel ``(h + di, w + dj)``
  through ``W[t]``, so ``dx`` is this very kernel run on the output gradient with
  the offsets negated and each tap's weights transposed;
- weight gradient: ``dW += g[h, w] @ concat(tile).T`` for every pixel and block of
  images, the ``(C_out, kh*kw*C)`` sum staying on-chip for the whole grid.

Supported: ungrouped, stride 1, any kernel and dilation. The kernel itself computes an
output the size of the input (``'same'``, e.g. 3x3 with padding 1); a convolution with
less padding than that (``'valid'``, the whitening layer's) runs as the 'same' one,
cropped (``same_size``, ``conv2d_cropped``). Other convolutions (groups, strides, more
padding than 'same') take the portable loop.

Cost: ``2 N C_out C_in H W kh kw`` FLOPs per kernel, like any direct
convolution; HBM traffic is one read of the input and one write of the output
per pass (``pl.CostEstimate`` below, from the block specs and the grid).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jspatial import _windows as win
from jspatial._linear import defbilinear

# Bytes of one grid step's output block (double-buffered by Pallas). The input block is a
# whole (H, W, C, 128) slab, up to 30 MB for a 256-channel 15x15 layer, so the kernels
# ask for more than the default scoped VMEM; a v5e core has 128 MiB.
BLOCK_BYTES = 4 * 2**20
VMEM_LIMIT = 100 * 2**20


def supports(geom: win.Geometry, groups: int) -> bool:
    """Whether the kernel computes this convolution (else the portable loop does)."""
    same = all(sum(geom.padding[a]) == geom.dilation[a] * (geom.kernel[a] - 1) for a in range(2))
    return groups == 1 and geom.stride == (1, 1) and same and geom.out_hw == geom.in_hw


def same_size(geom: win.Geometry, groups: int) -> win.Geometry | None:
    """The 'same' geometry whose output, cropped, is ``geom``'s; ``None`` if there is none.

    A stride-1 convolution padded less than 'same' (airbench's 2x2 'valid' whitening
    layer) is the 'same' one with the missing padding added at the bottom and right:
    output row ``oy`` still reads rows ``oy + i * dh - top``, so its first
    ``H_out x W_out`` outputs are ``geom``'s and the rest are cropped away.
    """
    pads = []
    for a in range(2):
        full = geom.dilation[a] * (geom.kernel[a] - 1)
        top, bottom = geom.padding[a]
        if top + bottom > full:
            return None
        pads.append((top, full - top))
    same = geom._replace(padding=tuple(pads), out_hw=geom.in_hw)
    return same if supports(same, groups) else None


def conv2d_cropped(x, weight, geom: win.Geometry, interpret=False):
    """``geom``'s convolution (``same_size(geom, 1)`` must exist) as the 'same' kernel, cropped."""
    ho, wo = geom.out_hw
    y = conv2d(x, weight, same_size(geom, 1), interpret)
    return y[:, :, :ho, :wo] if geom.layout == "NCHW" else y[:, :ho, :wo]


def _offsets(geom: win.Geometry, sign: int):
    """``(di, dj)`` of every tap, row-major; ``sign=-1`` gives the transposed taps."""
    (dh, dw), (top, left) = geom.dilation, (geom.padding[0][0], geom.padding[1][0])
    kh, kw = geom.kernel
    return [(sign * (i * dh - top), sign * (j * dw - left)) for i in range(kh) for j in range(kw)]


def _patch(x_ref, row, col, offsets):
    """The taps of output pixel ``(row, col)`` stacked: ``(taps * C, lanes)``.

    Tap ``t`` reads the ``(C, lanes)`` tile of pixel ``(row + di, col + dj)``, or zeros
    where that pixel is off the image (the zero padding).
    """
    h, w = x_ref.shape[0], x_ref.shape[1]
    tiles = []
    for di, dj in offsets:
        r, c = row + di, col + dj
        inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        tile = x_ref[jnp.clip(r, 0, h - 1), jnp.clip(c, 0, w - 1)]
        tiles.append(jnp.where(inside, tile, jnp.zeros((), tile.dtype)))
    return jnp.concatenate(tiles, axis=0)


def _lanes(n: int) -> int:
    """Images per grid step: 128 (one full lane row), or the whole batch if it is not a
    multiple of 128 (a block must fill the lanes or span the axis)."""
    return 128 if n % 128 == 0 else n


def _rows_per_step(h: int, row_bytes: int) -> int:
    """The most output rows (a divisor of ``h``) whose block stays within ``BLOCK_BYTES``."""
    return max(
        r for r in range(1, h + 1) if h % r == 0 and (r * row_bytes <= BLOCK_BYTES or r == 1)
    )


def _params(*semantics):
    return pltpu.CompilerParams(dimension_semantics=semantics, vmem_limit_bytes=VMEM_LIMIT)


def taps_forward(x, w_mat, offsets, *, interpret=False):
    """``y[h, w] = w_mat @ patch(x, h, w)`` for every pixel.

    Args:
        x: ``(H, W, C_in, N)``.
        w_mat: ``(C_out, taps * C_in)``, tap-major columns (tap ``t`` at ``t * C_in``).
        offsets: ``(di, dj)`` of each tap.

    Returns:
        ``(H, W, C_out, N)`` in the dtype of ``x``, accumulated in float32.
    """
    h, w, c, n = x.shape
    o = w_mat.shape[0]
    size = x.dtype.itemsize
    nb = _lanes(n)
    hb = _rows_per_step(h, w * o * nb * size)

    def kernel(x_ref, w_ref, y_ref):
        first = pl.program_id(1) * hb

        def pixel(p, carry):
            i, j = p // w, p % w
            patch = _patch(x_ref, first + i, j, offsets)
            y = jnp.dot(w_ref[...], patch, preferred_element_type=jnp.float32)
            y_ref[i, j] = y.astype(y_ref.dtype)
            return carry

        lax.fori_loop(0, hb * w, pixel, 0)

    # Arithmetic from the block specs and the grid: the input block's index changes only
    # with the image block, so each image crosses HBM once on the way in; each output
    # block is written once; the weights have a constant block index and load once.
    cost = pl.CostEstimate(
        flops=2 * h * w * n * o * c * len(offsets),
        transcendentals=0,
        bytes_accessed=size * (x.size + h * w * o * n) + 4 * w_mat.size,
    )
    return pl.pallas_call(
        kernel,
        grid=(n // nb, h // hb),
        in_specs=[
            pl.BlockSpec((h, w, c, nb), lambda b, r: (0, 0, 0, b)),
            pl.BlockSpec(w_mat.shape, lambda b, r: (0, 0)),
        ],
        out_specs=pl.BlockSpec((hb, w, o, nb), lambda b, r: (r, 0, 0, b)),
        out_shape=jax.ShapeDtypeStruct((h, w, o, n), x.dtype),
        cost_estimate=cost,
        compiler_params=_params("parallel", "arbitrary"),
        interpret=interpret,
    )(x, w_mat.astype(x.dtype))


def taps_weight_grad(x, g, offsets, *, interpret=False):
    """``dW = sum over pixels and images of g[h, w] @ patch(x, h, w).T``.

    Args:
        x: ``(H, W, C_in, N)``, the forward input.
        g: ``(H, W, C_out, N)``, the output gradient.

    Returns:
        ``(C_out, taps * C_in)`` in float32, columns as ``w_mat``'s.
    """
    h, w, c, n = x.shape
    o = g.shape[2]
    taps = len(offsets)
    size = x.dtype.itemsize
    nb = _lanes(n)
    hb = _rows_per_step(h, w * o * nb * size)
    nt = (((1,), (1,)), ((), ()))  # contract the image (lane) axis of both: g @ patch.T

    def kernel(x_ref, g_ref, dw_ref):
        @pl.when((pl.program_id(0) == 0) & (pl.program_id(1) == 0))
        def _():
            dw_ref[...] = jnp.zeros(dw_ref.shape, dw_ref.dtype)

        first = pl.program_id(1) * hb

        def pixel(p, carry):
            i, j = p // w, p % w
            patch = _patch(x_ref, first + i, j, offsets)
            dw_ref[...] += lax.dot_general(
                g_ref[i, j], patch, nt, preferred_element_type=jnp.float32
            )
            return carry

        lax.fori_loop(0, hb * w, pixel, 0)

    # x and g each cross HBM once; dW stays in VMEM for the whole grid, written once.
    cost = pl.CostEstimate(
        flops=2 * h * w * n * o * c * taps,
        transcendentals=0,
        bytes_accessed=size * (x.size + g.size) + 4 * o * taps * c,
    )
    return pl.pallas_call(
        kernel,
        grid=(n // nb, h // hb),
        in_specs=[
            pl.BlockSpec((h, w, c, nb), lambda b, r: (0, 0, 0, b)),
            pl.BlockSpec((hb, w, o, nb), lambda b, r: (r, 0, 0, b)),
        ],
        # The same block for every step: dW stays in VMEM and is summed over the grid.
        out_specs=pl.BlockSpec((o, taps * c), lambda b, r: (0, 0)),
        out_shape=jax.ShapeDtypeStruct((o, taps * c), jnp.float32),
        cost_estimate=cost,
        compiler_params=_params("arbitrary", "arbitrary"),
        interpret=interpret,
    )(x, g.astype(x.dtype))


@partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def conv2d(x, weight, geom: win.Geometry, interpret=False):
    """Ungrouped stride-1 'same' convolution, in and out in ``geom.layout``:
    ``(N, C_out, H, W)`` (NCHW) or ``(N, H, W, C_out)`` (NHWC)."""
    return _fwd(x, weight, geom, interpret)[0]


def _fwd(x, weight, geom, interpret):
    o, c = weight.shape[:2]
    w_mat = jnp.transpose(weight, (0, 2, 3, 1)).reshape(o, -1)  # (O, taps * C), tap-major
    y = taps_forward(win.to_hwcn(x, geom.layout), w_mat, _offsets(geom, 1), interpret=interpret)
    return win.from_hwcn(y, geom.layout), (x, weight)


def _bwd(geom, interpret, residuals, g):
    x, weight = residuals
    o, c, kh, kw = weight.shape
    xt, gt = win.to_hwcn(x, geom.layout), win.to_hwcn(g.astype(x.dtype), geom.layout)
    # The transposed taps: tap t's weights transposed, its offsets negated.
    w_t = jnp.transpose(weight, (1, 2, 3, 0)).reshape(c, -1)  # (C, taps * O)
    dx = taps_forward(gt, w_t, _offsets(geom, -1), interpret=interpret)
    dx = win.from_hwcn(dx, geom.layout)
    dw = taps_weight_grad(xt, gt, _offsets(geom, 1), interpret=interpret)
    dw = jnp.transpose(dw.reshape(o, kh, kw, c), (0, 3, 1, 2))
    return dx, dw.astype(weight.dtype)


defbilinear(conv2d, _bwd)  # forward mode: conv2d(dx, w) + conv2d(x, dw)
