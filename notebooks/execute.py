"""Runs the tutorial notebook top to bottom in quick mode, as CI and the docs site do.

``execute()`` returns the executed notebook (``nbformat``'s node; outputs in it);
``python notebooks/execute.py OUT.ipynb`` writes it to ``OUT.ipynb``. The kernel is the
Python running this (a kernelspec of its own, found before any user-wide ``python3``,
which may belong to a Python without jspatial), ``JSPATIAL_NOTEBOOK_QUICK=1`` shrinks
the training run, and everything the notebook writes goes to a temporary folder that is
removed afterwards. Needs ``nbclient``, ``nbformat`` and ``ipykernel`` (the test extra).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().with_name("spatial_operations.ipynb")
CELL_TIMEOUT_S = 300  # the slowest cell (training, quick mode) takes well under a minute


@contextlib.contextmanager
def _environment(folder: Path, quick: bool) -> Iterator[None]:
    """This interpreter as the ``python3`` kernel, quick mode, temporary files in ``folder``."""
    spec = folder / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "Python 3 (jspatial)", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    paths = [str(folder / "jupyter"), *filter(None, [os.environ.get("JUPYTER_PATH")])]
    values = {
        "JUPYTER_PATH": os.pathsep.join(paths),  # JUPYTER_PATH is searched first
        "JSPATIAL_NOTEBOOK_QUICK": "1" if quick else "0",
        "TMPDIR": str(folder),  # the training run's folder goes here
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def execute(notebook: Path = NOTEBOOK, *, quick: bool = True, timeout: int = CELL_TIMEOUT_S):
    """The notebook, run top to bottom in its own folder; raises on the first failing cell."""
    import nbclient
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=timeout,
        allow_errors=False,
        resources={"metadata": {"path": str(Path(notebook).parent)}},
    )
    with tempfile.TemporaryDirectory(prefix="jspatial-notebook-") as folder:  # noqa: SIM117
        with _environment(Path(folder), quick):  # inside: the folder must exist first
            client.execute()  # raises CellExecutionError, naming the cell, on any error
    return nb


if __name__ == "__main__":
    import nbformat

    if len(sys.argv) != 2:
        sys.exit("usage: python notebooks/execute.py OUT.ipynb")
    nbformat.write(execute(), sys.argv[1])
