"""Checks of arrays: what an op accepts as its input, operands and indices, and layouts.

``check_array`` turns anything array-like into a JAX array (refusing a torch tensor with a
message saying how to convert it); ``check_input`` checks an op's 4-D input in its
``data_format``; ``batched``/``unbatch`` give the ops PyTorch's unbatched ``(C, H, W)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jspatial._args.values import Pair

# Where the channels are: ``'NCHW'`` (PyTorch's, the default) or ``'NHWC'`` (channels last,
# what Flax, Keras and TensorFlow hold). Weights are OIHW in both.
DATA_FORMATS = ("NCHW", "NHWC")
_AXES = {"NCHW": "batch, channels, height, width", "NHWC": "batch, height, width, channels"}


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
