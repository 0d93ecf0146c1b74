"""The tap loop as a Pallas kernel: each image read from HBM once, the taps taken on-chip.

On a CPU the tap loop of ``jspatial.conv`` copies one window per tap and runs a
matrix product on it, which is what a CPU cache likes. On a TPU every such copy
is a round trip to HBM. This kernel keeps the same loop but moves it on-chip:
a block of images is loaded into VMEM once, and for every tap::

    acc = 0                                            # (C_out, H*W), on-chip
    for t in range(kh * kw):                           # lax.fori_loop
        window = mask[t] * roll(x, -shift[t])          # tap t's window, on-chip
        acc += w[t] @ window                           # (C_out, C_in) @ (C_in, H*W)
    y = acc                                            # written to HBM once

An image is kept as ``(C, H*W)``: pixels on the 128-wide lane axis, channels on
the sublanes. The window of tap ``(i, j)`` is the image moved by
``(di, dj) = (i * dh - top, j * dw - left)`` pixels, i.e. the flat pixel axis
rotated by ``shift = di * W + dj``; the pixels that rotated in from the other
side of the image are exactly those the zero padding would have supplied, and
``mask[t]`` zeroes them. No padded copy of the input is ever made.

The backward pass is the same two loops transposed:

- input gradient: the transpose of "rotate by ``shift`` and mask" is "rotate by
  ``-shift`` and mask", so ``dx`` is this very kernel run on the output
  gradient with the offsets negated and each tap's weights transposed;
- weight gradient: ``dw[t] += g @ window(x, t).T`` summed over the batch, the
  ``(kh*kw, C_out, C_in)`` result staying on-chip for the whole grid.

Supported: ungrouped, stride 1, any kernel and dilation, padding that keeps the
output the size of the input (``'same'``, e.g. 3x3 with padding 1). Other
convolutions take the portable loop.

Cost: ``2 N C_out C_in H W kh kw`` FLOPs per kernel, like any direct
convolution; HBM traffic is one read of the input and one write of the output
per pass (``pl.CostEstimate`` below, from the block specs and the grid).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jspatial import _windows as win

# Bytes of one grid step's input and output blocks together (each is double-buffered by
# Pallas, so VMEM holds twice this); well inside the 16 MiB of scoped VMEM on v5e.
BLOCK_BYTES = 4 * 2**20


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
    return conv2d(x, weight, same_size(geom, 1), interpret)[:, :, :ho, :wo]


def _offsets(geom: win.Geometry, sign: int):
    """``(di, dj)`` of every tap, row-major; ``sign=-1`` gives the transposed taps."""
    (dh, dw), (top, left) = geom.dilation, (geom.padding[0][0], geom.padding[1][0])
    kh, kw = geom.kernel
    return [(sign * (i * dh - top), sign * (j * dw - left)) for i in range(kh) for j in range(kw)]


def _masks(geom: win.Geometry, sign: int) -> np.ndarray:
    """``(taps, 1, L)`` float32: 1 where tap ``t`` reads a real pixel, 0 on the padding.

    ``L`` is ``H*W`` rounded up to whole 128-lane vector registers (see ``_lanes``).
    """
    h, w = geom.in_hw
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    masks = [
        ((rows + di >= 0) & (rows + di < h) & (cols + dj >= 0) & (cols + dj < w)).reshape(1, -1)
        for di, dj in _offsets(geom, sign)
    ]
    masks = np.stack(masks).astype(np.float32)
    return np.pad(masks, ((0, 0), (0, 0), (0, _padded_lanes(h * w) - h * w)))


def _tap_window(x, t, geom: win.Geometry, sign: int, mask_ref):
    """Window of tap ``t`` of ``x: (C, H*W)``, taken in VMEM: a lane rotation and a mask."""
    (dh, dw), (top, left) = geom.dilation, (geom.padding[0][0], geom.padding[1][0])
    hw = x.shape[-1]  # lanes, H*W rounded up to 128
    di = sign * ((t // geom.kernel[1]) * dh - top)
    dj = sign * ((t % geom.kernel[1]) * dw - left)
    # window[p] = x[p + shift]; roll(x, r)[p] = x[p - r], so r = -shift, kept non-negative.
    shift = di * geom.in_hw[1] + dj
    bound = max(abs(a * geom.in_hw[1] + b) for a, b in _offsets(geom, sign))
    rotation = lax.rem(hw * (bound // hw + 1) - shift, hw)
    return pltpu.roll(x, rotation, 1) * mask_ref[t].astype(x.dtype)


def _lanes(value, hw, scratch):
    """``value: (C, H*W)`` widened with zeros to ``(C, L)`` through a VMEM scratch buffer.

    The TPU rotates whole 128-lane registers, so an image whose ``H*W`` is not a multiple
    of 128 is rotated within ``L`` lanes; the extra lanes are zero and every mask is zero
    there, so they never reach a real output.
    """
    if scratch is None:
        return value
    scratch[...] = jnp.zeros(scratch.shape, scratch.dtype)
    scratch[:, :hw] = value
    return scratch[...]


def _images_per_step(n: int, per_image_bytes: int) -> int:
    """The largest divisor of ``n`` whose blocks stay within ``BLOCK_BYTES``."""
    fit = max(1, BLOCK_BYTES // max(per_image_bytes, 1))
    return max(b for b in range(1, min(n, fit) + 1) if n % b == 0)


def _padded_lanes(hw: int) -> int:
    return -(-hw // 128) * 128


def _scratch(c, hw, dtype):
    """VMEM buffers for ``_lanes``: none when ``H*W`` already fills whole registers."""
    lanes = _padded_lanes(hw)
    return [] if lanes == hw else [pltpu.VMEM((c, lanes), dtype)]


def taps_forward(x, w_taps, geom: win.Geometry, sign: int = 1, *, interpret=False):
    """``y[n] = sum_t w_taps[t] @ window(x[n], t)``.

    Args:
        x: ``(N, C_in, H*W)``.
        w_taps: ``(taps, C_out, C_in)``.
        sign: ``1`` for the convolution, ``-1`` for its transpose (the input gradient).

    Returns:
        ``(N, C_out, H*W)`` in the dtype of ``x``, accumulated in float32.
    """
    n, c, hw = x.shape
    taps, o, _ = w_taps.shape
    size = x.dtype.itemsize
    lanes = _padded_lanes(hw)
    b = _images_per_step(n, (c + o) * lanes * size)
    masks = jnp.asarray(_masks(geom, sign))

    def kernel(x_ref, w_ref, m_ref, y_ref, *scratch):
        def image(i, carry):
            xi = _lanes(x_ref[i], hw, scratch[0] if scratch else None)

            def tap(t, acc):
                window = _tap_window(xi, t, geom, sign, m_ref)
                return acc + jnp.dot(w_ref[t], window, preferred_element_type=jnp.float32)

            acc = lax.fori_loop(0, taps, tap, jnp.zeros((o, lanes), jnp.float32))
            y_ref[i] = acc[:, :hw].astype(y_ref.dtype)
            return carry

        lax.fori_loop(0, b, image, 0)

    # Arithmetic from the block specs and the grid: n // b steps, each reading a (b, c, hw)
    # block and writing a (b, o, hw) block, so the images cross HBM once each way; the
    # weights and masks have a constant block index and are fetched once.
    cost = pl.CostEstimate(
        flops=2 * n * hw * o * c * taps,
        transcendentals=0,
        bytes_accessed=size * (n * c * hw + n * o * hw + taps * o * c) + 4 * taps * lanes,
    )
    return pl.pallas_call(
        kernel,
        grid=(n // b,),
        in_specs=[
            pl.BlockSpec((b, c, hw), lambda i: (i, 0, 0)),
            pl.BlockSpec((taps, o, c), lambda i: (0, 0, 0)),
            pl.BlockSpec((taps, 1, lanes), lambda i: (0, 0, 0)),
        ],
        out_specs=pl.BlockSpec((b, o, hw), lambda i: (i, 0, 0)),
        out_shape=jax.ShapeDtypeStruct((n, o, hw), x.dtype),
        scratch_shapes=_scratch(c, hw, x.dtype),
        cost_estimate=cost,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
        interpret=interpret,
    )(x, w_taps.astype(x.dtype), masks)


def taps_weight_grad(x, g, geom: win.Geometry, *, interpret=False):
    """``dw[t] = sum_n g[n] @ window(x[n], t).T``: ``(taps, C_out, C_in)`` in float32.

    Args:
        x: ``(N, C_in, H*W)``, the forward input.
        g: ``(N, C_out, H*W)``, the output gradient.
    """
    n, c, hw = x.shape
    o = g.shape[1]
    taps = geom.taps
    size = x.dtype.itemsize
    lanes = _padded_lanes(hw)
    b = _images_per_step(n, (c + o) * lanes * size)
    masks = jnp.asarray(_masks(geom, 1))
    nt = (((1,), (1,)), ((), ()))  # contract the pixel axis of both: g @ window.T

    def kernel(x_ref, g_ref, m_ref, dw_ref, *scratch):
        @pl.when(pl.program_id(0) == 0)
        def _():
            dw_ref[...] = jnp.zeros(dw_ref.shape, dw_ref.dtype)

        def image(i, carry):
            xi = _lanes(x_ref[i], hw, scratch[0] if scratch else None)
            gi = _lanes(g_ref[i], hw, scratch[1] if scratch else None)

            def tap(t, carry):
                window = _tap_window(xi, t, geom, 1, m_ref)
                dw_ref[t] += lax.dot_general(gi, window, nt, preferred_element_type=jnp.float32)
                return carry

            return lax.fori_loop(0, taps, tap, carry)

        lax.fori_loop(0, b, image, 0)

    # n // b steps reading a (b, c, hw) and a (b, o, hw) block; dw written once at the end.
    cost = pl.CostEstimate(
        flops=2 * n * hw * o * c * taps,
        transcendentals=0,
        bytes_accessed=size * (n * c * hw + n * o * hw) + 4 * (taps * o * c + taps * lanes),
    )
    return pl.pallas_call(
        kernel,
        grid=(n // b,),
        in_specs=[
            pl.BlockSpec((b, c, hw), lambda i: (i, 0, 0)),
            pl.BlockSpec((b, o, hw), lambda i: (i, 0, 0)),
            pl.BlockSpec((taps, 1, lanes), lambda i: (0, 0, 0)),
        ],
        # The same block for every step: dw stays in VMEM and is summed over the batch.
        out_specs=pl.BlockSpec((taps, o, c), lambda i: (0, 0, 0)),
        out_shape=jax.ShapeDtypeStruct((taps, o, c), jnp.float32),
        scratch_shapes=_scratch(c, hw, x.dtype) + _scratch(o, hw, x.dtype),
        cost_estimate=cost,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("arbitrary",)),
        interpret=interpret,
    )(x, g.astype(x.dtype), masks)


def _weight_taps(weight):
    """OIHW -> ``(taps, C_out, C_in)``."""
    o, c, kh, kw = weight.shape
    return jnp.transpose(weight, (2, 3, 0, 1)).reshape(kh * kw, o, c)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x, weight, geom: win.Geometry, interpret=False):
    """Ungrouped stride-1 'same' convolution, NCHW in and out: ``(N, C_out, H, W)``."""
    return _fwd(x, weight, geom, interpret)[0]


def _fwd(x, weight, geom, interpret):
    n, c, h, w = x.shape
    y = taps_forward(x.reshape(n, c, h * w), _weight_taps(weight), geom, interpret=interpret)
    return y.reshape(n, -1, h, w), (x, weight)


def _bwd(geom, interpret, residuals, g):
    x, weight = residuals
    n, c, h, w = x.shape
    x3, g3 = x.reshape(n, c, h * w), g.reshape(n, -1, h * w).astype(x.dtype)
    # The transposed taps: tap t's weights transposed, its offsets negated.
    w_t = jnp.swapaxes(_weight_taps(weight), 1, 2)
    dx = taps_forward(g3, w_t, geom, sign=-1, interpret=interpret).reshape(x.shape)
    dw = taps_weight_grad(x3, g3, geom, interpret=interpret)
    o = weight.shape[0]
    dw = jnp.transpose(dw.reshape(*geom.kernel, o, c), (2, 3, 0, 1))
    return dx, dw.astype(weight.dtype)


conv2d.defvjp(_fwd, _bwd)
