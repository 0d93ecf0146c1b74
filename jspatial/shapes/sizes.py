"""Output sizes: the shape each op returns, from the input shape and the hyper-parameters.

``conv_output_size`` is the formula of one axis; the others apply it to both spatial axes
of an input shape (in ``data_format``) and check the arguments as the ops do. Every one
takes ``explain=True``: it then prints its formula with the numbers put in. The helpers
at the end (``_input_shape``, ``_print``, ...) are shared with ``costs`` and ``fields``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

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
