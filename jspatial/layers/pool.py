"""Parameter-free layers: max, average and adaptive pooling, unpooling, ``Flatten``.

Each one validates its hyper-parameters at construction (a typo fails where it
is written, not at the first batch) and calls the matching op's checks
(``jspatial._pool_args.max_pool2d_args`` ...) with its own name, so errors read
``MaxPool2d expected 4D input ...``, then the program those checks chose.

Every layer takes a keyword-only ``data_format``: ``'NCHW'`` (PyTorch's, the default)
or ``'NHWC'`` (channels last), an addition to PyTorch's signatures. A ``(N, C, H, W)``
in the docstrings below is then ``(N, H, W, C)``; pooling indices keep PyTorch's
meaning (``h * W + w`` within one channel's plane) and are laid out like the output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax

from jspatial import _args
from jspatial._args import IntOrPair, OutputSize
from jspatial._pool_args import avg_pool2d_args, max_pool2d_args
from jspatial.adaptive import adaptive_pool2d_args, global_avg_pool2d_args
from jspatial.layers.module import Module
from jspatial.pool import avg_pool2d_program, max_pool2d_program
from jspatial.unpool import _unpool_params, max_unpool2d_args


def _pool_repr(layer: Any, extra: dict[str, tuple[Any, Any]]) -> str:
    """``kernel_size`` and ``stride`` always; the rest only when not the default."""
    parts = [f"kernel_size={layer.kernel_size}", f"stride={layer.stride}"]
    parts += [f"{name}={value}" for name, (value, default) in extra.items() if value != default]
    return ", ".join(parts) + _layout_repr(layer)


def _layout_repr(layer: Any) -> str:
    """``, data_format=NHWC`` for a channels-last layer, nothing for PyTorch's layout."""
    return "" if layer.data_format == "NCHW" else f", data_format={layer.data_format}"


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
        return_indices: return ``(y, indices)``, PyTorch's flat indices ``h * W + w``
            of the maxima, as ``MaxUnpool2d`` takes them.
        ceil_mode: round the output size up instead of down.
        data_format: ``'NCHW'`` or ``'NHWC'`` (``(N, H, W, C) -> (N, H_out, W_out, C)``).

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
        kernel_size: IntOrPair,
        stride: IntOrPair | None = None,
        padding: IntOrPair = 0,
        dilation: IntOrPair = 1,
        return_indices: bool = False,
        ceil_mode: bool = False,
        *,
        data_format: str = "NCHW",
    ):
        op = type(self).__name__
        self.kernel_size, self.stride, self.padding, self.dilation = _args.pool_params(
            kernel_size, stride, padding, dilation, op
        )
        self.return_indices = _args.check_bool(return_indices, op, "return_indices")
        self.ceil_mode = _args.check_bool(ceil_mode, op, "ceil_mode")
        self.data_format = _args.check_data_format(data_format, op)

    def __call__(self, x: jax.Array) -> jax.Array | tuple[jax.Array, jax.Array]:
        """``(N, C, H, W) -> (N, C, H_out, W_out)``, and the indices with ``return_indices``."""
        a = max_pool2d_args(
            x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
            self.return_indices, op=type(self).__name__, data_format=self.data_format,
        )  # fmt: skip
        return _args.unbatch(max_pool2d_program(a)(a.x), a.unbatched)

    def extra_repr(self) -> str:
        return _pool_repr(
            self,
            {
                "padding": (self.padding, (0, 0)),
                "dilation": (self.dilation, (1, 1)),
                "return_indices": (self.return_indices, False),
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
        data_format: ``'NCHW'`` or ``'NHWC'`` (``(N, H, W, C) -> (N, H_out, W_out, C)``).

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
        kernel_size: IntOrPair,
        stride: IntOrPair | None = None,
        padding: IntOrPair = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: float | None = None,
        *,
        data_format: str = "NCHW",
    ):
        op = type(self).__name__
        self.kernel_size, self.stride, self.padding, _ = _args.pool_params(
            kernel_size, stride, padding, 1, op
        )
        self.ceil_mode = _args.check_bool(ceil_mode, op, "ceil_mode")
        self.count_include_pad = _args.check_bool(count_include_pad, op, "count_include_pad")
        self.divisor_override = _args.check_divisor_override(divisor_override, op)
        self.data_format = _args.check_data_format(data_format, op)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(N, C, H, W) -> (N, C, H_out, W_out)``."""
        a = avg_pool2d_args(
            x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
            self.count_include_pad, self.divisor_override, op=type(self).__name__,
            data_format=self.data_format,
        )  # fmt: skip
        return _args.unbatch(avg_pool2d_program(a)(a.x), a.unbatched)

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


class AdaptiveAvgPool2d(Module):
    """Adaptive average pooling with ``torch.nn.AdaptiveAvgPool2d``'s signature and semantics.

    Shapes: ``(N, C, H, W) -> (N, C, H_out, W_out)`` for any ``(H, W)``: output cell
    ``i`` averages input rows ``floor(i * H / H_out)`` to ``ceil((i + 1) * H / H_out)``
    (exclusive), and the same for columns (see ``jspatial.adaptive_avg_pool2d``).

    Cost: ``N * C * H_out * W_out`` window sums of at most ``ceil(H / H_out) + 1``
    by ``ceil(W / W_out) + 1`` cells; no parameters.

    Args:
        output_size: int or ``(H_out, W_out)``; an entry ``None`` keeps that input size.
        data_format: ``'NCHW'`` or ``'NHWC'`` (``(N, H, W, C) -> (N, H_out, W_out, C)``).

    Example:
        >>> import jax.numpy as jnp
        >>> from jspatial.layers import AdaptiveAvgPool2d
        >>> pool = AdaptiveAvgPool2d((5, None))
        >>> pool
        AdaptiveAvgPool2d(output_size=(5, None))
        >>> pool(jnp.ones((1, 16, 13, 9))).shape
        (1, 16, 5, 9)
    """

    def __init__(self, output_size: OutputSize, *, data_format: str = "NCHW"):
        op = type(self).__name__
        self.output_size = _args.adaptive_output_size(output_size, op)
        self.data_format = _args.check_data_format(data_format, op)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(N, C, H, W) -> (N, C, H_out, W_out)``."""
        a = adaptive_pool2d_args(
            x, self.output_size, "avg", op=type(self).__name__, data_format=self.data_format
        )
        return _args.unbatch(a.program()(a.x), a.unbatched)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}" + _layout_repr(self)


class AdaptiveMaxPool2d(Module):
    """Adaptive max pooling with ``torch.nn.AdaptiveMaxPool2d``'s signature and semantics.

    The windows of ``AdaptiveAvgPool2d``, reduced with ``max`` (ties and NaNs as
    ``MaxPool2d``).

    Args:
        output_size: int or ``(H_out, W_out)``; an entry ``None`` keeps that input size.
        return_indices: return ``(y, indices)``, PyTorch's flat indices ``h * W + w``.
        data_format: ``'NCHW'`` or ``'NHWC'`` (``(N, H, W, C) -> (N, H_out, W_out, C)``).

    Example:
        >>> import jax.numpy as jnp
        >>> from jspatial.layers import AdaptiveMaxPool2d
        >>> pool = AdaptiveMaxPool2d(3, return_indices=True)
        >>> pool
        AdaptiveMaxPool2d(output_size=(3, 3), return_indices=True)
        >>> [a.shape for a in pool(jnp.ones((1, 16, 7, 7)))]
        [(1, 16, 3, 3), (1, 16, 3, 3)]
    """

    def __init__(
        self, output_size: OutputSize, return_indices: bool = False, *, data_format: str = "NCHW"
    ):
        op = type(self).__name__
        self.output_size = _args.adaptive_output_size(output_size, op)
        self.return_indices = _args.check_bool(return_indices, op, "return_indices")
        self.data_format = _args.check_data_format(data_format, op)

    def __call__(self, x: jax.Array) -> jax.Array | tuple[jax.Array, jax.Array]:
        """``(N, C, H, W) -> (N, C, H_out, W_out)``, and the indices with ``return_indices``."""
        a = adaptive_pool2d_args(
            x, self.output_size, "max", self.return_indices, op=type(self).__name__,
            data_format=self.data_format,
        )  # fmt: skip
        return _args.unbatch(a.program()(a.x), a.unbatched)

    def extra_repr(self) -> str:
        text = f"output_size={self.output_size}"
        return text + (", return_indices=True" if self.return_indices else "") + _layout_repr(self)


class MaxUnpool2d(Module):
    """The partial inverse of ``MaxPool2d``, with ``torch.nn.MaxUnpool2d``'s signature.

    Writes each value to the cell its index names in a plane of zeros (see
    ``jspatial.max_unpool2d``). Shapes: ``(N, C, H_in, W_in) -> (N, C, H, W)`` with
    ``H = (H_in - 1) * stride - 2 * padding + kernel_size`` unless ``output_size``
    is given: pass the pooling's input shape when its size was odd, as in PyTorch.

    Cost: one write (and, backwards, one read) per input value; no parameters.

    Args:
        kernel_size: int or ``(kh, kw)`` of the pooling being inverted.
        stride: int or ``(sh, sw)``; ``None`` means ``kernel_size``.
        padding: int or ``(ph, pw)``.
        data_format: ``'NCHW'`` or ``'NHWC'``: the layout of the input, the indices
            and the output (``output_size`` as a full shape too).

    Example:
        >>> import jax.numpy as jnp
        >>> from jspatial.layers import MaxPool2d, MaxUnpool2d
        >>> pool, unpool = MaxPool2d(2, return_indices=True), MaxUnpool2d(2)
        >>> unpool
        MaxUnpool2d(kernel_size=(2, 2), stride=(2, 2))
        >>> x = jnp.ones((1, 16, 7, 7))
        >>> y, indices = pool(x)
        >>> unpool(y, indices, output_size=x.shape).shape
        (1, 16, 7, 7)
    """

    def __init__(
        self,
        kernel_size: IntOrPair,
        stride: IntOrPair | None = None,
        padding: IntOrPair = 0,
        *,
        data_format: str = "NCHW",
    ):
        op = type(self).__name__
        self.kernel_size, self.stride, self.padding = _unpool_params(
            kernel_size, stride, padding, op
        )
        self.data_format = _args.check_data_format(data_format, op)

    def __call__(
        self, x: jax.Array, indices: jax.Array, output_size: Sequence[int] | None = None
    ) -> jax.Array:
        """``(N, C, H_in, W_in)`` and its indices ``-> (N, C, H, W)``."""
        a = max_unpool2d_args(
            x, indices, self.kernel_size, self.stride, self.padding, output_size,
            op=type(self).__name__, data_format=self.data_format,
        )  # fmt: skip
        return _args.unbatch(a.program()(a.x, a.indices), a.unbatched)

    def extra_repr(self) -> str:
        return _pool_repr(self, {"padding": (self.padding, (0, 0))})


class GlobalAvgPool2d(Module):
    """Mean over the spatial axes: ``(N, C, H, W) -> (N, C)`` (PyTorch's
    ``AdaptiveAvgPool2d(1)`` followed by ``Flatten()``); ``(N, H, W, C) -> (N, C)`` with
    ``data_format='NHWC'``, the same features in the same order.

    Cost: ``N * C * H * W`` additions (in float32); no parameters.

    Example:
        >>> import jax.numpy as jnp
        >>> from jspatial.layers import GlobalAvgPool2d
        >>> GlobalAvgPool2d()(jnp.ones((2, 512, 7, 7))).shape
        (2, 512)
    """

    def __init__(self, *, data_format: str = "NCHW"):
        self.data_format = _args.check_data_format(data_format, type(self).__name__)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(N, C, H, W) -> (N, C)``."""
        a = global_avg_pool2d_args(x, op=type(self).__name__, data_format=self.data_format)
        return a.program()(a.x)

    def extra_repr(self) -> str:
        return _layout_repr(self).removeprefix(", ")

    _one_line_repr = True  # no hyper-parameters: ``GlobalAvgPool2d()``


class Flatten(Module):
    """Flatten axes ``start_dim..end_dim`` into one, as ``torch.nn.Flatten``.

    The default turns ``(N, C, H, W)`` into ``(N, C * H * W)``, the step between
    the convolutional part of a network and its ``nnx.Linear`` classifier. A
    reshape: no cost, no parameters.

    Channels last: flattening an ``(N, H, W, C)`` array as it is orders the features
    ``(h, w, c)``, where PyTorch's (and so the ``weight`` of the ``Linear`` after it, in a
    ported model) are ordered ``(c, h, w)``. ``Flatten()`` keeps to what it is given and
    reshapes any input as is: the fast choice for a model trained from scratch.
    ``Flatten(data_format='NHWC')`` reads a 4-D input as ``(N, H, W, C)`` and flattens it
    in PyTorch's order, ``Flatten(data_format='NHWC')(x) == Flatten()(x.transpose(0, 3, 1,
    2))`` (a transpose, then the reshape), so the ``Linear`` weights of a PyTorch
    ``state_dict`` keep their meaning in an NHWC model.

    Args:
        start_dim: first axis to flatten (default 1: keep the batch axis).
        end_dim: last axis to flatten, inclusive (default -1).
        data_format: ``'NCHW'`` (reshape as is) or ``'NHWC'`` (4-D input only: flatten
            in PyTorch's ``(C, H, W)`` order, the dims numbered as PyTorch's);
            keyword-only, an addition to PyTorch's signature.

    Example:
        >>> import jax.numpy as jnp
        >>> from jspatial.layers import Flatten
        >>> Flatten()(jnp.ones((8, 32, 8, 8))).shape
        (8, 2048)
        >>> x = jnp.arange(8.0).reshape(1, 2, 2, 2)  # (N, H, W, C)
        >>> Flatten()(x).tolist(), Flatten(data_format="NHWC")(x).tolist()
        ([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]], [[0.0, 2.0, 4.0, 6.0, 1.0, 3.0, 5.0, 7.0]])
    """

    def __init__(self, start_dim: int = 1, end_dim: int = -1, *, data_format: str = "NCHW"):
        self.start_dim = _args.check_int(start_dim, "Flatten", "start_dim")
        self.end_dim = _args.check_int(end_dim, "Flatten", "end_dim")
        self.data_format = _args.check_data_format(data_format, "Flatten")

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(N, ...) -> (N, prod(...))`` with the defaults."""
        if self.data_format == "NHWC":
            x = _args.check_array(x, "Flatten", "input", floating=False)
            if x.ndim != 4:
                raise ValueError(
                    f"Flatten with data_format='NHWC' expected 4D input (batch, height, "
                    f"width, channels), got {x.ndim}D: {tuple(x.shape)}"
                )
            x = x.transpose(0, 3, 1, 2)  # PyTorch's feature order (c, h, w)
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
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}" + _layout_repr(self)
