"""The tutorial notebook: it runs top to bottom (quick mode) and is committed without outputs."""

from __future__ import annotations

import json
import time

import pytest

from notebooks.execute import NOTEBOOK, execute

MIN_FIGURES = 15  # the notebook draws 15 figures; fewer means plotting silently broke


def test_notebook_is_committed_without_outputs():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code_cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code_cells
    for i, cell in enumerate(code_cells):
        assert cell.get("outputs") == [], f"code cell {i} has outputs: strip them before commit"
        assert cell.get("execution_count") is None, f"code cell {i} has an execution count"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


def test_notebook_runs():
    pytest.importorskip("nbformat", reason="nbformat is not installed (test extra)")
    pytest.importorskip("nbclient", reason="nbclient is not installed (test extra)")
    pytest.importorskip("ipykernel", reason="ipykernel is not installed (test extra)")

    start = time.perf_counter()
    nb = execute()  # quick mode, this interpreter as the kernel; raises naming a failing cell
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
    # Check your understanding: each answer, worked with the calculators and checked against
    # the ops, and each common error made on purpose with jspatial's message printed.
    for answer in ("answer (32, 64, 64, 64)", "9,633,856", "x 9 taps x 16 images = 3,699,376,128",
                   "answer 822,083,584 bytes = 784 MiB", "answer 12x12"):  # fmt: skip
        assert answer in text, answer
    for message in ("Conv2d expected 16 input channels, got 3", "got (3600,) and (4096,)",
                    "is read as one image, as torch does: (8, 30, 30)",
                    "conv2d expected 3D (unbatched: channels, height, width) or 4D",
                    "padding='same' needs stride 1",
                    "padding must be at most half the kernel size",
                    "the third positional argument is bias", "reads per cell",
                    "forward outputs for a batch of 256: 13.0 GiB"):  # fmt: skip
        assert message in text, message
