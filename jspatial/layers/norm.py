"""``BatchNorm1d``, ``BatchNorm2d``: ``torch.nn``'s as Flax NNX modules over ``jspatial.norm``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jspatial import _args
from jspatial.layers.module import Module
from jspatial.norm import batch_norm_args, batch_norm_program


class _BatchNorm(Module):
    """What ``BatchNorm1d`` and ``BatchNorm2d`` share: everything but the input ranks."""

    _OP = "_BatchNorm"
    _NDIMS: tuple[int, ...] = ()

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        bias: bool = True,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs | None = None,
        data_format: str = "NCHW",
    ):
        op = self._OP
        self.num_features = _args.positive_int(num_features, op, "num_features")
        self.data_format = _args.check_data_format(data_format, op)
        self.eps = _args.check_eps(eps, op)
        self.momentum = _args.check_momentum(momentum, op, allow_none=True)
        self.affine = _args.check_bool(affine, op, "affine")
        use_bias = _args.check_bool(bias, op, "bias")
        self.track_running_stats = _args.check_bool(track_running_stats, op, "track_running_stats")
        self.dtype = dtype
        self.param_dtype = param_dtype
        # Named as Flax's own ``nnx.BatchNorm`` names it, so ``model.eval()`` and
        # ``model.train()`` (``set_attributes(use_running_average=...)``) reach it.
        self.use_running_average = False

        c = self.num_features
        self.weight = nnx.Param(jnp.ones((c,), param_dtype)) if affine else None
        self.bias = nnx.Param(jnp.zeros((c,), param_dtype)) if affine and use_bias else None
        if track_running_stats:
            self.running_mean = nnx.BatchStat(jnp.zeros((c,), param_dtype))
            self.running_var = nnx.BatchStat(jnp.ones((c,), param_dtype))
            self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), int))
        else:
            self.running_mean = None
            self.running_var = None
            self.num_batches_tracked = None

    def __call__(self, x: jax.Array, *, use_running_average: bool | None = None) -> jax.Array:
        """Normalise ``x``; ``use_running_average`` overrides the mode for this call."""
        op = self._OP
        use_running = (
            self.use_running_average if use_running_average is None else use_running_average
        )
        # A Python bool: it selects the code path when the call is traced.
        use_running = _args.check_bool(use_running, op, "use_running_average")
        tracking = self.running_mean is not None
        # Without running statistics there is nothing to evaluate with: batch
        # statistics are used in both modes, as in PyTorch.
        training = not use_running or not tracking
        update = training and tracking
        momentum = 0.0 if self.momentum is None else self.momentum
        if update:
            count = self.num_batches_tracked[...] + 1
            if self.momentum is None:
                # A traced value under nnx.jit; the core takes it as an argument, so
                # every step reuses one compilation.
                momentum = 1.0 / count

        weight = None if self.weight is None else self.weight[...]
        bias = None if self.bias is None else self.bias[...]
        mean = self.running_mean[...] if tracking else None
        var = self.running_var[...] if tracking else None
        # batch_norm's one validating path, with this layer's name, channels and ranks.
        a = batch_norm_args(
            x, mean, var, weight, bias, training, momentum, self.eps,
            op=op, num_features=self.num_features, dtype=self.dtype, ndims=self._NDIMS,
            data_format=self.data_format,
        )  # fmt: skip
        if a.batch_stats:
            y, new_mean, new_var = a.finish(*batch_norm_program(a)(a.x, a.weight, a.bias))
        else:
            y, new_mean, new_var = a.fixed()
        if update:
            # In place, so the update survives ``nnx.jit``: NNX writes changed
            # variables back to the module after the traced call.
            self.running_mean[...] = new_mean
            self.running_var[...] = new_var
            self.num_batches_tracked[...] = count
        return y

    def extra_repr(self) -> str:
        layout = "" if self.data_format == "NCHW" else f", data_format={self.data_format}"
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None}, "
            f"track_running_stats={self.track_running_stats}{layout}"
        )


class BatchNorm2d(_BatchNorm):
    """Batch normalisation over ``(N, H, W)`` per channel, ``torch.nn.BatchNorm2d``'s way.

    Training mode (``use_running_average=False``, the state after construction
    and after ``model.train()``) normalises with the batch's mean and biased
    variance, counts the batch in ``num_batches_tracked`` and updates the running
    statistics in place::

        running_mean = (1 - momentum) * running_mean + momentum * batch_mean
        running_var  = (1 - momentum) * running_var  + momentum * unbiased_batch_var

    With ``momentum=None`` the factor is ``1 / num_batches_tracked``: the running
    statistics are then the plain average over every batch seen (PyTorch's
    cumulative moving average). Evaluation mode (``model.eval()`` sets
    ``use_running_average=True`` on every nested layer) normalises with the running
    statistics and changes nothing. ``momentum=0.1`` is PyTorch's convention
    (Flax's ``nnx.BatchNorm`` calls it 0.9).

    Shapes: ``(N, C, H, W) -> (N, C, H, W)``, or with ``data_format='NHWC'``
    ``(N, H, W, C) -> (N, H, W, C)``. Parameters: ``weight`` (ones) and
    ``bias`` (zeros), ``(C,)`` each, unless ``affine=False`` (or ``bias=False``:
    no ``bias``); ``nnx.BatchStat``
    statistics: ``running_mean`` (zeros), ``running_var`` (ones), both ``(C,)``,
    and ``num_batches_tracked`` (a 0-d int, 0), unless ``track_running_stats=False``
    (then batch statistics are used always). ``num_batches_tracked`` is JAX's
    default int: int32, or int64 when x64 is on (PyTorch's is int64).

    Cost: about ``5 * N * C * H * W`` flops; ``2 * C`` parameters.

    Args:
        num_features: channel count ``C``.
        eps: added to the variance before the square root.
        momentum: weight of the new batch statistic in the running average, in
            ``[0, 1]``, or ``None`` for the cumulative average.
        affine: learn ``weight`` and ``bias``.
        track_running_stats: keep running statistics for evaluation.
        bias: with ``affine``, learn ``bias`` too (``False``: ``weight`` only).
            Keyword-only, as in PyTorch.
        dtype: computation dtype of the input/output (``None``: the input's).
            Statistics and the affine transform are computed in float32 whatever
            this is, and the running statistics stay in ``param_dtype``.
        param_dtype: dtype of the parameters and running statistics.
        rngs: accepted for signature symmetry with other layers; unused.
        data_format: ``'NCHW'`` (channels second, PyTorch's) or ``'NHWC'`` (channels
            last); keyword-only, an addition to PyTorch's signature. The parameters,
            statistics and ``state_dict`` are the same in both.

    Example:
        >>> import jax.numpy as jnp
        >>> from jspatial.layers import BatchNorm2d
        >>> bn = BatchNorm2d(16, momentum=None)
        >>> x = jnp.arange(2 * 16 * 4 * 4.0).reshape(2, 16, 4, 4)  # channel 0: mean 135.5
        >>> y = bn(x); y = bn(x + 1.0)  # training mode: two batches
        >>> int(bn.num_batches_tracked[...]), float(bn.running_mean[...][0])  # their average
        (2, 136.0)
        >>> bn.eval(); bn.use_running_average
        True
        >>> BatchNorm2d(16, data_format="NHWC")(jnp.ones((2, 4, 4, 16))).shape
        (2, 4, 4, 16)
    """

    _OP = "BatchNorm2d"
    _NDIMS = (4,)


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of ``(N, C)`` or ``(N, C, L)`` per channel, ``torch.nn.BatchNorm1d``.

    ``BatchNorm2d`` for features and sequences: the statistics of each channel are over
    the batch (and the length ``L``); the arguments, parameters, running statistics and
    ``state_dict`` names are ``BatchNorm2d``'s (see there), as in PyTorch.

    Shapes: ``(N, C) -> (N, C)`` and ``(N, C, L) -> (N, C, L)`` (``(N, L, C)`` with
    ``data_format='NHWC'``: channels last); other ranks are refused, as by PyTorch.
    Training on one value per channel (``(1, C)``) is an error, as there.

    Cost: about ``5 * N * C * L`` flops; ``2 * C`` parameters.

    Example:
        >>> import jax.numpy as jnp
        >>> from jspatial.layers import BatchNorm1d
        >>> bn = BatchNorm1d(3)
        >>> y = bn(jnp.arange(12.0).reshape(4, 3))  # training mode: batch statistics
        >>> [round(float(v), 4) for v in y[:, 0]], round(float(bn.running_mean[...][0]), 4)
        ([-1.3416, -0.4472, 0.4472, 1.3416], 0.45)
    """

    _OP = "BatchNorm1d"
    _NDIMS = (2, 3)
