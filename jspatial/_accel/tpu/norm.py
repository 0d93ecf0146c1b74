"""Training-mode batch normalisation as whole-array reductions that XLA fuses.

The portable version gathers the statistics with a ``lax.fori_loop`` over batch chunks
merged by Chan's formula; on a TPU the loop only adds passes over HBM. Here the mean
is one reduction and the variance a second one over the centred input (two-pass, so
no ``E[x^2] - E[x]^2`` cancellation), the normalisation one elementwise pass; the
normalisation and the hand-written backward are the portable op's own
(``jspatial._normalise``, which this module and ``jspatial.norm`` both import): XLA fuses
the two gradient sums into one pass over ``x`` and ``g`` and the input gradient into one
more. Returns ``(y, mean, biased_var)`` like ``jspatial.norm._bn_train``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jspatial import _normalise
from jspatial import _windows as win


@partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def bn_train(x, weight, bias, eps, layout="NCHW"):
    """``x: (N, C, H, W)`` (``(N, H, W, C)`` with ``layout='NHWC'``), ``weight, bias: (C,)``
    in float32 -> ``(y, mean, var)``."""
    return _fwd(x, weight, bias, eps, layout)[0]


def _fwd(x, weight, bias, eps, layout):
    acc = win.accum_dtype(x.dtype)
    axes = _normalise.reduced(layout)
    mean = jnp.mean(x, axis=axes, dtype=acc)
    var = jnp.mean(jnp.square(x.astype(acc) - _normalise.per_channel(mean, layout)), axis=axes)
    return _normalise.normalise(x, weight, bias, eps, mean, var, layout)


# The normalisation's tangent and backward are the portable version's own.
bn_train.defjvp(partial(_normalise.jvp, bn_train))
