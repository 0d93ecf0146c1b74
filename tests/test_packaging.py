"""``make wheel`` builds a pure-Python wheel of the library alone."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import jspatial

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dist = tmp_path_factory.mktemp("dist")
    # -o: take the environment as installed (this interpreter runs the tests), don't refresh it.
    done = subprocess.run(
        ["make", "-o", ".venv/.installed", "wheel", f"DIST={dist}", f"PY={sys.executable}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    wheels = list(dist.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_is_pure_python_and_named_after_the_version(wheel):
    assert wheel.name == f"jspatial-{jspatial.__version__}-py3-none-any.whl"
    dist_info = f"jspatial-{jspatial.__version__}.dist-info"
    with zipfile.ZipFile(wheel) as zf:
        info = zf.read(f"{dist_info}/WHEEL").decode()
        meta = Parser().parsestr(zf.read(f"{dist_info}/METADATA").decode())
    assert "Root-Is-Purelib: true" in info
    assert "Tag: py3-none-any" in info
    assert meta["Name"] == "jspatial"
    assert meta["Version"] == jspatial.__version__  # pyproject.toml and __init__.py agree
    requires = meta.get_all("Requires-Dist") or []
    assert "jax" in {re.split(r"[ ;<>=!~\[]", r)[0] for r in requires}, requires
    assert "docs" in (meta.get_all("Provides-Extra") or [])


def test_wheel_holds_the_library_and_nothing_else(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    sources = {p.relative_to(REPO).as_posix() for p in (REPO / "jspatial").rglob("*.py")}
    assert sources - set(names) == set(), "library modules missing from the wheel"
    top = {name.split("/")[0] for name in names}
    assert "train" not in top, "the training scripts are installed as a top-level `train` package"
    assert top == {"jspatial", f"jspatial-{jspatial.__version__}.dist-info"}, top
