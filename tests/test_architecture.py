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
OPS = ("jspatial.conv", "jspatial.conv_transpose", "jspatial.im2col", "jspatial.winograd",
       "jspatial._conv_args", "jspatial._pool_args", "jspatial.pool", "jspatial.adaptive",
       "jspatial.unpool", "jspatial.norm", "jspatial._normalise", "jspatial.pad",
       "jspatial.shapes")  # fmt: skip
ABOVE_OPS = ("jspatial.layers", "jspatial.steps", "jspatial.reference")
SUMMARY = ("jspatial.layers.summary", "jspatial.layers._summary_trace")


def test_the_modules_are_found():
    assert {"jspatial", "jspatial.conv", "jspatial._accel.dispatch", "jspatial.layers.conv"} <= set(
        MODULES
    )
    assert imports("jspatial.layers.conv") >= {"jspatial.conv", "jspatial.layers.module"}
    assert "jspatial._windows" in imports("jspatial.conv", top_level_only=True)


@pytest.mark.parametrize("module", [m for m in MODULES if _inside(m, FLOOR)])
def test_the_floor_imports_nothing_of_jspatial(module):
    # ``_args`` is a package: its parts may import each other.
    floor = next(room for room in FLOOR if _inside(module, (room,)))
    ours = {m for m in imports(module) if _inside(m, ("jspatial",))}
    assert not {m for m in ours if not _inside(m, (floor,))}


def test_windows_imports_only_the_floor():
    ours = {m for m in imports("jspatial._windows") if _inside(m, ("jspatial",))}
    assert {m for m in ours if not _inside(m, ("jspatial._args", "jspatial._tuning"))} == set()


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
def test_the_layers_never_import_steps_or_reference(module):
    above = ("jspatial.steps", "jspatial.reference")
    assert not {m for m in imports(module) if _inside(m, above)}


@pytest.mark.parametrize(
    "module", [m for m in MODULES if not _inside(m, ("jspatial.layers",)) and m != "jspatial"]
)
def test_nothing_below_the_layers_imports_them(module):
    # The package's __init__ is the one exception: it re-exports js.summary.
    assert not {m for m in imports(module) if _inside(m, ("jspatial.layers",))}


@pytest.mark.parametrize(
    "module", [m for m in MODULES if _inside(m, ("jspatial.layers",)) and m not in SUMMARY]
)
def test_no_layer_imports_the_summary(module):
    assert not {m for m in imports(module) if _inside(m, SUMMARY)}


def test_the_normalisation_sits_below_the_op_and_its_kernel():
    ours = {m for m in imports("jspatial._normalise") if _inside(m, ("jspatial",))}
    assert ours <= {"jspatial._linear"}
    assert "jspatial.norm" not in imports("jspatial._accel.tpu.norm")
    assert not {m for m in imports("jspatial._accel.tpu.pool") if _inside(m, OPS)}


def test_no_import_cycle():
    # Imports inside functions count: a late import hides a cycle, it does not remove it.
    graph = {
        m: {i for i in imports(m) if i in MODULES and i not in (m, "jspatial")} for m in MODULES
    }
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(m, path):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(path[path.index(n) :] + [n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_no_file_of_the_package_is_longer_than_a_sitting():
    # About 400 lines: what a reader takes in at one go (the adaptive pools, 423, the
    # longest).
    lengths = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in MODULES.items()}
    assert {m: n for m, n in lengths.items() if n > 430} == {}


@pytest.mark.parametrize("module", list(MODULES))
def test_the_library_never_imports_the_recipe_or_the_benchmarks(module):
    assert not {m for m in imports(module) if _inside(m, ("train", "bench"))}
