"""Build-time hooks: the API pages and the op table come from the package's ``__all__`` lists.

A page marks where generated content goes with an HTML comment, ``<!-- jspatial: KIND -->``:
``ops``, ``calculators``, ``layers`` and ``modules`` expand to one mkdocstrings block per
public name of that kind, ``op-table`` to a table of every public name with the first
paragraph of its docstring. A name added to ``jspatial.__all__`` or ``jspatial.layers.__all__``
thus gets its section and its table row without touching the docs.

The notebook page shows the notebook run top to bottom in quick mode (``notebooks/execute.py``,
what CI runs), so the site has its outputs and figures. The run is cached under
``.cache/docs-notebook/``, keyed by the notebook and the sources it runs; the environment
variable ``JSPATIAL_DOCS_NOTEBOOK=path.ipynb`` takes an already executed notebook instead.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import re
import shutil
import sys
import types
from pathlib import Path

from flax import nnx
from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

import jspatial
import jspatial.layers

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "spatial_operations.ipynb"
CACHE = REPO / ".cache" / "docs-notebook"
MARKER = re.compile(r"<!-- jspatial: ([a-z-]+) -->")
GROUPS = ("ops", "calculators", "layers", "modules")
_expanded: set[str] = set()


def public_names() -> dict[str, dict[str, object]]:
    """Every public object by dotted name (``jspatial.conv2d``), grouped by its page."""
    groups: dict[str, dict[str, object]] = {group: {} for group in GROUPS}
    for name in jspatial.__all__:
        obj = getattr(jspatial, name)
        if isinstance(obj, types.ModuleType):
            group = "modules"
        elif getattr(obj, "__module__", "").startswith("jspatial.shapes."):  # its three modules
            group = "calculators"
        else:
            group = "ops"
        groups[group][f"jspatial.{name}"] = obj
    for name in jspatial.layers.__all__:
        groups["layers"][f"jspatial.layers.{name}"] = getattr(jspatial.layers, name)
    return groups


def identifier(dotted: str, obj: object) -> str:
    """The path a public object is documented under.

    ``jspatial.pad`` names both a function and the module defining it, and Griffe resolves
    the name to the module, whose section would list the function (and its neighbours)
    a second time: such functions are documented under their module, ``jspatial.pad.pad``.
    """
    if isinstance(obj, types.ModuleType) or dotted not in sys.modules:
        return dotted
    return f"{obj.__module__}.{obj.__qualname__}"


def companions(obj: object) -> list[str]:
    """The public classes defined next to a public function that ``jspatial`` does not
    export: the types it returns (``Summary``, ``SummaryRow``), documented after it. The
    ``*Args`` records of the ops' checking entries (``MaxPool2dArgs`` ...) are internal."""
    if not inspect.isfunction(obj):
        return []
    module = sys.modules[obj.__module__]
    exported = {id(getattr(jspatial, name)) for name in jspatial.__all__}
    return [
        f"{module.__name__}.{name}"
        for name, value in vars(module).items()
        if inspect.isclass(value)
        and not name.startswith("_")
        and not name.endswith("Args")
        and value.__module__ == module.__name__
        and id(value) not in exported
    ]


def _summary(obj: object) -> str:
    """The docstring's first paragraph on one line, safe inside a table cell."""
    first = (inspect.getdoc(obj) or "").strip().split("\n\n")[0]
    return " ".join(first.split()).replace("|", "\\|")


def _kind(group: str, obj: object) -> str:
    if group in ("calculators", "modules"):
        return group.removesuffix("s")
    if not inspect.isclass(obj):
        return "function"
    if issubclass(obj, nnx.Module):
        return "layer"
    return "exception" if issubclass(obj, Exception) else "class"


def op_table() -> str:
    rows = ["| name | kind | what it does |", "|---|---|---|"]
    for group, names in public_names().items():
        for dotted, obj in names.items():
            short = dotted.removeprefix("jspatial.")
            target = identifier(dotted, obj)
            rows.append(f"| [`{short}`][{target}] | {_kind(group, obj)} | {_summary(obj)} |")
    return "\n".join(rows)


def _expand(match: re.Match) -> str:
    group = match.group(1)
    if group == "op-table":
        return op_table()
    if group not in GROUPS:
        raise PluginError(f"unknown marker {match.group(0)!r}; known: {GROUPS + ('op-table',)}")
    _expanded.add(group)
    blocks: list[str] = []
    for dotted, obj in public_names()[group].items():
        for target in (identifier(dotted, obj), *companions(obj)):
            if target not in blocks:
                blocks.append(target)
    return "\n\n".join(f"::: {target}" for target in blocks)


def on_pre_build(**kwargs) -> None:
    _expanded.clear()


def on_page_markdown(markdown: str, **kwargs) -> str:
    return MARKER.sub(_expand, markdown)


def on_post_build(**kwargs) -> None:
    """Fails the build if some public name has no page to be documented on."""
    missing = [group for group, names in public_names().items() if names]
    missing = [group for group in missing if group not in _expanded]
    if missing:
        raise PluginError(f"no page has the marker for {missing}: their names are undocumented")


def _sources_hash() -> str:
    """What the notebook's outputs depend on: itself, the library and the training code."""
    digest = hashlib.sha256()
    files = [
        NOTEBOOK,
        *sorted((REPO / "jspatial").rglob("*.py")),
        *sorted((REPO / "train").rglob("*.py")),
    ]
    for path in files:
        digest.update(path.relative_to(REPO).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def executed_notebook() -> Path:
    """An executed copy of the notebook, named as the notebook: from the cache or run now."""
    given = os.environ.get("JSPATIAL_DOCS_NOTEBOOK")
    if given:
        path = Path(given).resolve()
        if path.name != NOTEBOOK.name:  # the page's address comes from the file name
            folder = CACHE / "given"
            folder.mkdir(parents=True, exist_ok=True)
            path = Path(shutil.copy(path, folder / NOTEBOOK.name))
        return path
    folder = CACHE / _sources_hash()
    path = folder / NOTEBOOK.name
    if not path.is_file():
        spec = importlib.util.spec_from_file_location(
            "_notebook_execute", NOTEBOOK.with_name("execute.py")
        )
        runner = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(runner)
        nb = runner.execute(NOTEBOOK)
        import nbformat

        shutil.rmtree(CACHE, ignore_errors=True)  # one cached run: the current one
        folder.mkdir(parents=True)
        nbformat.write(nb, path)
    return path


@event_priority(100)  # before mkdocs-jupyter's on_files, which turns .ipynb files into pages
def on_files(files, config, **kwargs):
    """Adds the notebook, which lives in ``notebooks/``, to the site, with its outputs."""
    notebook = executed_notebook()
    files.append(
        File(
            notebook.name,
            src_dir=str(notebook.parent),
            dest_dir=config["site_dir"],
            use_directory_urls=config["use_directory_urls"],
        )
    )
    return files
