"""The docs site (``make docs``): every public name documented once, the notebook with outputs.

Needs the ``docs`` extra (mkdocs and its plugins); skipped without it. The site is built
from an executed notebook made here (one figure added to the committed notebook), so the
test does not run the notebook again: ``tests/test_notebook.py`` runs it, with the same
``notebooks/execute.py`` that the build uses.
"""

from __future__ import annotations

import base64
import collections
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The smallest PNG there is (1x1): stands for a figure of the executed notebook.
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
        "0000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
    )
).decode()


@pytest.fixture(scope="module")
def hooks():
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (docs extra)")
    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _blocks(hooks, group):
    hooks._expanded.clear()
    marker = hooks.MARKER.match(f"<!-- jspatial: {group} -->")
    return re.findall(r"^::: (\S+)$", hooks._expand(marker), re.M)


def test_each_public_name_gets_one_block_that_is_not_its_module(hooks):
    griffe = pytest.importorskip("griffe", reason="griffe is not installed (docs extra)")
    package = griffe.load("jspatial", search_paths=[str(REPO)])
    every = [t for group in hooks.GROUPS for t in _blocks(hooks, group)]
    assert len(every) == len(set(every)), collections.Counter(every).most_common(3)
    for group, names in hooks.public_names().items():
        for dotted, obj in names.items():
            target = hooks.identifier(dotted, obj)
            assert target in every, (dotted, target)
            documented = package[target.removeprefix("jspatial.")]
            # A function is documented as the function: never as the module of the same name.
            assert documented.is_module == (group == "modules"), (dotted, target)
    # The colliding names, and the classes summary returns, each once.
    for target in ("jspatial.pad.pad", "jspatial.steps.steps", "jspatial.summary",
                   "jspatial.layers.summary.Summary",
                   "jspatial.layers.summary.SummaryRow"):  # fmt: skip
        assert every.count(target) == 1, target
    assert "jspatial.pad" not in every and "jspatial.steps" not in every
    assert not [t for t in every if t.endswith("Args")]  # the checking entries' records


def test_site_builds_with_each_name_once_and_the_notebook_executed(hooks, tmp_path):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (test extra)")
    nb = nbformat.read(hooks.NOTEBOOK, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code")
    cell.outputs = [
        nbformat.v4.new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"})
    ]
    executed = tmp_path / "executed.ipynb"
    nbformat.write(nb, executed)
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "JSPATIAL_DOCS_NOTEBOOK": str(executed)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]

    ids = collections.Counter()  # the anchor of every documented object, on every page
    for page in site.rglob("*.html"):
        ids.update(re.findall(r'<h\d[^>]*\bid="(jspatial\.[\w.]+)"', page.read_text("utf-8")))
    assert ids and not [name for name, n in ids.items() if n > 1]
    for name in ("pad", "steps", "Step", "loop_jaxpr", "summary", "conv2d", "max_pool2d"):
        # Once, wherever it is documented (the NumPy twins of the reference page aside).
        found = [i for i in ids if i.rsplit(".", 1)[-1] == name and ".reference." not in i]
        assert len(found) == 1, (name, found)
    page = (site / "spatial_operations" / "index.html").read_text(encoding="utf-8")
    assert f"data:image/png;base64,{PNG}" in page  # the executed notebook's figure
