"""Build-time hooks: the API pages and the op table come from the package's ``__all__`` lists.

A page marks where generated content goes with an HTML comment, ``<!-- jspatial: KIND -->``:
``ops``, ``calculators``, ``layers`` and ``modules`` expand to one mkdocstrings block per
public name of that kind, ``op-table`` to a table of every public name with the first
paragraph of its docstring. A name added to ``jspatial.__all__`` or ``jspatial.layers.__all__``
thus gets its section and its table row without touching the docs.
"""

from __future__ import annotations

import inspect
import re
import types
from pathlib import Path

from flax import nnx
from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

import jspatial
import jspatial.layers

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "spatial_operations.ipynb"
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
        elif getattr(obj, "__module__", "") == "jspatial.shapes":
            group = "calculators"
        else:
            group = "ops"
        groups[group][f"jspatial.{name}"] = obj
    for name in jspatial.layers.__all__:
        groups["layers"][f"jspatial.layers.{name}"] = getattr(jspatial.layers, name)
    return groups


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
            rows.append(f"| [`{short}`][{dotted}] | {_kind(group, obj)} | {_summary(obj)} |")
    return "\n".join(rows)


def _expand(match: re.Match) -> str:
    group = match.group(1)
    if group == "op-table":
        return op_table()
    if group not in GROUPS:
        raise PluginError(f"unknown marker {match.group(0)!r}; known: {GROUPS + ('op-table',)}")
    _expanded.add(group)
    return "\n\n".join(f"::: {dotted}" for dotted in public_names()[group])


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


@event_priority(100)  # before mkdocs-jupyter's on_files, which turns .ipynb files into pages
def on_files(files, config, **kwargs):
    """Adds the notebook, which lives in ``notebooks/``, to the site."""
    files.append(
        File(
            NOTEBOOK.name,
            src_dir=str(NOTEBOOK.parent),
            dest_dir=config["site_dir"],
            use_directory_urls=config["use_directory_urls"],
        )
    )
    return files
