"""The notebook's setup cell picks the right source for jspatial, offline.

The cell's source runs in a fresh, site-less interpreter (so the real jspatial and its
dependencies are out of reach) with a temporary folder as working directory, a fake
``pip`` that records its arguments instead of installing, and an import hook that keeps
``import jspatial`` failing until that fake pip has "installed" it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "spatial_operations.ipynb"

DRIVER = r"""
import json, subprocess, sys
from pathlib import Path

cell, report, site, blocked = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
sys.path.append(str(site))  # where the fake pip puts a wheel's or URL's "installed" package
pip_calls = []


class BlockJspatial:  # an import hook: `import jspatial` fails until pip has run
    active = blocked == "1"

    def find_spec(self, name, path=None, target=None):
        if self.active and name.partition(".")[0] == "jspatial":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


hook = BlockJspatial()
sys.meta_path.insert(0, hook)


def fake_run(args, *rest, **kwargs):
    assert list(args[:4]) == [sys.executable, "-m", "pip", "install"], args
    pip_calls.append(list(args[4:]))
    hook.active = False
    if "-e" not in args:  # an editable install is found through the checkout on sys.path
        (site / "jspatial").mkdir(parents=True)
        (site / "jspatial" / "__init__.py").write_text('__version__ = "0.0.site"\n')
    return subprocess.CompletedProcess(args, 0)


subprocess.run = fake_run
exec(compile(cell.read_text(), "setup-cell", "exec"), {"__name__": "__main__"})
module = sys.modules.get("jspatial")
try:
    import train  # the checkout's training package, for section 9
    train_from = str(Path(train.__file__).parent)
except ImportError:
    train_from = None
report.write_text(json.dumps({
    "pip": pip_calls,
    "jspatial": str(Path(module.__file__).parent) if module else None,
    "train": train_from,
}))
"""


def setup_cell_source() -> str:
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code")
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


def run_cell(tmp_path: Path, cwd: Path, *, blocked=True, url=None):
    """Runs the setup cell in ``cwd``; returns (report, stdout)."""
    source = setup_cell_source()
    if url is not None:
        assert source.count('JSPATIAL_URL = ""') == 1
        source = source.replace('JSPATIAL_URL = ""', f"JSPATIAL_URL = {url!r}")
    cell, driver, report = tmp_path / "cell.py", tmp_path / "driver.py", tmp_path / "report.json"
    cell.write_text(source)
    driver.write_text(DRIVER)
    args = [str(cell), str(report), str(tmp_path / "site"), "1" if blocked else "0"]
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(driver), *args],  # -S: no site-packages, no jspatial
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return json.loads(report.read_text()), done.stdout


@pytest.fixture
def checkout(tmp_path):
    """A stand-in repository: pyproject.toml naming jspatial, the two packages, notebooks/."""
    root = tmp_path / "repo"
    (root / "jspatial").mkdir(parents=True)
    (root / "jspatial" / "__init__.py").write_text('__version__ = "0.0.checkout"\n')
    (root / "train").mkdir()
    (root / "train" / "__init__.py").write_text("")
    (root / "notebooks").mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "jspatial"\nversion = "0.0"\n')
    return root


def test_setup_cell_has_no_placeholder_and_one_url_variable():
    text = NOTEBOOK.read_text(encoding="utf-8")
    assert "YOUR-ACCOUNT" not in text
    assert setup_cell_source().count('JSPATIAL_URL = ""  # <-') == 1


def test_checkout(tmp_path, checkout):
    report, out = run_cell(tmp_path, cwd=checkout / "notebooks")
    assert report["pip"] == [["-q", "-e", f"{checkout}[train]"]]
    assert report["jspatial"] == str(checkout / "jspatial")
    assert report["train"] == str(checkout / "train")  # the repo root is on sys.path
    assert f"jspatial 0.0.checkout from {checkout / 'jspatial'}" in out
    assert "section 9" not in out


def test_checkout_already_importable(tmp_path, checkout):
    report, out = run_cell(tmp_path, cwd=checkout / "notebooks", blocked=False)
    assert report["pip"] == []
    assert report["jspatial"] == str(checkout / "jspatial")
    assert report["train"] == str(checkout / "train")
    assert "(already importable)" in out


def test_uploaded_wheel(tmp_path):
    content = tmp_path / "content"
    content.mkdir()
    wheel = content / "jspatial-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")  # never opened: the fake pip only records its arguments
    report, out = run_cell(tmp_path, cwd=content)
    assert report["pip"] == [["-q", str(wheel)]]
    assert report["jspatial"] == str(tmp_path / "site" / "jspatial")
    assert report["train"] is None
    assert f"(installed from {wheel.name})" in out
    assert "section 9" in out and "checkout" in out  # says what needs the repository


def test_url(tmp_path):
    content = tmp_path / "content"
    content.mkdir()
    url = "git+https://example.org/jspatial.git"
    report, out = run_cell(tmp_path, cwd=content, url=url)
    assert report["pip"] == [["-q", url]]
    assert report["jspatial"] == str(tmp_path / "site" / "jspatial")
    assert f"(installed from {url})" in out


def test_nothing_there(tmp_path):
    content = tmp_path / "content"
    content.mkdir()
    report, out = run_cell(tmp_path, cwd=content)
    assert report == {"pip": [], "jspatial": None, "train": None}
    lines = out.strip().splitlines()
    assert len(lines) == 1, out  # one sentence, no traceback
    assert "jspatial-*.whl" in lines[0] and "JSPATIAL_URL" in lines[0]
