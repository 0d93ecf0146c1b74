"""``BatchNorm2d``: ``torch.nn.BatchNorm2d`` as a Flax NNX module over ``jspatial.norm``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jspatial import _args
from jspatial.layers.module import Module, positive_int
from jspatial.norm import batch_norm_checked

_OP = "BatchNorm2d"


class BatchNorm2d(Module):
    """Batch normalisation over ``(N, H, W)`` per channel, ``torch.nn.BatchNorm2d``'s way.

    Training mode (``use_running_average=False``, the state after construction
    and after ``model.train()``) normalises with the batch's mean and biased
    variance and updates the running statistics in place::

        running_mean = (1 - momentum) * running_mean + momentum * batch_mean
        running_var  = (1 - momentum) * running_var  + momentum * unbiased_batch_var

    Evaluation mode (``model.eval()`` sets ``use_running_average=True`` on every
    nested layer) normalises with the running statistics and changes nothing.
    ``momentum=0.1`` is PyTorch's convention (Flax's ``nnx.BatchNorm`` calls it 0.9).

    Shapes: ``(N, C, H, W) -> (N, C, H, W)``. Parameters: ``weight`` (ones) and
    ``bias`` (zeros), ``(C,)`` each, unless ``affine=False``; statistics:
    ``running_mean`` (zeros) and ``running_var`` (ones) as ``nnx.BatchStat``,
    unless ``track_running_stats=False`` (then batch statistics are used always).

    Cost: about ``5 * N * C * H * W`` flops; ``2 * C`` parameters.

    Args:
        num_features: channel count ``C``.
        eps: added to the variance before the square root.
        momentum: weight of the new batch statistic in the running average, in ``[0, 1]``.
        affine: learn ``weight`` and ``bias``.
        track_running_stats: keep running statistics for evaluation.
        dtype: computation dtype of the input/output (``None``: the input's).
            Statistics and the affine transform are computed in float32 whatever
            this is, and the running statistics stay in ``param_dtype``.
        param_dtype: dtype of the parameters and running statistics.
        rngs: accepted for signature symmetry with other layers; unused.

    Example:
        >>> import jax.numpy as jnp
        >>> from jspatial.layers import BatchNorm2d
        >>> bn = BatchNorm2d(16)
        >>> y = bn(jnp.arange(2 * 16 * 4 * 4.0).reshape(2, 16, 4, 4))  # training mode
        >>> bn.running_var[...].shape, bool(bn.running_mean[...].any())
        ((16,), True)
        >>> bn.eval(); bn.use_running_average
        True
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        *,
        affine: bool = True,
        track_running_stats: bool = True,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs | None = None,
    ):
        self.num_features = positive_int(num_features, _OP, "num_features")
        # The same rules (and words) as the functional ``batch_norm``, checked up front.
        self.eps = _args.check_eps(eps, _OP)
        self.momentum = _args.check_momentum(momentum, _OP)
        for name, value in (("affine", affine), ("track_running_stats", track_running_stats)):
            if not isinstance(value, bool):
                raise TypeError(f"{_OP} {name} must be a bool, got {value!r}")

        self.affine = affine
        self.track_running_stats = track_running_stats
        self.dtype = dtype
        self.param_dtype = param_dtype
        # Named as Flax's own ``nnx.BatchNorm`` names it, so ``model.eval()`` and
        # ``model.train()`` (``set_attributes(use_running_average=...)``) reach it.
        self.use_running_average = False

        c = self.num_features
        self.weight = nnx.Param(jnp.ones((c,), param_dtype)) if affine else None
        self.bias = nnx.Param(jnp.zeros((c,), param_dtype)) if affine else None
        if track_running_stats:
            self.running_mean = nnx.BatchStat(jnp.zeros((c,), param_dtype))
            self.running_var = nnx.BatchStat(jnp.ones((c,), param_dtype))
        else:
            self.running_mean = None
            self.running_var = None

    def __call__(self, x: jax.Array, *, use_running_average: bool | None = None) -> jax.Array:
        """Normalise ``(N, C, H, W)``; ``use_running_average`` overrides the mode for this call."""
        _args.check_input(x, _OP)
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{_OP} channel mismatch: expected {self.num_features} channels, got "
                f"{x.shape[1]} (input {tuple(x.shape)})"
            )
        use_running = (
            self.use_running_average if use_running_average is None else use_running_average
        )
        if not isinstance(use_running, (bool, np.bool_)):
            raise TypeError(
                f"{_OP} use_running_average must be a Python bool (it selects the code path "
                f"at trace time), got {use_running!r}"
            )
        tracking = self.running_mean is not None
        # Without running statistics there is nothing to evaluate with: batch
        # statistics are used in both modes, as in PyTorch.
        training = not bool(use_running) or not tracking
        # The core checks this too, but inside the jit below, where JAX would
        # append a note about its frames to the message.
        if training and x.shape[0] * x.shape[2] * x.shape[3] < 2:
            raise ValueError(
                f"{_OP} expected more than 1 value per channel when training, "
                f"got input {tuple(x.shape)}"
            )
        if self.dtype is not None:
            x = x.astype(self.dtype)

        weight = None if self.weight is None else self.weight[...]
        bias = None if self.bias is None else self.bias[...]
        mean = self.running_mean[...] if tracking else None
        var = self.running_var[...] if tracking else None
        y, new_mean, new_var = batch_norm_checked(
            x, weight, bias, mean, var, training, self.momentum, self.eps, op=_OP
        )
        if training and tracking:
            # In place, so the update survives ``nnx.jit``: NNX writes changed
            # variables back to the module after the traced call.
            self.running_mean[...] = new_mean
            self.running_var[...] = new_var
        return y

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}"
        )
