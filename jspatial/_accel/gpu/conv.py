"""The tap loop as implicit-GEMM Pallas kernels for NVIDIA GPUs (Triton backend, sm_80 and up).

The portable ``jspatial.conv`` copies one window of the input per tap and multiplies it,
``y += window(x, t) @ w[t]``; on a GPU every copy is a round trip to HBM. These kernels
run the same loop inside one program, channels-last (``NHWC``, the layout tensor cores
want), on the input flattened to rows ``(N * H * W, C)``. A program owns a tile of
``BM`` output pixels x ``BO`` output channels, held in registers::

    acc = 0                                               # (BM, BO), float32
    for k in channel chunks of BK:                        # a loop in the kernel
        for t in range(kh * kw):                          # the taps, unrolled
            rows = source pixel of every output pixel for tap t    # zeros off the image
            acc += x[rows, k] @ w[t, k, cols]            # (BM, BK) @ (BK, BO)
    y[pixels, cols] = acc

Each tap's tile is a masked gather load of the shifted rows; the nine taps of a 3x3 read
overlapping rows, which the L1/L2 caches serve, so the input crosses HBM about once per
pass and the output is written once. No padded copy and no window copy is ever made.

The backward pass is the same loop transposed:

- input gradient: output pixel ``oy`` read input row ``oy * s + i * d - top``, so input
  row ``iy`` receives ``g[(iy + top - i * d) / s] @ w[t].T`` from every tap for which that
  division is exact. This is the forward kernel run on the output gradient with the
  offsets negated and each tap's weights transposed (like ``jspatial._accel.conv``). With
  a stride, the input pixels split into ``s_h * s_w`` phases (``iy % s``); each phase has
  its own static set of taps, so a program works on the pixels of one phase and runs only
  the taps that reach them (no multiply by zeros);
- weight gradient: ``dw[t] += window(x, t).T @ g`` (``conv_weight_grad_tap``), a program
  per ``(BC, BO)`` tile of ``(C_in, C_out)`` and group of taps, every tap of the group
  accumulated in registers while the program walks its share of the output pixels in
  chunks of ``BP`` (split-K over ``splits`` programs; XLA sums the float32 partials).

Supported (``supports``): ungrouped; any stride, kernel size and dilation; any zero
padding (none, 'same', or more). Other convolutions (groups) take the portable loop.

Tiles, grid and arithmetic intensity (float32):

- forward and input gradient: ``BM = 128`` output pixels (64, then 32, where fewer than
  ``2 * SMS`` programs would result) x ``BO = 64`` output channels (fewer channels: the
  next power of two >= 16), contraction chunks of ``BK = 32`` channels (16 for 3, masked
  beyond ``C``) looped over inside the kernel, 4 warps, 1 stage; grid ``(C_out tiles,
  pixel tiles, phases)``, the channel tiles of one pixel tile launched side by side so
  that they share its rows in L2. Per tap and chunk a program loads ``BM*BK + BK*BO`` values for
  ``2*BM*BK*BO`` FLOPs: 21 FLOP/byte from cache at ``BM = 128`` (16 at 64). From HBM the
  pass moves ``x`` once and ``y`` once: ``2*taps*C_in*C_out / (4*(C_in + C_out))``
  FLOP/byte at stride 1, 144 for a 3x3 64->64 layer. airbench94's forward at batch 512:
  3844 programs for 24->64 @31, 900 for 64->64 @15, 4 x 196 for 256->256 @7 and
  4 x 72 (``BM = 64``) for 256->256 @3; at batch 128 that last one is 4 x 36 (``BM = 32``),
  for an H100's 132 SMs.
- weight gradient: ``BC = 32`` input channels (16 for 3) x ``BO = 64`` output channels,
  up to ``9`` taps per program (``taps * BC * BO`` float32 accumulators, 72 KiB over 8
  warps), pixel chunks of ``BP = 64`` (2 stages: 90 KB of tiles in shared memory); grid
  ``(C_out tiles, C_in tiles, tap groups, splits)`` with ``splits`` chosen to give about
  ``SMS`` programs (one wave: the accumulators fill an SM's registers). Per chunk a
  program loads ``BP*BO`` gradient values and ``taps*BP*BC`` input values for
  ``2*taps*BP*BC*BO`` FLOPs: 26 FLOP/byte from cache for a 3x3. The partial sums are
  ``splits * taps * C_in * C_out`` floats: 10 MB for airbench94's 24->64 @31 layer
  (131 splits) next to 173 MB of ``x`` and ``g``, 12 MB for 256->256 @3 (5 splits).

Every ``pl.pallas_call`` carries a ``pl.CostEstimate``: the FLOPs of the grid as run
(padded tiles included) and the HBM bytes of one read of every input and one write of the
output, which is what the block specs and the grid give when each input tile is fetched
once from HBM and reused from cache across taps and channel tiles.

Example (interpret mode, on a CPU):

>>> import jax.numpy as jnp
>>> from jspatial import _windows as win
>>> geom = win.Geometry((1, 5), (1, 5), (1, 3), (1, 1), (1, 1), ((0, 0), (1, 1)))
>>> y = conv2d(jnp.ones((1, 2, 1, 5)), jnp.ones((4, 2, 1, 3)), geom, interpret=True)
>>> y.shape, float(y[0, 0, 0, 2]), float(y[0, 0, 0, 0])
((1, 4, 1, 5), 6.0, 4.0)
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from jspatial import _windows as win
from jspatial._linear import defbilinear

# ----------------------------------------------------------------------------- jax versions
#
# Pallas' Triton names moved between releases: ``jax.experimental.pallas.triton`` (jax 0.5
# and later; ``.gpu`` before), ``CompilerParams`` (``TritonCompilerParams`` before), and
# masked loads/stores as ``plgpu.load(ref.at[idx], mask=...)`` (``pl.load(ref, idx,
# mask=...)`` before). Everything version-dependent is in these few lines.

try:
    from jax.experimental.pallas import triton as _plgpu
except ImportError:  # pragma: no cover - older jax
    from jax.experimental.pallas import gpu as _plgpu

_CompilerParams = getattr(_plgpu, "CompilerParams", None) or _plgpu.TritonCompilerParams


def _params(num_warps: int, num_stages: int):
    """Compiler parameters that select the Triton backend (Mosaic GPU lowers no ``dot``)."""
    return _CompilerParams(num_warps=num_warps, num_stages=num_stages)


def _gather(ref, rows, cols, mask):
    """``ref[rows[:, None], cols[None, :]]`` where ``mask``, zeros elsewhere."""
    idx = (rows[:, None], cols[None, :])
    if hasattr(_plgpu, "load"):
        return _plgpu.load(ref.at[idx], mask=mask, other=0)
    return pl.load(ref, idx, mask=mask, other=0)  # pragma: no cover - older jax


def _scatter(ref, rows, cols, value, mask):
    """``ref[rows[:, None], cols[None, :]] = value`` where ``mask``."""
    idx = (rows[:, None], cols[None, :])
    if hasattr(_plgpu, "store"):
        return _plgpu.store(ref.at[idx], value, mask=mask)
    return pl.store(ref, idx, value, mask=mask)  # pragma: no cover - older jax


# ----------------------------------------------------------------------------- tiles

SMS = 132  # streaming multiprocessors of an H100/H200: enough programs to fill them
BM, BO, BK = 128, 64, 32  # forward / input gradient: pixels x output channels, chunk
BC, BP = 32, 64  # weight gradient: input channels per tile, pixels per chunk
DW_ACC_BYTES = 72 * 2**10  # the weight gradient's float32 accumulators per program
# ... and its input tiles in shared memory, one (BP, BC) tile per tap of the group plus the
# (BP, BO) gradient tile: an A100 gives a program at most 163 KiB (a 7x7 layer with 16-wide
# tiles asked for 200 KiB when all 49 taps shared one program).
DW_SMEM_BYTES = 128 * 2**10


def _tile(n: int, most: int) -> int:
    """A power of two >= 16 (a tensor-core tile side), at most ``most``, covering ``n`` if able."""
    return min(most, max(16, 1 << (n - 1).bit_length()))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def supports(geom: win.Geometry, groups: int) -> bool:
    """Whether these kernels compute the convolution (else the portable loop does).

    Covered: ``groups == 1`` with any stride, kernel size, dilation and zero padding
    (asymmetric, none, 'same' or more), for compute capability 8.0 and up (Triton).
    The kernels index with int32: each of ``x``, ``y`` and their gradients must hold
    fewer than ``2**31`` elements (a shape check for the caller; 512 x 256 x 32 x 32 is
    134M).
    """
    return groups == 1 and all(p >= 0 for pad in geom.padding for p in pad)


# ----------------------------------------------------------------------------- the tap kernel


class _Phase(NamedTuple):
    """Output pixels ``(q_y * S + p_y, q_x * S + p_x)`` and the taps that reach them.

    Tap ``(t, di, dj)`` reads source pixel ``(q_y * a + di, q_x * a + dj)`` through
    weight matrix ``t``. The forward pass has one phase (``S = 1``, ``a = stride``); the
    input gradient of a strided convolution has ``s_h * s_w`` (``S = stride``, ``a = 1``).
    """

    start: tuple[int, int]
    taps: tuple[tuple[int, int, int], ...]


def taps_forward(x, w_taps, out_hw, phases, *, step=(1, 1), out_step=(1, 1), interpret=False):
    """``y[pixel] = sum over taps of x[source(pixel, tap)] @ w_taps[tap]``, on-chip.

    Args:
        x: ``(N, H, W, K)``, the source (the input, or the output gradient).
        w_taps: ``(taps, K, O)``, one matrix per tap.
        out_hw: ``(H_out, W_out)`` of the result.
        phases: the ``_Phase``s, covering every output pixel once.
        step: ``a`` of ``_Phase``, per axis; out_step: ``S``.

    Returns:
        ``(N, H_out, W_out, O)`` in ``x``'s dtype, accumulated in float32.
    """
    n, hs, ws, k = x.shape
    taps, _, o = w_taps.shape
    ho, wo = out_hw
    (a_h, a_w), (s_h, s_w) = step, out_step
    hq, wq = _cdiv(ho, s_h), _cdiv(wo, s_w)  # the largest phase
    m = n * hq * wq
    bo, bk = _tile(o, BO), _tile(k, BK)
    kp, op = _cdiv(k, bk) * bk, _cdiv(o, bo) * bo
    # Smaller pixel tiles where the large ones would leave SMs idle (deep, small layers).
    tiles = lambda bm: _cdiv(m, bm) * (op // bo) * len(phases)  # noqa: E731
    bm = next((bm for bm in (BM, BM // 2) if tiles(bm) >= 2 * SMS), BM // 4)
    # Zero rows and columns make every weight tile whole: no mask on the weight loads.
    w_pad = jnp.pad(w_taps.astype(x.dtype), ((0, 0), (0, kp - k), (0, op - o)))

    def kernel(x_ref, w_ref, y_ref):
        pix = pl.program_id(1) * bm + jnp.arange(bm)
        b, q = pix // (hq * wq), pix % (hq * wq)
        qy, qx = q // wq, q % wq
        cols = pl.program_id(0) * bo + jnp.arange(bo)

        def phase(ph: _Phase):
            oy, ox = qy * s_h + ph.start[0], qx * s_w + ph.start[1]
            live = (pix < m) & (oy < ho) & (ox < wo)
            sources = []  # per tap: the source row of every output pixel, and where it is real
            for _, di, dj in ph.taps:
                r, c = qy * a_h + di, qx * a_w + dj
                inside = live & (r >= 0) & (r < hs) & (c >= 0) & (c < ws)
                sources.append((jnp.where(inside, (b * hs + r) * ws + c, 0), inside))

            def chunk(j, acc):  # channels [j * bk, (j + 1) * bk) of every tap
                chans = j * bk + jnp.arange(bk)
                for (t, _, _), (src, inside) in zip(ph.taps, sources, strict=True):
                    tile = _gather(x_ref, src, chans, inside[:, None] & (chans < k)[None, :])
                    w_tile = w_ref[t, pl.ds(j * bk, bk), :]
                    acc += jnp.dot(tile, w_tile, preferred_element_type=jnp.float32)
                return acc

            acc = lax.fori_loop(0, kp // bk, chunk, jnp.zeros((bm, bo), jnp.float32))
            # Dead lanes (past the last pixel or the phase) aim at the spare row: interpret
            # mode stores them too (their old value), which must not race a live lane.
            dst = jnp.where(live, (b * ho + oy) * wo + ox, n * ho * wo)
            _scatter(y_ref, dst, cols, acc.astype(y_ref.dtype), live[:, None] & (cols < o)[None, :])

        if len(phases) == 1:
            phase(phases[0])
        for p, ph in enumerate(phases if len(phases) > 1 else ()):
            pl.when(pl.program_id(2) == p)(partial(phase, ph))

    grid = (op // bo, _cdiv(m, bm), len(phases))
    runs = sum(len(ph.taps) for ph in phases) * (kp // bk)  # tap x chunk products per tile
    cost = pl.CostEstimate(
        flops=2 * bm * bk * bo * runs * grid[0] * grid[1],
        transcendentals=0,
        bytes_accessed=x.dtype.itemsize * (x.size + w_pad.size + n * ho * wo * o),
    )
    y = pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=[
            pl.BlockSpec((n * hs * ws, k), lambda j, i, p: (0, 0)),  # gathered from, whole
            pl.BlockSpec((taps, kp, bo), lambda j, i, p: (0, 0, j)),
        ],
        # Scattered into, whole, with one spare row (cut off below; in NCHW, XLA fuses
        # the cut into the layout transpose that follows).
        out_specs=pl.BlockSpec((n * ho * wo + 1, o), lambda j, i, p: (0, 0)),
        out_shape=jax.ShapeDtypeStruct((n * ho * wo + 1, o), x.dtype),
        cost_estimate=cost,
        # One stage: prefetching the next chunk would hold every tap's tiles twice in
        # shared memory, 184 KB for a 64 -> 24 input gradient, more than an A100 has.
        compiler_params=_params(num_warps=4, num_stages=1),
        interpret=interpret,
    )(x.reshape(n * hs * ws, k), w_pad)
    return y[: n * ho * wo].reshape(n, ho, wo, o)


def taps_weight_grad(x, g, geom: win.Geometry, *, interpret=False):
    """``dw[t] = sum over pixels of window(x, t).T @ g`` for every tap ``t``.

    Args:
        x: ``(N, H, W, C_in)``, the forward input.
        g: ``(N, H_out, W_out, C_out)``, the output gradient.

    Returns:
        ``(taps, C_in, C_out)`` in float32.
    """
    n, h, w, c = x.shape
    ho, wo, o = g.shape[1:]
    (kh, kw), (sh, sw), (dh, dw) = geom.kernel, geom.stride, geom.dilation
    top, left = geom.padding[0][0], geom.padding[1][0]
    taps, m = kh * kw, n * ho * wo
    bc, bo = _tile(c, BC), _tile(o, BO)
    ct, ot = _cdiv(c, bc), _cdiv(o, bo)
    smem_taps = (DW_SMEM_BYTES - 4 * BP * bo) // (4 * BP * bc)
    group = max(1, min(taps, DW_ACC_BYTES // (4 * bc * bo), smem_taps))  # taps per program
    tg = _cdiv(taps, group)
    chunks = _cdiv(m, BP)
    # One wave: about SMS programs (each fills an SM's registers with its accumulators),
    # so that the float32 partial sums stay a small fraction of the traffic.
    per_split = _cdiv(chunks, max(1, _cdiv(SMS, ot * ct * tg)))
    splits = _cdiv(chunks, per_split)
    nt = (((0,), (0,)), ((), ()))  # contract the pixel axis of both: window.T @ g

    def kernel(x_ref, g_ref, dw_ref):
        ochan = pl.program_id(0) * bo + jnp.arange(bo)
        ichan = pl.program_id(1) * bc + jnp.arange(bc)
        first_tap = pl.program_id(2) * group
        first_chunk = pl.program_id(3) * per_split  # read here: interpret mode has no
        # program ids inside a loop body

        def chunk(j, accs):
            pix = (first_chunk + j) * BP + jnp.arange(BP)
            live = pix < m
            b, q = pix // (ho * wo), pix % (ho * wo)
            oy, ox = q // wo, q % wo
            gt = _gather(g_ref, jnp.where(live, pix, 0), ochan, live[:, None] & (ochan < o))
            new = []
            for u, acc in enumerate(accs):
                t = first_tap + u  # the tap, from the program id: (i, j) = divmod(t, kw)
                r, s = oy * sh + (t // kw) * dh - top, ox * sw + (t % kw) * dw - left
                inside = live & (t < taps) & (r >= 0) & (r < h) & (s >= 0) & (s < w)
                src = jnp.where(inside, (b * h + r) * w + s, 0)
                xt = _gather(x_ref, src, ichan, inside[:, None] & (ichan < c)[None, :])
                new.append(acc + lax.dot_general(xt, gt, nt, preferred_element_type=jnp.float32))
            return tuple(new)

        zeros = tuple(jnp.zeros((bc, bo), jnp.float32) for _ in range(group))
        last = jnp.minimum(per_split, chunks - first_chunk)
        accs = lax.fori_loop(0, last, chunk, zeros)
        for u, acc in enumerate(accs):
            dw_ref[0, u] = acc

    grid = (ot, ct, tg, splits)
    cost = pl.CostEstimate(
        flops=2 * BP * bc * bo * group * per_split * math.prod(grid),
        transcendentals=0,
        bytes_accessed=x.dtype.itemsize * (x.size + g.size)
        + 4 * splits * tg * group * ct * bc * ot * bo,
    )
    parts = pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=[
            pl.BlockSpec((n * h * w, c), lambda j, i, u, s: (0, 0)),
            pl.BlockSpec((m, o), lambda j, i, u, s: (0, 0)),
        ],
        out_specs=pl.BlockSpec((1, group, bc, bo), lambda j, i, u, s: (s, u, i, j)),
        out_shape=jax.ShapeDtypeStruct((splits, tg * group, ct * bc, ot * bo), jnp.float32),
        cost_estimate=cost,
        # Two stages: the next pixel chunk's tiles (90 KB at most) load during the products.
        compiler_params=_params(num_warps=8, num_stages=2),
        interpret=interpret,
    )(x.reshape(n * h * w, c), g.reshape(m, o).astype(x.dtype))
    return jnp.sum(parts, axis=0)[:taps, :c, :o]


# ----------------------------------------------------------------------------- the passes


def _forward_phases(geom: win.Geometry) -> tuple[_Phase]:
    """One phase: output pixel ``(oy, ox)``, tap ``(i, j)`` reads ``(oy*s + i*d - top, ...)``."""
    (kh, kw), (dh, dw) = geom.kernel, geom.dilation
    top, left = geom.padding[0][0], geom.padding[1][0]
    taps = tuple((i * kw + j, i * dh - top, j * dw - left) for i in range(kh) for j in range(kw))
    return (_Phase((0, 0), taps),)


def _input_grad_phases(geom: win.Geometry) -> tuple[_Phase, ...]:
    """Input pixel ``iy = q * s + p`` got ``g[(iy + top - i*d) / s]`` from tap ``i`` when that
    division is exact: per phase ``p``, the taps with ``(p + top - i*d) % s == 0``, reading
    output row ``q + (p + top - i*d) // s``."""
    (kh, kw), (sh, sw), (dh, dw) = geom.kernel, geom.stride, geom.dilation
    top, left = geom.padding[0][0], geom.padding[1][0]
    phases = []
    for py in range(sh):
        for px in range(sw):
            taps = tuple(
                (i * kw + j, (py + top - i * dh) // sh, (px + left - j * dw) // sw)
                for i in range(kh)
                for j in range(kw)
                if (py + top - i * dh) % sh == 0 and (px + left - j * dw) % sw == 0
            )
            phases.append(_Phase((py, px), taps))
    return tuple(phases)


def conv2d(x, weight, geom: win.Geometry, *, interpret: bool = False):
    """Ungrouped convolution, in and out in ``geom.layout``, through the GPU kernels
    (``supports``). The kernels run channels-last: NCHW arrays are transposed in and out,
    NHWC ones go in as they are.

    Args:
        x: ``(N, C_in, H, W)``, or ``(N, H, W, C_in)`` where ``geom.layout`` is NHWC.
        weight: ``(C_out, C_in, kh, kw)``.
        geom: the window geometry (``geom.in_hw == (H, W)``).
        interpret: run the kernels in Pallas' interpret mode (any backend, slowly).

    Returns:
        ``(N, C_out, H_out, W_out)`` (NHWC: ``(N, H_out, W_out, C_out)``) in ``x``'s
        dtype; differentiable in both modes
        (``jspatial._linear.defbilinear``: the backward pass runs the input-gradient and
        weight-gradient kernels).
    """
    return _conv2d(x, weight, geom, interpret)


@partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv2d(x, weight, geom, interpret):
    return _fwd(x, weight, geom, interpret)[0]


def _fwd(x, weight, geom, interpret):
    o = weight.shape[0]
    if x.shape[0] == 0:
        return jnp.zeros(win.image_shape(0, o, geom.out_hw, geom.layout), x.dtype), (x, weight)
    w_taps = jnp.transpose(weight, (2, 3, 1, 0)).reshape(geom.taps, -1, o)  # (taps, C, O)
    y = taps_forward(
        win.to_nhwc(x, geom.layout), w_taps, geom.out_hw, _forward_phases(geom),
        step=geom.stride, interpret=interpret,
    )  # fmt: skip
    return win.from_nhwc(y, geom.layout), (x, weight)


def _bwd(geom, interpret, residuals, g):
    x, weight = residuals
    o, c, kh, kw = weight.shape
    if x.shape[0] == 0:
        return jnp.zeros_like(x), jnp.zeros_like(weight)
    xt, gt = win.to_nhwc(x, geom.layout), win.to_nhwc(g.astype(x.dtype), geom.layout)
    w_t = jnp.transpose(weight, (2, 3, 0, 1)).reshape(geom.taps, o, c)  # tap t's w[t].T
    dx = taps_forward(
        gt, w_t, geom.in_hw, _input_grad_phases(geom), out_step=geom.stride, interpret=interpret
    )
    dw = taps_weight_grad(xt, gt, geom, interpret=interpret)  # (taps, C, O)
    dw = jnp.transpose(dw.reshape(kh, kw, c, o), (3, 2, 0, 1))
    return win.from_nhwc(dx, geom.layout), dw.astype(weight.dtype)


defbilinear(_conv2d, _bwd)  # forward mode: conv2d(dx, w) + conv2d(x, dw); reverse: _bwd
