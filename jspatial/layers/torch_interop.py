"""Load PyTorch weights into a jspatial model and export them back.

A PyTorch ``state_dict`` key is the path of a tensor through the module tree,
``features.0.weight`` or ``bn1.running_mean``. The same path through a jspatial
model (attribute names joined by ``'.'``) names the matching variable, with three
translations:

- ``nnx.Sequential`` keeps its children in ``.layers``: ``features.layers.0.weight``
  is PyTorch's ``features.0.weight``;
- ``nnx.Linear`` stores ``kernel`` as ``(in, out)``: it is PyTorch's ``weight``
  ``(out, in)`` transposed;
- ``num_batches_tracked`` of a batch-norm layer is accepted and ignored (jspatial
  uses a fixed momentum, never the cumulative average that needs the count).

Every tensor is copied: after loading, the model shares no memory with the
``state_dict`` (``jnp.asarray`` of a NumPy array may alias it on CPU), and the
exported arrays share none with the model. PyTorch itself is never imported:
tensors are recognised by their ``detach``/``numpy`` methods.

Example:
    >>> import numpy as np
    >>> from flax import nnx
    >>> from jspatial.layers import Conv2d, load_torch_state_dict, to_torch_state_dict
    >>> model = nnx.Sequential(Conv2d(3, 8, 3, rngs=nnx.Rngs(0)), nnx.relu)
    >>> sd = to_torch_state_dict(model)
    >>> sorted(sd), sd["0.weight"].shape
    (['0.bias', '0.weight'], (8, 3, 3, 3))
    >>> sd["0.bias"] = np.full(8, 0.5, np.float32)
    >>> load_torch_state_dict(model, sd)
    LoadResult(missing_keys=[], unexpected_keys=[])
    >>> float(model.layers[0].bias[...][0])
    0.5
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jspatial.layers.module import Path, named_modules, named_variables
from jspatial.layers.norm import BatchNorm2d

_IGNORED_BUFFERS = ("num_batches_tracked",)


class StateDictError(KeyError, ValueError):
    """A ``state_dict`` that does not fit the model; lists every offending key at once.

    Both a ``KeyError`` (keys missing or unexpected) and a ``ValueError`` (shapes),
    so either ``except`` catches it. ``missing``, ``unexpected`` and ``mismatched``
    hold the keys.
    """

    def __init__(
        self, message: str, missing: list[str], unexpected: list[str], mismatched: list[str]
    ):
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched

    def __str__(self) -> str:
        # KeyError's own __str__ would quote the message and escape its newlines.
        return str(self.args[0])


class LoadResult(NamedTuple):
    """What ``load_torch_state_dict(strict=False)`` skipped, as PyTorch reports it."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class _Slot(NamedTuple):
    variable: nnx.Variable
    transpose: bool  # nnx.Linear kernel (in, out) <-> PyTorch weight (out, in)

    @property
    def torch_shape(self) -> tuple[int, ...]:
        shape = tuple(self.variable.shape)
        return shape[::-1] if self.transpose else shape


def _torch_key(model: Any, path: Path) -> tuple[str, bool]:
    """The PyTorch name of the variable or module at ``path``, and whether to transpose it."""
    parts: list[str] = []
    node, transpose = model, False
    for i, key in enumerate(path):
        parent = node
        indexable = isinstance(parent, (nnx.List, nnx.Dict, list, tuple, dict))
        node = parent[key] if indexable else getattr(parent, key)
        if isinstance(parent, nnx.Sequential) and key == "layers":
            continue  # PyTorch's nn.Sequential numbers its children directly
        if i == len(path) - 1 and isinstance(parent, nnx.Linear) and key == "kernel":
            parts.append("weight")
            transpose = True
            continue
        parts.append(str(key))
    return ".".join(parts), transpose


def _slots(model: Any) -> dict[str, _Slot]:
    slots: dict[str, _Slot] = {}
    for path, var in named_variables(model, (nnx.Param, nnx.BatchStat), unique=False):
        key, transpose = _torch_key(model, path)
        if key in slots:
            raise ValueError(f"two variables of the model map to the PyTorch key {key!r}")
        slots[key] = _Slot(var, transpose)
    return slots


def _ignorable_keys(model: Any) -> set[str]:
    """``<prefix>num_batches_tracked`` for every batch-norm layer of the model."""
    keys = set()
    for path, module in named_modules(model):
        if isinstance(module, BatchNorm2d):
            prefix, _ = _torch_key(model, path)
            keys.update(f"{prefix}.{name}" if prefix else name for name in _IGNORED_BUFFERS)
    return keys


def _to_numpy(value: Any) -> np.ndarray:
    """A private NumPy copy of a torch tensor, NumPy array, JAX array or nested list."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch.Tensor
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # NumPy has no bfloat16
            value = value.float()
        value = value.numpy()
    return np.array(value, copy=True)


def load_torch_state_dict(
    model: Any, state_dict: Mapping[str, Any], strict: bool = True
) -> LoadResult:
    """Fill ``model``'s parameters and running statistics from a PyTorch ``state_dict``.

    Everything is checked before anything is written: on error the model is
    unchanged, and the one ``StateDictError`` lists every missing, unexpected and
    mis-shaped key. Each tensor is copied and cast to the dtype of the variable
    it replaces.

    Args:
        model: any ``nnx.Module`` built from jspatial layers, ``nnx.Linear``,
            ``nnx.Sequential``/``nnx.List`` and user modules; its attribute paths
            must mirror the PyTorch model's (``self.conv1`` <-> ``self.conv1``).
        state_dict: ``torch_model.state_dict()``, or a mapping of the same keys to
            NumPy/JAX arrays.
        strict: reject missing and unexpected keys. With ``strict=False`` they are
            skipped and reported in the result; mis-shaped keys are always errors.

    Returns:
        ``LoadResult(missing_keys, unexpected_keys)``, empty lists when strict.

    Raises:
        StateDictError: keys missing, unexpected (when ``strict``) or mis-shaped.
    """
    slots = _slots(model)
    ignorable = _ignorable_keys(model)
    missing = [key for key in slots if key not in state_dict]
    unexpected = [key for key in state_dict if key not in slots and key not in ignorable]
    mismatched: dict[str, str] = {}  # key -> what is wrong with it
    staged: list[tuple[nnx.Variable, jax.Array]] = []
    for key, slot in slots.items():
        if key not in state_dict:
            continue
        try:
            array = _to_numpy(state_dict[key])
        except Exception as error:  # whatever it was, it is not an array
            mismatched[key] = f"cannot convert {type(state_dict[key]).__name__} ({error})"
            continue
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            mismatched[key] = f"expected numbers, got dtype {array.dtype}"
        elif array.shape != slot.torch_shape:
            mismatched[key] = f"expected {slot.torch_shape}, got {array.shape}"
        else:
            # Cast and transpose now, so that the assignment loop below cannot fail.
            array = array.T if slot.transpose else array
            staged.append((slot.variable, jnp.array(array, dtype=slot.variable.dtype)))

    if mismatched or (strict and (missing or unexpected)):
        lines = ["load_torch_state_dict: the state_dict does not fit the model; nothing was loaded"]
        if strict and missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
        if strict and unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if mismatched:
            details = "; ".join(f"{key}: {why}" for key, why in mismatched.items())
            lines.append(f"  mis-shaped keys ({len(mismatched)}): {details}")
        raise StateDictError(
            "\n".join(lines),
            missing if strict else [],
            unexpected if strict else [],
            list(mismatched),
        )

    for variable, array in staged:
        variable[...] = array
    return LoadResult(missing, unexpected)  # both empty when strict


def to_torch_state_dict(model: Any) -> dict[str, np.ndarray]:
    """Export ``model``'s parameters and running statistics as a PyTorch-keyed dict of NumPy.

    The arrays are copies in the variables' dtypes (``nnx.Linear`` kernels
    transposed to ``(out, in)``), in attribute order. ``num_batches_tracked`` is
    not exported; PyTorch fills it in when loading a plain dict. bfloat16 variables
    come back as ``ml_dtypes.bfloat16`` arrays, which ``torch.from_numpy`` rejects:
    cast them with ``.astype(np.float32)`` first. To load::

        torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    """
    out: dict[str, np.ndarray] = {}
    for key, slot in _slots(model).items():
        array = np.array(slot.variable[...], copy=True)
        out[key] = np.ascontiguousarray(array.T) if slot.transpose else array
    return out
