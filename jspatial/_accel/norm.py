"""Training-mode batch normalisation as whole-array reductions that XLA fuses.

The portable version gathers the statistics with a ``lax.fori_loop`` over batch chunks
merged by Chan's formula; on a TPU the loop only adds passes over HBM. Here the mean
is one reduction and the variance a second one over the centred input (two-pass, so
no ``E[x^2] - E[x]^2`` cancellation), the normalisation one elementwise pass, and the
hand-written backward the same three-term formula as ``jspatial.norm``: XLA fuses the
two gradient sums into one pass over ``x`` and ``g`` and the input gradient into one
more. Returns ``(y, mean, biased_var)`` like ``jspatial.norm._bn_train``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jspatial import _windows as win


def _c(v):
    return v[None, :, None, None]


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def bn_train(x, weight, bias, eps):
    """``x: (N, C, H, W)``, ``weight, bias: (C,)`` in float32 -> ``(y, mean, var)``."""
    return _fwd(x, weight, bias, eps)[0]


def _fwd(x, weight, bias, eps):
    acc = win.accum_dtype(x.dtype)
    mean = jnp.mean(x, axis=(0, 2, 3), dtype=acc)
    var = jnp.mean(jnp.square(x.astype(acc) - _c(mean)), axis=(0, 2, 3))
    inv_std = lax.rsqrt(var + eps)
    scale = weight * inv_std
    y = (x.astype(acc) * _c(scale) + _c(bias - mean * scale)).astype(x.dtype)
    return (y, mean, var), (x, weight, mean, inv_std)


def _bwd(eps, residuals, cotangents):
    x, weight, mean, inv_std = residuals
    g, g_mean, g_var = cotangents
    acc = mean.dtype
    count = x.shape[0] * x.shape[2] * x.shape[3]
    centred = x.astype(acc) - _c(mean)
    x_hat = centred * _c(inv_std)
    g = g.astype(acc)
    g_bias = jnp.sum(g, axis=(0, 2, 3))
    g_weight = jnp.sum(g * x_hat, axis=(0, 2, 3))
    dx = _c(weight * inv_std) * (g - _c(g_bias / count) - x_hat * _c(g_weight / count))
    dx = dx + _c(g_mean / count) + centred * _c(2 * g_var / count)
    return dx.astype(x.dtype), g_weight, g_bias


bn_train.defvjp(_fwd, _bwd)
