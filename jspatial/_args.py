"""The one place where user-facing arguments are checked and normalised.

Every public op and layer funnels its hyper-parameters through these helpers, so
that ``stride=2`` and ``stride=(2, 2)`` mean the same everywhere and every bad
value produces the same kind of message: the op, the argument as spelled in the
signature, and the value seen. ``op`` is the name the user called (``conv2d``
for the function, ``Conv2d`` for the layer).
"""

from __future__ import annotations

import operator
from typing import Any

import jax.numpy as jnp
import numpy as np

Pair = tuple[int, int]
Padding2d = tuple[Pair, Pair]  # ((top, bottom), (left, right))


def _as_int(value: Any, op: str, name: str, seen: Any) -> int:
    # bool is an int subclass, but stride=True is always a mistake.
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(
            f"{op} {name} must be an int or a pair of ints, got {seen!r} ({type(seen).__name__})"
        )
    return operator.index(value)


def pair(value: Any, op: str, name: str, *, minimum: int = 1) -> Pair:
    """Normalise an int or ``(h, w)`` pair of ints to a pair, checking a lower bound.

    >>> pair(3, "conv2d", "stride")
    (3, 3)
    """
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(
                f"{op} {name} must be an int or a pair (h, w), got {len(value)} values: {value!r}"
            )
        result = (_as_int(value[0], op, name, value), _as_int(value[1], op, name, value))
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
    """Normalise pooling hyper-parameters; ``stride=None`` means the kernel size.

    Padding above half the (undilated) kernel is rejected, as in PyTorch: such a
    window could lie entirely in padding even without dilation.
    """
    kernel = pair(kernel_size, op, "kernel_size")
    strides = kernel if stride is None else pair(stride, op, "stride")
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


def check_input(x: Any, op: str, name: str = "input") -> Any:
    """The ``(N, C, H, W)`` input of an op, checked, as an array (see ``check_array``).

    An empty batch (``N == 0``) is valid, as in PyTorch; zero channels are not.
    """
    x = check_array(x, op, name, floating=False)
    shape = tuple(x.shape)
    if len(shape) != 4:
        raise ValueError(
            f"{op} expected 4D {name} (batch, channels, height, width), got {len(shape)}D: {shape}"
        )
    if shape[1] == 0:
        raise ValueError(f"{op} expected at least one channel, got {name} of shape {shape}")
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{op} expected floating-point {name} (float32, bfloat16, float16 or float64), "
            f"got {dtype}; convert with x.astype(jnp.float32)"
        )
    return x


def check_bool(value: Any, op: str, name: str) -> bool:
    """A flag: a Python or NumPy bool (``ceil_mode``, ``training``, ``affine``, ...)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op} {name} must be a bool, got {value!r} ({type(value).__name__})")
    return bool(value)


def positive_int(value: Any, op: str, name: str) -> int:
    """A count (channels, features): a positive int."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
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
    if isinstance(groups, (bool, np.bool_)) or not isinstance(groups, (int, np.integer)):
        raise TypeError(f"{op} groups must be a positive int, got {groups!r}")
    if groups < 1:
        raise ValueError(f"{op} groups must be positive, got {groups}")
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"{op} groups={groups} must divide both in_channels={in_channels} and "
            f"out_channels={out_channels}"
        )
    return int(groups)


def check_momentum(momentum: Any, op: str) -> float:
    """Batch-norm ``momentum``: the weight of the new statistic, a number in ``[0, 1]``."""
    if isinstance(momentum, (bool, np.bool_)) or not isinstance(momentum, (int, float)):
        raise TypeError(
            f"{op} momentum must be a number in [0, 1], got {momentum!r} "
            "(momentum=None, PyTorch's cumulative average, is not supported)"
        )
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"{op} momentum must be in [0, 1], got {momentum}")
    return float(momentum)


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
