"""Every public op's docstring (``help(js.conv2d)``) says where its loop is and how to watch it."""

from __future__ import annotations

import importlib
import inspect
import re

import jax.numpy as jnp
import pytest

import jspatial as js
from tests.test_reference import OPS

steps_module = importlib.import_module("jspatial.steps")  # js.steps is the function

X = jnp.ones((1, 2, 5, 5))
LOOP_CALLS = {  # tiny arguments under which each op's loop_jaxpr is read
    "conv2d": (X, jnp.ones((3, 2, 3, 3))),
    "conv_transpose2d": (X, jnp.ones((2, 3, 3, 3))),
    "max_pool2d": (X, 2),
    "avg_pool2d": (X, 2),
    "adaptive_avg_pool2d": (X, 3),  # 5 -> 3: uneven windows, the adaptive loop itself
    "adaptive_max_pool2d": (X, 3),
    "batch_norm": (X, None, None, None, None, True),
}
NO_LOOP_CALLS = {
    "pad": (X, (1, 1)),
    "max_unpool2d": (X, jnp.zeros(X.shape, jnp.int32), 2),
    "global_avg_pool2d": (X,),
}


def _see_also(name):
    doc = inspect.getdoc(getattr(js, name))
    paragraphs = [p for p in doc.split("\n\n") if p.startswith("See also:")]
    assert len(paragraphs) == 1, f"{name}: one 'See also:' paragraph expected"
    return " ".join(paragraphs[0].split())


def _resolve(dotted):
    """``jspatial.steps`` as a user reads it (the function); ``jspatial.pad._pad_axis`` in
    the module that the function of the same name shadows."""
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], 1):
        if not hasattr(obj, part):
            obj = importlib.import_module(".".join(parts[:i]))
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("name", OPS)
def test_see_also_names_exist_and_hold(name):
    text = _see_also(name)
    names = re.findall(r"``(jspatial(?:\.\w+)+)``", text)
    assert f"jspatial.reference.{name}" in names
    for dotted in names:
        assert callable(_resolve(dotted)), dotted
    op = getattr(js, name)
    if op in steps_module._RUNNERS:  # the step-through takes it: said, and it runs
        assert "``jspatial.steps`` runs it tap by tap" in text
        run = list(js.steps(op, *LOOP_CALLS[name]))
        assert run[-1].out.shape == op(*LOOP_CALLS[name]).shape
    else:
        assert "tap by tap" not in text
    if "``jspatial.loop_jaxpr`` prints" in text:
        assert js.loop_jaxpr(op, *LOOP_CALLS[name]).eqns
    else:
        assert "no loop here" in text
        with pytest.raises(ValueError, match="found no loop"):
            js.loop_jaxpr(op, *NO_LOOP_CALLS[name])
