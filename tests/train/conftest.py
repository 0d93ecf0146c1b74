"""Shared helpers for the training tests: a tiny synthetic CIFAR-10 on disk, CLI runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from train.data import BIN_DIRNAME, DATA_DIR_ENV

REPO = Path(__file__).resolve().parents[2]


def write_tiny_cifar(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Writes ``root/cifar-10-batches-bin`` in the official binary format and returns ``root``.

    The classes are learnable: each label brightens the images by a class-specific amount.
    """
    rng = np.random.default_rng(seed)
    folder = root / BIN_DIRNAME
    folder.mkdir(parents=True, exist_ok=True)

    def write(name: str, n: int) -> None:
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 100, (n, 3 * 32 * 32)) + 15 * labels[:, None]
        records = np.concatenate([labels[:, None], images.astype(np.uint8)], axis=1)
        (folder / f"{name}.bin").write_bytes(records.tobytes())

    assert n_train % 5 == 0
    for i in range(1, 6):
        write(f"data_batch_{i}", n_train // 5)
    write("test_batch", n_test)
    return root


@pytest.fixture(scope="session")
def jax_cache(tmp_path_factory) -> Path:
    """A persistent XLA compilation cache shared by the CLI subprocesses of this session."""
    return tmp_path_factory.mktemp("jax-cache")


@pytest.fixture
def cli_env(jax_cache) -> dict:
    return make_cli_env(jax_cache)


def make_cli_env(jax_cache: Path) -> dict:
    """The environment of a CLI subprocess: CPU, the shared compilation cache, no data dir."""
    env = dict(os.environ)
    env.update(
        JAX_COMPILATION_CACHE_DIR=str(jax_cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PLATFORMS="cpu",
        # Compile about twice as fast (these runs are tiny: compile time dominates them).
        XLA_FLAGS=(env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=1").strip(),
    )
    env.pop(DATA_DIR_ENV, None)
    return env


def start_cli(args: list[str], env: dict) -> subprocess.Popen:
    """Starts ``python -m train.cifar10 ARGS`` in the repository root."""
    return subprocess.Popen(
        [sys.executable, "-m", "train.cifar10", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
