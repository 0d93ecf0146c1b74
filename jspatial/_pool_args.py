"""Every check of ``max_pool2d`` and ``avg_pool2d``, and what they hand to the loops.

``max_pool2d_args`` and ``avg_pool2d_args`` are each op's one validating path: the
public functions call them, the layers call them with their own name (``op="MaxPool2d"``)
and ``jspatial.steps`` calls them before running a loop tap by tap. They return a record
of the checked input (4-D, in the caller's ``data_format``), the window geometry and the
static choices; ``jspatial.pool.max_pool2d_program`` (``avg_pool2d_program``) gives the
function that runs it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from jspatial import _args
from jspatial import _windows as win
from jspatial.shapes import output_hw


class MaxPool2dArgs(NamedTuple):
    """``max_pool2d``'s arguments, checked (``max_pool2d_args``)."""

    x: Any  # (N, C, H, W), or (N, H, W, C) in geom.layout 'NHWC'; unbatched input gets N = 1
    geom: win.Geometry
    return_indices: bool
    unbatched: bool  # the input was (C, H, W): every result loses its batch axis again


class AvgPool2dArgs(NamedTuple):
    """``avg_pool2d``'s arguments, checked (``avg_pool2d_args``)."""

    x: Any
    geom: win.Geometry
    divisor: tuple[bool, float | None]  # (count_include_pad, divisor_override)
    unbatched: bool


def max_pool2d_args(
    x, kernel_size, stride, padding, dilation, ceil_mode, return_indices, *, op,
    data_format="NCHW",
) -> MaxPool2dArgs:  # fmt: skip
    """Every check of ``max_pool2d``, errors attributed to ``op`` (the layer's ``"MaxPool2d"``)."""
    data_format = _args.check_data_format(data_format, op)
    x, unbatched = _args.batched(x, op, data_format)
    x, geom = _pool_geometry(
        x, kernel_size, stride, padding, dilation, ceil_mode, op, integers=True,
        data_format=data_format,
    )  # fmt: skip
    indices = _args.check_bool(return_indices, op, "return_indices")
    return MaxPool2dArgs(x, geom, indices, unbatched)


def avg_pool2d_args(
    x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, *, op,
    data_format="NCHW",
) -> AvgPool2dArgs:  # fmt: skip
    """Every check of ``avg_pool2d``, errors attributed to ``op`` (the layer's ``"AvgPool2d"``)."""
    data_format = _args.check_data_format(data_format, op)
    x, unbatched = _args.batched(x, op, data_format)
    x, geom = _pool_geometry(
        x, kernel_size, stride, padding, 1, ceil_mode, op, data_format=data_format
    )
    include = _args.check_bool(count_include_pad, op, "count_include_pad")
    divisor = (include, _args.check_divisor_override(divisor_override, op))
    return AvgPool2dArgs(x, geom, divisor, unbatched)


def _pool_geometry(
    x, kernel_size, stride, padding, dilation, ceil_mode, op, integers=False, data_format="NCHW"
):
    """Validate pooling arguments: the input as an array, and the window geometry.

    ``integers``: the op takes integer input too (max pooling, as PyTorch's);
    ``data_format``: the layout of ``x`` (the geometry's ``layout``).
    """
    data_format = _args.check_data_format(data_format, op)
    x = _args.check_input(x, op, integers=integers, data_format=data_format)
    kernel, strides, pads, dil = _args.pool_params(kernel_size, stride, padding, dilation, op)
    ceil_mode = _args.check_bool(ceil_mode, op, "ceil_mode")
    hw = _args.spatial_shape(x.shape, data_format)
    padded = (hw[0] + 2 * pads[0], hw[1] + 2 * pads[1])
    _args.check_fits(hw, padded, kernel, dil, op)
    out_hw = output_hw(hw, kernel, strides, pads, dil, ceil_mode)
    pads = ((pads[0],) * 2, (pads[1],) * 2)
    return x, win.Geometry(hw, out_hw, kernel, strides, dil, pads, layout=data_format)
