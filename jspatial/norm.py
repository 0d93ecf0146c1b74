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

A call travels ``batch_norm`` (its checks, ``batch_norm_args``) -> ``_bn_train`` (the
``custom_jvp`` function: the loop and the normalisation) -> ``_stats_step`` (one batch
chunk) -> ``chunk_stats`` and ``merge_stats``. The normalisation given the statistics, its
tangent and its hand-written backward are ``jspatial._normalise``'s, shared with the TPU
kernel. The loop bodies (``chunk_stats``, ``merge_stats``) are public for reading (the
notebook prints them); the API is ``jspatial.__all__``, and the names with a leading
underscore are internal.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from jspatial import _args, _normalise, _tuning
from jspatial import _windows as win
from jspatial._accel import dispatch
from jspatial._normalise import channels, per_channel, per_channel_axes, reduced


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
    a = batch_norm_args(
        x, running_mean, running_var, weight, bias, training, momentum, eps, op="batch_norm",
        data_format=data_format,
    )  # fmt: skip
    if not a.batch_stats:  # evaluation, or an empty batch: no loop
        return a.fixed()
    return a.finish(*batch_norm_program(a)(a.x, a.weight, a.bias))


def batch_norm_program(a: BatchNormArgs):
    """The function ``(x, weight, bias) -> (y, mean, var)`` that runs training-mode batch
    norm ``a``: ``_bn_train`` itself on a CPU-only installation, else a program that
    lowers for a TPU to its fused kernel (``jspatial._accel.dispatch``)."""
    return dispatch.program("bn_train", _bn_train_jit, eps=a.eps, layout=a.layout)


class BatchNormArgs(NamedTuple):
    """A checked batch norm, ready for its loop (``batch_norm_args``).

    Attributes:
        x: the input as the 4-D array it is normalised as (``_as_4d``: ``(N, C, H, W)``,
            or ``(N, H, W, C)`` in ``'NHWC'``), in the compute dtype.
        running_mean, running_var: ``(C,)``, or ``None`` (training without tracking).
        weight, bias: ``(C,)`` in the accumulation dtype (``_windows.accum_dtype``): ones
            and zeros where none was given.
        training: normalise with the batch statistics (and update the running ones).
        momentum: a number (static: ``1 - momentum`` folds as written) or a 0-d array
            (traced: a new value does not recompile).
        eps: added to the variance, ``> 0``.
        layout: ``'NCHW'`` or ``'NHWC'``.
        shape: the caller's input shape, which ``y`` gets back.
    """

    x: Any
    running_mean: Any
    running_var: Any
    weight: Any
    bias: Any
    training: bool
    momentum: Any
    eps: float
    layout: str
    shape: tuple[int, ...]

    @property
    def count(self) -> int:
        """The number of values per channel the statistics are over."""
        return math.prod(per_channel_axes(self.x.shape, self.layout))

    @property
    def batch_stats(self) -> bool:
        """Whether the op gathers batch statistics: training on a non-empty batch."""
        return self.training and self.count > 0

    def fixed(self) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
        """The result without batch statistics: evaluation normalises with the running
        statistics; an empty batch in training has nothing to normalise and no statistics
        to fold in (PyTorch's behaviour). The running statistics come back as they were."""
        if self.training:
            y = _normalise.affine(self.x, self.weight, self.bias, self.layout)
        else:
            y = _bn_eval(self.x, self.running_mean, self.running_var, self.weight, self.bias,
                         eps=self.eps, layout=self.layout)  # fmt: skip
        return self._shaped(y), self.running_mean, self.running_var

    def finish(self, y, mean, var) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
        """The op's ``(y, new_running_mean, new_running_var)`` from the loop's ``y`` and
        batch statistics (``mean`` and the biased ``var``, ``(C,)``)."""
        if self.running_mean is None:
            return self._shaped(y), None, None
        # A number momentum is static, an array one traced (``_running_stats``).
        static = isinstance(self.momentum, (int, float))
        update = _running_stats_static if static else _running_stats_traced
        new_mean, new_var = update(self.running_mean, self.running_var, mean, var,
                                   momentum=self.momentum, count=self.count)  # fmt: skip
        return self._shaped(y), new_mean, new_var

    def _shaped(self, y):
        return y if tuple(y.shape) == self.shape else y.reshape(self.shape)


def batch_norm_args(
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
) -> BatchNormArgs:
    """``batch_norm``'s arguments checked, with errors attributed to ``op`` (the layers pass
    their names).

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
    if training and math.prod(per_channel_axes(shape, layout)) == 1:
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
    c = channels(four_d, layout)
    acc = win.accum_dtype(x.dtype)
    weight = jnp.ones((c,), acc) if weight is None else weight.astype(acc)
    bias = jnp.zeros((c,), acc) if bias is None else bias.astype(acc)
    return BatchNormArgs(
        x, running_mean, running_var, weight, bias, training, momentum, eps, layout, shape
    )


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


@partial(jax.jit, static_argnames=("eps", "layout"))
def _bn_eval(x, running_mean, running_var, weight, bias, *, eps, layout):
    """Evaluation: ``x`` normalised with the running statistics, one affine map per channel."""
    acc = weight.dtype
    scale = weight * lax.rsqrt(running_var.astype(acc) + eps)
    shift = bias - running_mean.astype(acc) * scale
    return _normalise.affine(x, scale, shift, layout)


def _running_stats(running_mean, running_var, mean, var, momentum, count):
    """``running = (1 - momentum) * running + momentum * batch_stat``, the variance unbiased
    (``count`` values per channel), in the running statistics' dtypes."""
    unbiased = var * (count / (count - 1))
    new_mean = (1 - momentum) * running_mean + momentum * mean
    new_var = (1 - momentum) * running_var + momentum * unbiased
    return new_mean.astype(running_mean.dtype), new_var.astype(running_var.dtype)


# Compiled once per shape and configuration. A number ``momentum`` is static, so
# ``1 - momentum`` is folded in double precision as written; an array one
# (``BatchNorm2d(momentum=None)`` changes it every step) is traced and does not recompile.
_running_stats_static = jax.jit(_running_stats, static_argnames=("momentum", "count"))
_running_stats_traced = jax.jit(_running_stats, static_argnames=("count",))


@partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def _bn_train(x, weight, bias, eps, layout="NCHW"):
    """Training mode: ``(y, mean, var)`` of ``x: (N, C, H, W)`` (``(N, H, W, C)`` in
    ``'NHWC'``) with ``weight, bias: (C,)`` in float32 or wider; ``var`` is biased.

    The statistics are a ``fori_loop`` over up to ``_tuning.BN_MAX_CHUNKS`` equal batch
    chunks (``jspatial._windows.batch_chunks``), ``_stats_step``: ``chunk_stats`` of each
    chunk, merged into the running total by ``merge_stats`` (Chan's formula). Lowered for
    a GPU the whole batch is one chunk (``_whole_batch_stats``). The normalisation, its
    tangent and its backward are ``jspatial._normalise``'s.
    """
    n, c = x.shape[0], channels(x.shape, layout)
    chunks = win.batch_chunks(n, 1, min_rows=1, max_chunks=_tuning.BN_MAX_CHUNKS)
    acc = win.accum_dtype(x.dtype)
    init = (jnp.zeros((), acc), jnp.zeros((c,), acc), jnp.zeros((c,), acc))
    loop = partial(
        lax.fori_loop, 0, chunks, partial(_stats_step, x=x, chunks=chunks, layout=layout)
    )
    if chunks > 1 and _tuning.STAGE_GPU:
        loop = partial(win.for_gpu, loop, partial(_whole_batch_stats, x=x, layout=layout))
    count, mean, m2 = loop(init)
    return _normalise.normalise(x, weight, bias, eps, mean, m2 / count, layout)[0]


_bn_train.defjvp(partial(_normalise.jvp, _bn_train))
_bn_train_jit = jax.jit(_bn_train, static_argnames=("eps", "layout"))


def _stats_step(i, total, *, x, chunks, layout):
    """The loop's body: batch chunk ``i`` of ``chunks`` (rows ``i::chunks``) folded into the
    running ``(count, mean, m2)``."""
    part = win.batch_chunk(x, i, chunks).astype(win.accum_dtype(x.dtype))
    return merge_stats(total, chunk_stats(part, layout))


def _whole_batch_stats(init, *, x, layout):
    """``(count, mean, m2)`` of the whole batch at once (lowered for a GPU: one chunk,
    ``_tuning.GPU_MAX_CHUNKS``), typed as the loop's carry ``init``."""
    count, mean, m2 = chunk_stats(x.astype(init[1].dtype), layout)
    return jnp.asarray(count, init[0].dtype), mean, m2


def chunk_stats(part, layout="NCHW"):
    """``(count, mean, m2)`` per channel of one batch chunk ``(n, C, H, W)`` (``(n, H, W,
    C)`` with ``layout='NHWC'``): the number of values, their mean and the sum of their
    squared deviations from it (two passes over the chunk)."""
    axes = reduced(layout)
    count = math.prod(per_channel_axes(part.shape, layout))
    mean = jnp.mean(part, axis=axes)
    return count, mean, jnp.sum(jnp.square(part - per_channel(mean, layout)), axis=axes)


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
    c = channels(shape, layout)
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
