"""Window geometry shared by convolution and pooling: where each kernel tap reads.

For output cell ``(oy, ox)`` and kernel tap ``(i, j)`` a sliding-window op reads
the padded input at row ``oy * stride + i * dilation``. Writing that row as
``stride * q + p`` with ``p = (i * dilation) % stride`` and
``q = oy + (i * dilation) // stride`` turns the strided read into a *contiguous*
block of the "phase" ``p``. So the padded input is reshaped once to
``(N, Hq, stride_h, Wq, stride_w, C)`` and every tap becomes one
``lax.dynamic_slice`` of shape ``(N, H_out, 1, W_out, 1, C)``: no strided gathers,
and the same slice, run backwards, is a ``dynamic_update_slice`` that scatters a
gradient into place. Stride 1 is simply the case ``stride_h = stride_w = 1``.

Everything here works on channels-last arrays (``NHWC``) so that a window
flattened to ``(N * H_out * W_out, C)`` is a matrix whose rows are pixels. An op
called with ``data_format='NCHW'`` (torch's layout, the default) transposes its
input in and its result out (``to_nhwc``, ``from_nhwc``); with ``'NHWC'`` the loops
run on the caller's arrays as they are.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax.numpy as jnp
from jax import lax

from jspatial import _tuning
from jspatial._args import Padding2d, Pair


class Geometry(NamedTuple):
    """Static description of one sliding-window op on an ``(H, W)`` input.

    ``layout`` is the caller's ``data_format``: where the channel axis of the op's
    4-D arrays is (``'NCHW'`` or ``'NHWC'``); the loops themselves run channels-last.
    """

    in_hw: Pair
    out_hw: Pair
    kernel: Pair
    stride: Pair
    dilation: Pair
    padding: Padding2d
    layout: str = "NCHW"

    @property
    def taps(self) -> int:
        return self.kernel[0] * self.kernel[1]

    @property
    def taps_overlap(self) -> bool:
        """Whether two taps can read the same input cell (windows overlap, or taps coincide)."""
        return any((self.kernel[a] - 1) * self.dilation[a] + 1 > self.stride[a] for a in range(2))

    @property
    def reads_outside(self) -> bool:
        """Whether some window reads a cell outside the input (padding, or ceil_mode's extra)."""
        return any(
            self.padding[a][0] > 0 or self._extent(a) > self.padding[a][0] + self.in_hw[a]
            for a in range(2)
        )

    def _extent(self, axis: int) -> int:
        # Rows of the padded input that some window actually reads.
        return (
            (self.out_hw[axis] - 1) * self.stride[axis]
            + (self.kernel[axis] - 1) * self.dilation[axis]
            + 1
        )

    def _phased(self, axis: int) -> int:
        return -(-self._extent(axis) // self.stride[axis])

    def _pad_config(self, axis: int) -> tuple[int, int, int]:
        # lax.pad with a negative amount crops: rows no window reads are dropped and
        # extra rows (ceil_mode, rounding up to a multiple of the stride) are added.
        lo = self.padding[axis][0]
        hi = self._phased(axis) * self.stride[axis] - lo - self.in_hw[axis]
        return (lo, hi, 0)

    def tap_start(self, t):
        """``dynamic_slice`` start indices of tap ``t`` (row-major over the kernel)."""
        i, j = t // self.kernel[1], t % self.kernel[1]
        (sh, sw), (dh, dw) = self.stride, self.dilation
        zero = jnp.zeros_like(t)
        return (zero, (i * dh) // sh, (i * dh) % sh, (j * dw) // sw, (j * dw) % sw, zero)


def to_phases(x, geom: Geometry, fill):
    """Pad ``(N, H, W, C)`` with ``fill`` and split it into stride phases."""
    n, _, _, c = x.shape
    config = [(0, 0, 0), geom._pad_config(0), geom._pad_config(1), (0, 0, 0)]
    xp = lax.pad(x, jnp.asarray(fill, x.dtype), config)
    return xp.reshape(n, geom._phased(0), geom.stride[0], geom._phased(1), geom.stride[1], c)


def from_phases(xph, geom: Geometry):
    """Inverse of ``to_phases`` for gradients: merge phases and strip the padding."""
    n, hq, sh, wq, sw, c = xph.shape
    config = [(0, 0, 0)] + [(-lo, -hi, 0) for lo, hi, _ in map(geom._pad_config, (0, 1))]
    return lax.pad(
        xph.reshape(n, hq * sh, wq * sw, c), jnp.zeros((), xph.dtype), config + [(0, 0, 0)]
    )


def window(xph, t, geom: Geometry):
    """The ``(N, H_out, W_out, C)`` block that kernel tap ``t`` multiplies."""
    n, _, _, _, _, c = xph.shape
    ho, wo = geom.out_hw
    block = lax.dynamic_slice(xph, geom.tap_start(t), (n, ho, 1, wo, 1, c))
    return block.reshape(n, ho, wo, c)


def add_to_window(buf, t, value, geom: Geometry):
    """``buf[window t] += value``: the transpose of ``window``, used by every backward pass.

    ``buf`` must start as zeros. When windows do not overlap (a 2x2 pool with stride 2),
    every cell is written by exactly one tap, so the add is a plain write.
    """
    n, ho, wo, c = value.shape
    start = geom.tap_start(t)
    value = value.reshape(n, ho, 1, wo, 1, c).astype(buf.dtype)
    if not geom.taps_overlap:
        return lax.dynamic_update_slice(buf, value, start)
    block = lax.dynamic_slice(buf, start, value.shape)
    return lax.dynamic_update_slice(buf, block + value, start)


def adaptive_windows(size: int, out: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(starts, lengths)`` of the ``out`` windows of adaptive pooling over ``size`` cells.

    PyTorch's rule: window ``i`` covers ``[floor(i * size / out), ceil((i + 1) * size / out))``,
    so every window holds at least one cell and at most ``ceil(size / out) + 1``; neighbours
    overlap by a cell where ``size / out`` is not an integer, and repeat when ``out > size``.

    >>> adaptive_windows(5, 3)
    ((0, 1, 3), (2, 3, 2))
    """
    starts = tuple(i * size // out for i in range(out))
    ends = tuple(-(-(i + 1) * size // out) for i in range(out))
    return starts, tuple(e - s for s, e in zip(starts, ends))


def accum_dtype(dtype):
    """Accumulate in float32 (float64 stays float64), whatever the floating storage dtype.

    Integers (``conv2d`` takes them, as PyTorch's CPU kernels do) accumulate in their
    own dtype, wrapping around as PyTorch's do: modulo ``2**bits`` the sum is exact in
    any order, so the loops give PyTorch's integers bit for bit.
    """
    if jnp.issubdtype(dtype, jnp.integer):
        return jnp.dtype(dtype)
    return jnp.promote_types(dtype, jnp.float32)


def nchw_to_nhwc(x):
    return jnp.transpose(x, (0, 2, 3, 1))


def nhwc_to_nchw(x):
    return jnp.transpose(x, (0, 3, 1, 2))


def to_nhwc(x, layout: str):
    """A 4-D array in ``layout`` as the channels-last array the loops run on."""
    return nchw_to_nhwc(x) if layout == "NCHW" else x


def from_nhwc(x, layout: str):
    """The loops' channels-last result in the caller's ``layout``."""
    return nhwc_to_nchw(x) if layout == "NCHW" else x


def image_shape(n: int, c: int, hw: Pair, layout: str) -> tuple[int, int, int, int]:
    """The shape of ``n`` images of ``c`` channels and size ``hw`` in ``layout``."""
    return (n, c, *hw) if layout == "NCHW" else (n, *hw, c)


def nchw_to_hwcn(x):
    """The order a TPU stores a batch of activations in: a ``(C, N)`` tile per pixel."""
    return jnp.transpose(x, (2, 3, 1, 0))


def hwcn_to_nchw(x):
    return jnp.transpose(x, (3, 2, 0, 1))


def to_hwcn(x, layout: str):
    """A 4-D array in ``layout`` in a TPU's activation order (``nchw_to_hwcn``)."""
    return nchw_to_hwcn(x) if layout == "NCHW" else jnp.transpose(x, (1, 2, 3, 0))


def from_hwcn(x, layout: str):
    """``(H, W, C, N)`` back in ``layout``."""
    return hwcn_to_nchw(x) if layout == "NCHW" else jnp.transpose(x, (3, 0, 1, 2))


# Batch chunks are taken as strided rows (chunk i = rows i, i + k, i + 2k, ...), not as
# contiguous blocks: when the batch is sharded over devices, every chunk then stays
# spread evenly over all of them, and no device has to fetch another's rows.


def batch_chunk(x, i, chunks: int):
    """Rows ``i::chunks`` of ``x`` along the batch axis."""
    n = x.shape[0]
    return lax.dynamic_index_in_dim(
        x.reshape(n // chunks, chunks, *x.shape[1:]), i, axis=1, keepdims=False
    )


def overwritten(shape, dtype, after):
    """What a chunk loop's carry of ``shape`` starts as when the loop writes every row of
    it (each chunk its own rows, ``set_batch_chunk``): never read, so any value will do.

    Zeros would do, but XLA merges the zero-filled buffers of one shape into one, filled
    before a train step's first layer and copied into each loop, alive up to the last
    layer's backward pass. Filled instead with the first element of ``after``, the loop's
    own input, the buffer is made only when the loop is reached.
    """
    if after.size == 0:
        return jnp.zeros(shape, dtype)
    return jnp.broadcast_to(after.reshape(-1)[0].astype(dtype), shape)


def set_batch_chunk(x, i, value, chunks: int):
    """``x`` with rows ``i::chunks`` replaced by ``value``."""
    n = x.shape[0]
    y = x.reshape(n // chunks, chunks, *x.shape[1:])
    y = lax.dynamic_update_index_in_dim(y, value.astype(x.dtype), i, axis=1)
    return y.reshape(x.shape)


def batch_chunks(n: int, rows_per_image: int, min_rows=None, max_chunks=None) -> int:
    """How many pieces to split a batch of ``n`` into: the most (up to ``max_chunks``,
    default ``_tuning.CONV_MAX_CHUNKS``) that divide ``n`` and still give every piece
    ``min_rows`` (default ``_tuning.CONV_MIN_CHUNK_ROWS``) matrix rows."""
    if n == 0:  # an empty batch: one (empty) chunk
        return 1
    min_rows = _tuning.CONV_MIN_CHUNK_ROWS if min_rows is None else min_rows
    max_chunks = _tuning.CONV_MAX_CHUNKS if max_chunks is None else max_chunks
    return next(
        k
        for k in range(min(max_chunks, n), 0, -1)
        if k == 1 or n % k == 0 and n // k * rows_per_image >= min_rows
    )


def tap_loop(taps: int, body, init, unroll=1, gpu_unroll=None):
    """``lax.fori_loop(0, taps, body, init, unroll=unroll)``, unrolled otherwise for a GPU.

    Every tap loop of the ops runs through here, so that lowered for a GPU it takes
    ``gpu_unroll`` (default ``_tuning.GPU_UNROLL``) instead of the CPU's ``unroll``.
    """
    gpu_unroll = _tuning.GPU_UNROLL if gpu_unroll is None else gpu_unroll
    cpu = lambda init: lax.fori_loop(0, taps, body, init, unroll=unroll)  # noqa: E731
    gpu = lambda init: lax.fori_loop(0, taps, body, init, unroll=gpu_unroll)  # noqa: E731
    per_iteration = lambda u: taps if u is True else min(u, taps)  # noqa: E731 (True == 1)
    if per_iteration(unroll) in (taps, per_iteration(gpu_unroll)):
        return cpu(init)
    return for_gpu(cpu, gpu, init)


def for_gpu(cpu, gpu, *operands):
    """``cpu(*operands)``, or ``gpu(*operands)`` in a program lowered for a GPU.

    Both are staged only where JAX's CUDA plugin is installed (``_tuning.STAGE_GPU``);
    elsewhere this is ``cpu(*operands)`` and nothing else is traced.
    """
    if not _tuning.STAGE_GPU:
        return cpu(*operands)
    return lax.platform_dependent(*operands, default=cpu, cuda=gpu)


# The loop drivers below (chunk_loop_fn, loop_over_taps) return the function to call
# instead of calling it, so that on a CPU-only installation the op's own code calls
# ``lax.fori_loop`` (through a ``functools.partial``, which a debugger steps over) and the
# stack from an op to its tap body holds only the op's functions.


def chunk_loop_fn(chunks: int, loop):
    """``carry -> lax.fori_loop(0, chunks, loop(chunks=chunks), carry)``, as a function.

    ``loop(i, carry, *, chunks)`` runs batch chunk ``i`` of ``chunks`` (rows ``i::chunks``,
    ``batch_chunk``) and writes its results into ``carry`` (``set_batch_chunk``). Lowered
    for a GPU the whole batch is one chunk (``_tuning.GPU_MAX_CHUNKS``).
    """
    cpu = partial(lax.fori_loop, 0, chunks, partial(loop, chunks=chunks))
    if chunks == 1 or not _tuning.STAGE_GPU:
        return cpu
    return partial(for_gpu, cpu, partial(loop, 0, chunks=1))


def conv_chunks(n: int, hw: Pair) -> int:
    """Batch chunks of a convolution loop whose largest buffers have ``hw`` pixels per image
    (its output, or for ``conv_transpose2d`` its output too, the size of ``geom.in_hw``)."""
    return batch_chunks(n, hw[0] * hw[1], _tuning.CONV_MIN_CHUNK_ROWS, _tuning.CONV_MAX_CHUNKS)


def weight_taps(weight, groups: int):
    """OIHW -> ``(taps, groups, C_in/groups, C_out/groups)``: one matrix per tap and group."""
    c_out, cg, kh, kw = weight.shape
    w = weight.reshape(groups, c_out // groups, cg, kh, kw)
    return jnp.transpose(w, (3, 4, 0, 2, 1)).reshape(kh * kw, groups, cg, c_out // groups)


def weight_from_taps(w_taps, kernel: Pair):
    """Inverse of ``weight_taps``: ``(taps, groups, C_in/groups, C_out/groups)`` -> OIHW."""
    t, groups, cg, og = w_taps.shape
    w = w_taps.reshape(kernel[0], kernel[1], groups, cg, og)
    return jnp.transpose(w, (2, 4, 3, 0, 1)).reshape(groups * og, cg, *kernel)


def phased_shape(n: int, c: int, geom: Geometry) -> tuple[int, ...]:
    """The shape of ``to_phases`` of an ``(n, H, W, c)`` input of ``geom``: where a
    backward pass gathers its gradient before ``from_phases``."""
    return (n, geom._phased(0), geom.stride[0], geom._phased(1), geom.stride[1], c)


def loop_over_taps(taps: int, unroll, gpu_unroll=None):
    """``tap_loop(taps, body, init, unroll, gpu_unroll)`` as a function of ``(body, init)``.

    It returns before the loop runs: where JAX's CUDA plugin is not installed it is
    ``lax.fori_loop`` itself, so the op's loop function calls its tap body directly
    (one frame in a debugger); elsewhere it is ``tap_loop``, which stages the GPU's
    unrolling beside the CPU's.
    """
    if _tuning.STAGE_GPU:
        return partial(tap_loop, taps, unroll=unroll, gpu_unroll=gpu_unroll)
    return partial(lax.fori_loop, 0, taps, unroll=unroll)


def takes_max(x, best, arg=None):
    """Where ``x`` takes over from ``best`` under PyTorch's max rule: a larger value or a
    NaN takes over (so a NaN wins its window, the last NaN if several), an equal one does
    not (a tie stays with the first maximum in window order). ``arg``, the tap that won
    so far (``-1``: none yet), lets the first cell of a window in whatever its value.
    """
    take = (x > best) | jnp.isnan(x)
    return take if arg is None else take | (arg < 0)
