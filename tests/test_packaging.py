"""``make wheel`` builds a pure-Python wheel of the library alone, and the README runs from it."""

from __future__ import annotations

import json
import os
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


# ------------------------------------------------------------- the README's examples

README_BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)
CHECKOUT_ONLY = re.compile(r"^\s*(from|import) train\b", re.M)


def _readme_examples() -> list[tuple[str, str | None]]:
    """Each ```python block of the README, and the ```text block right after it (its output)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = list(README_BLOCK.finditer(text))
    examples = []
    for block, after in zip(blocks, [*blocks[1:], None]):
        if block.group(1) != "python":
            continue
        adjacent = after is not None and not text[block.end() : after.start()].strip()
        shown = after.group(2) if adjacent and after.group(1) == "text" else None
        examples.append((block.group(2), shown))
    return examples


def _check_shown(output: str, shown: str | None, source: str) -> None:
    if shown is None:
        return
    if "\n...\n" in f"\n{shown}":  # trimmed: every line shown is a line printed
        printed = {line.rstrip() for line in output.splitlines()}
        missing = [ln for ln in shown.splitlines() if ln != "..." and ln.rstrip() not in printed]
        assert not missing, f"README output lines not printed by\n{source}\n{missing}"
    else:
        assert output.strip() == shown.strip(), f"README output differs for\n{source}"


# Runs each example in a fresh namespace of one interpreter (one JAX start-up for all),
# its printed output captured on its own.
_DRIVER = """
import contextlib, io, json, sys
outputs = []
for i, source in enumerate(json.loads(sys.argv[1])):
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(compile(source, f"<README example {i}>", "exec"), {"__name__": "__main__"})
    outputs.append(buffer.getvalue())
print(json.dumps(outputs))
"""


def _run(sources: list[str], cwd: Path, pythonpath: Path, prelude: str = "") -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(pythonpath), PYTHONNOUSERSITE="1", JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "-c", prelude + _DRIVER, json.dumps(sources)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"a README example failed:\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed on its own (no dependencies: they are this interpreter's) into a
    folder outside the checkout."""
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return target


def test_readme_examples_run_from_the_installed_wheel(installed, tmp_path):
    examples = _readme_examples()
    assert len(examples) >= 5, "the README's Python examples were not found"
    # Outside the checkout: jspatial is the installed wheel's, and train/ is not there.
    prelude = (
        "import importlib.util, jspatial\n"
        f"assert jspatial.__file__.startswith({str(installed)!r}), jspatial.__file__\n"
        "assert importlib.util.find_spec('train') is None\n"
    )
    outside = [(src, shown) for src, shown in examples if not CHECKOUT_ONLY.search(src)]
    assert len(outside) >= 4
    outputs = _run([src for src, _ in outside], tmp_path, installed, prelude)
    for (source, shown), output in zip(outside, outputs):
        _check_shown(output, shown, source)


def test_readme_examples_that_need_the_checkout_say_so_and_run_there():
    needing = [(src, shown) for src, shown in _readme_examples() if CHECKOUT_ONLY.search(src)]
    assert needing, "no README example uses the checkout's train package"
    for source, _ in needing:
        assert "checkout" in source.splitlines()[0].lower(), source  # said in its first line
    outputs = _run([src for src, _ in needing], REPO, REPO)
    for (source, shown), output in zip(needing, outputs):
        _check_shown(output, shown, source)
