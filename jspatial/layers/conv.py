"""``Conv2d`` and ``ConvTranspose2d``: ``torch.nn``'s layers as Flax NNX modules."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jspatial import _args
from jspatial._args import IntOrPair, Padding
from jspatial._conv_args import (
    ALGORITHMS,
    PADDING_MODES,
    conv2d_args,
    conv_transpose2d_args,
)
from jspatial.conv import conv2d_program
from jspatial.conv_transpose import conv_transpose2d_program
from jspatial.layers.module import Module
from jspatial.shapes import transposed_size

Initializer = Callable[[jax.Array, tuple[int, ...], Any], jax.Array]


def he_normal_oihw(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """Kaiming/He normal for an OIHW kernel: ``N(0, 2 / fan_in)``, ``fan_in = I * kh * kw``.

    Written out rather than ``jax.nn.initializers.he_normal()``: that one assumes
    an HWIO kernel (``fan_in`` from the wrong axes here) and draws from a truncated
    normal, where PyTorch's ``kaiming_normal_`` draws from a plain normal.
    """
    fan_in = math.prod(shape[1:])
    return jax.random.normal(key, shape, dtype) * jnp.asarray(math.sqrt(2.0 / fan_in), dtype)


def _torch_uniform(key, shape, dtype, fan_in):
    """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``: torch's ``kaiming_uniform_(a=sqrt(5))``."""
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def _check_common(op, bias, rngs):
    _args.check_bool(bias, op, "bias")
    if not isinstance(rngs, nnx.Rngs):
        raise TypeError(
            f"{op} rngs must be an nnx.Rngs (e.g. rngs=nnx.Rngs(0)), got {type(rngs).__name__}"
        )


def _init_weight(op, init, key, shape, param_dtype, layout):
    weight = jnp.asarray(init(key, shape, param_dtype), param_dtype)
    if weight.shape != shape:
        raise ValueError(
            f"{op} kernel_init returned shape {weight.shape}, expected {shape} {layout}"
        )
    return weight


def _repr_padding(padding):
    (top, bottom), (left, right) = padding
    if (top, bottom, left, right) == (0, 0, 0, 0):
        return []
    symmetric = top == bottom and left == right
    return [f"padding={(top, left) if symmetric else padding}"]


def _conv_repr(layer, padding, *optional) -> str:
    """PyTorch's repr of a convolution layer: the fixed fields, then each ``(name, value,
    default)`` of ``optional`` that differs from its default, in the order given."""
    parts = [
        f"{layer.in_channels}, {layer.out_channels}",
        f"kernel_size={layer.kernel_size}",
        f"stride={layer.stride}",
        *_repr_padding(padding),
    ]
    parts += [f"{name}={value}" for name, value, default in optional if value != default]
    return ", ".join(parts)


def _spatial(shape, data_format):
    """``(H, W)`` of a batched (4-D) or unbatched (3-D) shape in ``data_format``."""
    return _args.spatial_shape(tuple(shape) if len(shape) == 4 else (1, *shape), data_format)


class Conv2d(Module):
    """2-D convolution layer with ``torch.nn.Conv2d``'s signature, parameters and semantics.

    Shapes: input ``(N, C_in, H, W)`` -> output ``(N, C_out, H_out, W_out)``, with
    ``H_out = floor((H + pad_top + pad_bottom - dilation * (kh - 1) - 1) / stride) + 1``;
    with ``data_format='NHWC'``, ``(N, H, W, C_in) -> (N, H_out, W_out, C_out)``.

    Parameters: ``weight`` ``(C_out, C_in // groups, kh, kw)`` (OIHW) and ``bias``
    ``(C_out,)``, or ``None`` with ``bias=False``; OIHW in both layouts, so a PyTorch
    ``state_dict`` loads unchanged into an NHWC layer.

    Initialisation differs from torch's: ``weight`` is He normal (std
    ``sqrt(2 / fan_in)``, ``fan_in = C_in // groups * kh * kw``, the usual choice
    before a ReLU) and ``bias`` zeros, where ``torch.nn.Conv2d`` draws both from
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (``kaiming_uniform_(a=sqrt(5))``). Pass a
    ``kernel_init`` for another weight init, or load torch's weights
    (``load_torch_state_dict``) for torch's exact numbers.

    Cost: ``N * C_out * H_out * W_out * C_in / groups * kh * kw`` multiply-accumulates
    (``jspatial.conv2d_macs``) and ``C_out * C_in / groups * kh * kw (+ C_out)`` parameters.

    Args:
        in_channels: input channel count, divisible by ``groups``.
        out_channels: output channel count, divisible by ``groups``.
        kernel_size: int or ``(kh, kw)``.
        stride: int or ``(sh, sw)``.
        padding: int, ``(ph, pw)``, ``((top, bottom), (left, right))``, ``'valid'``
            or ``'same'`` (stride 1); stored as ``((top, bottom), (left, right))``.
        dilation: int or ``(dh, dw)``.
        groups: number of independent channel groups (``in_channels`` = depthwise).
        bias: whether to learn an additive bias.
        padding_mode: what lies beyond the border: ``'zeros'``, ``'reflect'``,
            ``'replicate'`` or ``'circular'`` (the other three pad the input with
            ``jspatial.pad`` and then convolve unpadded, as torch does).
        dtype: computation dtype (input and parameters are cast to it); ``None``
            computes in the input's dtype. Sums are accumulated in float32 (float64 for
            float64).
        param_dtype: dtype the parameters are stored in.
        kernel_init: ``kernel_init(key, shape, dtype)`` for ``weight``; default He normal.
        algorithm: ``'auto'``, ``'direct'``, ``'winograd'`` or ``'im2col'``, as in
            ``jspatial.conv2d``.
        data_format: ``'NCHW'`` (channels second, PyTorch's) or ``'NHWC'`` (channels
            last) for the input and output; keyword-only, an addition to PyTorch's
            signature.
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
        >>> Conv2d(3, 8, 3, 1, 1, padding_mode="reflect", rngs=nnx.Rngs(0))
        Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), padding_mode=reflect)
        >>> Conv2d(3, 8, 3, padding=1, data_format="NHWC", rngs=nnx.Rngs(0))(
        ...     jnp.ones((2, 32, 32, 3))).shape
        (2, 32, 32, 8)
    """

    _OP = "Conv2d"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair,
        stride: IntOrPair = 1,
        padding: Padding = 0,
        dilation: IntOrPair = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        kernel_init: Initializer | None = None,
        algorithm: str = "auto",
        data_format: str = "NCHW",
        rngs: nnx.Rngs,
    ):
        op = self._OP
        self.in_channels = _args.positive_int(in_channels, op, "in_channels")
        self.out_channels = _args.positive_int(out_channels, op, "out_channels")
        self.kernel_size = _args.pair(kernel_size, op, "kernel_size")
        self.stride = _args.pair(stride, op, "stride")
        self.dilation = _args.pair(dilation, op, "dilation")
        self.padding = _args.conv_padding(padding, self.kernel_size, self.stride, self.dilation, op)
        self.groups = _args.check_groups(self.in_channels, self.out_channels, groups, op)
        _check_common(op, bias, rngs)
        self.padding_mode = _args.one_of(padding_mode, PADDING_MODES, op, "padding_mode")
        self.algorithm = _args.one_of(algorithm, ALGORITHMS, op, "algorithm")
        self.data_format = _args.check_data_format(data_format, op)
        self.dtype = dtype
        self.param_dtype = param_dtype

        shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        init = he_normal_oihw if kernel_init is None else kernel_init
        layout = "(out_channels, in_channels // groups, kh, kw)"
        self.weight = nnx.Param(_init_weight(op, init, rngs.params(), shape, param_dtype, layout))
        self.bias = nnx.Param(jnp.zeros((self.out_channels,), param_dtype)) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(N, C_in, H, W) -> (N, C_out, H_out, W_out)`` (channels last in ``'NHWC'``)."""
        # conv2d_args is conv2d's one validating path (outside the jit, before the cast).
        a = conv2d_args(
            x, self.weight[...], None if self.bias is None else self.bias[...], self.stride,
            self.padding, self.dilation, self.groups, op=self._OP, algorithm=self.algorithm,
            dtype=self.dtype, padding_mode=self.padding_mode, data_format=self.data_format,
        )  # fmt: skip
        return a.finish(conv2d_program(a)(a.x, a.weight))

    def extra_repr(self) -> str:
        return _conv_repr(
            self, self.padding,
            ("dilation", self.dilation, (1, 1)),
            ("groups", self.groups, 1),
            ("bias", self.bias is not None, True),
            ("padding_mode", self.padding_mode, "zeros"),
            ("data_format", self.data_format, "NCHW"),
        )  # fmt: skip


class ConvTranspose2d(Module):
    """Transposed convolution with ``torch.nn.ConvTranspose2d``'s signature and init.

    The gradient of a ``Conv2d(out_channels, in_channels, ...)`` with respect to its
    input, run as a layer (see ``jspatial.conv_transpose2d``): with stride ``s`` it
    upsamples by ``s``, e.g. a learned 2x upsampling in a decoder.

    Shapes: input ``(N, C_in, H, W)`` -> output ``(N, C_out, H_out, W_out)``, with
    ``H_out = (H - 1) * stride - 2 * padding + dilation * (kh - 1) + output_padding + 1``;
    with ``data_format='NHWC'``, ``(N, H, W, C_in) -> (N, H_out, W_out, C_out)`` (the
    weight keeps torch's layout).

    Parameters: ``weight`` ``(C_in, C_out // groups, kh, kw)`` (torch's layout for the
    transpose) and ``bias`` ``(C_out,)``, or ``None`` with ``bias=False``. Both start
    as torch's do, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with torch's ``fan_in`` of
    this weight, ``weight.shape[1] * kh * kw = C_out // groups * kh * kw``.

    Cost: ``N * C_in * H * W * C_out / groups * kh * kw`` multiply-accumulates.

    Args:
        in_channels: input channel count, divisible by ``groups``.
        out_channels: output channel count, divisible by ``groups``.
        kernel_size: int or ``(kh, kw)``.
        stride: int or ``(sh, sw)``.
        padding: int or ``(ph, pw)``, cropped from each side of the full output.
        output_padding: int or ``(oh, ow)`` added at the bottom/right, smaller than
            the stride or the dilation; or pass ``output_size`` to the call.
        groups: number of independent channel groups.
        bias: whether to learn an additive bias.
        dilation: int or ``(dh, dw)``.
        padding_mode: only ``'zeros'``, as in torch.
        dtype: computation dtype, as ``Conv2d``.
        param_dtype: dtype the parameters are stored in, as ``Conv2d``.
        kernel_init: ``kernel_init(key, shape, dtype)`` for ``weight``; default torch's.
        data_format: ``'NCHW'`` or ``'NHWC'``, as ``Conv2d``.
        rngs: ``nnx.Rngs`` supplying the ``params`` key.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from jspatial.layers import ConvTranspose2d
        >>> up = ConvTranspose2d(256, 128, 3, stride=2, padding=1, output_padding=1,
        ...                      rngs=nnx.Rngs(0))
        >>> up
        ConvTranspose2d(256, 128, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), output_padding=(1, 1))
        >>> up(jnp.ones((2, 256, 8, 8))).shape
        (2, 128, 16, 16)
        >>> up(jnp.ones((2, 256, 8, 8)), output_size=(15, 15)).shape
        (2, 128, 15, 15)
    """  # noqa: E501

    _OP = "ConvTranspose2d"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair,
        stride: IntOrPair = 1,
        padding: IntOrPair = 0,
        output_padding: IntOrPair = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: IntOrPair = 1,
        padding_mode: str = "zeros",
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        kernel_init: Initializer | None = None,
        data_format: str = "NCHW",
        rngs: nnx.Rngs,
    ):
        op = self._OP
        self.in_channels = _args.positive_int(in_channels, op, "in_channels")
        self.out_channels = _args.positive_int(out_channels, op, "out_channels")
        self.kernel_size = _args.pair(kernel_size, op, "kernel_size")
        self.stride = _args.pair(stride, op, "stride")
        self.dilation = _args.pair(dilation, op, "dilation")
        self.padding = _args.pair(padding, op, "padding", minimum=0)
        self.output_padding = _args.output_padding(output_padding, self.stride, self.dilation, op)
        self.groups = _args.check_groups(self.in_channels, self.out_channels, groups, op)
        _check_common(op, bias, rngs)
        if padding_mode != "zeros":
            raise ValueError(
                f"{op} supports only padding_mode='zeros' (as torch), got {padding_mode!r}"
            )
        self.padding_mode = padding_mode
        self.data_format = _args.check_data_format(data_format, op)
        self.dtype = dtype
        self.param_dtype = param_dtype

        shape = (self.in_channels, self.out_channels // self.groups, *self.kernel_size)
        fan_in = math.prod(shape[1:])  # torch's _calculate_fan_in_and_fan_out: shape[1] * kh * kw
        key_w, key_b = rngs.params(), rngs.params()
        if kernel_init is None:
            kernel_init = lambda key, shape, dtype: _torch_uniform(key, shape, dtype, fan_in)  # noqa: E731
        layout = "(in_channels, out_channels // groups, kh, kw)"
        self.weight = nnx.Param(_init_weight(op, kernel_init, key_w, shape, param_dtype, layout))
        self.bias = (
            nnx.Param(_torch_uniform(key_b, (self.out_channels,), param_dtype, fan_in))
            if bias
            else None
        )

    def __call__(self, x: jax.Array, output_size: Sequence[int] | None = None) -> jax.Array:
        """``(N, C_in, H, W) -> (N, C_out, H_out, W_out)`` (channels last in ``'NHWC'``).

        ``output_size`` (``(H_out, W_out)``, or a full shape in the layer's
        ``data_format``) picks the output padding, as torch's ``forward(input,
        output_size)``: a strided convolution maps several input sizes to one output
        size, and this says which one to invert to.
        """
        output_padding = self.output_padding
        if output_size is not None:
            output_padding = self._output_padding(x, output_size)
        a = conv_transpose2d_args(
            x, self.weight[...], None if self.bias is None else self.bias[...], self.stride,
            self.padding, output_padding, self.groups, self.dilation, op=self._OP,
            dtype=self.dtype, data_format=self.data_format,
        )  # fmt: skip
        return a.finish(conv_transpose2d_program(a)(a.x, a.weight))

    def _output_padding(self, x, output_size):
        op = self._OP
        size = tuple(output_size)
        x_shape = tuple(getattr(x, "shape", ()))
        if len(x_shape) not in (3, 4):
            _args.check_input(x, op, data_format=self.data_format)  # raises the usual message
        if len(size) == len(x_shape):  # the full shape, as torch takes it, batched or not
            size = _spatial(size, self.data_format)
        in_hw = _spatial(x_shape, self.data_format)
        if len(size) != 2 or not all(_args.is_int(s) for s in size):
            raise ValueError(f"{op} output_size must be (H_out, W_out), got {output_size!r}")
        padding = []
        for axis in range(2):
            k, s, p, d = (self.kernel_size[axis], self.stride[axis], self.padding[axis],
                          self.dilation[axis])  # fmt: skip
            smallest = transposed_size(in_hw[axis], k, s, p, 0, d)
            if not smallest <= size[axis] < smallest + s:
                where = len(x_shape) - (2 if self.data_format == "NCHW" else 3) + axis
                raise ValueError(
                    f"{op} output_size {size} is not reachable: on axis {where} the "
                    f"output size ranges from {smallest} to {smallest + s - 1}"
                )
            padding.append(size[axis] - smallest)
        return tuple(padding)

    def extra_repr(self) -> str:
        p = self.padding
        return _conv_repr(
            self, ((p[0], p[0]), (p[1], p[1])),
            ("dilation", self.dilation, (1, 1)),
            ("output_padding", self.output_padding, (0, 0)),
            ("groups", self.groups, 1),
            ("bias", self.bias is not None, True),
            ("data_format", self.data_format, "NCHW"),
        )  # fmt: skip
