"""Checks of plain values: ints and pairs of ints, flags, numbers, choices.

Every helper takes ``op`` (the name the user called: ``conv2d`` for the function,
``Conv2d`` for the layer) and the argument's name, and raises a message naming both and
the value seen. The kinds of argument the public signatures take are named here too
(``IntOrPair``, ``Padding``, ``OutputSize``); the ops' docstrings say what each value means.
"""

from __future__ import annotations

import operator
from typing import Any

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
