"""Shape, parameter, cost and receptive-field calculators.

These answer the questions one asks before running a network: how big is each
activation, how many weights, how many multiply-accumulates. They follow the
same formulas as the ops, so ``conv2d(x, w).shape == conv2d_output_shape(...)``.

Worked values:

>>> conv_output_size(224, kernel_size=3, stride=2)     # the classic off-by-one
111
>>> conv2d_params(3, 64, 3)
1792
>>> receptive_field([(3, 1), (2, 2), (3, 1), (3, 1)])  # conv3, maxpool2, conv3, conv3
12
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import jax.numpy as jnp

from jspatial import _args


def _side_pads(padding: Any, name: str) -> tuple[int, int]:
    if isinstance(padding, (tuple, list)):
        lo, hi = _args.pair(padding, name, "padding", minimum=0)
        return lo, hi
    p = _args.pair(padding, name, "padding", minimum=0)[0]
    return p, p


def conv_output_size(
    size: int,
    kernel_size: int,
    stride: int = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int = 1,
    ceil_mode: bool = False,
) -> int:
    """Output length of one spatial axis of a convolution or pooling window.

    ``floor((size + pad_lo + pad_hi - dilation * (kernel_size - 1) - 1) / stride) + 1``.
    ``padding`` is the amount on each side, or a ``(lo, hi)`` pair. With
    ``ceil_mode`` the division rounds up, but, as in PyTorch, a last window that
    would start at or beyond ``size + pad_lo`` (entirely in the right padding) is
    dropped.

    >>> conv_output_size(32, 3, padding=1), conv_output_size(5, 2, stride=2, ceil_mode=True)
    (32, 3)
    """
    name = "conv_output_size"
    k = _args.pair(kernel_size, name, "kernel_size")[0]
    s = _args.pair(stride, name, "stride")[0]
    d = _args.pair(dilation, name, "dilation")[0]
    lo, hi = _side_pads(padding, name)
    span = size + lo + hi - d * (k - 1) - 1
    if span < 0:
        raise ValueError(
            f"{name} kernel {k} (dilated to {d * (k - 1) + 1}) does not fit the padded input "
            f"{size + lo + hi}"
        )
    if not ceil_mode:
        return span // s + 1
    out = -(-span // s) + 1
    if (out - 1) * s >= size + lo:
        out -= 1
    return out


def output_hw(hw, kernel, stride, padding, dilation, ceil_mode=False) -> tuple[int, int]:
    """``(H_out, W_out)`` from canonical ``(h, w)`` pairs (``padding`` per axis: int or pair)."""
    h, w = (
        conv_output_size(*axis, ceil_mode=ceil_mode)
        for axis in zip(hw, kernel, stride, padding, dilation)
    )
    return h, w


def conv2d_output_shape(
    input_shape: Sequence[int],
    out_channels: int,
    kernel_size: Any,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
) -> tuple[int, int, int, int]:
    """``(N, C_out, H_out, W_out)`` of ``conv2d`` on an ``(N, C, H, W)`` input.

    >>> conv2d_output_shape((32, 3, 128, 128), 64, kernel_size=5, stride=2, padding=2)
    (32, 64, 64, 64)
    """
    name = "conv2d_output_shape"
    n, _, h, w = _input_shape(input_shape, name)
    kernel = _args.pair(kernel_size, name, "kernel_size")
    strides = _args.pair(stride, name, "stride")
    dil = _args.pair(dilation, name, "dilation")
    pads = _args.conv_padding(padding, kernel, strides, dil, name)
    return (n, out_channels, *output_hw((h, w), kernel, strides, pads, dil))


def pool2d_output_shape(
    input_shape: Sequence[int],
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
) -> tuple[int, int, int, int]:
    """``(N, C, H_out, W_out)`` of ``max_pool2d``/``avg_pool2d``; stride defaults to the kernel.

    >>> pool2d_output_shape((1, 64, 112, 112), 3, stride=2, padding=1)
    (1, 64, 56, 56)
    """
    name = "pool2d_output_shape"
    n, c, h, w = _input_shape(input_shape, name)
    kernel, strides, pads, dil = _args.pool_params(kernel_size, stride, padding, dilation, name)
    return (n, c, *output_hw((h, w), kernel, strides, pads, dil, ceil_mode))


def conv2d_macs(
    input_shape: Sequence[int],
    out_channels: int,
    kernel_size: Any,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
) -> int:
    """Multiply-accumulates of ``conv2d`` for the whole batch (bias adds not counted).

    ``N * C_out * H_out * W_out * (C_in / groups) * kh * kw``: every output cell is
    a dot product over one window of every input channel in its group. FLOPs are
    about twice this.

    >>> conv2d_macs((16, 64, 56, 56), 128, 3, padding=1)
    3699376128
    """
    n, c_out, ho, wo = conv2d_output_shape(
        input_shape, out_channels, kernel_size, stride, padding, dilation
    )
    kh, kw = _args.pair(kernel_size, "conv2d_macs", "kernel_size")
    c_in = _input_shape(input_shape, "conv2d_macs")[1]
    _args.check_groups(c_in, out_channels, groups, "conv2d_macs")
    return n * c_out * ho * wo * (c_in // groups) * kh * kw


def conv2d_params(
    in_channels: int, out_channels: int, kernel_size: Any, bias: bool = True, groups: int = 1
) -> int:
    """Number of trainable parameters of a ``Conv2d``: ``C_out * C_in/groups * kh * kw (+ C_out)``.

    Compare a dense layer from a 224x224x3 image to 64 units: 9,633,856 parameters.

    >>> conv2d_params(3, 64, 3), conv2d_params(64, 128, 3)
    (1792, 73856)
    """
    kh, kw = _args.pair(kernel_size, "conv2d_params", "kernel_size")
    _args.check_groups(in_channels, out_channels, groups, "conv2d_params")
    return out_channels * (in_channels // groups) * kh * kw + (out_channels if bias else 0)


def activation_bytes(shape: Sequence[int], dtype: Any = "float32") -> int:
    """Bytes needed to hold one tensor of ``shape`` and ``dtype``.

    >>> activation_bytes((64, 256, 112, 112))
    822083584
    """
    return math.prod(int(s) for s in shape) * jnp.dtype(dtype).itemsize


def receptive_field(layers: Iterable[tuple[int, int]]) -> int:
    """Receptive field (in input pixels) of a stack of ``(kernel_size, stride)`` layers.

    Each layer widens the field by ``(k - 1)`` times the product of the strides
    before it: ``r = 1 + sum_l (k_l - 1) * prod_{m<l} s_m``.

    >>> receptive_field([(3, 1), (3, 1)]), receptive_field([(3, 1), (2, 2), (3, 1), (3, 1)])
    (5, 12)
    """
    field, jump = 1, 1
    for i, layer in enumerate(layers):
        if not (isinstance(layer, (tuple, list)) and len(layer) == 2):
            raise ValueError(
                f"receptive_field layers must be (kernel_size, stride) pairs, got {layer!r} "
                f"at position {i}"
            )
        k, s = (_args.pair(v, "receptive_field", n)[0] for v, n in zip(layer, ("kernel", "stride")))
        field += (k - 1) * jump
        jump *= s
    return field


def _input_shape(shape: Sequence[int], name: str) -> tuple[int, int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4:
        raise ValueError(
            f"{name} expected a 4D input shape (batch, channels, height, width), "
            f"got {len(shape)}D: {shape}"
        )
    return shape  # type: ignore[return-value]
