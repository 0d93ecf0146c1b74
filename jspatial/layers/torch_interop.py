"""Load PyTorch weights into a jspatial model and export them back.

A PyTorch ``state_dict`` key is the path of a tensor through the module tree,
``features.0.weight`` or ``bn1.running_mean``. The same path through a jspatial
model names the matching variable (the names ``named_parameters`` reports): an
``nnx.Sequential``'s children are numbered directly (``features.0.weight``, not
``features.layers.0.weight``), and an ``nnx.Linear`` ``kernel`` ``(in, out)`` is
PyTorch's ``weight`` ``(out, in)``, transposed on the way in and out.

Every layer's state is PyTorch's, name for name and shape for shape: ``Conv2d``
and ``ConvTranspose2d`` (``weight`` ``(C_in, C_out // groups, kh, kw)``, as PyTorch
stores it), ``BatchNorm2d`` (``num_batches_tracked`` included) and ``nnx.Linear``;
pooling, ``Flatten`` and the other parameter-free layers have none, in both
frameworks. Exported are all of the model's variables but random-number state,
caches and intermediates: parameters, batch statistics, and frozen arrays of
user-defined variable types (PyTorch's parameters with ``requires_grad=False``).

Every tensor is copied: after loading, the model shares no memory with the
``state_dict`` (``jnp.asarray`` of a NumPy array may alias it on CPU), and the
exported tensors share none with the model. Loading never imports PyTorch
(tensors are recognised by their ``detach``/``numpy`` methods); exporting does.

Example:
    >>> import numpy as np
    >>> from flax import nnx
    >>> from jspatial.layers import Conv2d, load_torch_state_dict, to_torch_state_dict
    >>> model = nnx.Sequential(Conv2d(3, 8, 3, rngs=nnx.Rngs(0)), nnx.relu)
    >>> sd = to_torch_state_dict(model)  # torch.Tensor values
    >>> sorted(sd), tuple(sd["0.weight"].shape)
    (['0.bias', '0.weight'], (8, 3, 3, 3))
    >>> sd["0.bias"] = np.full(8, 0.5, np.float32)  # NumPy arrays load too
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

from jspatial.layers.module import _named_torch_variables

# State that PyTorch's state_dict has no counterpart for.
_NOT_STATE = (nnx.RngState, nnx.Cache, nnx.Intermediate, nnx.Perturbation)
# A buffer PyTorch itself accepts as missing (BatchNorm keeps its count then).
_OPTIONAL = "num_batches_tracked"


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


def _slots(model: Any) -> dict[str, _Slot]:
    slots: dict[str, _Slot] = {}
    for key, var, transpose in _named_torch_variables(model, nnx.Variable, unique=False):
        if isinstance(var, _NOT_STATE):
            continue
        if key in slots:
            raise ValueError(f"two variables of the model map to the PyTorch key {key!r}")
        slots[key] = _Slot(var, transpose)
    return slots


def _optional(key: str) -> bool:
    return key == _OPTIONAL or key.endswith("." + _OPTIONAL)


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
            A missing ``num_batches_tracked`` leaves the layer's count as it is,
            as PyTorch does.
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
    missing = [key for key in slots if key not in state_dict and not _optional(key)]
    unexpected = [key for key in state_dict if key not in slots]
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


def to_torch_state_dict(model: Any) -> dict[str, Any]:
    """Export ``model``'s state as a PyTorch ``state_dict`` of ``torch.Tensor``s.

    So that ``torch_model.load_state_dict(to_torch_state_dict(model), strict=True)``
    works as written: PyTorch's keys in attribute order, PyTorch's layouts
    (``nnx.Linear`` kernels transposed to ``(out, in)``), the variables' dtypes
    (``bfloat16`` included) except ``num_batches_tracked``, which is int64 as in
    PyTorch. The tensors are copies on the CPU.

    Raises:
        ImportError: PyTorch is not installed (``pip install torch``).

    Example:
        >>> from jspatial.layers import BatchNorm2d, to_torch_state_dict
        >>> sd = to_torch_state_dict(BatchNorm2d(2))
        >>> list(sd), sd["num_batches_tracked"].dtype
        (['weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked'], torch.int64)
    """
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "to_torch_state_dict returns torch.Tensors and needs PyTorch: pip install torch"
        ) from error
    out: dict[str, Any] = {}
    for key, slot in _slots(model).items():
        array = np.array(slot.variable[...], copy=True)
        if slot.transpose:
            array = np.ascontiguousarray(array.T)
        if _optional(key):
            out[key] = torch.tensor(array, dtype=torch.int64)
        elif array.dtype == jnp.bfloat16:  # NumPy has no bfloat16 of its own: via float32
            out[key] = torch.from_numpy(array.astype(np.float32)).to(torch.bfloat16)
        else:
            out[key] = torch.from_numpy(array)
    return out
