"""The PyTorch-flavoured surface every layer shares: ``forward``, ``parameters()``, repr.

``Module`` is a plain ``nnx.Module`` with three additions, so a jspatial layer
(or a model written as ``class Net(jspatial.layers.Module)``) reads like its
PyTorch counterpart:

- ``forward(x)``: an alias of ``__call__``;
- ``parameters()``: the trainable arrays, found recursively, in the order the
  attributes were first assigned (``weight`` before ``bias``);
- a one-line repr built from ``extra_repr()``, e.g. ``MaxPool2d(kernel_size=(2, 2), ...)``.

The walk behind ``parameters`` is also exposed as functions that accept *any*
``nnx.Module`` (``parameters(model)``, ``named_parameters(model)``,
``named_variables(model, nnx.BatchStat)``). It does not use ``nnx.state``, which
orders attributes alphabetically (``bias`` before ``weight``): PyTorch users
expect definition order, and an optimizer zipping two ``parameters()`` lists
needs an order that survives ``nnx.split``/``merge`` and ``nnx.jit``, which this
one does.

Names are PyTorch's (the same translation as ``load_torch_state_dict`` and
``to_torch_state_dict``): an ``nnx.Sequential``'s children are ``0``, ``1``, ...
(not ``layers.0``), and an ``nnx.Linear``'s ``kernel`` is ``weight``, reported in
PyTorch's ``(out, in)`` layout.

Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jspatial.layers import Conv2d, named_parameters, parameters
    >>> conv = Conv2d(3, 8, 3, rngs=nnx.Rngs(0))
    >>> [p.shape for p in conv.parameters()]
    [(8, 3, 3, 3), (8,)]
    >>> model = nnx.Sequential(conv, nnx.relu)
    >>> sum(p.size for p in parameters(model))
    224
    >>> [name for name, _ in named_parameters(model)]
    ['0.weight', '0.bias']
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
from flax import nnx
from flax.nnx import reprlib

Path = tuple[str | int, ...]


class Module(nnx.Module):
    """``nnx.Module`` with ``forward``, ``parameters()`` and a PyTorch-style one-line repr.

    Subclasses that override ``extra_repr`` (or set ``_one_line_repr = True``) get
    the one-line repr; the others (composite models) keep Flax's tree display of
    their children.
    """

    _one_line_repr = False

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Alias of ``__call__``, for code written against ``torch.nn.Module``."""
        return self(*args, **kwargs)

    def parameters(self) -> list[jax.Array]:
        """The trainable arrays (``nnx.Param``), recursively, in attribute order."""
        return parameters(self)

    def named_parameters(self) -> list[tuple[str, jax.Array]]:
        """``(PyTorch name, array)`` for every ``nnx.Param``, in attribute order."""
        return named_parameters(self)

    def extra_repr(self) -> str:
        """The text between the parentheses of the repr (PyTorch's hook of the same name)."""
        return ""

    def __nnx_repr__(self):
        # Flax renders nested modules through ``__nnx_repr__`` rather than
        # ``__repr__``, so the one-line form is produced here; it then shows up
        # inside an ``nnx.Sequential`` or a user's model too.
        if type(self).extra_repr is Module.extra_repr and not self._one_line_repr:
            yield from super().__nnx_repr__()
            return
        yield reprlib.Object(type=type(self), same_line=True, kv_sep="")
        args = self.extra_repr()
        if args:
            yield reprlib.Attr("", args, use_raw_key=True, use_raw_value=True)


def named_variables(
    model: Any,
    variable_type: type[nnx.Variable] | tuple[type[nnx.Variable], ...] = nnx.Variable,
    *,
    unique: bool = True,
) -> list[tuple[Path, nnx.Variable]]:
    """Every ``variable_type`` reachable from ``model`` with its attribute path.

    Paths are tuples of attribute names, with ``int`` indices for ``nnx.List``
    elements (``('layers', 0, 'weight')`` inside an ``nnx.Sequential``). The order
    is the order in which attributes were first assigned, and stays so through
    ``nnx.split``/``merge`` and ``nnx.jit``. With ``unique`` a variable
    shared by two modules is listed once, under the first path that reaches it
    (what an optimizer wants); without, once per path (what PyTorch's
    ``state_dict`` does with tied weights).
    """
    seen: set[int] = set()
    found = _walk(model, (), seen, unique, ())
    return [(path, var) for path, var in found if isinstance(var, variable_type)]


def named_modules(model: Any) -> list[tuple[Path, nnx.Module]]:
    """Every ``nnx.Module`` reachable from ``model`` (itself first), in attribute order.

    Returns ``(path, module)`` pairs, the path as Flax spells it.

    Example:
        >>> from flax import nnx
        >>> from jspatial.layers import Conv2d, named_modules
        >>> model = nnx.Sequential(Conv2d(3, 8, 3, rngs=nnx.Rngs(0)), nnx.relu)
        >>> [(path, type(m).__name__) for path, m in named_modules(model)][-1]
        (('layers', 0), 'Conv2d')
    """
    seen: set[int] = set()
    return list(_walk_modules(model, (), seen))


def parameters(model: Any) -> list[jax.Array]:
    """The trainable arrays of any ``nnx.Module``, in attribute order (``weight``, then ``bias``).

    The arrays of ``named_parameters``, in PyTorch's layout (an ``nnx.Linear``
    kernel ``(in, out)`` comes back as its ``(out, in)`` weight).

    Example:
        >>> from flax import nnx
        >>> from jspatial.layers import BatchNorm2d, parameters
        >>> [p.tolist() for p in parameters(BatchNorm2d(2))]
        [[1.0, 1.0], [0.0, 0.0]]
    """
    return [array for _, array in named_parameters(model)]


def named_parameters(model: Any) -> list[tuple[str, jax.Array]]:
    """``(name, array)`` for every ``nnx.Param`` of ``model``, with PyTorch's names and layout.

    The names are those of the PyTorch twin's ``named_parameters()`` and
    ``state_dict()`` (``_torch_name``); a parameter shared by two modules is
    listed once, as PyTorch does.

    Example:
        >>> from flax import nnx
        >>> from jspatial.layers import named_parameters
        >>> head = nnx.Sequential(nnx.Linear(4, 3, rngs=nnx.Rngs(0)))
        >>> [(name, array.shape) for name, array in named_parameters(head)]
        [('0.weight', (3, 4)), ('0.bias', (3,))]
    """
    return [
        (name, var[...].T if transpose else var[...])
        for name, var, transpose in _named_torch_variables(model, nnx.Param)
    ]


def _torch_name(model: Any, path: Path) -> tuple[str, bool]:
    """PyTorch's name for the variable (or module) at ``path`` in ``model``, and whether
    PyTorch's array is the transpose of ours.

    The attribute path joined by ``'.'``, with two translations: an
    ``nnx.Sequential`` keeps its children in ``.layers``, PyTorch's ``nn.Sequential``
    numbers them directly (``features.layers.0.weight`` is ``features.0.weight``);
    an ``nnx.Linear`` stores ``kernel`` as ``(in, out)``, PyTorch's ``weight`` is
    ``(out, in)``.

    >>> from flax import nnx
    >>> model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    >>> _torch_name(model, ("layers", 0, "kernel"))
    ('0.weight', True)
    """
    parts: list[str] = []
    node, transpose = model, False
    for i, key in enumerate(path):
        parent = node
        indexable = isinstance(parent, (nnx.List, nnx.Dict, list, tuple, dict))
        node = parent[key] if indexable else getattr(parent, key)
        if isinstance(parent, nnx.Sequential) and key == "layers":
            continue
        if i == len(path) - 1 and isinstance(parent, nnx.Linear) and key == "kernel":
            parts.append("weight")
            transpose = True
            continue
        parts.append(str(key))
    return ".".join(parts), transpose


def _named_torch_variables(
    model: Any,
    variable_type: type[nnx.Variable] | tuple[type[nnx.Variable], ...] = nnx.Variable,
    *,
    unique: bool = True,
) -> list[tuple[str, nnx.Variable, bool]]:
    """``(PyTorch name, variable, transposed)`` for ``named_variables(model, ...)``."""
    found = []
    for path, var in named_variables(model, variable_type, unique=unique):
        name, transpose = _torch_name(model, path)
        found.append((name, var, transpose))
    return found


def _join_path(path: Path) -> str:
    return ".".join(str(part) for part in path)


def _children(node: Any) -> Iterator[tuple[str | int, Any]]:
    """The attributes of a graph node that may hold variables or modules, in order."""
    if isinstance(node, nnx.List):
        # Iterate by index: after insert/delete, ``vars`` order no longer matches it.
        yield from enumerate(node)
    elif isinstance(node, nnx.Module):
        attributes = vars(node)
        # ``vars`` order is not stable: NNX rebuilds modules with their attributes
        # sorted by name (``nnx.merge``, the write-back after ``nnx.jit``). Its
        # ``_pytree__nodes`` table keeps the order of first assignment through all
        # of that, so it leads; ``vars`` order is the fallback.
        first_assigned = list(getattr(node, "_pytree__nodes", ()))
        for name in dict.fromkeys([*first_assigned, *attributes]):
            if name in attributes and not name.startswith("_pytree__"):  # Flax's bookkeeping
                yield name, attributes[name]
    elif isinstance(node, (list, tuple)):
        yield from enumerate(node)
    elif isinstance(node, dict):
        yield from node.items()


def _walk(
    node: Any, path: Path, seen: set[int], unique: bool, ancestors: tuple[int, ...]
) -> Iterator[tuple[Path, nnx.Variable]]:
    if isinstance(node, nnx.Variable):
        if not unique or id(node) not in seen:
            seen.add(id(node))
            yield path, node
        return
    if isinstance(node, nnx.Module):
        # A shared submodule is visited once when ``unique``; a module that contains
        # itself (a reference cycle) is never entered twice on one path.
        if (unique and id(node) in seen) or id(node) in ancestors:
            return
        seen.add(id(node))
        ancestors = (*ancestors, id(node))
    for key, child in _children(node):
        yield from _walk(child, (*path, key), seen, unique, ancestors)


def _walk_modules(node: Any, path: Path, seen: set[int]) -> Iterator[tuple[Path, nnx.Module]]:
    if isinstance(node, nnx.Module):
        if id(node) in seen:
            return
        seen.add(id(node))
        yield path, node
    elif isinstance(node, nnx.Variable):
        return
    for key, child in _children(node):
        yield from _walk_modules(child, (*path, key), seen)
