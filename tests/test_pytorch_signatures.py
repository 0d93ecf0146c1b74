"""The PyTorch parity table (docs/pytorch.md) holds: for every row, our signature and
PyTorch's have the same parameter names, order and defaults, read from both libraries."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import jspatial
import jspatial.layers

torch = pytest.importorskip("torch")
F = torch.nn.functional

TABLE = Path(__file__).resolve().parents[1] / "docs" / "pytorch.md"
ROW = re.compile(r"^\| `([A-Za-z_0-9]+)` \| `([^`]+)` \| (?:`([^`]*)`|\(none\)) \|", re.M)


def _rows(section: str) -> list[tuple[str, str, str]]:
    text = TABLE.read_text(encoding="utf-8")
    body = text.split(f"## {section}")[1].split("\n## ")[0]
    return ROW.findall(body)


def _parse(params: str) -> list[tuple[str, object]]:
    """``"x, stride=1"`` -> ``[("x", EMPTY), ("stride", 1)]``."""
    out = []
    for part in filter(None, (p.strip() for p in params.split(","))):
        name, _, default = part.partition("=")
        out.append((name, ast.literal_eval(default) if default else inspect.Parameter.empty))
    return out


def _positional(fn, skip=()) -> list[tuple[str, object]]:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [
        ("x" if p.name == "input" else p.name, p.default)
        for p in inspect.signature(fn).parameters.values()
        if p.kind in kinds and p.name not in ("self", *skip)
    ]


def _torch_function(name: str) -> list[tuple[str, object]]:
    fn = getattr(F, name)
    try:
        params = _positional(fn)
        if params and params[0][0] == "x":
            return params
    except (TypeError, ValueError):  # a builtin without a Python signature
        pass
    # Builtins and boolean-dispatched functions document theirs on the first line.
    first = next(line.strip() for line in (fn.__doc__ or "").splitlines() if line.strip())
    inside = re.match(rf"{name}\((.*)\)", first).group(1)
    return [("x" if n == "input" else n, d) for n, d in _parse(inside)]


FUNCTIONS = _rows("Functions")
LAYERS = _rows("Layers")


def test_the_table_covers_every_public_op_and_layer():
    ops = {n for n in jspatial.__all__ if n in {r[0] for r in FUNCTIONS}}
    documented = {r[0] for r in FUNCTIONS}
    callables = {
        n
        for n in jspatial.__all__
        if inspect.isfunction(getattr(jspatial, n))
        and getattr(jspatial, n).__module__
        in (
            "jspatial.conv",
            "jspatial.conv_transpose",
            "jspatial.pool",
            "jspatial.adaptive",
            "jspatial.unpool",
            "jspatial.norm",
            "jspatial.pad",
        )  # fmt: skip
    }
    assert callables <= documented, callables - documented
    assert ops == documented
    layers = {
        n
        for n in jspatial.layers.__all__
        if inspect.isclass(getattr(jspatial.layers, n))
        and issubclass(getattr(jspatial.layers, n), jspatial.layers.Module)
        and n != "Module"
    }
    assert layers == {r[0] for r in LAYERS}


@pytest.mark.parametrize("ours, theirs, params", FUNCTIONS, ids=[r[0] for r in FUNCTIONS])
def test_function_signature(ours, theirs, params):
    expected = _parse(params)
    assert _positional(getattr(jspatial, ours)) == expected
    reference = getattr(jspatial.reference, ours, None)
    if reference is not None:  # the NumPy loops take the same leading arguments
        ref = _positional(reference)
        assert ref == expected[: len(ref)] and len(ref) >= len(expected) - 1
    if theirs == f"F.{ours}":
        assert _torch_function(ours) == expected


@pytest.mark.parametrize("ours, theirs, params", LAYERS, ids=[r[0] for r in LAYERS])
def test_layer_signature(ours, theirs, params):
    expected = _parse(params)
    assert _positional(getattr(jspatial.layers, ours).__init__) == expected
    if theirs == ours:
        skip = ("device", "dtype")  # JAX places arrays itself; Flax's dtype is keyword-only
        assert _positional(getattr(torch.nn, theirs).__init__, skip) == expected
