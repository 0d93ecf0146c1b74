"""The tutorial notebook: it runs top to bottom (quick mode) and is committed without outputs."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "spatial_operations.ipynb"
CELL_TIMEOUT_S = 300  # the slowest cell (training, quick mode) takes well under a minute
MIN_FIGURES = 15  # the notebook draws 15 figures; fewer means plotting silently broke


def test_notebook_is_committed_without_outputs():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code_cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code_cells
    for i, cell in enumerate(code_cells):
        assert cell.get("outputs") == [], f"code cell {i} has outputs: strip them before commit"
        assert cell.get("execution_count") is None, f"code cell {i} has an execution count"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


def test_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (test extra)")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (test extra)")
    pytest.importorskip("ipykernel", reason="ipykernel is not installed (test extra)")

    # A "python3" kernelspec that runs this interpreter, found before any other: a user-wide
    # python3 kernel may belong to another Python without jspatial. JUPYTER_PATH comes first.
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "Python 3 (test)", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    paths = [str(tmp_path / "jupyter"), *filter(None, [os.environ.get("JUPYTER_PATH")])]
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(paths))
    monkeypatch.setenv("JSPATIAL_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the training run's folder goes here
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        allow_errors=False,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    elapsed = time.perf_counter() - start
    print(f"notebook executed in {elapsed:.0f} s")

    outputs = [out for c in nb.cells if c.cell_type == "code" for out in c.outputs]
    figures = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(figures) >= MIN_FIGURES, f"only {len(figures)} figures were drawn"
    text = "".join(out.get("text", "") for out in outputs)
    assert "QUICK = True" in text
    assert "test accuracy" in text
    html = "".join(out.get("data", {}).get("text/html", "") for out in outputs)
    assert "def conv_tap(" in html and "dot_general" in html  # the loop's source and jaxpr
    assert "def merge_stats(" in text  # the batch-norm statistics loop
    assert "Output shape" in text and "MACs x 2 = FLOPs" in text  # the default model's summary
