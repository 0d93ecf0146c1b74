"""Shape, parameter, cost and receptive-field calculators.

These answer the questions one asks before running a network: how big is each
activation, how many weights, how many multiply-accumulates. They follow the
same formulas as the ops, so ``conv2d(x, w).shape == conv2d_output_shape(...)``.

Every calculator takes ``explain=True``: it then prints its formula with the
numbers put in (one line per axis or term) and returns the same value as without.
The ones that take an input shape also take ``data_format``: ``'NCHW'`` (PyTorch's,
the default) or ``'NHWC'`` (channels last); the shape they return is in that layout.

Worked values:

>>> conv_output_size(224, kernel_size=3, stride=2)     # the classic off-by-one
111
>>> conv_output_size(224, 3, stride=2, padding=1, explain=True)
floor((224 + 2*1 - 1*(3-1) - 1) / 2) + 1 = 112
112
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
from jspatial import _windows as win


def _side_pads(padding: Any, name: str) -> tuple[int, int]:
    if isinstance(padding, (tuple, list)):
        lo, hi = _args.pair(padding, name, "padding", minimum=0)
        return lo, hi
    p = _args.pair(padding, name, "padding", minimum=0)[0]
    return p, p


def _print(lines: Iterable[str]) -> None:
    for line in lines:
        print(line)


def _factor(text: str) -> str:
    """``text`` as a factor of a product: parenthesised when it is itself a product."""
    return f"({text})" if "*" in text or "/" in text else text


def conv_output_size(
    size: int,
    kernel_size: int,
    stride: int = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int = 1,
    ceil_mode: bool = False,
    *,
    explain: bool = False,
) -> int:
    """Output length of one spatial axis of a convolution or pooling window.

    ``floor((size + pad_lo + pad_hi - dilation * (kernel_size - 1) - 1) / stride) + 1``.
    ``padding`` is the amount on each side, or a ``(lo, hi)`` pair. With
    ``ceil_mode`` the division rounds up, but, as in PyTorch, a last window that
    would start at or beyond ``size + pad_lo`` (entirely in the right padding) is
    dropped. ``explain=True`` prints the formula with the numbers put in.

    >>> conv_output_size(32, 3, padding=1), conv_output_size(5, 2, stride=2, ceil_mode=True)
    (32, 3)
    >>> conv_output_size(5, 2, stride=2, padding=1, ceil_mode=True, explain=True)
    ceil((5 + 2*1 - 1*(2-1) - 1) / 2) + 1 - 1 = 3  (the last window would start in the padding)
    3
    """
    out, expr = _axis_size(
        "conv_output_size", size, kernel_size, stride, padding, dilation, ceil_mode
    )
    if explain:
        _print([f"{expr} = {out}" + _dropped_note(expr)])
    return out


def _dropped_note(expr: str) -> str:
    return "  (the last window would start in the padding)" if expr.endswith("+ 1 - 1") else ""


def _axis_size(
    name: str,
    size: int,
    kernel_size: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    ceil_mode: bool,
) -> tuple[int, str]:
    """One axis's output length and its formula with the numbers put in."""
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
    pads = f"2*{lo}" if lo == hi else f"{lo} + {hi}"
    inner = f"({size} + {pads} - {d}*({k}-1) - 1) / {s}"
    if not ceil_mode:
        return span // s + 1, f"floor({inner}) + 1"
    out = -(-span // s) + 1
    expr = f"ceil({inner}) + 1"
    if (out - 1) * s >= size + lo:
        out -= 1
        expr += " - 1"
    return out, expr


def output_hw(hw, kernel, stride, padding, dilation, ceil_mode=False) -> tuple[int, int]:
    """``(H_out, W_out)`` from canonical ``(h, w)`` pairs (``padding`` per axis: int or pair)."""
    h, w = (
        conv_output_size(*axis, ceil_mode=ceil_mode)
        for axis in zip(hw, kernel, stride, padding, dilation)
    )
    return h, w


def transposed_size(size, kernel, stride, padding, output_padding, dilation) -> int:
    """One axis of a transposed convolution's output: the input size of the ``conv2d`` it
    transposes (the formula of ``conv_transpose2d_output_shape``)."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def _output_hw_lines(
    name: str, hw, kernel, stride, padding, dilation, ceil_mode=False
) -> tuple[tuple[int, int], list[str]]:
    sizes, lines = [], []
    for axis, args in zip("HW", zip(hw, kernel, stride, padding, dilation)):
        out, expr = _axis_size(name, *args, ceil_mode)
        sizes.append(out)
        lines.append(f"{axis}_out = {expr} = {out}" + _dropped_note(expr))
    return (sizes[0], sizes[1]), lines


def conv2d_output_shape(
    input_shape: Sequence[int],
    out_channels: int,
    kernel_size: Any,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    *,
    explain: bool = False,
    data_format: str = "NCHW",
) -> tuple[int, int, int, int]:
    """``(N, C_out, H_out, W_out)`` of ``conv2d`` on an ``(N, C, H, W)`` input; with
    ``data_format='NHWC'``, ``(N, H_out, W_out, C_out)`` of an ``(N, H, W, C)`` input.

    >>> conv2d_output_shape((32, 3, 128, 128), 64, kernel_size=5, stride=2, padding=2)
    (32, 64, 64, 64)
    >>> _ = conv2d_output_shape((1, 3, 32, 24), 8, (3, 1), stride=2, explain=True)
    H_out = floor((32 + 2*0 - 1*(3-1) - 1) / 2) + 1 = 15
    W_out = floor((24 + 2*0 - 1*(1-1) - 1) / 2) + 1 = 12
    shape = (N, C_out, H_out, W_out) = (1, 8, 15, 12)
    >>> conv2d_output_shape((1, 32, 24, 3), 8, (3, 1), stride=2, data_format="NHWC")
    (1, 15, 12, 8)
    """
    name = "conv2d_output_shape"
    shape, lines = _conv2d_shape_lines(
        name, input_shape, out_channels, kernel_size, stride, padding, dilation, data_format
    )
    if explain:
        _print([*lines, f"shape = {_symbols('C_out', data_format)} = {shape}"])
    return shape


def _conv2d_shape_lines(
    name, input_shape, out_channels, kernel_size, stride, padding, dilation, data_format
):
    n, _, h, w = _input_shape(input_shape, name, data_format)
    kernel = _args.pair(kernel_size, name, "kernel_size")
    strides = _args.pair(stride, name, "stride")
    dil = _args.pair(dilation, name, "dilation")
    pads = _args.conv_padding(padding, kernel, strides, dil, name)
    hw, lines = _output_hw_lines(name, (h, w), kernel, strides, pads, dil)
    return win.image_shape(n, out_channels, hw, data_format), lines


def pool2d_output_shape(
    input_shape: Sequence[int],
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    *,
    explain: bool = False,
    data_format: str = "NCHW",
) -> tuple[int, int, int, int]:
    """``(N, C, H_out, W_out)`` of ``max_pool2d``/``avg_pool2d``; stride defaults to the kernel.

    With ``data_format='NHWC'`` the input shape is ``(N, H, W, C)`` and the result
    ``(N, H_out, W_out, C)``.

    >>> pool2d_output_shape((1, 64, 112, 112), 3, stride=2, padding=1)
    (1, 64, 56, 56)
    >>> _ = pool2d_output_shape((1, 64, 7, 7), 2, ceil_mode=True, explain=True)
    H_out = ceil((7 + 2*0 - 1*(2-1) - 1) / 2) + 1 = 4
    W_out = ceil((7 + 2*0 - 1*(2-1) - 1) / 2) + 1 = 4
    shape = (N, C, H_out, W_out) = (1, 64, 4, 4)
    """
    name = "pool2d_output_shape"
    n, c, h, w = _input_shape(input_shape, name, data_format)
    kernel, strides, pads, dil = _args.pool_params(kernel_size, stride, padding, dilation, name)
    hw, lines = _output_hw_lines(name, (h, w), kernel, strides, pads, dil, ceil_mode)
    shape = win.image_shape(n, c, hw, data_format)
    if explain:
        _print([*lines, f"shape = {_symbols('C', data_format)} = {shape}"])
    return shape


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


# ------------------------------------------------------------------ transposed convolution


def conv_transpose2d_output_shape(
    input_shape: Sequence[int],
    out_channels: int,
    kernel_size: Any,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    dilation: Any = 1,
    *,
    explain: bool = False,
    data_format: str = "NCHW",
) -> tuple[int, int, int, int]:
    """``(N, C_out, H_out, W_out)`` of ``conv_transpose2d`` on an ``(N, C_in, H, W)`` input
    (with ``data_format='NHWC'``: ``(N, H_out, W_out, C_out)`` of ``(N, H, W, C_in)``).

    ``H_out = (H - 1) * stride - 2 * padding + dilation * (kh - 1) + output_padding + 1``:
    the inverse of ``conv_output_size``, with ``output_padding`` choosing among the
    input sizes a strided convolution maps to the same output. As in PyTorch,
    ``output_padding`` must be smaller than ``stride`` or ``dilation`` (per axis), and
    ``padding`` is an int or an ``(ph, pw)`` pair.

    >>> conv_transpose2d_output_shape((1, 64, 16, 16), 32, 4, stride=2, padding=1)
    (1, 32, 32, 32)
    >>> _ = conv_transpose2d_output_shape((1, 8, 7, 7), 4, 3, 2, 1, output_padding=1, explain=True)
    H_out = (7-1)*2 - 2*1 + 1*(3-1) + 1 + 1 = 14
    W_out = (7-1)*2 - 2*1 + 1*(3-1) + 1 + 1 = 14
    shape = (N, C_out, H_out, W_out) = (1, 4, 14, 14)
    """
    name = "conv_transpose2d_output_shape"
    shape, lines = _conv_transpose_shape_lines(
        name, input_shape, out_channels, kernel_size, stride, padding, output_padding, dilation,
        data_format,
    )  # fmt: skip
    if explain:
        _print([*lines, f"shape = {_symbols('C_out', data_format)} = {shape}"])
    return shape


def _conv_transpose_shape_lines(
    name, input_shape, out_channels, kernel_size, stride, padding, output_padding, dilation,
    data_format="NCHW",
):  # fmt: skip
    n, _, h, w = _input_shape(input_shape, name, data_format)
    kernel = _args.pair(kernel_size, name, "kernel_size")
    strides = _args.pair(stride, name, "stride")
    dil = _args.pair(dilation, name, "dilation")
    pads = _args.pair(padding, name, "padding", minimum=0)
    out_pads = _args.pair(output_padding, name, "output_padding", minimum=0)
    if any(op >= max(s, d) for op, s, d in zip(out_pads, strides, dil)):
        raise ValueError(
            f"{name} output_padding must be smaller than either stride or dilation, got "
            f"output_padding={out_pads}, stride={strides}, dilation={dil}"
        )
    sizes, lines = [], []
    for axis, size, k, s, p, op, d in zip("HW", (h, w), kernel, strides, pads, out_pads, dil):
        out = transposed_size(size, k, s, p, op, d)
        sizes.append(out)
        lines.append(f"{axis}_out = ({size}-1)*{s} - 2*{p} + {d}*({k}-1) + {op} + 1 = {out}")
    if min(sizes) < 1:
        raise ValueError(
            f"{name} output size {sizes[0]}x{sizes[1]} is too small (input {h}x{w}, "
            f"kernel_size={kernel}, stride={strides}, padding={pads}, dilation={dil})"
        )
    return win.image_shape(n, out_channels, sizes, data_format), lines


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


# ------------------------------------------------------------------------ adaptive pooling


def adaptive_pool2d_output_shape(
    input_shape: Sequence[int],
    output_size: Any,
    *,
    explain: bool = False,
    data_format: str = "NCHW",
) -> tuple[int, int, int, int]:
    """``(N, C, H_out, W_out)`` of ``adaptive_avg_pool2d``/``adaptive_max_pool2d``
    (``(N, H_out, W_out, C)`` of an ``(N, H, W, C)`` input with ``data_format='NHWC'``).

    ``output_size`` is an int or an ``(h, w)`` pair whose entries may be ``None``
    (keep that axis's input size), as in PyTorch; sizes must be ``>= 0``.

    >>> adaptive_pool2d_output_shape((8, 512, 7, 9), 1)
    (8, 512, 1, 1)
    >>> _ = adaptive_pool2d_output_shape((8, 512, 7, 9), (3, None), explain=True)
    H_out = 3  (output_size)
    W_out = 9  (None keeps the input size)
    shape = (N, C, H_out, W_out) = (8, 512, 3, 9)
    """
    name = "adaptive_pool2d_output_shape"
    n, c, h, w = _input_shape(input_shape, name, data_format)
    sizes = _args.adaptive_output_size(output_size, name)
    out, lines = [], []
    for axis, size, requested in zip("HW", (h, w), sizes):
        if requested is None:
            out.append(size)
            lines.append(f"{axis}_out = {size}  (None keeps the input size)")
            continue
        out.append(requested)
        lines.append(f"{axis}_out = {requested}  (output_size)")
    shape = win.image_shape(n, c, out, data_format)
    if explain:
        _print([*lines, f"shape = {_symbols('C', data_format)} = {shape}"])
    return shape


# --------------------------------------------------------------------- memory and fields


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


def receptive_field(layers: Iterable[tuple[int, int]], *, explain: bool = False) -> int:
    """Receptive field (in input pixels) of a stack of ``(kernel_size, stride)`` layers.

    Each layer widens the field by ``(k - 1)`` times the product of the strides
    before it (its *jump*, the input distance between neighbouring cells of its
    input): ``r = 1 + sum_l (k_l - 1) * prod_{m<l} s_m``. A dilated kernel counts
    as its extent ``dilation * (k - 1) + 1``. ``explain=True`` prints one line per
    layer, ``r_l = r_{l-1} + (k_l-1)*(s_1*...*s_{l-1})``.

    >>> receptive_field([(3, 1), (3, 1)]), receptive_field([(3, 1), (2, 2), (3, 1), (3, 1)])
    (5, 12)
    >>> _ = receptive_field([(3, 1), (2, 2), (3, 1)], explain=True)
    r_1 = 1 + (3-1)*1 = 3
    r_2 = 3 + (2-1)*1 = 4
    r_3 = 4 + (3-1)*(1*2) = 8
    """
    field, jump = 1, 1
    strides: list[int] = []
    lines = []
    for i, layer in enumerate(layers):
        if not (isinstance(layer, (tuple, list)) and len(layer) == 2):
            raise ValueError(
                f"receptive_field layers must be (kernel_size, stride) pairs, got {layer!r} "
                f"at position {i}"
            )
        k, s = (_args.pair(v, "receptive_field", n)[0] for v, n in zip(layer, ("kernel", "stride")))
        new = field + (k - 1) * jump
        jump_text = _factor("*".join(str(v) for v in strides) or "1")
        lines.append(f"r_{i + 1} = {field} + ({k}-1)*{jump_text} = {new}")
        field = new
        jump *= s
        strides.append(s)
    if explain:
        _print(lines or ["r = 1  (no layers)"])
    return field


def _input_shape(
    shape: Sequence[int], name: str, data_format: str = "NCHW"
) -> tuple[int, int, int, int]:
    """A 4-D input shape in ``data_format``, checked, as ``(N, C, H, W)``."""
    data_format = _args.check_data_format(data_format, name)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4:
        axes = _args._AXES[data_format]
        raise ValueError(f"{name} expected a 4D input shape ({axes}), got {len(shape)}D: {shape}")
    return _canonical(shape, data_format)


def _canonical(shape: tuple[int, ...], data_format: str) -> tuple[int, int, int, int]:
    """A 4-D ``shape`` in ``data_format`` as ``(N, C, H, W)``."""
    n, c = shape[0], shape[_args.channel_axis(data_format)]
    h, w = _args.spatial_shape(shape, data_format)
    return n, c, h, w


def _symbols(channels: str, data_format: str) -> str:
    """The names of an output shape's axes, ``(N, C_out, H_out, W_out)`` or channels last."""
    return str(win.image_shape("N", channels, ("H_out", "W_out"), data_format)).replace("'", "")
