"""``Conv2d``: ``torch.nn.Conv2d`` as a Flax NNX module over ``jspatial.conv``."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jspatial import _args
from jspatial.conv import ALGORITHMS, conv2d_checked, conv_geometry
from jspatial.layers.module import Module, positive_int

_OP = "Conv2d"


Initializer = Callable[[jax.Array, tuple[int, ...], Any], jax.Array]


def he_normal_oihw(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """Kaiming/He normal for an OIHW kernel: ``N(0, 2 / fan_in)``, ``fan_in = I * kh * kw``.

    Written out rather than ``jax.nn.initializers.he_normal()``: that one assumes
    an HWIO kernel (``fan_in`` from the wrong axes here) and draws from a truncated
    normal, where PyTorch's ``kaiming_normal_`` draws from a plain normal.
    """
    fan_in = math.prod(shape[1:])
    return jax.random.normal(key, shape, dtype) * jnp.asarray(math.sqrt(2.0 / fan_in), dtype)


class Conv2d(Module):
    """2-D convolution layer with ``torch.nn.Conv2d``'s signature, parameters and semantics.

    Shapes: input ``(N, C_in, H, W)`` -> output ``(N, C_out, H_out, W_out)``, with
    ``H_out = floor((H + pad_top + pad_bottom - dilation * (kh - 1) - 1) / stride) + 1``.

    Parameters: ``weight`` ``(C_out, C_in // groups, kh, kw)`` (OIHW, He-normal:
    std ``sqrt(2 / fan_in)``, ``fan_in = C_in // groups * kh * kw``) and ``bias``
    ``(C_out,)`` zeros, or ``None`` with ``bias=False``.

    Cost: ``N * C_out * H_out * W_out * C_in / groups * kh * kw`` multiply-accumulates
    (``jspatial.conv2d_macs``) and ``C_out * C_in / groups * kh * kw (+ C_out)`` parameters.

    Args:
        in_channels, out_channels: channel counts, both divisible by ``groups``.
        kernel_size: int or ``(kh, kw)``.
        stride: int or ``(sh, sw)``.
        padding: int, ``(ph, pw)``, ``((top, bottom), (left, right))``, ``'valid'``
            or ``'same'`` (stride 1); stored as ``((top, bottom), (left, right))``.
        bias: whether to learn an additive bias.
        dilation: int or ``(dh, dw)``.
        groups: number of independent channel groups (``in_channels`` = depthwise).
        dtype: computation dtype (input and parameters are cast to it); ``None``
            computes in the input's dtype. Sums are always accumulated in float32.
        param_dtype: dtype the parameters are stored in.
        kernel_init: ``kernel_init(key, shape, dtype)`` for ``weight``; default He normal.
        algorithm: ``'auto'``, ``'direct'``, ``'winograd'`` or ``'im2col'``, as in
            ``jspatial.conv2d``.
        rngs: ``nnx.Rngs`` supplying the ``params`` key.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from jspatial.layers import Conv2d
        >>> conv = Conv2d(3, 64, 3, padding=1, rngs=nnx.Rngs(0))
        >>> conv
        Conv2d(3, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
        >>> conv(jnp.ones((2, 3, 32, 32))).shape
        (2, 64, 32, 32)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        bias: bool = True,
        *,
        dilation: Any = 1,
        groups: int = 1,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        kernel_init: Initializer | None = None,
        algorithm: str = "auto",
        rngs: nnx.Rngs,
    ):
        self.in_channels = positive_int(in_channels, _OP, "in_channels")
        self.out_channels = positive_int(out_channels, _OP, "out_channels")
        self.kernel_size = _args.pair(kernel_size, _OP, "kernel_size")
        self.stride = _args.pair(stride, _OP, "stride")
        self.dilation = _args.pair(dilation, _OP, "dilation")
        self.padding = _args.conv_padding(
            padding, self.kernel_size, self.stride, self.dilation, _OP
        )
        self.groups = _args.check_groups(self.in_channels, self.out_channels, groups, _OP)
        if not isinstance(bias, bool):
            raise TypeError(f"{_OP} bias must be a bool, got {bias!r}")
        if not isinstance(rngs, nnx.Rngs):
            raise TypeError(
                f"{_OP} rngs must be an nnx.Rngs (e.g. rngs=nnx.Rngs(0)), got {type(rngs).__name__}"
            )
        if algorithm not in ALGORITHMS:
            raise ValueError(f"{_OP} algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        self.algorithm = algorithm
        self.dtype = dtype
        self.param_dtype = param_dtype

        shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        init = he_normal_oihw if kernel_init is None else kernel_init
        weight = jnp.asarray(init(rngs.params(), shape, param_dtype), param_dtype)
        if weight.shape != shape:
            raise ValueError(
                f"{_OP} kernel_init returned shape {weight.shape}, expected {shape} "
                "(out_channels, in_channels // groups, kh, kw)"
            )
        self.weight = nnx.Param(weight)
        self.bias = nnx.Param(jnp.zeros((self.out_channels,), param_dtype)) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(N, C_in, H, W) -> (N, C_out, H_out, W_out)``."""
        weight = self.weight[...]
        bias = None if self.bias is None else self.bias[...]
        # Validate outside the jit, so that a bad input raises the core's message
        # as is (raised while tracing, JAX would append a note about its frames),
        # and before the cast to ``dtype``, which would hide an integer input.
        conv_geometry(x, weight, bias, self.stride, self.padding, self.dilation, self.groups, _OP)
        if self.dtype is not None:
            x = x.astype(self.dtype)
            weight = weight.astype(self.dtype)
            bias = None if bias is None else bias.astype(self.dtype)
        return conv2d_checked(
            x, weight, bias, self.stride, self.padding, self.dilation, self.groups,
            op=_OP, algorithm=self.algorithm,
        )  # fmt: skip

    def extra_repr(self) -> str:
        parts = [
            f"{self.in_channels}, {self.out_channels}",
            f"kernel_size={self.kernel_size}",
            f"stride={self.stride}",
        ]
        (top, bottom), (left, right) = self.padding
        if (top, bottom, left, right) != (0, 0, 0, 0):
            symmetric = top == bottom and left == right
            parts.append(f"padding={(top, left) if symmetric else self.padding}")
        if self.dilation != (1, 1):
            parts.append(f"dilation={self.dilation}")
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        if self.bias is None:
            parts.append("bias=False")
        return ", ".join(parts)
