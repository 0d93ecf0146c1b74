"""Batch normalisation over ``(N, H, W)`` per channel, PyTorch's way.

Training normalises each channel with the statistics of the current batch::

    y = (x - mean) / sqrt(var + eps) * weight + bias       # var is the biased variance

and moves the running statistics towards them:
``running = (1 - momentum) * running + momentum * batch_stat`` with the *unbiased*
variance for ``running_var`` (PyTorch's momentum 0.1 convention, which is
Flax's ``momentum=0.9``). Evaluation uses the running statistics instead.

The batch statistics are gathered by a ``lax.fori_loop`` over a few chunks of
the batch, each chunk's mean and sum of squared deviations merged with Chan et
al.'s pairwise update, which stays accurate when the mean is large compared with
the spread (the naive ``E[x^2] - E[x]^2`` does not). Cost: about ``5 N C H W``
flops forward, a few passes over ``x`` in the hand-written backward.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jspatial import _args
from jspatial import _windows as win

_MAX_CHUNKS = 4


def batch_norm(x, weight, bias, running_mean, running_var, *, training, momentum=0.1, eps=1e-5):
    """Batch normalisation with PyTorch's ``torch.nn.functional.batch_norm`` semantics.

    Args:
        x: input ``(N, C, H, W)``.
        weight, bias: ``(C,)`` affine parameters, or ``None`` for 1 and 0.
        running_mean, running_var: ``(C,)`` running statistics; may be ``None``
            when ``training`` (nothing is tracked then).
        training: normalise with batch statistics and update the running ones.
        momentum: weight of the new batch statistic in the running average, in ``[0, 1]``.
        eps: added to the variance before the square root, ``> 0``.

    Returns:
        ``(y, new_running_mean, new_running_var)``; ``y`` has the dtype of ``x``.
        In evaluation the running statistics come back unchanged.

    Example:
        >>> import jax.numpy as jnp, jspatial as js
        >>> x = jnp.arange(8.0).reshape(2, 1, 2, 2)
        >>> y, mean, var = js.batch_norm(x, None, None, jnp.zeros(1), jnp.ones(1), training=True)
        >>> round(float(y.mean()), 6), mean.tolist(), round(float(var[0]), 4)
        (0.0, [0.35], 0.9)
    """
    return batch_norm_checked(
        x, weight, bias, running_mean, running_var, training, momentum, eps, op="batch_norm"
    )


def batch_norm_checked(x, weight, bias, running_mean, running_var, training, momentum, eps, *, op):
    """``batch_norm`` with errors attributed to ``op`` (the layer uses ``"BatchNorm2d"``)."""
    _check(x, weight, bias, running_mean, running_var, training, momentum, eps, op)
    y, new_mean, new_var = _batch_norm(
        x, weight, bias, running_mean, running_var, training, momentum, eps
    )
    if not training:  # the very same arrays come back: evaluation changes nothing
        return y, running_mean, running_var
    return y, new_mean, new_var


# Compiled once per shape and configuration, so eager calls do not re-trace the loop.
@partial(jax.jit, static_argnums=(5, 6, 7))
def _batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps):
    c = x.shape[1]
    acc = win.accum_dtype(x.dtype)
    w = jnp.ones((c,), acc) if weight is None else weight.astype(acc)
    b = jnp.zeros((c,), acc) if bias is None else bias.astype(acc)
    if not training:
        scale = w * lax.rsqrt(running_var.astype(acc) + eps)
        shift = b - running_mean.astype(acc) * scale
        return _affine(x, scale, shift), running_mean, running_var
    y, mean, var = _bn_train(x, w, b, eps)
    if running_mean is None:
        return y, None, None
    count = x.shape[0] * x.shape[2] * x.shape[3]
    unbiased = var * (count / (count - 1))
    new_mean = (1 - momentum) * running_mean + momentum * mean
    new_var = (1 - momentum) * running_var + momentum * unbiased
    return y, new_mean.astype(running_mean.dtype), new_var.astype(running_var.dtype)


def batch_stats(x):
    """Per-channel mean and biased variance of ``(N, C, H, W)``, in float32 or wider.

    A ``fori_loop`` over up to four equal chunks of the batch; each chunk's
    ``(count, mean, m2)`` is merged into the running total with Chan's formula.
    """
    n, c = x.shape[:2]
    chunks = next(k for k in range(min(_MAX_CHUNKS, n), 0, -1) if n % k == 0)
    size = n // chunks
    per_chunk = size * x.shape[2] * x.shape[3]
    acc = win.accum_dtype(x.dtype)

    def merge(i, carry):
        count, mean, m2 = carry
        part = win.batch_chunk(x, i, chunks).astype(acc)
        part_mean = jnp.mean(part, axis=(0, 2, 3))
        part_m2 = jnp.sum(jnp.square(part - part_mean[None, :, None, None]), axis=(0, 2, 3))
        total = count + per_chunk
        delta = part_mean - mean
        mean = mean + delta * (per_chunk / total)
        m2 = m2 + part_m2 + jnp.square(delta) * (count * per_chunk / total)
        return total, mean, m2

    init = (jnp.zeros((), acc), jnp.zeros((c,), acc), jnp.zeros((c,), acc))
    count, mean, m2 = lax.fori_loop(0, chunks, merge, init)
    return mean, m2 / count


def _affine(x, scale, shift):
    y = x.astype(scale.dtype) * scale[None, :, None, None] + shift[None, :, None, None]
    return y.astype(x.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _bn_train(x, weight, bias, eps):
    return _bn_train_fwd(x, weight, bias, eps)[0]


def _bn_train_fwd(x, weight, bias, eps):
    mean, var = batch_stats(x)
    inv_std = lax.rsqrt(var + eps)
    scale = weight * inv_std
    y = _affine(x, scale, bias - mean * scale)
    return (y, mean, var), (x, weight, mean, inv_std)


def _bn_train_bwd(eps, residuals, cotangents):
    x, weight, mean, inv_std = residuals
    g, g_mean, g_var = cotangents
    acc = mean.dtype
    count = x.shape[0] * x.shape[2] * x.shape[3]
    per_channel = lambda v: v[None, :, None, None]  # noqa: E731
    centred = x.astype(acc) - per_channel(mean)
    x_hat = centred * per_channel(inv_std)
    g = g.astype(acc)
    g_bias = jnp.sum(g, axis=(0, 2, 3))
    g_weight = jnp.sum(g * x_hat, axis=(0, 2, 3))
    # d/dx of the normalised output: the classic three-term formula.
    dx = per_channel(weight * inv_std) * (
        g - per_channel(g_bias / count) - x_hat * per_channel(g_weight / count)
    )
    # Plus whatever flows into the returned batch mean and variance themselves.
    dx = dx + per_channel(g_mean / count) + centred * per_channel(2 * g_var / count)
    return dx.astype(x.dtype), g_weight, g_bias


_bn_train.defvjp(_bn_train_fwd, _bn_train_bwd)


def _check(x, weight, bias, running_mean, running_var, training, momentum, eps, op):
    _args.check_input(x, op)
    c = x.shape[1]
    if not isinstance(training, bool):
        raise TypeError(f"{op} training must be a bool, got {training!r}")
    tracked = (running_mean is not None, running_var is not None)
    if tracked[0] != tracked[1]:
        raise ValueError(f"{op} needs both running_mean and running_var, or neither")
    if not training and not tracked[0]:
        raise ValueError(f"{op} with training=False needs running_mean and running_var")
    named = {
        "weight": weight,
        "bias": bias,
        "running_mean": running_mean,
        "running_var": running_var,
    }
    for name, value in named.items():
        if value is not None and tuple(jnp.shape(value)) != (c,):
            raise ValueError(
                f"{op} channel mismatch: expected {c} channels, got {name} of shape "
                f"{tuple(jnp.shape(value))} for input {tuple(x.shape)}"
            )
    _args.check_momentum(momentum, op)
    _args.check_eps(eps, op)
    if training and x.shape[0] * x.shape[2] * x.shape[3] < 2:
        raise ValueError(
            f"{op} expected more than 1 value per channel when training, got input {tuple(x.shape)}"
        )
