"""Every check of ``conv2d`` and ``conv_transpose2d``, and what they hand to the loops.

``conv2d_args`` and ``conv_transpose2d_args`` are the one validating path of each op: the
public functions call them, the layers call them with their own name (``op="Conv2d"``) and
``jspatial.steps`` calls them before running a loop tap by tap. They take the arguments as
given (arrays or not, batched or not), raise a message naming the op and the argument, and
return a ``ConvArgs``: the arrays (4-D, in the caller's ``data_format``), the window
geometry (``jspatial._windows.Geometry``) and the static choices. Everything runs outside
any jit, so a bad argument raises this message as is, and before a cast to a layer's
``dtype``, which would hide an integer input.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jspatial import _args, _tuning, winograd
from jspatial import _windows as win
from jspatial.pad import _check_pad, _pad_axes, _pad_normalised
from jspatial.shapes import output_hw, transposed_size

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
ALGORITHMS = ("auto", "direct", "winograd", "im2col")


class ConvArgs(NamedTuple):
    """A checked convolution, ready for its loop.

    Attributes:
        x: the input, 4-D in ``geom.layout`` (an unbatched input has gained a batch axis).
        weight: OIHW (``conv2d``) or ``(C_in, C_out // groups, kh, kw)``
            (``conv_transpose2d``), in ``x``'s dtype.
        bias: ``(C_out,)`` or ``None``.
        geom: the window geometry of the convolution (for ``conv_transpose2d``, of the
            ``conv2d`` it transposes: its input side is our output).
        groups: the channel groups.
        method: ``'direct'``, ``'im2col'`` or ``'winograd'`` (``conv2d``); ``'direct'``
            for ``conv_transpose2d``.
        gpu_method: the method a GPU runs where it has no kernel, or ``None`` where no
            GPU version is staged (``jspatial._accel.dispatch``).
        unbatched: the input was unbatched: ``finish`` removes the batch axis again.
    """

    x: Any
    weight: Any
    bias: Any
    geom: win.Geometry
    groups: int
    method: str = "direct"
    gpu_method: str | None = None
    unbatched: bool = False

    def finish(self, y: jax.Array) -> jax.Array:
        """The op's result from its loop's: the bias added in the loop's dtype, cast to
        ``x``'s dtype, without the batch axis an unbatched input gained."""
        y = output(y, self.bias, self.geom.layout, self.x.dtype)
        return _args.unbatch(y, self.unbatched)


def output(y, bias, layout, dtype):
    """A convolution's result from its loop's sum ``y`` (in the accumulation dtype): ``y +
    bias`` over the channel axis of ``layout`` (the last one in NHWC), then cast to
    ``dtype``. ``jspatial.steps`` ends its taps with this too, so that its last output is
    the op's, bit for bit."""
    if bias is not None:
        bias = bias.astype(y.dtype)
        y = y + (bias[:, None, None] if layout == "NCHW" else bias)
    return y.astype(dtype)


def _arrays(x, weight, bias, op, data_format):
    """Both convolutions' arrays checked, in this order: the layout, the rank (an
    unbatched input gains a batch axis), the input, the weight, the bias."""
    data_format = _args.check_data_format(data_format, op)
    x, unbatched = _args.batched(x, op, data_format)
    x = _args.check_input(x, op, integers=True, data_format=data_format)
    weight = _args.check_operand(weight, x, op, "weight")
    bias = _args.check_bias(bias, op, x)
    return data_format, x, weight, bias, unbatched


def conv2d_args(
    x, weight, bias, stride, padding, dilation, groups, *, op, algorithm="auto", dtype=None,
    padding_mode="zeros", data_format="NCHW",
) -> ConvArgs:  # fmt: skip
    """``conv2d``'s arguments checked, with errors attributed to ``op``.

    ``Conv2d`` passes its compute ``dtype``, ``padding_mode`` and ``data_format`` too.
    Non-zero padding modes pad with ``jspatial.pad`` (on the spatial axes of
    ``data_format``) and then convolve unpadded, as torch does.
    """
    data_format, x, weight, bias, unbatched = _arrays(x, weight, bias, op, data_format)
    geom, groups = _conv_geometry(
        x, weight, bias, stride, padding, dilation, groups, op, data_format
    )
    integer = jnp.issubdtype(jnp.result_type(x), jnp.integer)
    c_in = x.shape[_args.channel_axis(data_format)]
    method = choose_method(algorithm, geom, groups, c_in, weight.shape[0], op, integer)
    if dtype is not None:
        x, weight = x.astype(dtype), weight.astype(dtype)
        bias = None if bias is None else bias.astype(dtype)
    if padding_mode != "zeros":
        (top, bottom), (left, right) = geom.padding
        pads = _check_pad(x.shape, (left, right, top, bottom), padding_mode, op, data_format)
        x = _pad_normalised(x, pads, padding_mode, 0.0, _pad_axes(4, 2, data_format))
        in_hw = _args.spatial_shape(x.shape, data_format)
        geom = geom._replace(in_hw=in_hw, padding=((0, 0), (0, 0)))
    gpu_method = None
    if _tuning.STAGE_GPU:
        gpu_method = choose_method(algorithm, geom, groups, c_in, weight.shape[0], op, gpu=True)
    weight = weight.astype(x.dtype)
    return ConvArgs(x, weight, bias, geom, groups, method, gpu_method, unbatched)


def _check_weight_shape(weight, op, layout):
    w_shape = tuple(weight.shape)
    if len(w_shape) != 4:
        raise ValueError(f"{op} expected 4D weight {layout}, got {len(w_shape)}D: {w_shape}")
    return w_shape


def _conv_geometry(x, weight, bias, stride, padding, dilation, groups, op, data_format="NCHW"):
    """Validate ``conv2d``'s shapes and hyper-parameters; return the window geometry and
    ``groups``. ``x``, ``weight`` and ``bias`` are arrays already (``conv2d_args``)."""
    w_shape = _check_weight_shape(weight, op, "(out_channels, in_channels // groups, kh, kw)")
    c_in = x.shape[_args.channel_axis(data_format)]
    h, w = _args.spatial_shape(x.shape, data_format)
    c_out, c_per_group, kh, kw = w_shape
    groups = _args.check_groups(c_in, c_out, groups, op)
    if c_per_group * groups != c_in:
        raise ValueError(
            f"{op} expected {c_per_group * groups} input channels, got {c_in} "
            f"(weight {w_shape}, groups={groups}, input {tuple(x.shape)})"
        )
    if bias is not None and tuple(bias.shape) != (c_out,):
        raise ValueError(f"{op} expected bias of shape ({c_out},), got {tuple(bias.shape)}")
    kernel = (kh, kw)
    strides = _args.pair(stride, op, "stride")
    dil = _args.pair(dilation, op, "dilation")
    pads = _args.conv_padding(padding, kernel, strides, dil, op)
    padded = (h + sum(pads[0]), w + sum(pads[1]))
    _args.check_fits((h, w), padded, kernel, dil, op)
    out_hw = output_hw((h, w), kernel, strides, pads, dil)
    return win.Geometry((h, w), out_hw, kernel, strides, dil, pads, data_format), groups


def choose_method(algorithm, geom, groups, c_in, c_out, op, integer=False, gpu=False) -> str:
    """Resolve ``algorithm`` for one convolution; rejects a method that does not apply.

    ``'auto'`` uses the CPU's thresholds of ``jspatial._tuning``, or with ``gpu`` the
    GPU's (see there for the TPU). ``integer`` input never takes Winograd, whose
    transforms divide by 2.
    """
    _args.one_of(algorithm, ALGORITHMS, op, "algorithm")
    if integer and algorithm == "winograd":
        raise ValueError(f"{op} algorithm='winograd' needs floating-point input, got integers")
    if algorithm == "winograd" and not winograd._supports(geom, groups):
        raise ValueError(
            f"{op} algorithm='winograd' needs an ungrouped 3x3 kernel with stride 1 and "
            f"dilation 1, got kernel {geom.kernel}, stride {geom.stride}, "
            f"dilation {geom.dilation}, groups {groups}"
        )
    if algorithm == "im2col" and groups != 1:
        raise ValueError(f"{op} algorithm='im2col' needs groups=1, got groups={groups}")
    if algorithm != "auto":
        return algorithm
    if gpu:
        return (
            "im2col"
            if groups == 1 and c_in * geom.taps <= _tuning.GPU_IM2COL_MAX_DEPTH
            else "direct"
        )
    if (
        not integer
        and winograd._supports(geom, groups)
        and min(c_in, c_out) >= _tuning.WINOGRAD_MIN_CHANNELS
        and min(geom.out_hw) >= _tuning.WINOGRAD_MIN_SIZE
    ):
        return "winograd"
    if groups == 1 and c_in * geom.taps <= _tuning.IM2COL_MAX_DEPTH:
        return "im2col"
    return "direct"


def conv_transpose2d_args(
    x, weight, bias, stride, padding, output_padding, groups, dilation, *, op, dtype=None,
    data_format="NCHW",
) -> ConvArgs:  # fmt: skip
    """``conv_transpose2d``'s arguments checked, with errors attributed to ``op`` (the
    layer's path too), before the cast to ``dtype``."""
    data_format, x, weight, bias, unbatched = _arrays(x, weight, bias, op, data_format)
    geom, groups = _conv_transpose_geometry(
        x, weight, bias, stride, padding, output_padding, groups, dilation, op, data_format
    )
    if dtype is not None:
        x, weight = x.astype(dtype), weight.astype(dtype)
        bias = None if bias is None else bias.astype(dtype)
    return ConvArgs(x, weight.astype(x.dtype), bias, geom, groups, unbatched=unbatched)


def _conv_transpose_geometry(
    x, weight, bias, stride, padding, output_padding, groups, dilation, op, data_format="NCHW"
):
    """Validate ``conv_transpose2d``'s arguments; return the window geometry of the
    transposed ``conv2d`` (its input: our output, its output: our input) and ``groups``."""
    w_shape = _check_weight_shape(weight, op, "(in_channels, out_channels // groups, kh, kw)")
    c_in = x.shape[_args.channel_axis(data_format)]
    h, w = _args.spatial_shape(x.shape, data_format)
    w_in, c_per_group, kh, kw = w_shape
    if w_in != c_in:
        raise ValueError(
            f"{op} expected {w_in} input channels (weight {w_shape} is (in_channels, "
            f"out_channels // groups, kh, kw)), got {c_in} (input {tuple(x.shape)})"
        )
    groups = _args.positive_int(groups, op, "groups")
    if c_in % groups:  # C_out = (C_out // groups) * groups is always divisible
        raise ValueError(f"{op} groups={groups} must divide in_channels={c_in}")
    c_out = c_per_group * groups
    if bias is not None and tuple(bias.shape) != (c_out,):
        raise ValueError(f"{op} expected bias of shape ({c_out},), got {tuple(bias.shape)}")
    kernel = (kh, kw)
    strides = _args.pair(stride, op, "stride")
    dil = _args.pair(dilation, op, "dilation")
    pads = _args.pair(padding, op, "padding", minimum=0)
    out_pads = _args.output_padding(output_padding, strides, dil, op)
    out_hw = tuple(map(transposed_size, (h, w), kernel, strides, pads, out_pads, dil))
    if min(out_hw) < 1:
        raise ValueError(
            f"{op} output size {out_hw} is too small: input {(h, w)}, kernel {kernel}, "
            f"stride {strides}, padding {pads}, output_padding {out_pads}, dilation {dil}"
        )
    pads = tuple((p, p) for p in pads)
    return win.Geometry(out_hw, (h, w), kernel, strides, dil, pads, data_format), groups
