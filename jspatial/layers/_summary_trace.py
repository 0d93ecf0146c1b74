"""What ``jspatial.summary`` records while the forward pass runs: one row per leaf call.

``Recorder`` knows the leaf layers of the traced copy of the model and, for each call that
returns, the row: its shapes, its own parameters, its MACs (``_layer_macs``), its
activation memory and the receptive field of its output (``_layer_field``, with
``jspatial.shapes.fields``' rule). ``intercepted`` wraps the leaf layers' ``__call__`` for
the duration of the trace. The per-layer rules name the layers of this package, which sit
below it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx
from jax.extend import core as jcore

from jspatial import shapes
from jspatial.layers import module as _module
from jspatial.layers.conv import Conv2d, ConvTranspose2d
from jspatial.layers.norm import BatchNorm1d, BatchNorm2d
from jspatial.layers.pool import (
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool2d,
    Flatten,
    GlobalAvgPool2d,
    MaxPool2d,
    MaxUnpool2d,
)
from jspatial.shapes.fields import _Field

# ------------------------------------------------------------------------- recording


def array_leaves(tree: Any) -> list[Any]:
    return [leaf for leaf in jax.tree.leaves(tree) if hasattr(leaf, "shape")]


@dataclasses.dataclass
class _Layer:
    name: str
    module: Any
    own_params: list[Any]
    calls: int = 0


class Recorder:
    """The leaf layers of the traced copy, their calls, and the field of every tensor seen.

    Each call that returns appends a ``row_type`` (``jspatial.layers.summary.SummaryRow``) to
    ``rows``.
    """

    def __init__(self, row_type: type) -> None:
        self.row_type = row_type
        self.layers: dict[int, _Layer] = {}
        self.rows: list[Any] = []
        self.active: set[int] = set()
        # (array, field) of the input and of every layer output; holding the arrays
        # keeps them alive, so that identity (``is``) can find them again.
        self.tensors: list[tuple[Any, Any]] = []
        self.counted: set[int] = set()

    def start(self, model: nnx.Module, x: Any) -> None:
        found = _module.named_modules(model)
        for path, mod in found:
            children = [m for p, m in found if len(p) > len(path) and p[: len(path)] == path]
            inside = {id(v) for c in children for _, v in _module.named_variables(c)}
            own = [v for _, v in _module.named_variables(mod, nnx.Param) if id(v) not in inside]
            if not children or own:
                self.layers[id(mod)] = _Layer(torch_name(model, path), mod, own)
            if isinstance(mod, nnx.Sequential):
                self._record_functions(mod, torch_name(model, path))
        self.tensors.append((x, _Field.identity()))

    def _record_functions(self, seq: nnx.Sequential, prefix: str) -> None:
        """Wraps the plain functions of a Sequential (``nnx.relu``) so that each call is a row.

        Only the traced copy's list is changed; each position gets a layer of its own,
        named like a module at that index (``features.2``).
        """
        for i, fn in enumerate(seq.layers):
            if isinstance(fn, nnx.Module) or not callable(fn):
                continue
            seq.layers[i] = self._recording(
                fn, _Layer(f"{prefix}.{i}" if prefix else str(i), fn, [])
            )

    def _recording(self, fn: Callable, layer: _Layer) -> Callable:
        @functools.wraps(fn)  # the signature too: Sequential passes ``rngs`` if fn takes it
        def call(*args: Any, **kwargs: Any) -> Any:
            out = fn(*args, **kwargs)
            self.leave(fn, layer, args, kwargs, out)
            return out

        return call

    def enter(self, mod: Any) -> _Layer | None:
        layer = self.layers.get(id(mod))
        if layer is None or id(mod) in self.active:
            return None  # not a leaf of this model, or a subclass's super().__call__
        self.active.add(id(mod))
        return layer

    def leave(self, mod: Any, layer: _Layer, args: tuple, kwargs: dict, out: Any) -> None:
        self.active.discard(id(mod))
        layer.calls += 1
        inputs = array_leaves((args, kwargs))
        outputs = array_leaves(out)
        x = inputs[0] if inputs else None
        in_shape = tuple(x.shape) if x is not None else ()
        out_shapes = tuple(tuple(o.shape) for o in outputs)
        out_shape = out_shapes[0] if out_shapes else ()
        field = _layer_field(mod, self.field_of(x), in_shape, out_shape)
        self.tensors.extend((o, field) for o in outputs)
        params = 0
        for v in layer.own_params:
            if id(v) not in self.counted:  # a weight shared with an earlier layer
                self.counted.add(id(v))
                params += math.prod(v.shape)
        spatial = isinstance(field, _Field)
        self.rows.append(
            self.row_type(
                name=layer.name,
                type=_type_name(mod),
                call=layer.calls,
                input_shape=in_shape,
                output_shape=out_shape,
                output_shapes=out_shapes,
                params=params,
                macs=_layer_macs(mod, in_shape, bool(layer.own_params), args, kwargs),
                activation_bytes=sum(shapes.activation_bytes(o.shape, o.dtype) for o in outputs),
                receptive_field=field.field_value() if spatial else field,
                jump=field.jump_value() if spatial else None,
                exact=field.exact if spatial else True,
            )
        )

    def field_of(self, x: Any) -> Any:
        if x is None:
            return None
        for array, field in reversed(self.tensors):
            if array is x:
                return field
        # A function ran between two layers: the widest layer output of this shape.
        best, best_key = None, None
        for array, field in self.tensors:
            if tuple(array.shape) == tuple(x.shape):
                key = _field_key(field)
                if best_key is None or key >= best_key:
                    best, best_key = field, key
        return best

    def uncalled(self) -> dict[str, int]:
        result = {}
        for layer in self.layers.values():
            n = sum(math.prod(v.shape) for v in layer.own_params if id(v) not in self.counted)
            if layer.calls == 0 and n:
                result[layer.name] = n
        return result


def torch_name(model: Any, path: tuple) -> str:
    """The dotted path PyTorch would print: ``nnx.Sequential``'s ``layers`` is dropped."""
    parts, node = [], model
    for key in path:
        parent = node
        node = parent[key] if isinstance(key, int) else getattr(parent, key)
        if isinstance(parent, nnx.Sequential) and key == "layers":
            continue
        parts.append(str(key))
    return ".".join(parts)


_ABSENT = object()


class intercepted:  # noqa: N801 (used as a context manager, like a function)
    """Wraps ``__call__`` of every leaf layer's class for the duration of the trace.

    Python looks ``__call__`` up on the class, so the class is patched; the wrapper
    passes calls of other instances straight through, and the classes are restored
    (an inherited ``__call__`` removed again) however the trace ends.
    """

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.saved: list[tuple[type, Any]] = []

    def __enter__(self) -> None:
        classes = list(dict.fromkeys(type(layer.module) for layer in self.recorder.layers.values()))
        try:
            for cls in classes:
                self.saved.append((cls, cls.__dict__.get("__call__", _ABSENT)))
                cls.__call__ = _wrap(cls.__call__, self.recorder)
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: Any) -> None:
        for cls, original in reversed(self.saved):
            if original is _ABSENT:
                del cls.__call__
            else:
                cls.__call__ = original
        self.saved.clear()


def _wrap(original: Callable, recorder: Recorder) -> Callable:
    @functools.wraps(original)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        layer = recorder.enter(self)
        if layer is None:
            return original(self, *args, **kwargs)
        try:
            out = original(self, *args, **kwargs)
        finally:
            recorder.active.discard(id(self))
        recorder.leave(self, layer, args, kwargs, out)
        return out

    return call


# ---------------------------------------------------------------- the rows' values


def _field_key(field: Any) -> tuple:
    if isinstance(field, _Field):
        return (1, field.field[0] * field.field[1])
    return (2, 0) if field == "all" else (0, 0)


def _layer_field(mod: Any, field: Any, in_shape: tuple, out_shape: tuple) -> Any:
    """The field of a layer's output, from that of its input (see the module docstring)."""
    if isinstance(mod, (GlobalAvgPool2d, nnx.Linear)) or field == "all":
        return "all"
    if isinstance(mod, Flatten):
        return None
    if not isinstance(field, _Field):
        return field if in_shape == out_shape else None
    if isinstance(mod, (Conv2d, MaxPool2d)):
        return field.window(mod.kernel_size, mod.stride, mod.dilation)
    if isinstance(mod, AvgPool2d):
        return field.window(mod.kernel_size, mod.stride)
    if isinstance(mod, ConvTranspose2d):
        return field.transposed(mod.kernel_size, mod.stride, mod.dilation)
    if isinstance(mod, MaxUnpool2d):
        return field.transposed(mod.kernel_size, mod.stride)
    if isinstance(mod, (AdaptiveAvgPool2d, AdaptiveMaxPool2d)):
        return field.adaptive(_hw(in_shape, mod), _hw(out_shape, mod))
    # Element-wise layers (BatchNorm, activations, dropout) keep the field; a layer
    # of unknown kind that changes the shape loses it.
    return field if in_shape == out_shape else None


# Normalisations fold into the convolution before them at inference: no MACs of their own.
_NORMS = (BatchNorm1d, BatchNorm2d, nnx.BatchNorm, nnx.LayerNorm, nnx.GroupNorm, nnx.RMSNorm)


def _type_name(mod: Any) -> str:
    """A layer's class name; a function's own name (``relu``, a ``partial``'s function's)."""
    if isinstance(mod, nnx.Module):
        return type(mod).__name__
    fn = mod.func if isinstance(mod, functools.partial) else mod
    return getattr(fn, "__name__", type(fn).__name__)


_PRODUCTS = frozenset({"dot_general", "conv_general_dilated"})


def _function_macs(fn: Callable, args: tuple, kwargs: dict) -> int | None:
    """0 for a function that multiplies no two arrays together (an activation, a reshape).

    Its program is traced again, abstractly, and searched for a matrix product or a
    convolution, nested programs (``jit``, ``custom_jvp``) included; with one the MACs
    are not known here (``None``).
    """
    todo = [jax.make_jaxpr(fn)(*args, **kwargs).jaxpr]
    while todo:
        jaxpr = todo.pop()
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in _PRODUCTS:
                return None
            todo.extend(jcore.jaxprs_in_params(eqn.params))
    return 0


def _layout(mod: Any) -> str:
    """The layout a jspatial layer runs in (``'NCHW'`` for layers without one)."""
    return getattr(mod, "data_format", "NCHW")


def _hw(shape: tuple, mod: Any) -> tuple:
    """The ``(H, W)`` of a layer's 3-D or 4-D array in the layer's layout."""
    return tuple(shape[-2:]) if _layout(mod) == "NCHW" else tuple(shape[-3:-1])


def _layer_macs(
    mod: Any, in_shape: tuple, has_params: bool, args: tuple = (), kwargs: dict | None = None
) -> int | None:
    if not isinstance(mod, nnx.Module):
        return _function_macs(mod, args, kwargs or {})
    if isinstance(mod, Conv2d):
        return shapes.conv2d_macs(in_shape, mod.out_channels, mod.kernel_size, mod.stride,
                                  mod.padding, mod.dilation, mod.groups,
                                  data_format=_layout(mod))  # fmt: skip
    if isinstance(mod, ConvTranspose2d):
        return shapes.conv_transpose2d_macs(
            in_shape, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
            mod.output_padding, mod.groups, mod.dilation, data_format=_layout(mod),
        )  # fmt: skip
    if isinstance(mod, nnx.Linear):
        return math.prod(in_shape[:-1]) * mod.in_features * mod.out_features
    if not has_params or isinstance(mod, _NORMS):
        return 0
    return None
