"""Batch normalisation given the per-channel statistics: the forward pass, its tangent and
its hand-written backward, over the 4-D array ``(N, C, H, W)`` (``(N, H, W, C)`` in
``'NHWC'``).

Shared by the portable op (``jspatial.norm``, which gathers the statistics with a chunked
loop) and the TPU kernel (``jspatial._accel.tpu.norm``, whole-array reductions): both
import this module, and neither imports the other. The training-mode functions return
``(y, mean, biased_var)``; ``jvp`` makes any such function differentiable with the same
tangent and backward.
"""

from __future__ import annotations

import math
from functools import partial

import jax.numpy as jnp
from jax import lax

from jspatial._linear import Fn, linear_call


def channels(shape, layout="NCHW"):
    """The channel count of an input of ``shape`` (0 for PyTorch's empty ``(0,)``)."""
    if len(shape) < 2:
        return 0
    return shape[1] if layout == "NCHW" else shape[-1]


def per_channel_axes(shape, layout="NCHW"):
    """The sizes of the axes the statistics reduce over: every axis but the channels."""
    if len(shape) < 2:
        return shape
    return shape[:1] + shape[2:] if layout == "NCHW" else shape[:-1]


def reduced(layout):
    """The axes of the 4-D array the statistics reduce over."""
    return (0, 2, 3) if layout == "NCHW" else (0, 1, 2)


def per_channel(v, layout):
    """A ``(C,)`` vector broadcastable against the 4-D array in ``layout``."""
    return v[None, :, None, None] if layout == "NCHW" else v[None, None, None, :]


def affine(x, scale, shift, layout="NCHW"):
    """``x * scale + shift`` per channel, in the dtype of ``scale``, cast back to ``x``'s."""
    y = x.astype(scale.dtype) * per_channel(scale, layout) + per_channel(shift, layout)
    return y.astype(x.dtype)


def normalise(x, weight, bias, eps, mean, var, layout="NCHW"):
    """The forward pass given the batch statistics: ``((y, mean, var), residuals)``."""
    inv_std = lax.rsqrt(var + eps)
    scale = weight * inv_std
    y = affine(x, scale, bias - mean * scale, layout)
    return (y, mean, var), (x, weight, mean, inv_std)


def tangent(layout, residuals, tangents):
    """Forward mode: the linearisation of ``(y, mean, var)`` at ``x``, given the residuals.

    Linear in the tangents ``(dx, dweight, dbias)``; ``backward`` is its transpose.
    With ``x_hat = (x - mean) * inv_std``::

        dmean = mean(dx)
        dvar  = 2 * mean((x - mean) * dx)
        dy    = weight * inv_std * (dx - dmean - x_hat * mean(x_hat * dx))
                + x_hat * dweight + dbias
    """
    x, weight, mean, inv_std = residuals
    dx, d_weight, d_bias = tangents
    per_ch, axes = partial(per_channel, layout=layout), reduced(layout)
    centred = x.astype(mean.dtype) - per_ch(mean)
    x_hat = centred * per_ch(inv_std)
    dx = dx.astype(mean.dtype)
    d_mean = jnp.mean(dx, axis=axes)
    d_var = 2 * jnp.mean(centred * dx, axis=axes)
    # d x_hat = inv_std * (dx - dmean) - x_hat * inv_std^2 * dvar / 2.
    projection = jnp.mean(x_hat * dx, axis=axes)
    d_x_hat = per_ch(inv_std) * (dx - per_ch(d_mean) - x_hat * per_ch(projection))
    dy = per_ch(weight) * d_x_hat + x_hat * per_ch(d_weight) + per_ch(d_bias)
    return dy.astype(x.dtype), d_mean, d_var


def backward(eps, layout, residuals, cotangents):
    """The transpose of ``tangent``: ``(g, g_mean, g_var) -> (dx, dweight, dbias)``."""
    x, weight, mean, inv_std = residuals
    g, g_mean, g_var = cotangents
    acc = mean.dtype
    count = math.prod(per_channel_axes(x.shape, layout))
    per_ch, axes = partial(per_channel, layout=layout), reduced(layout)
    centred = x.astype(acc) - per_ch(mean)
    x_hat = centred * per_ch(inv_std)
    g = g.astype(acc)
    g_bias = jnp.sum(g, axis=axes)
    g_weight = jnp.sum(g * x_hat, axis=axes)
    # d/dx of the normalised output: the classic three-term formula.
    dx = per_ch(weight * inv_std) * (g - per_ch(g_bias / count) - x_hat * per_ch(g_weight / count))
    # Plus whatever flows into the returned batch mean and variance themselves.
    dx = dx + per_ch(g_mean / count) + centred * per_ch(2 * g_var / count)
    return dx.astype(x.dtype), g_weight, g_bias


def jvp(op, eps, layout, primals, tangents):
    """The JVP of a training-mode batch norm ``op`` (``(x, weight, bias, eps, layout) ->
    (y, mean, var)``): the outputs, and their tangent as a ``linear_call`` of ``tangent``
    whose transpose is the hand-written ``backward``. ``op.defjvp(partial(jvp, op))``."""
    outputs = op(*primals, eps, layout)
    residuals = (primals[0], primals[1], outputs[1], lax.rsqrt(outputs[2] + eps))
    transpose = Fn(backward, eps, layout)
    tangent_out = linear_call(Fn(tangent, layout), transpose, list(residuals), list(tangents))
    return outputs, tuple(tangent_out)
