"""Per-dtype tolerances for comparing jspatial against its oracles, in one place.

``TOLERANCES[dtype] = (rtol, atol)``. The float32 and float64 values bound
summation-order differences between two correct implementations (jspatial's tap
loop vs XLA's convolution, PyTorch's CPU kernels, NumPy loops) on the O(1)
inputs the tests use. The bfloat16 and float16 values are about two units in the
last place of the format (8 and 11 significant bits): jspatial accumulates in
float32, so a low-precision result may differ from the float32 result computed
on the same (already rounded) inputs by little more than the final rounding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

TOLERANCES: dict[object, tuple[float, float]] = {
    jnp.dtype(jnp.float64): (1e-10, 1e-10),
    jnp.dtype(jnp.float32): (2e-5, 2e-5),
    jnp.dtype(jnp.float16): (2e-3, 2e-3),
    jnp.dtype(jnp.bfloat16): (1.6e-2, 1.6e-2),
}


def tolerance(dtype) -> tuple[float, float]:
    """``(rtol, atol)`` for ``dtype`` (anything ``jnp.dtype`` accepts)."""
    return TOLERANCES[jnp.dtype(dtype)]


def assert_close(actual, expected, dtype=jnp.float32, *, scale: float = 1.0, err_msg: str = ""):
    """``np.testing.assert_allclose`` with the tolerance of ``dtype`` times ``scale``.

    Both sides are compared in float64, so bfloat16/float16 arrays and torch
    tensors (converted by the caller with ``.detach().numpy()``) are accepted.
    Infinities must match exactly (same sign, same position).
    """
    rtol, atol = tolerance(dtype)
    np.testing.assert_allclose(
        np.asarray(actual, dtype=np.float64),
        np.asarray(expected, dtype=np.float64),
        rtol=rtol * scale,
        atol=atol * scale,
        err_msg=err_msg,
    )


# The tests compile many tiny programs, and XLA's compile time dominates the suite.
# LLVM at -O0 compiles them about twice as fast; the HLO, i.e. the algorithm under
# test, is the same. The jit-vs-eager tests use the default options.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def fast_jit(fn, **kwargs):
    """``jax.jit`` with ``FAST_COMPILE`` options."""
    return jax.jit(fn, compiler_options=FAST_COMPILE, **kwargs)
