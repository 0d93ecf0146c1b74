"""The import rules of ``docs/architecture.md``, read from every module's source.

Each room of the package may import the rooms below it and none above; these tests parse
the imports (at module level and inside functions) of every module in ``jspatial/`` and
check the rules the page states.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "jspatial"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_module(name: str) -> bool:
    return name in MODULES


def imports(module: str, *, top_level_only: bool = False) -> set[str]:
    """The modules that ``module`` imports: ``from a import b`` counts as ``a.b`` where
    that is a module, else as ``a``."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if _is_module(child) else node.module)
    return found


def _inside(name: str, rooms: tuple[str, ...]) -> bool:
    return any(name == room or name.startswith(room + ".") for room in rooms)


FLOOR = ("jspatial._args", "jspatial._tuning", "jspatial._linear")
OPS = ("jspatial.conv", "jspatial.winograd", "jspatial.pool", "jspatial.norm", "jspatial.pad",
       "jspatial.shapes")  # fmt: skip
ABOVE_OPS = ("jspatial.layers", "jspatial.summary", "jspatial.steps", "jspatial.reference")


def test_the_modules_are_found():
    assert {"jspatial", "jspatial.conv", "jspatial._accel.dispatch", "jspatial.layers.conv"} <= set(
        MODULES
    )
    assert imports("jspatial.layers.conv") >= {"jspatial.conv", "jspatial.layers.module"}
    assert "jspatial._windows" in imports("jspatial.conv", top_level_only=True)


@pytest.mark.parametrize("module", FLOOR)
def test_the_floor_imports_nothing_of_jspatial(module):
    assert not {m for m in imports(module) if _inside(m, ("jspatial",))}


def test_windows_imports_only_the_floor():
    ours = {m for m in imports("jspatial._windows") if _inside(m, ("jspatial",))}
    assert ours <= {"jspatial._args", "jspatial._tuning"}, ours


@pytest.mark.parametrize("module", [m for m in MODULES if _inside(m, ("jspatial._accel",))])
def test_accel_never_imports_what_sits_above_the_ops(module):
    assert not {m for m in imports(module) if _inside(m, ABOVE_OPS)}


def test_dispatch_loads_no_op_and_no_kernel_at_import_time():
    ours = {m for m in imports("jspatial._accel.dispatch", top_level_only=True)}
    assert not {m for m in ours if _inside(m, OPS + ("jspatial._accel.tpu", "jspatial._accel.gpu"))}


@pytest.mark.parametrize("module", OPS)
def test_the_ops_never_import_what_sits_above_them(module):
    assert not {m for m in imports(module) if _inside(m, ABOVE_OPS)}


@pytest.mark.parametrize("module", [m for m in MODULES if _inside(m, ("jspatial.layers",))])
def test_the_layers_never_import_summary_steps_or_reference(module):
    above = ("jspatial.summary", "jspatial.steps", "jspatial.reference")
    assert not {m for m in imports(module) if _inside(m, above)}


@pytest.mark.parametrize("module", list(MODULES))
def test_the_library_never_imports_the_recipe_or_the_benchmarks(module):
    assert not {m for m in imports(module) if _inside(m, ("train", "bench"))}
