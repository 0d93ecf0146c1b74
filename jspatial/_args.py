"""The one place where user-facing arguments are checked and normalised.

Every public op and layer funnels its hyper-parameters through these helpers, so
that ``stride=2`` and ``stride=(2, 2)`` mean the same everywhere and every bad
value produces the same kind of message: the op, the argument as spelled in the
signature, and the value seen. ``op`` is the name the user called (``conv2d``
for the function, ``Conv2d`` for the layer).

The kinds of argument the public signatures take are named here too (``IntOrPair``,
``Padding``, ``OutputSize``); the ops' docstrings say what each value means.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Pair = tuple[int, int]
Padding2d = tuple[Pair, Pair]  # ((top, bottom), (left, right))

# The argument kinds of the public signatures (PyTorch's ``_size_2_t`` and friends).
IntOrPair = int | tuple[int, int]  # kernel_size, stride, dilation, ...: both axes, or (h, w)
# conv2d's padding: per side ``p``, per axis ``(ph, pw)``, per edge ``((top, bottom),
# (left, right))``, or ``'valid'`` / ``'same'``.
Padding = int | tuple[int, int] | tuple[tuple[int, int], tuple[int, int]] | str
# Adaptive pooling's output size: ``s``, or ``(h, w)`` where ``None`` keeps the input's size.
OutputSize = int | tuple[int | None, int | None]

# Where the channels are: ``'NCHW'`` (PyTorch's, the default) or ``'NHWC'`` (channels last,
# what Flax, Keras and TensorFlow hold). Weights are OIHW in both.
DATA_FORMATS = ("NCHW", "NHWC")
_AXES = {"NCHW": "batch, channels, height, width", "NHWC": "batch, height, width, channels"}


def is_int(value: Any) -> bool:
    """A Python or NumPy integer, not a bool (``stride=True`` is always a mistake)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _as_int(value: Any, op: str, name: str, seen: Any) -> int:
    if not is_int(value):
        raise TypeError(
            f"{op} {name} must be an int or a pair of ints, got {seen!r} ({type(seen).__name__})"
        )
    return operator.index(value)


def pair(value: Any, op: str, name: str, *, minimum: int = 1) -> Pair:
    """Normalise an int, ``(v,)`` or ``(h, w)`` of ints to a pair, checking a lower bound.

    A one-element tuple means both axes, as in PyTorch (``kernel_size=(3,)``).

    >>> pair(3, "conv2d", "stride"), pair((2,), "max_pool2d", "stride")
    ((3, 3), (2, 2))
    """
    if isinstance(value, (tuple, list)):
        if len(value) not in (1, 2):
            raise ValueError(
                f"{op} {name} must be an int or a pair (h, w), got {len(value)} values: {value!r}"
            )
        result = (_as_int(value[0], op, name, value), _as_int(value[-1], op, name, value))
    else:
        v = _as_int(value, op, name, value)
        result = (v, v)
    if min(result) < minimum:
        bound = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{op} {name} must be {bound}, got {value!r}")
    return result


def conv_padding(
    padding: Any, kernel_size: Pair, stride: Pair, dilation: Pair, op: str
) -> Padding2d:
    """Normalise convolution padding to ``((top, bottom), (left, right))``.

    Accepts an int, ``(h, w)``, ``((top, bottom), (left, right))``, ``'valid'`` or
    ``'same'``. ``'same'`` needs stride 1; with an even kernel the extra cell goes
    to the bottom/right, as PyTorch does.
    """
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return ((0, 0), (0, 0))
        if mode == "same":
            if stride != (1, 1):
                raise ValueError(
                    f"{op} padding='same' needs stride 1, got stride={stride}; "
                    "use an explicit padding for strided convolutions"
                )
            result = []
            for k, d in zip(kernel_size, dilation):
                total = d * (k - 1)
                result.append((total // 2, total - total // 2))
            return (result[0], result[1])
        raise ValueError(f"{op} padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    nested = isinstance(padding, (tuple, list)) and len(padding) == 2
    if nested and all(isinstance(p, (tuple, list)) for p in padding):
        top, bottom = pair(padding[0], op, "padding", minimum=0)
        left, right = pair(padding[1], op, "padding", minimum=0)
        return ((top, bottom), (left, right))
    ph, pw = pair(padding, op, "padding", minimum=0)
    return ((ph, ph), (pw, pw))


def pool_params(
    kernel_size: Any, stride: Any, padding: Any, dilation: Any, op: str
) -> tuple[Pair, Pair, Pair, Pair]:
    """Normalise pooling hyper-parameters; ``stride=None`` (or ``()``, as PyTorch reads an
    empty stride) means the kernel size.

    Padding above half the (undilated) kernel is rejected, as in PyTorch: such a
    window could lie entirely in padding even without dilation.
    """
    kernel = pair(kernel_size, op, "kernel_size")
    default = stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0)
    strides = kernel if default else pair(stride, op, "stride")
    pads = pair(padding, op, "padding", minimum=0)
    dil = pair(dilation, op, "dilation")
    if pads[0] > kernel[0] // 2 or pads[1] > kernel[1] // 2:
        raise ValueError(
            f"{op} padding must be at most half the kernel size, got padding={pads} "
            f"for kernel_size={kernel}"
        )
    return kernel, strides, pads, dil


def _is_torch_tensor(value: Any) -> bool:
    # Recognised by its type's module, so that jspatial never has to import torch.
    return any(k.__module__.split(".")[0] == "torch" for k in type(value).__mro__)


def check_array(value: Any, op: str, name: str, *, floating: bool = True) -> Any:
    """An array argument as a JAX-compatible array, or a clear error.

    A ``torch.Tensor`` is refused with the one-line conversion; nested Python lists
    and tuples are converted as ``jnp.asarray`` would; JAX and NumPy arrays (and
    tracers) pass through unchanged. With ``floating`` the dtype must be a float.

    >>> check_array([[1.0, 2.0]], "conv2d", "weight").shape
    (1, 2)
    """
    if _is_torch_tensor(value):
        raise TypeError(
            f"{op} {name} is a torch.Tensor; jspatial takes JAX (or NumPy) arrays: "
            f"convert it with jnp.asarray(t.detach().cpu().numpy())"
        )
    if isinstance(value, (list, tuple)):
        try:
            value = jnp.asarray(value)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"{op} {name} must be an array; a nested list converts only when it is "
                f"rectangular and numeric ({error})"
            ) from None
    elif not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise TypeError(f"{op} {name} must be an array, got {type(value).__name__}: {value!r}")
    if floating and not jnp.issubdtype(jnp.result_type(value), jnp.floating):
        raise TypeError(
            f"{op} expected a floating-point {name} (float32, bfloat16, float16 or float64), "
            f"got {jnp.result_type(value)}; convert with .astype(jnp.float32)"
        )
    return value


def check_data_format(value: Any, op: str) -> str:
    """``data_format``: ``'NCHW'`` (channels second, torch's) or ``'NHWC'`` (channels last)."""
    if not isinstance(value, str):
        raise TypeError(
            f"{op} data_format must be 'NCHW' or 'NHWC', got {value!r} ({type(value).__name__})"
        )
    if value not in DATA_FORMATS:
        raise ValueError(f"{op} data_format must be 'NCHW' or 'NHWC', got {value!r}")
    return value


def channel_axis(data_format: str) -> int:
    """The channel axis of a batched 4-D array in ``data_format``.

    >>> channel_axis("NCHW"), channel_axis("NHWC")
    (1, 3)
    """
    return 1 if data_format == "NCHW" else 3


def spatial_shape(shape: tuple[int, ...], data_format: str) -> Pair:
    """``(H, W)`` of a batched 4-D ``shape`` in ``data_format``.

    >>> spatial_shape((2, 3, 8, 9), "NCHW"), spatial_shape((2, 8, 9, 3), "NHWC")
    ((8, 9), (8, 9))
    """
    return (shape[2], shape[3]) if data_format == "NCHW" else (shape[1], shape[2])


def check_input(
    x: Any, op: str, name: str = "input", *, integers: bool = False, data_format: str = "NCHW"
) -> Any:
    """The ``(N, C, H, W)`` (or, in ``'NHWC'``, ``(N, H, W, C)``) input of an op, checked,
    as an array (see ``check_array``).

    An empty batch (``N == 0``) is valid, as in PyTorch; zero channels are not. With
    ``integers`` an integer dtype is accepted too (the ops PyTorch runs on integers).
    """
    x = check_array(x, op, name, floating=False)
    shape = tuple(x.shape)
    if len(shape) != 4:
        raise ValueError(
            f"{op} expected 4D {name} ({_AXES[data_format]}), got {len(shape)}D: {shape}"
        )
    if shape[channel_axis(data_format)] == 0:
        raise ValueError(f"{op} expected at least one channel, got {name} of shape {shape}")
    dtype = jnp.result_type(x)
    if integers and jnp.issubdtype(dtype, jnp.integer):
        return x
    if not jnp.issubdtype(dtype, jnp.floating):
        kinds = "a floating-point or integer" if integers else "floating-point"
        raise TypeError(
            f"{op} expected {kinds} {name} (float32, bfloat16, float16 or float64"
            f"{', or an integer dtype' if integers else ''}), got {dtype}; convert with "
            "x.astype(jnp.float32)"
        )
    return x


def batched(x: Any, op: str, data_format: str = "NCHW", name: str = "input") -> tuple[Any, bool]:
    """``(x4, unbatched)``: a 4-D input as it is, a 3-D one (PyTorch's unbatched
    ``(C, H, W)``, ``(H, W, C)`` in ``'NHWC'``) with a leading batch axis of 1 and
    ``unbatched=True``, for the op to run on ``(1, C, H, W)`` and ``unbatch`` its
    result. Any other rank is refused, naming ``op``."""
    x = check_array(x, op, name, floating=False)
    ndim = len(x.shape)
    if ndim == 4:
        return x, False
    if ndim != 3:
        axes = _AXES[data_format]
        raise ValueError(
            f"{op} expected 3D (unbatched: {axes.split(', ', 1)[1]}) or 4D "
            f"({axes}) input, got {ndim}D: {tuple(x.shape)}"
        )
    return x[None], True


def unbatch(out: Any, unbatched: bool) -> Any:
    """Every array of ``out`` without its leading axis where the input was unbatched."""
    return jax.tree.map(lambda a: a[0], out) if unbatched else out


def unbatched(*positions: int) -> Callable:
    """Decorate an op's checking entry so that it takes unbatched ``(C, H, W)`` input too.

    PyTorch reads a 3-D input of its 2-D ops as a batch of one: the arrays at
    ``positions`` (the input, and ``max_unpool2d``'s indices) get a leading axis of 1,
    the op runs on ``(1, C, H, W)``, and every array it returns loses that axis again.
    In ``data_format='NHWC'`` (a keyword argument of the decorated function) the same
    holds for ``(H, W, C)``. 4-D input passes through untouched; any other rank is
    refused here, naming the op (the keyword argument ``op``).
    """

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def entry(*args: Any, **kwargs: Any) -> Any:
            op = kwargs["op"]
            data_format = check_data_format(kwargs.get("data_format", "NCHW"), op)
            x = check_array(args[0], op, "input", floating=False)
            ndim = len(x.shape)
            if ndim == 4:
                return fn(x, *args[1:], **kwargs)
            if ndim != 3:
                axes = _AXES[data_format]
                raise ValueError(
                    f"{op} expected 3D (unbatched: {axes.split(', ', 1)[1]}) or 4D "
                    f"({axes}) input, got {ndim}D: {tuple(x.shape)}"
                )
            args = list(args)
            args[0] = x
            for p in positions:
                name = "input" if p == 0 else "indices"
                args[p] = check_array(args[p], op, name, floating=False)[None]
            out = fn(*args, **kwargs)
            return jax.tree.map(lambda a: a[0], out)

        return entry

    return decorate


def check_bool(value: Any, op: str, name: str) -> bool:
    """A flag: a Python or NumPy bool (``ceil_mode``, ``training``, ``affine``, ...)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op} {name} must be a bool, got {value!r} ({type(value).__name__})")
    return bool(value)


def positive_int(value: Any, op: str, name: str) -> int:
    """A count (channels, features): a positive int."""
    if not is_int(value):
        raise TypeError(f"{op} {name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{op} {name} must be a positive int, got {value!r}")
    return int(value)


def check_fits(spatial: Pair, padded: Pair, kernel: Pair, dilation: Pair, op: str) -> None:
    """Raise when the (dilated) kernel is larger than the padded input."""
    extent = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    if extent[0] > padded[0] or extent[1] > padded[1]:
        dilated = f" (dilated to {extent})" if extent != tuple(kernel) else ""
        raise ValueError(
            f"{op} kernel {tuple(kernel)}{dilated} does not fit the padded input "
            f"{tuple(padded)} (input {tuple(spatial)})"
        )


def check_groups(in_channels: int, out_channels: int, groups: Any, op: str) -> int:
    """``groups`` must be a positive int dividing both channel counts."""
    if not is_int(groups):
        raise TypeError(f"{op} groups must be a positive int, got {groups!r}")
    if groups < 1:
        raise ValueError(f"{op} groups must be positive, got {groups}")
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"{op} groups={groups} must divide both in_channels={in_channels} and "
            f"out_channels={out_channels}"
        )
    return int(groups)


def check_momentum(momentum: Any, op: str, *, allow_none: bool = False) -> Any:
    """Batch-norm ``momentum``: the weight of the new statistic, a real number.

    Usually in ``[0, 1]``, but any value is taken, as PyTorch takes it (a negative one
    moves the running statistics away from the batch's). A 0-d float array is accepted
    too (``BatchNorm2d(momentum=None)`` passes the traced ``1 / num_batches_tracked``).
    ``None`` (PyTorch's cumulative average) only where ``allow_none``: the layer.
    """
    if momentum is None:
        if allow_none:
            return None
        raise TypeError(
            f"{op} momentum must be a number, got None; PyTorch's cumulative "
            "average (momentum=None) is BatchNorm2d(momentum=None), or pass "
            "momentum=1 / num_batches_tracked"
        )
    if isinstance(momentum, (bool, np.bool_)):
        raise TypeError(f"{op} momentum must be a number, got {momentum!r}")
    if isinstance(momentum, (int, float, np.integer, np.floating)):
        return float(momentum)
    if getattr(momentum, "shape", None) == () and jnp.issubdtype(
        jnp.result_type(momentum), jnp.floating
    ):
        return momentum
    raise TypeError(f"{op} momentum must be a number, got {momentum!r} ({type(momentum).__name__})")


def check_eps(eps: Any, op: str) -> float:
    """Batch-norm ``eps``: a positive number."""
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"{op} eps must be a positive number, got {eps!r}")
    return float(eps)


def check_divisor_override(divisor_override: Any, op: str) -> Any:
    """Average-pool ``divisor_override``: ``None`` or a non-zero number."""
    if divisor_override is None:
        return None
    if isinstance(divisor_override, (bool, np.bool_)) or not isinstance(
        divisor_override, (int, float)
    ):
        raise TypeError(f"{op} divisor_override must be a number, got {divisor_override!r}")
    if divisor_override == 0:
        raise ValueError(f"{op} divisor_override must be non-zero, got {divisor_override}")
    return divisor_override


def adaptive_output_size(output_size: Any, op: str) -> tuple[int | None, int | None]:
    """Adaptive pooling's ``output_size``: an int, or an ``(h, w)`` pair of ints or ``None``.

    ``None`` keeps that input size (filled in per call). Zero, and sizes above the
    input, are valid, as in PyTorch.

    >>> adaptive_output_size((5, None), "adaptive_avg_pool2d")
    (5, None)
    """
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != 2:
            raise ValueError(
                f"{op} output_size must be an int or a pair (h, w), got {len(output_size)} "
                f"values: {output_size!r}"
            )
        values = tuple(output_size)
    elif output_size is None:
        raise TypeError(f"{op} output_size must be an int or a pair (h, w), got None")
    else:
        values = (output_size, output_size)
    result = []
    for v in values:
        if v is None:
            result.append(None)
            continue
        if not is_int(v):
            raise TypeError(
                f"{op} output_size must hold ints or None, got {output_size!r} ({type(v).__name__})"
            )
        if v < 0:
            raise ValueError(f"{op} output_size must be >= 0, got {output_size!r}")
        result.append(int(v))
    return result[0], result[1]


def unpool_output_size(
    output_size: Any,
    in_hw: Pair,
    kernel: Pair,
    stride: Pair,
    padding: Pair,
    op: str,
    *,
    data_format: str = "NCHW",
) -> Pair:
    """``max_unpool2d``'s output ``(H, W)``, PyTorch's rule.

    The default is ``(H_in - 1) * stride - 2 * padding + kernel_size`` per axis. An explicit
    ``output_size``, ``(H, W)`` or a full ``(N, C, H, W)`` shape (``(N, H, W, C)`` in
    ``data_format='NHWC'``), must lie strictly within ``stride`` of that default: the sizes
    a ``max_pool2d`` with these arguments maps to ``H_in``.

    >>> unpool_output_size((5, 7), (2, 3), (2, 2), (2, 2), (0, 0), "max_unpool2d")
    (5, 7)
    """
    default = tuple((in_hw[a] - 1) * stride[a] - 2 * padding[a] + kernel[a] for a in range(2))
    if output_size is None:
        size = default
    else:
        if not isinstance(output_size, (tuple, list)) or len(output_size) not in (2, 4):
            raise TypeError(
                f"{op} output_size must be (H, W) or a full ({', '.join(data_format)}) "
                f"shape, got {output_size!r}"
            )
        hw = output_size if len(output_size) == 2 else spatial_shape(output_size, data_format)
        size = tuple(_as_int(v, op, "output_size", output_size) for v in hw)
        for a in range(2):
            lo, hi = default[a] - stride[a], default[a] + stride[a]
            if not lo < size[a] < hi:
                raise ValueError(
                    f"{op} output_size {tuple(output_size)} is invalid: dim {a} must be "
                    f"strictly between {lo} and {hi} for an input of {tuple(in_hw)} with "
                    f"kernel_size={kernel}, stride={stride}, padding={padding}"
                )
    if min(size) < 0:
        raise ValueError(
            f"{op} output size must be non-negative, got {size} for an input of {tuple(in_hw)} "
            f"with kernel_size={kernel}, stride={stride}, padding={padding}"
        )
    return size[0], size[1]


def check_indices(indices: Any, shape: tuple[int, ...], plane: int, op: str) -> Any:
    """Pooling ``indices``: integers of the input's ``shape``, each in ``[0, plane)``.

    The range is checked only where the values are known (outside ``jax.jit``); traced
    indices are taken as they come.
    """
    indices = check_array(indices, op, "indices", floating=False)
    dtype = jnp.result_type(indices)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"{op} expected integer indices, got {dtype}")
    if tuple(indices.shape) != tuple(shape):
        raise ValueError(
            f"{op} expected indices of the input's shape {tuple(shape)}, got {tuple(indices.shape)}"
        )
    if not isinstance(indices, jax.core.Tracer) and indices.size:
        values = np.asarray(indices)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= plane:
            bad = low if low < 0 else high
            raise ValueError(
                f"{op} found an invalid index {bad}: indices must lie in [0, {plane}), "
                f"the cells of one output plane"
            )
    return indices


def check_int(value: Any, op: str, name: str) -> int:
    """An int of any sign (``Flatten``'s ``start_dim``, ``end_dim``)."""
    if not is_int(value):
        raise TypeError(f"{op} {name} must be an int, got {value!r}")
    return int(value)


def check_number(value: Any, op: str, name: str) -> int | float:
    """A Python or NumPy real number, not a bool (``pad``'s fill ``value``)."""
    if isinstance(value, (bool, np.bool_, str)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"{op} {name} must be a number, got {value!r}")
    return value


def one_of(value: Any, choices: tuple[str, ...], op: str, name: str) -> str:
    """A string option (``mode``, ``padding_mode``, ``algorithm``) among ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{op} {name} must be one of {choices}, got {value!r}")
    return value


def check_operand(value: Any, x: Any, op: str, name: str) -> Any:
    """A convolution's ``weight`` or ``bias`` next to its input ``x`` (an array already).

    With a floating ``x`` it must be floating (it is cast to ``x``'s dtype); with an
    integer ``x`` (PyTorch convolves integers on its CPU) it must have ``x``'s dtype,
    as PyTorch requires.
    """
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.integer):
        return check_array(value, op, name)
    value = check_array(value, op, name, floating=False)
    if jnp.result_type(value) != dtype:
        raise TypeError(
            f"{op} {name} must have the dtype of the integer input, {dtype}, got "
            f"{jnp.result_type(value)}"
        )
    return value


def check_bias(bias: Any, op: str, x: Any = None) -> Any:
    """A convolution's ``bias``: ``None`` or an array (see ``check_array``).

    A number here is almost always a stride in torch's bias slot
    (``conv2d(x, w, 2)``), so the message says where the bias goes.
    """
    if bias is None:
        return None
    ints = isinstance(bias, (tuple, list)) and all(isinstance(v, int) for v in bias)
    if isinstance(bias, (bool, int, float, str)) or ints:
        raise TypeError(
            f"{op} bias must be an array of shape (C_out,) or None, got {bias!r}: the third "
            f"positional argument is bias, as in torch.nn.functional.{op.lower()}; pass "
            "stride, padding, ... by keyword or after the bias"
        )
    return check_array(bias, op, "bias") if x is None else check_operand(bias, x, op, "bias")


def output_padding(value: Any, stride: Pair, dilation: Pair, op: str) -> Pair:
    """A transposed convolution's ``output_padding``: a pair, each entry smaller than the
    stride or the dilation on its axis (PyTorch's rule)."""
    out_pads = pair(value, op, "output_padding", minimum=0)
    if any(o >= max(s, d) for o, s, d in zip(out_pads, stride, dilation)):
        raise ValueError(
            f"{op} output_padding must be smaller than either stride or dilation on each "
            f"axis, got output_padding={out_pads}, stride={stride}, dilation={dilation}"
        )
    return out_pads
