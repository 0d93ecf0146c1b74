"""Every speed and memory setting of the portable loops, with where it was measured.

Nothing here changes a result, only how fast it comes and how much memory it takes
(``BN_MAX_CHUNKS`` and the chunk sizes change the order of float summation, within
rounding). The modules read these names at trace time (``_tuning.NAME``), so a test or
a benchmark can override one with ``monkeypatch.setattr`` and ``jax.clear_caches()``.

Where measured: ``make bench`` (``python -m bench.ops`` and ``python -m bench.train_step``)
on a 2-core x86 CPU (AMD EPYC or Intel Xeon, AVX2, JAX 0.10.2 CPU, float32); the tables
are in ``bench/RESULTS.md``. The values of the first three sections are CPU values; the
last section holds the GPU's, measured by compiling for GPUs ahead of time
(``make bench-gpu``). Lowered for a TPU or a recent GPU, the convolution (and on a TPU
max pooling and the batch-norm statistics) can take the on-chip versions in
``jspatial._accel`` instead (``jspatial._accel.dispatch``); their block sizes live with
their kernels.

``conv2d(..., algorithm='auto')``, per backend:

- CPU: im2col when ``C_in * kh * kw <= IM2COL_MAX_DEPTH`` (the first layer), Winograd
  F(2x2, 3x3) for an ungrouped 3x3 stride-1 layer with at least
  ``WINOGRAD_MIN_CHANNELS`` channels on both sides and an output of at least
  ``WINOGRAD_MIN_SIZE`` on both axes, the direct tap loop otherwise. Measured.
- GPU with compute capability 8.0 or more (A100, H100, ...): the Pallas Triton tap
  kernel for every layer it covers (``jspatial._accel.gpu.conv.supports``), whatever
  ``algorithm`` says; other layers, and every layer of an older GPU (a T4) or of a GPU
  whose compute capability the trace cannot see (``dispatch.gpu_target``), take the
  portable loops with the GPU settings below: im2col for ungrouped layers, the direct
  loop for grouped ones, one batch chunk, taps unrolled.
- TPU: where libtpu is installed (a TPU host, or ahead-of-time compilation for a TPU
  topology) the program holds both versions (``lax.platform_dependent``); elsewhere only
  the portable one. A convolution the Pallas tap kernel covers (ungrouped, stride 1,
  padding at most 'same', which the kernel completes before cropping;
  ``jspatial._accel.tpu.conv.same_size``) runs that kernel, whatever ``algorithm`` says: it
  reads each image from HBM once, which matters more there than the multiplies Winograd
  saves. Any other convolution takes the CPU's choice. Speed unmeasured.
"""

from __future__ import annotations

import importlib.util

# ---------------------------------------------------------------------- convolution

# Taps per iteration of the convolution loops (forward, input and weight gradient).
# Unrolling lets XLA overlap consecutive matrix products, at the price of a larger
# program. CPU: no gain measured (conv_transpose 256->128 forward, 80-88 ms with unroll
# 1 or 3, bench/RESULTS.md), so the loop stays rolled and compiles faster.
CONV_UNROLL = 1

# algorithm='auto' takes Winograd F(2x2, 3x3) for layers at least this wide on both
# sides (C_in and C_out) ...
WINOGRAD_MIN_CHANNELS = 64
# ... whose output is at least this many cells on both axes: the 2x2 output tiles then
# waste little on the edges. CPU: both set where Winograd measured faster than the
# direct loop in `bench.ops` (core suite, 3x3 layers of 64-256 channels at 8-32 cells).
WINOGRAD_MIN_SIZE = 6

# algorithm='auto' takes im2col (every tap copied into one matrix, one product) when
# C_in * kh * kw is at most this: a layer with few input channels (the first, C_in = 3)
# makes thin per-tap products, and its im2col matrix stays small. CPU: conv 3->64 @32,
# batch 128, forward + backward 0.57x XLA's time and 0.62x its memory (bench/RESULTS.md).
IM2COL_MAX_DEPTH = 32

# The direct and im2col loops run over batch chunks of at most CONV_MAX_CHUNKS pieces,
# each with at least CONV_MIN_CHUNK_ROWS output pixels in its matrix products. More
# chunks: less memory (windows, channels-last copies and gradient buffers exist for one
# chunk at a time); fewer rows: smaller, less efficient products. CPU: backward peak
# memory 0.62-0.63x XLA's (the im2col and direct rows), in 0.85-1.03x the time of the
# unchunked loops they replaced (bench/RESULTS.md, "Backward peak memory").
CONV_MAX_CHUNKS = 8
CONV_MIN_CHUNK_ROWS = 4096

# Winograd's chunks: its transformed tiles and products take 12 times a chunk's input
# (V, M and, backward, dV), so it splits finer than the direct loop; 16 chunks keep those
# under one input's worth, and 128 tiles still make efficient matrix products. CPU: the
# Winograd rows of bench/RESULTS.md's memory table (0.71-0.86x XLA's).
WINOGRAD_MAX_CHUNKS = 16
WINOGRAD_MIN_CHUNK_TILES = 128

# ---------------------------------------------------------------------- pooling

# Pooling windows with at most this many taps have their loop fully unrolled: XLA then
# fuses all taps into one pass over memory instead of one pass per tap; larger windows
# keep a rolled loop (program size). CPU: max pool 2x2 forward 0.11-0.16x XLA's time
# (bench/RESULTS.md).
POOL_UNROLL_TAPS = 16

# ---------------------------------------------------------------------- batch norm

# Batch statistics are merged over at most this many batch chunks (Chan et al.): each
# chunk's two-pass variance stays accurate when the mean is large against the spread,
# without holding a centred copy of the whole batch. An accuracy and memory setting more
# than a speed one. CPU: batchnorm 256ch @8, batch 128, forward + backward 0.81x XLA's
# time and 1.00x its memory (bench/RESULTS.md).
BN_MAX_CHUNKS = 4

# ---------------------------------------------------------------------- GPU
#
# A GPU runs the same portable loops, with other settings. On a CPU the batch chunks and
# rolled loops keep the working set in cache; on a GPU every chunk and every loop
# iteration is a handful of separate kernel launches, each a few microseconds plus a
# round trip of its operands through HBM. Where JAX's CUDA plugin is installed the
# program holds both settings (``lax.platform_dependent``, via
# ``jspatial._windows.for_gpu``) and lowering for ``cuda`` keeps the GPU's; elsewhere
# only the CPU's are traced, and the CPU program is the one it always was.
#
# Where measured: compiled ahead of time for an H100 SXM, A100 and T4 on a CPU-only host
# (``make bench-gpu``: FLOPs, HBM bytes and kernels launched from the optimized HLO, loop
# trip counts included), airbench94's layers and train step at batch 512, float32.
# Timed once on a GPU (an H200, bench/RESULTS.md): correct, but the train step takes 8.9x
# the time of Flax's built-in layers, mostly in the convolutions' backward passes; these
# settings were chosen by counted bytes and kernels, not by time.

STAGE_GPU = any(
    importlib.util.find_spec(name) is not None
    for name in ("jax_cuda12_plugin", "jax_cuda13_plugin")
)

# No batch chunks on a GPU: a chunk loop launches each of its kernels once per chunk,
# and a GPU's memory holds the whole batch's windows for the layer sizes measured.
GPU_MAX_CHUNKS = 1

# Tap loops fully unrolled on a GPU: a rolled loop is a device-side while loop whose
# every iteration launches its kernels in turn; unrolled, XLA fuses each tap's window
# copy into its neighbours.
GPU_UNROLL = True

# ... except the loops that scatter each tap's product back through its window (a
# convolution's input gradient, a transposed convolution's forward pass). Unrolled, XLA
# merges their kh * kw products, which all read the same output gradient, into one
# product kh * kw * C wide, for which the GEMM emitter of compute capability 8.0 and up
# finds no tiling at some widths (conv_transpose2d 4->6 k3 on an H100 or A100 compile:
# "Couldn't find output tile sizes that satisfy hlo: ... f32[162,54] dot"). On those
# GPUs the Triton kernels take every ungrouped convolution, so this loop stays rolled
# only for conv_transpose2d, grouped layers and algorithm='direct' on older GPUs.
GPU_UNROLL_SCATTER = 1

# algorithm='auto' on a GPU without an on-chip kernel for the layer: im2col whenever
# the layer is ungrouped (one large product on the matrix units instead of kh * kw
# thin ones, and one pass of the taps' copies instead of one per tap), the direct loop
# for grouped layers. Winograd alone moves fewer bytes than im2col on a T4 compile
# (64->64 @15, batch 512, forward + backward: 1.9 GB vs 2.9), but inside the airbench94
# train step it moves more: 14.9 GB vs 14.0 on a T4, 18.1 vs 14.0 on an H100, whose
# compile fuses im2col's window copies into the products.
GPU_IM2COL_MAX_DEPTH = 1 << 30

# The layout the GPU convolution kernels (jspatial._accel.gpu.conv) run in, per caller
# layout (data_format): each its own, so that no layer transposes its activations (the
# other choice for NCHW is "NHWC": channels-last kernels, the activations transposed in
# and out). A100 compile, conv 64->64 @15, batch 512, forward + backward: NCHW kernels
# 184 MB in 4 kernels, NHWC kernels with the transposes 479 MB in 9 (cuDNN: 177 MB, 3).
# airbench94 train step in NCHW, H100 compile: 4.32 GB with NCHW kernels (the max pools
# then on planes, jspatial._accel.gpu.pool), 4.43 GB with NHWC kernels, where XLA folds
# most transposes between layers away.
GPU_CONV_LAYOUT = {"NCHW": "NCHW", "NHWC": "NHWC"}
