"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import jax
import pytest


@pytest.fixture
def x64():
    """JAX's 64-bit mode for the duration of one test (float64 arrays, check_grads)."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.fixture(scope="session")
def torch():
    """PyTorch (the oracle), or a skip of the test that asks for it where it is missing."""
    return pytest.importorskip("torch")
