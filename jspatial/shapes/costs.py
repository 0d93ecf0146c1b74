"""Costs: parameter counts, multiply-accumulates and activation memory.

The MACs count the dot products an op computes for the whole batch (FLOPs are about
twice); the parameters are those of the layer with the same arguments. Every calculator
takes ``explain=True`` and prints its formula with the numbers put in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp

from jspatial import _args
from jspatial.shapes.sizes import (
    _canonical,
    _conv2d_shape_lines,
    _conv_transpose_shape_lines,
    _input_shape,
    _print,
)


def conv2d_macs(
    input_shape: Sequence[int],
    out_channels: int,
    kernel_size: Any,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    *,
    explain: bool = False,
    data_format: str = "NCHW",
) -> int:
    """Multiply-accumulates of ``conv2d`` for the whole batch (bias adds not counted).

    ``N * C_out * H_out * W_out * (C_in / groups) * kh * kw``: every output cell is
    a dot product over one window of every input channel in its group. FLOPs are
    about twice this.

    >>> conv2d_macs((16, 64, 56, 56), 128, 3, padding=1)
    3699376128
    >>> _ = conv2d_macs((2, 8, 9, 9), 4, 3, stride=2, groups=2, explain=True)
    H_out = floor((9 + 2*0 - 1*(3-1) - 1) / 2) + 1 = 4
    W_out = floor((9 + 2*0 - 1*(3-1) - 1) / 2) + 1 = 4
    MACs = N*C_out*H_out*W_out*(C_in/groups)*kh*kw = 2*4*4*4*(8/2)*3*3 = 4608
    """
    name = "conv2d_macs"
    shape, lines = _conv2d_shape_lines(
        name, input_shape, out_channels, kernel_size, stride, padding, dilation, data_format
    )
    n, c_out, ho, wo = _canonical(shape, data_format)
    kh, kw = _args.pair(kernel_size, name, "kernel_size")
    c_in = _input_shape(input_shape, name, data_format)[1]
    _args.check_groups(c_in, out_channels, groups, name)
    macs = n * c_out * ho * wo * (c_in // groups) * kh * kw
    if explain:
        numbers = f"{n}*{c_out}*{ho}*{wo}*({c_in}/{groups})*{kh}*{kw}"
        symbols = "N*C_out*H_out*W_out*(C_in/groups)*kh*kw"
        _print([*lines, f"MACs = {symbols} = {numbers} = {macs}"])
    return macs


def conv2d_params(
    in_channels: int,
    out_channels: int,
    kernel_size: Any,
    bias: bool = True,
    groups: int = 1,
    *,
    explain: bool = False,
) -> int:
    """Number of trainable parameters of a ``Conv2d``: ``C_out * C_in/groups * kh * kw (+ C_out)``.

    Compare a dense layer from a 224x224x3 image to 64 units: 9,633,856 parameters.

    >>> conv2d_params(3, 64, 3), conv2d_params(64, 128, 3)
    (1792, 73856)
    >>> _ = conv2d_params(3, 64, 3, explain=True)
    params = C_out*(C_in/groups)*kh*kw + C_out = 64*(3/1)*3*3 + 64 = 1792
    """
    return _kernel_params(
        "conv2d_params", in_channels, out_channels, kernel_size, bias, groups, explain,
        transposed=False,
    )  # fmt: skip


def _kernel_params(name, in_channels, out_channels, kernel_size, bias, groups, explain, *,
                   transposed):  # fmt: skip
    """Weights ``(C_out, C_in/groups, kh, kw)``, or ``(C_in, C_out/groups, kh, kw)`` when
    ``transposed``, plus ``C_out`` biases."""
    kh, kw = _args.pair(kernel_size, name, "kernel_size")
    _args.check_groups(in_channels, out_channels, groups, name)
    (a, sa), (b, sb) = ((in_channels, "C_in"), (out_channels, "C_out"))[:: 1 if transposed else -1]
    count = a * (b // groups) * kh * kw + (out_channels if bias else 0)
    if explain:
        symbols = f"{sa}*({sb}/groups)*kh*kw" + (" + C_out" if bias else "")
        numbers = f"{a}*({b}/{groups})*{kh}*{kw}" + (f" + {out_channels}" if bias else "")
        _print([f"params = {symbols} = {numbers} = {count}"])
    return count


def conv_transpose2d_macs(
    input_shape: Sequence[int],
    out_channels: int,
    kernel_size: Any,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    groups: int = 1,
    dilation: Any = 1,
    *,
    explain: bool = False,
    data_format: str = "NCHW",
) -> int:
    """Multiply-accumulates of ``conv_transpose2d`` for the whole batch (bias not counted).

    ``N * C_in * H_in * W_in * (C_out / groups) * kh * kw``: every input cell is
    scattered, through every tap, into the ``C_out / groups`` output channels of its
    group. Taps that land in the cropped ``padding`` are counted too (the op computes
    them), so the count does not depend on ``padding`` or ``stride``; they are
    checked all the same, as the op checks them. Arguments in ``torch``'s order
    (``groups`` before ``dilation``).

    >>> conv_transpose2d_macs((1, 64, 16, 16), 32, 4, stride=2, padding=1)
    8388608
    >>> _ = conv_transpose2d_macs((2, 8, 5, 5), 4, 3, groups=2, explain=True)
    MACs = N*C_in*H_in*W_in*(C_out/groups)*kh*kw = 2*8*5*5*(4/2)*3*3 = 7200
    """
    name = "conv_transpose2d_macs"
    _conv_transpose_shape_lines(
        name, input_shape, out_channels, kernel_size, stride, padding, output_padding, dilation,
        data_format,
    )  # fmt: skip
    n, c_in, h, w = _input_shape(input_shape, name, data_format)
    kh, kw = _args.pair(kernel_size, name, "kernel_size")
    _args.check_groups(c_in, out_channels, groups, name)
    macs = n * c_in * h * w * (out_channels // groups) * kh * kw
    if explain:
        symbols = "N*C_in*H_in*W_in*(C_out/groups)*kh*kw"
        numbers = f"{n}*{c_in}*{h}*{w}*({out_channels}/{groups})*{kh}*{kw}"
        _print([f"MACs = {symbols} = {numbers} = {macs}"])
    return macs


def conv_transpose2d_params(
    in_channels: int,
    out_channels: int,
    kernel_size: Any,
    bias: bool = True,
    groups: int = 1,
    *,
    explain: bool = False,
) -> int:
    """Trainable parameters of a ``ConvTranspose2d``: ``C_in * C_out/groups * kh * kw (+ C_out)``.

    The weight is ``(C_in, C_out // groups, kh, kw)``, PyTorch's layout for the
    transposed convolution, so the count equals that of the ``Conv2d`` it transposes.

    >>> conv_transpose2d_params(64, 32, 4, explain=True)
    params = C_in*(C_out/groups)*kh*kw + C_out = 64*(32/1)*4*4 + 32 = 32800
    32800
    """
    return _kernel_params(
        "conv_transpose2d_params", in_channels, out_channels, kernel_size, bias, groups,
        explain, transposed=True,
    )  # fmt: skip


def activation_bytes(shape: Sequence[int], dtype: Any = "float32", *, explain: bool = False) -> int:
    """Bytes needed to hold one tensor of ``shape`` and ``dtype``.

    >>> activation_bytes((64, 256, 112, 112))
    822083584
    >>> _ = activation_bytes((2, 64, 16, 16), "bfloat16", explain=True)
    bytes = prod(shape)*itemsize = 2*64*16*16*2 = 65536  (bfloat16)
    """
    dims = [int(s) for s in shape]
    dt = jnp.dtype(dtype)
    count = math.prod(dims) * dt.itemsize
    if explain:
        numbers = "*".join(str(s) for s in [*dims, dt.itemsize])
        _print([f"bytes = prod(shape)*itemsize = {numbers} = {count}  ({dt.name})"])
    return count
