"""Batch normalisation over every axis but the channels, ``(N, *)`` per channel, PyTorch's way.

Training normalises each channel with the statistics of the current batch::

    y = (x - mean) / sqrt(var + eps) * weight + bias       # var is the biased variance

and moves the running statistics towards them:
``running = (1 - momentum) * running + momentum * batch_stat`` with the *unbiased*
variance for ``running_var`` (PyTorch's momentum 0.1 convention, which is
Flax's ``momentum=0.9``). Evaluation uses the running statistics instead.

The batch statistics are gathered by a ``lax.fori_loop`` over a few chunks of
the batch, each chunk's mean and sum of squared deviations (``chunk_stats``)
merged with Chan et al.'s pairwise update (``merge_stats``), which stays accurate
when the mean is large compared with the spread (the naive ``E[x^2] - E[x]^2``
does not). Cost: about ``5 N C H W`` flops forward, a few passes over ``x`` in the
hand-written backward.

The channels are the second axis, ``(N, C, *)`` (PyTorch's layout), or with
``data_format='NHWC'`` the last, ``(N, *, C)``: the same statistics and the same code,
reduced over the other axes, with no transposes.

The loop bodies (``chunk_stats``, ``merge_stats``) are public for reading (the notebook
prints them); the API is ``jspatial.__all__``, and the names with a leading underscore
are internal.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from jspatial import _args, _tuning
from jspatial import _windows as win
from jspatial._accel import dispatch
from jspatial._linear import Fn, linear_call


def batch_norm(
    x: ArrayLike,
    running_mean: ArrayLike | None,
    running_var: ArrayLike | None,
    weight: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    training: bool = False,
    momentum: float | ArrayLike = 0.1,
    eps: float = 1e-5,
    *,
    data_format: str = "NCHW",
) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    """Batch normalisation with PyTorch's ``torch.nn.functional.batch_norm`` signature.

    The arguments, their order and defaults are PyTorch's, so
    ``F.batch_norm(x, running_mean, running_var, weight, bias, True, 0.1, 1e-5)``
    reads the same here. One difference: JAX arrays are immutable, so where PyTorch
    updates ``running_mean``/``running_var`` in place, this returns the updated
    statistics alongside the output.

    See also: the statistics loop's body, ``jspatial.norm.merge_stats`` (one batch
    chunk merged into the count, mean and squared deviations so far);
    ``jspatial.loop_jaxpr`` prints it as compiled (with ``training=True``;
    ``jspatial.steps`` takes the four window ops, not this one);
    ``jspatial.reference.batch_norm``.

    Args:
        x: input ``(N, C, *)``: ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)``,
            ``(N, C, D, H, W)``, ...; the statistics are over every axis but ``C``.
            ``N == 0`` gives an empty output (and, in training, leaves the running
            statistics as they were), as in PyTorch. With ``data_format='NHWC'``:
            ``(N, *, C)``, channels last (``(N, C)``, ``(N, L, C)``, ``(N, H, W, C)``, ...).
        running_mean: ``(C,)`` running mean; may be ``None`` when ``training``
            (nothing is tracked then).
        running_var: ``(C,)`` running variance; ``None`` exactly when ``running_mean`` is.
        weight: ``(C,)`` scale, or ``None`` for 1.
        bias: ``(C,)`` shift, or ``None`` for 0.
        training: normalise with batch statistics and update the running ones.
        momentum: weight of the new batch statistic in the running average, usually
            in ``[0, 1]`` (any real number is taken, as by PyTorch): a number or a 0-d
            array (a traced value is fine).
            PyTorch's ``momentum=None`` exists only on ``BatchNorm2d``, here as there.
        eps: added to the variance before the square root, ``> 0``.
        data_format: ``'NCHW'`` (channels second, PyTorch's) or ``'NHWC'`` (channels
            last); keyword-only, an addition to PyTorch's signature.

    Returns:
        ``(y, new_running_mean, new_running_var)``; ``y`` has the dtype of ``x``.
        In evaluation the running statistics come back unchanged.

    Example:
        >>> import jax.numpy as jnp, jspatial as js
        >>> x = jnp.arange(8.0).reshape(2, 1, 2, 2)
        >>> y, mean, var = js.batch_norm(x, jnp.zeros(1), jnp.ones(1), training=True)
        >>> round(float(y.mean()), 6), round(float(mean[0]), 4), round(float(var[0]), 4)
        (0.0, 0.35, 1.5)
        >>> x_last = jnp.moveaxis(x, 1, -1)  # (N, H, W, C)
        >>> y_last, _, _ = js.batch_norm(
        ...     x_last, jnp.zeros(1), jnp.ones(1), training=True, data_format="NHWC")
        >>> bool((y_last == jnp.moveaxis(y, 1, -1)).all())
        True
    """
    return _batch_norm_checked(
        x, running_mean, running_var, weight, bias, training, momentum, eps, op="batch_norm",
        data_format=data_format,
    )  # fmt: skip


def _batch_norm_checked(
    x,
    running_mean,
    running_var,
    weight,
    bias,
    training,
    momentum,
    eps,
    *,
    op,
    num_features=None,
    dtype=None,
    ndims=None,
    data_format="NCHW",
):
    """``batch_norm`` with errors attributed to ``op`` (the layers use their names).

    ``num_features`` is the channel count the caller expects (the layer's), ``dtype``
    the dtype ``x`` is cast to once checked (the layer's compute dtype) and ``ndims``
    the input ranks allowed (``BatchNorm2d``: 4 only; ``None``: any ``(N, C, *)``).
    Every input runs as the 4-D array of ``_as_4d`` (``(N, C, H, W)``, or ``(N, H, W, C)``
    in ``'NHWC'``): a reshape, so the statistics are those of all the axes but the
    channels, and 4-D input is not touched at all.
    """
    layout = _args.check_data_format(data_format, op)
    x, running_mean, running_var, weight, bias = _check(
        x, running_mean, running_var, weight, bias, op, num_features, ndims, layout
    )
    training = _args.check_bool(training, op, "training")
    momentum = _args.check_momentum(momentum, op)
    eps = _args.check_eps(eps, op)
    shape = tuple(x.shape)
    if training and math.prod(_per_channel_axes(shape, layout)) == 1:
        # PyTorch's rule: one value has no variance (an empty batch is fine).
        raise ValueError(
            f"{op} expected more than 1 value per channel when training, got input {shape}"
        )
    if not training and running_mean is None:
        raise ValueError(f"{op} with training=False needs running_mean and running_var")
    if dtype is not None:
        x = x.astype(dtype)
    four_d = _as_4d(shape, layout)
    if four_d != shape:
        x = x.reshape(four_d)
    y, new_mean, new_var = _batch_norm(
        x, running_mean, running_var, weight, bias, training, momentum, eps, layout
    )
    if four_d != shape:
        y = y.reshape(shape)
    if not training:  # the very same arrays come back: evaluation changes nothing
        return y, running_mean, running_var
    return y, new_mean, new_var


def _as_4d(shape, layout="NCHW"):
    """The 4-D shape an input is normalised as. ``(N, C, *)``: the axes after the channels
    merged into ``H`` but the last one (``W``), ``(N, C)`` is ``(N, C, 1, 1)``. In
    ``'NHWC'``, ``(N, *, C)``: the axes between the batch and the channels merged into
    ``H`` but the last one (``W``), ``(N, C)`` is ``(N, 1, 1, C)``. PyTorch's empty 1-D
    input ``(0,)`` is an empty batch without channels."""
    if layout == "NHWC":
        if len(shape) == 1:
            return (shape[0], 1, 1, 0)
        if len(shape) == 2:
            return (shape[0], 1, 1, shape[1])
        return (shape[0], math.prod(shape[1:-2]), shape[-2], shape[-1])
    if len(shape) == 1:
        return (shape[0], 0, 1, 1)
    if len(shape) == 2:
        return (*shape, 1, 1)
    return (shape[0], shape[1], math.prod(shape[2:-1]), shape[-1])


def _channels(shape, layout="NCHW"):
    """The channel count of an input of ``shape`` (0 for PyTorch's empty ``(0,)``)."""
    if len(shape) < 2:
        return 0
    return shape[1] if layout == "NCHW" else shape[-1]


def _per_channel_axes(shape, layout="NCHW"):
    """The sizes of the axes the statistics reduce over: every axis but the channels."""
    if len(shape) < 2:
        return shape
    return shape[:1] + shape[2:] if layout == "NCHW" else shape[:-1]


def _reduced(layout):
    """The axes of the 4-D array the statistics reduce over."""
    return (0, 2, 3) if layout == "NCHW" else (0, 1, 2)


def _per_channel(v, layout):
    """A ``(C,)`` vector broadcastable against the 4-D array in ``layout``."""
    return v[None, :, None, None] if layout == "NCHW" else v[None, None, None, :]


def _batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, layout):
    # Compiled once per shape and configuration, so eager calls do not re-trace the loop.
    # A number ``momentum`` is static, so ``1 - momentum`` is folded in double precision as
    # written; an array one (``BatchNorm2d(momentum=None)`` changes it every step) is traced
    # and does not recompile.
    static = isinstance(momentum, (int, float))
    core = _batch_norm_static if static else _batch_norm_traced
    return core(x, running_mean, running_var, weight, bias, training, momentum, eps, layout)


def _batch_norm_core(x, running_mean, running_var, weight, bias, training, momentum, eps, layout):
    c = _channels(x.shape, layout)
    acc = win.accum_dtype(x.dtype)
    w = jnp.ones((c,), acc) if weight is None else weight.astype(acc)
    b = jnp.zeros((c,), acc) if bias is None else bias.astype(acc)
    if not training:
        scale = w * lax.rsqrt(running_var.astype(acc) + eps)
        shift = b - running_mean.astype(acc) * scale
        return _affine(x, scale, shift, layout), running_mean, running_var
    count = math.prod(_per_channel_axes(x.shape, layout))
    if count == 0:  # nothing to normalise, no statistics to fold in (PyTorch's behaviour)
        return _affine(x, w, b, layout), running_mean, running_var
    # Lowered for a TPU, the statistics are whole-array reductions XLA fuses (jspatial/_accel);
    # everywhere else the chunked loop of ``_bn_train``.
    kernel = dispatch.kernel_for("bn_train", "tpu", eps, layout)
    y, mean, var = dispatch.per_target(
        lambda x, w, b: _bn_train(x, w, b, eps, layout), {"tpu": kernel}, x, w, b
    )
    if running_mean is None:
        return y, None, None
    unbiased = var * (count / (count - 1))
    new_mean = (1 - momentum) * running_mean + momentum * mean
    new_var = (1 - momentum) * running_var + momentum * unbiased
    return y, new_mean.astype(running_mean.dtype), new_var.astype(running_var.dtype)


_batch_norm_static = jax.jit(_batch_norm_core, static_argnums=(5, 6, 7, 8))
_batch_norm_traced = jax.jit(_batch_norm_core, static_argnums=(5, 7, 8))


def _batch_stats(x, layout="NCHW"):
    """Per-channel mean and biased variance of ``(N, C, H, W)`` (``(N, H, W, C)`` in
    ``'NHWC'``), in float32 or wider.

    A ``fori_loop`` over up to ``_tuning.BN_MAX_CHUNKS`` equal batch chunks
    (``jspatial._windows.batch_chunks``): ``chunk_stats`` of each chunk, merged into
    the running total by ``merge_stats`` (Chan's formula).
    """
    n, c = x.shape[0], _channels(x.shape, layout)
    chunks = win.batch_chunks(n, 1, min_rows=1, max_chunks=_tuning.BN_MAX_CHUNKS)
    acc = win.accum_dtype(x.dtype)

    def step(i, total):
        part = win.batch_chunk(x, i, chunks).astype(acc)
        return merge_stats(total, chunk_stats(part, layout))

    def chunked(x):
        init = (jnp.zeros((), acc), jnp.zeros((c,), acc), jnp.zeros((c,), acc))
        count, mean, m2 = lax.fori_loop(0, chunks, step, init)
        return mean, m2 / count

    def whole(x):  # lowered for a GPU: one chunk (_tuning.GPU_MAX_CHUNKS)
        count, mean, m2 = chunk_stats(x.astype(acc), layout)
        return mean, m2 / count

    return chunked(x) if chunks == 1 else win.for_gpu(chunked, whole, x)


def chunk_stats(part, layout="NCHW"):
    """``(count, mean, m2)`` per channel of one batch chunk ``(n, C, H, W)`` (``(n, H, W,
    C)`` with ``layout='NHWC'``): the number of values, their mean and the sum of their
    squared deviations from it (two passes over the chunk)."""
    axes = _reduced(layout)
    count = math.prod(_per_channel_axes(part.shape, layout))
    mean = jnp.mean(part, axis=axes)
    return count, mean, jnp.sum(jnp.square(part - _per_channel(mean, layout)), axis=axes)


def merge_stats(total, part):
    """Chan et al.'s update: fold one chunk's ``(count, mean, m2)`` into the running total.

    The two means differ by ``delta``; the merged mean moves towards the chunk's by its
    share of the values, and ``m2`` gains the chunk's own ``m2`` plus the spread between
    the two means, ``delta^2 * n_a * n_b / (n_a + n_b)``. No ``E[x^2] - E[x]^2``, so it
    stays accurate when the mean is large compared with the spread. ``O(C)`` flops.
    """
    count, mean, m2 = total
    part_count, part_mean, part_m2 = part
    new_count = count + part_count
    delta = part_mean - mean
    mean = mean + delta * (part_count / new_count)
    m2 = m2 + part_m2 + jnp.square(delta) * (count * part_count / new_count)
    return new_count, mean, m2


def _affine(x, scale, shift, layout="NCHW"):
    y = x.astype(scale.dtype) * _per_channel(scale, layout) + _per_channel(shift, layout)
    return y.astype(x.dtype)


@partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def _bn_train(x, weight, bias, eps, layout="NCHW"):
    return _bn_train_fwd(x, weight, bias, eps, layout)[0]


def _bn_train_fwd(x, weight, bias, eps, layout):
    return _normalise(x, weight, bias, eps, *_batch_stats(x, layout), layout)


def _normalise(x, weight, bias, eps, mean, var, layout="NCHW"):
    """The forward pass given the batch statistics: ``((y, mean, var), residuals)``.
    Shared with the accelerator version, which gathers the statistics its own way."""
    inv_std = lax.rsqrt(var + eps)
    scale = weight * inv_std
    y = _affine(x, scale, bias - mean * scale, layout)
    return (y, mean, var), (x, weight, mean, inv_std)


def _bn_tangent(layout, residuals, tangents):
    """Forward mode: the linearisation of ``(y, mean, var)`` at ``x``, given the residuals.

    Linear in the tangents ``(dx, dweight, dbias)``; ``_bn_train_bwd`` is its transpose.
    With ``x_hat = (x - mean) * inv_std``::

        dmean = mean(dx)
        dvar  = 2 * mean((x - mean) * dx)
        dy    = weight * inv_std * (dx - dmean - x_hat * mean(x_hat * dx))
                + x_hat * dweight + dbias
    """
    x, weight, mean, inv_std = residuals
    dx, d_weight, d_bias = tangents
    per_channel, axes = partial(_per_channel, layout=layout), _reduced(layout)
    centred = x.astype(mean.dtype) - per_channel(mean)
    x_hat = centred * per_channel(inv_std)
    dx = dx.astype(mean.dtype)
    d_mean = jnp.mean(dx, axis=axes)
    d_var = 2 * jnp.mean(centred * dx, axis=axes)
    # d x_hat = inv_std * (dx - dmean) - x_hat * inv_std^2 * dvar / 2.
    projection = jnp.mean(x_hat * dx, axis=axes)
    d_x_hat = per_channel(inv_std) * (dx - per_channel(d_mean) - x_hat * per_channel(projection))
    dy = per_channel(weight) * d_x_hat + x_hat * per_channel(d_weight) + per_channel(d_bias)
    return dy.astype(x.dtype), d_mean, d_var


def _bn_jvp(op, eps, layout, primals, tangents):
    """The JVP of training-mode batch norm ``op`` (this module's ``_bn_train``, or the
    accelerator's): the outputs, and their tangent as a ``linear_call`` of
    ``_bn_tangent`` whose transpose is the hand-written ``_bn_train_bwd``."""
    outputs = op(*primals, eps, layout)
    residuals = (primals[0], primals[1], outputs[1], lax.rsqrt(outputs[2] + eps))
    transpose = Fn(_bn_train_bwd, eps, layout)
    tangent = linear_call(Fn(_bn_tangent, layout), transpose, list(residuals), list(tangents))
    return outputs, tuple(tangent)


def _bn_train_bwd(eps, layout, residuals, cotangents):
    x, weight, mean, inv_std = residuals
    g, g_mean, g_var = cotangents
    acc = mean.dtype
    count = math.prod(_per_channel_axes(x.shape, layout))
    per_channel, axes = partial(_per_channel, layout=layout), _reduced(layout)
    centred = x.astype(acc) - per_channel(mean)
    x_hat = centred * per_channel(inv_std)
    g = g.astype(acc)
    g_bias = jnp.sum(g, axis=axes)
    g_weight = jnp.sum(g * x_hat, axis=axes)
    # d/dx of the normalised output: the classic three-term formula.
    dx = per_channel(weight * inv_std) * (
        g - per_channel(g_bias / count) - x_hat * per_channel(g_weight / count)
    )
    # Plus whatever flows into the returned batch mean and variance themselves.
    dx = dx + per_channel(g_mean / count) + centred * per_channel(2 * g_var / count)
    return dx.astype(x.dtype), g_weight, g_bias


_bn_train.defjvp(partial(_bn_jvp, _bn_train))


def _check(x, running_mean, running_var, weight, bias, op, num_features, ndims, layout):
    """The array arguments, checked and converted (nested lists become arrays)."""
    x = _args.check_array(x, op, "input", floating=False)
    shape = tuple(x.shape)
    any_rank = "(batch, channels, *)" if layout == "NCHW" else "(batch, *, channels)"
    if ndims is not None and len(shape) not in ndims:
        ranks = " or ".join(f"{n}D" for n in ndims)
        axes = f"({_args._AXES[layout]})" if ndims == (4,) else any_rank
        raise ValueError(f"{op} expected {ranks} input {axes}, got {len(shape)}D: {shape}")
    if len(shape) < 2 and shape != (0,):  # PyTorch takes (0,) alone: an empty batch
        raise ValueError(
            f"{op} expected input {any_rank} of at least 2 dimensions, got {len(shape)}D: {shape}"
        )
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{op} expected floating-point input (float32, bfloat16, float16 or float64), "
            f"got {dtype}; convert with x.astype(jnp.float32)"
        )
    c = _channels(shape, layout)
    if num_features is not None and c != num_features:
        raise ValueError(
            f"{op} channel mismatch: expected {num_features} channels, got {c} "
            f"(input {tuple(x.shape)})"
        )
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op} needs both running_mean and running_var, or neither")
    named = {
        "running_mean": running_mean,
        "running_var": running_var,
        "weight": weight,
        "bias": bias,
    }
    for name, value in named.items():
        if value is None:
            continue
        value = named[name] = _args.check_array(value, op, name)
        if tuple(value.shape) != (c,):
            raise ValueError(
                f"{op} channel mismatch: expected {c} channels, got {name} of shape "
                f"{tuple(value.shape)} for input {tuple(x.shape)}"
            )
    return x, *named.values()
