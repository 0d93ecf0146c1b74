"""The tap kernels of the GPU convolution: Pallas (Triton) programs, tiles and grids.

``jspatial._accel.gpu.conv`` runs the convolution's three passes with these two kernels:
``taps_forward`` (the forward pass, and the input gradient as the same loop transposed)
and ``taps_weight_grad``.

Tiles, grid and arithmetic intensity (float32):

- forward and input gradient: ``BM = 128`` output pixels (64, then 32, where fewer than
  ``2 * SMS`` programs would result) x ``BO = 64`` output channels (fewer channels: the
  next power of two >= 16), contraction chunks of ``BK = 32`` channels (16 for 3, masked
  beyond ``C``) looped over inside the kernel, 4 warps, 1 stage; grid ``(C_out tiles,
  pixel tiles, phases)``, the channel tiles of one pixel tile launched side by side so
  that they share its pixels in L2. The pixel tiles run over ``(N, H_out, W_out)``
  flattened, so small images (7x7, 3x3) fill whole tiles in both layouts. Per tap and
  chunk a program loads ``BM*BK + BK*BO`` values for ``2*BM*BK*BO`` FLOPs: 21 FLOP/byte
  from cache at ``BM = 128`` (16 at 64). From HBM the pass moves ``x`` once and ``y``
  once: ``2*taps*C_in*C_out / (4*(C_in + C_out))`` FLOP/byte at stride 1, 144 for a 3x3
  64->64 layer. airbench94's forward at batch 512: 3844 programs for 24->64 @31, 900 for
  64->64 @15, 4 x 196 for 256->256 @7 and 4 x 72 (``BM = 64``) for 256->256 @3; at batch
  128 that last one is 4 x 36 (``BM = 32``), for an H100's 132 SMs.
- weight gradient (``_dw_plan``): ``BC = 32`` input channels (16 for 3) x ``BO = 64``
  output channels, up to ``9`` taps per program (``taps * BC * BO`` float32
  accumulators, 72 KiB over 8 warps), pixel chunks of ``BP = 64`` (2 stages: 90 KB of
  tiles in shared memory); grid ``(C_out tiles, C_in tiles, tap groups, splits)``, aiming
  at ``SMS`` programs (one wave) with the partial sums (``splits * taps * C_in * C_out``
  floats, written and read again) at most ``DW_PARTIALS`` of the bytes of ``x`` and ``g``:
  where the pixels are too few to split that far, the taps are split into groups
  instead (3 groups of 3, or 9 of 1). Per chunk a program loads ``BP*BO`` gradient values
  and ``group*BP*BC`` input values for ``2*group*BP*BC*BO`` FLOPs: 26 FLOP/byte from
  cache for a group of 9, 19 for 3. airbench94 at batch 512: 24->64 @31 one group, 131
  splits (9.7 MB of partials next to 173 MB of ``x`` and ``g``); 64->64 @15 3 groups, 22
  splits (3.2 MB next to 59 MB); at batch 128 the core suite's 128->256 @8 and 256->256
  @8 take 9 groups of one tap and a single split: no partials, no reduction pass.

Every ``pl.pallas_call`` carries a ``pl.CostEstimate``: the FLOPs of the grid as run
(padded tiles included) and the HBM bytes of one read of every input and one write of the
output, which is what the block specs and the grid give when each input tile is fetched
once from HBM and reused from cache across taps and channel tiles.
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
    """``ref[rows, cols]`` (index arrays broadcast to one 2-D shape) where ``mask``, else 0."""
    if hasattr(_plgpu, "load"):
        return _plgpu.load(ref.at[rows, cols], mask=mask, other=0)
    return pl.load(ref, (rows, cols), mask=mask, other=0)  # pragma: no cover - older jax


def _scatter(ref, rows, cols, value, mask):
    """``ref[rows, cols] = value`` where ``mask``."""
    if hasattr(_plgpu, "store"):
        return _plgpu.store(ref.at[rows, cols], value, mask=mask)
    return pl.store(ref, (rows, cols), value, mask=mask)  # pragma: no cover - older jax


# ----------------------------------------------------------------------------- tiles

SMS = 132  # streaming multiprocessors of an H100/H200: enough programs to fill them
BM, BO, BK = 128, 64, 32  # forward / input gradient: pixels x output channels, chunk
BC, BP = 32, 64  # weight gradient: input channels per tile, pixels per chunk
DW_ACC_BYTES = 72 * 2**10  # the weight gradient's float32 accumulators per program
# ... and its input tiles in shared memory, one (BP, BC) tile per tap of the group plus the
# (BP, BO) gradient tile: an A100 gives a program at most 163 KiB (a 7x7 layer with 16-wide
# tiles asked for 200 KiB when all 49 taps shared one program).
DW_SMEM_BYTES = 128 * 2**10
DW_PARTIALS = 0.125  # the weight gradient's partial sums, at most this share of x and g


def _tile(n: int, most: int) -> int:
    """A power of two >= 16 (a tensor-core tile side), at most ``most``, covering ``n`` if able."""
    return min(most, max(16, 1 << (n - 1).bit_length()))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ----------------------------------------------------------------------------- layouts
#
# A batch of images is flattened for the kernels to a matrix: channels last (``NHWC``)
# to ``(N * H * W, C)``, one row a pixel; channels first (``NCHW``) to ``(N * C, H * W)``,
# one row a channel of one image. A tile of pixels x channels is then a gather of either
# matrix, ``(pixels, channels)`` in NHWC and ``(channels, pixels)`` in NCHW: the memory
# order of each layout, so that a tile's loads run along contiguous addresses (128 bytes
# of channels per pixel in NHWC, a run of pixels per channel in NCHW).


def _image_tile(ref, b, pixel, inside, chans, k, hw, cl):
    """Channels ``chans`` of pixels ``pixel`` (flat within image ``b``), zeros where not
    ``inside`` or beyond ``k`` channels: ``(pixels, chans)`` if ``cl``, else transposed."""
    if cl:
        rows = b * hw + pixel
        return _gather(ref, rows[:, None], chans[None, :], inside[:, None] & (chans < k)[None, :])
    rows = b[None, :] * k + chans[:, None]
    return _gather(ref, rows, pixel[None, :], (chans < k)[:, None] & inside[None, :])


def _put_image_tile(ref, b, pixel, live, chans, k, hw, value, cl):
    """``_image_tile``'s transpose: ``value`` stored where ``live`` and ``chans < k``.

    Every lane left out aims past the end of the array (row ``N * H * W`` in NHWC, column
    ``H * W`` in NCHW, or the channel row past the last): the GPU skips it, and interpret
    mode, which stores every lane of a masked store (the old value where masked), drops
    out-of-bounds updates, so no dead lane can race a live one.
    """
    ok = chans < k
    if cl:
        rows = jnp.where(live, b * hw + pixel, ref.shape[0])
        _scatter(ref, rows[:, None], chans[None, :], value, live[:, None] & ok[None, :])
    else:
        rows = jnp.where(ok[:, None], b[None, :] * k + chans[:, None], ref.shape[0])
        cols = jnp.where(live, pixel, hw)
        _scatter(ref, rows, cols[None, :], value, ok[:, None] & live[None, :])


# ----------------------------------------------------------------------------- the tap kernel


class _Phase(NamedTuple):
    """Output pixels ``(q_y * S + p_y, q_x * S + p_x)`` and the taps that reach them.

    Tap ``(t, di, dj)`` reads source pixel ``(q_y * a + di, q_x * a + dj)`` through
    weight matrix ``t``. The forward pass has one phase (``S = 1``, ``a = stride``); the
    input gradient of a strided convolution has ``s_h * s_w`` (``S = stride``, ``a = 1``).
    """

    start: tuple[int, int]
    taps: tuple[tuple[int, int, int], ...]


def taps_forward(
    x,
    weight,
    out_hw,
    phases,
    *,
    step=(1, 1),
    out_step=(1, 1),
    transposed=False,
    layout="NHWC",
    interpret=False,
):
    """``y[pixel] = sum over taps t of x[source(pixel, t)] @ W_t``, on-chip.

    Args:
        x: ``(N, H, W, K)``, the source (the input, or the output gradient); in
            ``layout='NCHW'``, ``(N, K, H, W)``.
        weight: ``(C_out, C_in, kh, kw)``, read as it is: ``W_t = weight[:, :, t].T``,
            ``(K, O) = (C_in, C_out)``; with ``transposed``, ``W_t = weight[:, :, t]``,
            ``(K, O) = (C_out, C_in)`` (the input gradient).
        out_hw: ``(H_out, W_out)`` of the result.
        phases: the ``_Phase``s, covering every output pixel once.
        step: ``a`` of ``_Phase``, per axis; out_step: ``S``.
        layout: ``'NHWC'`` or ``'NCHW'``, of ``x`` and of the result.

    Returns:
        ``(N, H_out, W_out, O)`` (NCHW: ``(N, O, H_out, W_out)``) in ``x``'s dtype,
        accumulated in float32.
    """
    cl = layout == "NHWC"
    n, hs, ws, k = x.shape if cl else (x.shape[0], *x.shape[2:], x.shape[1])
    taps = weight.shape[2] * weight.shape[3]
    o = weight.shape[1 if transposed else 0]
    ho, wo = out_hw
    (a_h, a_w), (s_h, s_w) = step, out_step
    hq, wq = _cdiv(ho, s_h), _cdiv(wo, s_w)  # the largest phase
    m = n * hq * wq
    bo, bk = _tile(o, BO), _tile(k, BK)
    kp, op = _cdiv(k, bk) * bk, _cdiv(o, bo) * bo
    # Smaller pixel tiles where the large ones would leave SMs idle (deep, small layers).
    tiles = lambda bm: _cdiv(m, bm) * (op // bo) * len(phases)  # noqa: E731
    bm = next((bm for bm in (BM, BM // 2) if tiles(bm) >= 2 * SMS), BM // 4)
    # The weight as the matrix (C_out, C_in * taps) it is in memory: W_t[kk, oo] sits at
    # row oo, column kk * taps + t (transposed: row kk, column oo * taps + t). Each tap's
    # tile is a masked gather from it (the taps of one chunk share its cache lines), so
    # no relayout of the weight precedes the kernel.
    w_mat = weight.astype(x.dtype).reshape(weight.shape[0], -1)

    def kernel(x_ref, w_ref, y_ref):
        pix = pl.program_id(1) * bm + jnp.arange(bm)
        b, q = pix // (hq * wq), pix % (hq * wq)
        qy, qx = q // wq, q % wq
        cols = pl.program_id(0) * bo + jnp.arange(bo)

        def w_index(chans):  # W_t's tile of chunk chans, at t = 0: (BK, BO) NHWC, (BO, BK) NCHW
            kk, oo = (chans[:, None], cols[None, :]) if cl else (chans[None, :], cols[:, None])
            ok = (kk < k) & (oo < o)
            return ((kk, oo * taps) if transposed else (oo, kk * taps)), ok

        def phase(ph: _Phase):
            oy, ox = qy * s_h + ph.start[0], qx * s_w + ph.start[1]
            live = (pix < m) & (oy < ho) & (ox < wo)
            sources = []  # per tap: the source pixel of every output pixel, and where it is real
            for _, di, dj in ph.taps:
                r, c = qy * a_h + di, qx * a_w + dj
                inside = live & (r >= 0) & (r < hs) & (c >= 0) & (c < ws)
                sources.append((jnp.where(inside, r * ws + c, 0), inside))

            def chunk(j, acc):  # channels [j * bk, (j + 1) * bk) of every tap
                chans = j * bk + jnp.arange(bk)
                (w_rows, w_cols), w_ok = w_index(chans)
                for (t, _, _), (src, inside) in zip(ph.taps, sources, strict=True):
                    tile = _image_tile(x_ref, b, src, inside, chans, k, hs * ws, cl)
                    w_tile = _gather(w_ref, w_rows, w_cols + t, w_ok)
                    if cl:  # (BM, BK) @ (BK, BO)
                        acc += jnp.dot(tile, w_tile, preferred_element_type=jnp.float32)
                    else:  # (BO, BK) @ (BK, BM)
                        acc += jnp.dot(w_tile, tile, preferred_element_type=jnp.float32)
                return acc

            zeros = jnp.zeros((bm, bo) if cl else (bo, bm), jnp.float32)
            acc = lax.fori_loop(0, kp // bk, chunk, zeros)
            dst = jnp.where(live, oy * wo + ox, 0)
            _put_image_tile(y_ref, b, dst, live, cols, o, ho * wo, acc.astype(y_ref.dtype), cl)

        if len(phases) == 1:
            phase(phases[0])
        for p, ph in enumerate(phases if len(phases) > 1 else ()):
            pl.when(pl.program_id(2) == p)(partial(phase, ph))

    grid = (op // bo, _cdiv(m, bm), len(phases))
    runs = sum(len(ph.taps) for ph in phases) * (kp // bk)  # tap x chunk products per tile
    cost = pl.CostEstimate(
        flops=2 * bm * bk * bo * runs * grid[0] * grid[1],
        transcendentals=0,
        bytes_accessed=x.dtype.itemsize * (x.size + w_mat.size + n * ho * wo * o),
    )
    # Gathered from and scattered into whole, as flat matrices (see "layouts" above).
    x_mat = x.reshape(n * hs * ws, k) if cl else x.reshape(n * k, hs * ws)
    y_mat = (n * ho * wo, o) if cl else (n * o, ho * wo)
    y = pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=[
            pl.BlockSpec(x_mat.shape, lambda j, i, p: (0, 0)),
            pl.BlockSpec(w_mat.shape, lambda j, i, p: (0, 0)),
        ],
        out_specs=pl.BlockSpec(y_mat, lambda j, i, p: (0, 0)),
        out_shape=jax.ShapeDtypeStruct(y_mat, x.dtype),
        cost_estimate=cost,
        # One stage: prefetching the next chunk would hold every tap's tiles twice in
        # shared memory, 184 KB for a 64 -> 24 input gradient, more than an A100 has.
        compiler_params=_params(num_warps=4, num_stages=1),
        interpret=interpret,
    )(x_mat, w_mat)
    return y.reshape((n, ho, wo, o) if cl else (n, o, ho, wo))


def _dw_plan(taps: int, c: int, o: int, m: int, io_bytes: int) -> tuple[int, ...]:
    """The weight gradient's tiles and grid: ``(bc, bo, group, tap groups, splits, chunks
    per split)``.

    ``splits`` programs share the pixels of one ``(C_in, C_out, taps)`` tile, each writing
    float32 partial sums that a separate pass adds: at most ``DW_PARTIALS`` times the bytes
    of ``x`` and ``g``. Within that budget the grid aims at ``SMS`` programs (one wave),
    first with all the taps a program can hold in one group, then with fewer taps per
    group (more groups: each tile of ``g`` is read from cache once per group).
    """
    bc, bo = _tile(c, BC), _tile(o, BO)
    ct, ot = _cdiv(c, bc), _cdiv(o, bo)
    smem_taps = (DW_SMEM_BYTES - 4 * BP * bo) // (4 * BP * bc)
    most = max(1, min(taps, DW_ACC_BYTES // (4 * bc * bo), smem_taps))  # taps per program
    chunks = _cdiv(m, BP)
    cap = max(1, int(DW_PARTIALS * io_bytes) // (4 * taps * ct * bc * ot * bo))
    # Tap groups of equal size (a program whose group runs past the last tap multiplies
    # zeros): group sizes that waste under a tenth of the products, largest first.
    sizes = [g for g in range(most, 0, -1) if (_cdiv(taps, g) * g - taps) * 10 < taps]
    for group in sizes:
        tg = _cdiv(taps, group)
        want = min(chunks, _cdiv(SMS, ot * ct * tg))  # splits for one wave
        if want <= cap:
            break
    per_split = _cdiv(chunks, min(want, cap))
    splits = _cdiv(chunks, per_split)
    return bc, bo, group, tg, splits, per_split


def taps_weight_grad(x, g, geom: win.Geometry, *, layout="NHWC", interpret=False):
    """``dw[t] = sum over pixels of window(x, t).T @ g`` for every tap ``t``.

    Args:
        x: ``(N, H, W, C_in)``, the forward input (NCHW: ``(N, C_in, H, W)``).
        g: ``(N, H_out, W_out, C_out)``, the output gradient (NCHW: ``(N, C_out, H_out,
            W_out)``).
        layout: ``'NHWC'`` or ``'NCHW'``, of ``x`` and ``g``.

    Returns:
        ``(C_out, C_in, taps)`` in float32: the weight's layout, taps flattened.
    """
    cl = layout == "NHWC"
    n, h, w, c = x.shape if cl else (x.shape[0], *x.shape[2:], x.shape[1])
    ho, wo, o = g.shape[1:] if cl else (*g.shape[2:], g.shape[1])
    (kh, kw), (sh, sw), (dh, dw) = geom.kernel, geom.stride, geom.dilation
    top, left = geom.padding[0][0], geom.padding[1][0]
    taps, m = kh * kw, n * ho * wo
    io_bytes = x.dtype.itemsize * (x.size + g.size)
    bc, bo, group, tg, splits, per_split = _dw_plan(taps, c, o, m, io_bytes)
    ct, ot, chunks = _cdiv(c, bc), _cdiv(o, bo), _cdiv(m, BP)
    # g.T @ window contracts the pixel axis of both tiles: axis 0 in NHWC, axis 1 in NCHW.
    nt = (((0,), (0,)), ((), ())) if cl else (((1,), (1,)), ((), ()))
    # g.T @ window, (BO, BC) per tap: the tiles of the weight's own (C_out, C_in, taps).

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
            gt = _image_tile(g_ref, b, jnp.where(live, q, 0), live, ochan, o, ho * wo, cl)
            new = []
            for u, acc in enumerate(accs):
                t = first_tap + u  # the tap, from the program id: (i, j) = divmod(t, kw)
                r, s = oy * sh + (t // kw) * dh - top, ox * sw + (t % kw) * dw - left
                inside = live & (t < taps) & (r >= 0) & (r < h) & (s >= 0) & (s < w)
                src = jnp.where(inside, r * w + s, 0)
                xt = _image_tile(x_ref, b, src, inside, ichan, c, h * w, cl)
                new.append(acc + lax.dot_general(gt, xt, nt, preferred_element_type=jnp.float32))
            return tuple(new)

        zeros = tuple(jnp.zeros((bo, bc), jnp.float32) for _ in range(group))
        last = jnp.minimum(per_split, chunks - first_chunk)
        accs = lax.fori_loop(0, last, chunk, zeros)
        for u, acc in enumerate(accs):
            dw_ref[0, :, :, u] = acc

    grid = (ot, ct, tg, splits)
    cost = pl.CostEstimate(
        flops=2 * BP * bc * bo * group * per_split * math.prod(grid),
        transcendentals=0,
        bytes_accessed=io_bytes + 4 * splits * tg * group * ct * bc * ot * bo,
    )
    x_mat = x.reshape(n * h * w, c) if cl else x.reshape(n * c, h * w)
    g_mat = g.astype(x.dtype).reshape((m, o) if cl else (n * o, ho * wo))
    parts = pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=[
            pl.BlockSpec(x_mat.shape, lambda j, i, u, s: (0, 0)),
            pl.BlockSpec(g_mat.shape, lambda j, i, u, s: (0, 0)),
        ],
        # Taps last: summed over the splits (or not, with one), the partials are the
        # weight gradient in the weight's own layout, (C_out, C_in, kh * kw).
        out_specs=pl.BlockSpec((1, bo, bc, group), lambda j, i, u, s: (s, j, i, u)),
        out_shape=jax.ShapeDtypeStruct((splits, ot * bo, ct * bc, tg * group), jnp.float32),
        cost_estimate=cost,
        # Two stages: the next pixel chunk's tiles (90 KB at most) load during the products.
        compiler_params=_params(num_warps=8, num_stages=2),
        interpret=interpret,
    )(x_mat, g_mat)
    dw = parts[0] if splits == 1 else jnp.sum(parts, axis=0)
    return dw[:o, :c, :taps]
