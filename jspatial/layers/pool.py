"""Parameter-free layers: ``MaxPool2d``, ``AvgPool2d``, ``GlobalAvgPool2d``, ``Flatten``.

Each one validates its hyper-parameters at construction (a typo fails where it
is written, not at the first batch) and calls the matching ``jspatial.pool``
function with its own name, so errors read ``MaxPool2d expected 4D input ...``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from jspatial import _args
from jspatial.layers.module import Module
from jspatial.pool import (
    avg_pool2d_checked,
    global_avg_pool2d,
    max_pool2d_checked,
    pool_geometry,
)


def _check_bool(value: Any, op: str, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op} {name} must be a bool, got {value!r}")
    return bool(value)


def _pool_repr(layer: Any, extra: dict[str, tuple[Any, Any]]) -> str:
    """``kernel_size`` and ``stride`` always; the rest only when not the default."""
    parts = [f"kernel_size={layer.kernel_size}", f"stride={layer.stride}"]
    parts += [f"{name}={value}" for name, (value, default) in extra.items() if value != default]
    return ", ".join(parts)


class MaxPool2d(Module):
    """2-D max pooling with ``torch.nn.MaxPool2d``'s signature and semantics.

    Shapes: ``(N, C, H, W) -> (N, C, H_out, W_out)``, with
    ``H_out = floor((H + 2 * ph - dilation * (kh - 1) - 1) / stride) + 1`` (rounded
    up with ``ceil_mode``, dropping a last window that would start in the padding).

    Cost: ``N * C * H_out * W_out * kh * kw`` comparisons; no parameters.

    Args:
        kernel_size: int or ``(kh, kw)``.
        stride: int or ``(sh, sw)``; ``None`` means ``kernel_size``.
        padding: int or ``(ph, pw)`` of ``-inf`` on each side, at most half the kernel.
        dilation: int or ``(dh, dw)``: spacing between window taps.
        ceil_mode: round the output size up instead of down.

    Example:
        >>> import jax.numpy as jnp
        >>> from jspatial.layers import MaxPool2d
        >>> pool = MaxPool2d(2)
        >>> pool
        MaxPool2d(kernel_size=(2, 2), stride=(2, 2))
        >>> pool(jnp.ones((1, 16, 32, 32))).shape
        (1, 16, 16, 16)
    """

    def __init__(
        self,
        kernel_size: Any,
        stride: Any = None,
        padding: Any = 0,
        *,
        dilation: Any = 1,
        ceil_mode: bool = False,
    ):
        op = type(self).__name__
        self.kernel_size, self.stride, self.padding, self.dilation = _args.pool_params(
            kernel_size, stride, padding, dilation, op
        )
        self.ceil_mode = _check_bool(ceil_mode, op, "ceil_mode")

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(N, C, H, W) -> (N, C, H_out, W_out)``."""
        # Validated outside the jit, so errors carry no note about JAX's frames.
        pool_geometry(x, self.kernel_size, self.stride, self.padding, self.dilation,
                      self.ceil_mode, type(self).__name__)  # fmt: skip
        return max_pool2d_checked(
            x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
            op=type(self).__name__,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return _pool_repr(
            self,
            {
                "padding": (self.padding, (0, 0)),
                "dilation": (self.dilation, (1, 1)),
                "ceil_mode": (self.ceil_mode, False),
            },
        )


class AvgPool2d(Module):
    """2-D average pooling with ``torch.nn.AvgPool2d``'s signature and semantics.

    Shapes: ``(N, C, H, W) -> (N, C, H_out, W_out)``, with
    ``H_out = floor((H + 2 * ph - kh) / stride) + 1`` (rounded up with ``ceil_mode``).

    Cost: ``N * C * H_out * W_out * kh * kw`` additions (in float32); no parameters.

    Args:
        kernel_size: int or ``(kh, kw)``.
        stride: int or ``(sh, sw)``; ``None`` means ``kernel_size``.
        padding: int or ``(ph, pw)`` of zeros on each side, at most half the kernel.
        ceil_mode: round the output size up instead of down.
        count_include_pad: divide by the window size including the zero padding;
            ``False`` divides by the number of real input cells in the window.
        divisor_override: divide every window sum by this number instead.

    Example:
        >>> import jax.numpy as jnp
        >>> from jspatial.layers import AvgPool2d
        >>> pool = AvgPool2d(3, stride=2, padding=1)
        >>> pool
        AvgPool2d(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))
        >>> pool(jnp.ones((1, 16, 32, 32))).shape
        (1, 16, 16, 16)
    """

    def __init__(
        self,
        kernel_size: Any,
        stride: Any = None,
        padding: Any = 0,
        *,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | float | None = None,
    ):
        op = type(self).__name__
        self.kernel_size, self.stride, self.padding, _ = _args.pool_params(
            kernel_size, stride, padding, 1, op
        )
        self.ceil_mode = _check_bool(ceil_mode, op, "ceil_mode")
        self.count_include_pad = _check_bool(count_include_pad, op, "count_include_pad")
        self.divisor_override = _args.check_divisor_override(divisor_override, op)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(N, C, H, W) -> (N, C, H_out, W_out)``."""
        # Validated outside the jit, so errors carry no note about JAX's frames.
        pool_geometry(x, self.kernel_size, self.stride, self.padding, 1, self.ceil_mode,
                      type(self).__name__)  # fmt: skip
        return avg_pool2d_checked(
            x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
            self.count_include_pad, self.divisor_override, op=type(self).__name__,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return _pool_repr(
            self,
            {
                "padding": (self.padding, (0, 0)),
                "ceil_mode": (self.ceil_mode, False),
                "count_include_pad": (self.count_include_pad, True),
                "divisor_override": (self.divisor_override, None),
            },
        )


class GlobalAvgPool2d(Module):
    """Mean over the spatial axes: ``(N, C, H, W) -> (N, C)`` (PyTorch's
    ``AdaptiveAvgPool2d(1)`` followed by ``Flatten()``).

    Cost: ``N * C * H * W`` additions (in float32); no parameters.

    Example:
        >>> import jax.numpy as jnp
        >>> from jspatial.layers import GlobalAvgPool2d
        >>> GlobalAvgPool2d()(jnp.ones((2, 512, 7, 7))).shape
        (2, 512)
    """

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(N, C, H, W) -> (N, C)``."""
        # Checked here so the message names the layer, not ``global_avg_pool2d``.
        _args.check_input(x, type(self).__name__)
        return global_avg_pool2d(x)

    _one_line_repr = True  # no hyper-parameters: ``GlobalAvgPool2d()``


class Flatten(Module):
    """Flatten axes ``start_dim..end_dim`` into one, as ``torch.nn.Flatten``.

    The default turns ``(N, C, H, W)`` into ``(N, C * H * W)``, the step between
    the convolutional part of a network and its ``nnx.Linear`` classifier. A
    reshape: no cost, no parameters.

    Args:
        start_dim: first axis to flatten (default 1: keep the batch axis).
        end_dim: last axis to flatten, inclusive (default -1).

    Example:
        >>> import jax.numpy as jnp
        >>> from jspatial.layers import Flatten
        >>> Flatten()(jnp.ones((8, 32, 8, 8))).shape
        (8, 2048)
    """

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        for name, value in (("start_dim", start_dim), ("end_dim", end_dim)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Flatten {name} must be an int, got {value!r}")
        self.start_dim = start_dim
        self.end_dim = end_dim

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(N, ...) -> (N, prod(...))`` with the defaults."""
        shape = tuple(getattr(x, "shape", ()))
        ndim = len(shape)
        start = self.start_dim + ndim if self.start_dim < 0 else self.start_dim
        end = self.end_dim + ndim if self.end_dim < 0 else self.end_dim
        if not (0 <= start < ndim and 0 <= end < ndim) or start > end:
            raise ValueError(
                f"Flatten cannot flatten dims {self.start_dim}..{self.end_dim} of a "
                f"{ndim}D input {shape}"
            )
        return x.reshape(*shape[:start], math.prod(shape[start : end + 1]), *shape[end + 1 :])

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
