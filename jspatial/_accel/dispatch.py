"""Per-backend choice between the portable loops and the accelerator versions.

The choice must follow the compile target, not the default device: a program traced
on a CPU host may be lowered for a TPU. ``lax.platform_dependent`` stages both
versions and keeps, at lowering time, the one for the target platform. TPUs take the
Pallas kernels and fused forms of ``jspatial._accel``; CPUs and GPUs keep the
portable ``lax.fori_loop`` code (Pallas TPU kernels do not lower for a GPU).

Each function takes ``portable``, the caller's own implementation with the same
arguments, and returns its result unchanged wherever the accelerator version does not
apply (unsupported geometry, empty batch).
"""

from __future__ import annotations

import importlib.util

import jax
from jax import lax

from jspatial._accel import conv as _conv
from jspatial._accel import norm as _norm
from jspatial._accel import pool as _pool

# Pallas TPU kernels lower only with libtpu present (it names the chip the kernel is
# compiled for). Lowering for a TPU from a host without it (a portability check) sets
# this to False: the TPU branch then takes the portable loops for the convolution.
USE_PALLAS = True

# The TPU versions can be lowered only where libtpu is installed (a TPU host, or a host
# compiling ahead of time for a TPU topology). Elsewhere they are not staged at all:
# tracing them beside the portable loops would only cost trace time (about a second more
# for the airbench94 train step on a 2-core CPU).
STAGE_TPU = importlib.util.find_spec("libtpu") is not None


def _choose(portable, accelerated, *args):
    shape = jax.eval_shape(portable, *args)

    def tpu(*args):  # the same output types as the portable branch, as a switch needs
        return jax.tree.map(lambda y, s: y.astype(s.dtype), accelerated(*args), shape)

    return lax.platform_dependent(*args, tpu=tpu, default=portable)


def conv2d(x, weight, geom, groups, portable):
    """``portable(x, weight) -> y`` (NCHW) on CPU/GPU; the Pallas tap kernel on TPU."""
    if not STAGE_TPU or x.shape[0] == 0 or not USE_PALLAS or _conv.same_size(geom, groups) is None:
        return portable(x, weight)
    return _choose(portable, lambda x, w: _conv.conv2d_cropped(x, w, geom), x, weight)


def max_pool2d(x, geom, portable):
    """``portable(x) -> y`` (NCHW) on CPU/GPU; the Pallas pooling kernel on TPU."""
    if not STAGE_TPU or x.shape[0] == 0 or not _pool.supports(geom):
        return portable(x)
    return _choose(portable, lambda x: _pool.max_pool2d(x, geom), x)


def bn_train(x, weight, bias, eps, portable):
    """``portable(x, weight, bias, eps) -> (y, mean, var)``; fused reductions on TPU."""
    if not STAGE_TPU:
        return portable(x, weight, bias, eps)
    return _choose(
        lambda x, w, b: portable(x, w, b, eps), lambda x, w, b: _norm.bn_train(x, w, b, eps),
        x, weight, bias,
    )  # fmt: skip
