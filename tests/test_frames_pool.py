"""From each pooling op to the body of its loop, as a debugger steps: at most four frames.

The forward passes go public op -> custom-JVP op -> (loop function ->) tap body; the
backward passes, from the hand-written backward that ``jax.grad`` runs (below the
``linear_call`` frames of ``jspatial._linear``), straight into their tap body.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import jspatial as js
from jspatial import _tuning, adaptive, pool, unpool
from jspatial._accel import dispatch
from tests.frames import frames_to

pytestmark = pytest.mark.skipif(
    dispatch.STAGE_TPU or _tuning.STAGE_GPU,
    reason="counted on a CPU-only host: with an accelerator's compiler the op stages its kernels",
)

X = jnp.ones((2, 3, 7, 7))
INDICES = jnp.zeros(X.shape, jnp.int32)


def _grad(op):
    return lambda: jax.grad(lambda x: op(x).sum())(X)


FORWARD = {
    "max_pool2d": (
        lambda: js.max_pool2d(X, 3, 2, 1),
        pool.max_pool_tap,
        ["pool.max_pool2d", "pool._max_pool", "pool._max_pool_loop", "pool.max_pool_tap"],
    ),
    "max_pool2d_indices": (
        lambda: js.max_pool2d(X, 3, 2, 1, return_indices=True),
        pool.max_pool_tap,
        ["pool.max_pool2d", "pool._max_pool", "pool._max_pool_loop", "pool.max_pool_tap"],
    ),
    "avg_pool2d": (
        lambda: js.avg_pool2d(X, 3, 2, 1),
        pool.avg_pool_tap,
        ["pool.avg_pool2d", "pool._avg_pool", "pool.avg_pool_tap"],
    ),
    "adaptive_avg_pool2d": (
        lambda: js.adaptive_avg_pool2d(X, 3),
        adaptive.adaptive_avg_tap,
        ["adaptive.adaptive_avg_pool2d", "adaptive._adaptive_avg", "adaptive.adaptive_avg_tap"],
    ),
    "adaptive_avg_pool2d_uniform": (  # 7 -> 7: the ordinary pool's loop
        lambda: js.adaptive_avg_pool2d(X, 7),
        pool.avg_pool_tap,
        ["adaptive.adaptive_avg_pool2d", "pool._avg_pool", "pool.avg_pool_tap"],
    ),
    "adaptive_max_pool2d": (
        lambda: js.adaptive_max_pool2d(X, 3, return_indices=True),
        adaptive.adaptive_max_tap,
        [
            "adaptive.adaptive_max_pool2d",
            "adaptive._adaptive_max",
            "adaptive._adaptive_max_loop",
            "adaptive.adaptive_max_tap",
        ],
    ),
    "max_unpool2d": (  # no loop: the one scatter
        lambda: js.max_unpool2d(X, INDICES, 2),
        unpool._scatter_planes.fun,
        ["unpool.max_unpool2d", "unpool._max_unpool2d", "unpool._scatter_planes"],
    ),
}

_LINEAR = ["_linear._transpose_rule", "_linear.linear_call", "_linear.<lambda>", "_linear.__call__"]
BACKWARD = {
    "max_pool2d": (
        _grad(lambda x: js.max_pool2d(x, 3, 2, 1)),
        pool.pool_grad_tap,
        ["pool._pool_bwd", "pool.pool_grad_tap"],
    ),
    "avg_pool2d": (
        _grad(lambda x: js.avg_pool2d(x, 3, 2, 1)),
        pool.pool_grad_tap,
        ["pool._pool_bwd", "pool.pool_grad_tap"],
    ),
    "adaptive_avg_pool2d": (
        _grad(lambda x: js.adaptive_avg_pool2d(x, 3)),
        adaptive.adaptive_grad_tap,
        ["adaptive._adaptive_bwd", "adaptive.adaptive_grad_tap"],
    ),
    "adaptive_max_pool2d": (
        _grad(lambda x: js.adaptive_max_pool2d(x, 3)),
        adaptive.adaptive_grad_tap,
        ["adaptive._adaptive_bwd", "adaptive.adaptive_grad_tap"],
    ),
    "max_unpool2d": (
        _grad(lambda x: js.max_unpool2d(x, INDICES, 2)),
        unpool._scatter_planes_bwd,
        ["unpool._scatter_planes_bwd"],
    ),
}


@pytest.mark.parametrize("name", FORWARD)
def test_forward_reaches_its_tap_body_in_four_frames(name):
    call, body, expected = FORWARD[name]
    frames = frames_to(call, body)
    assert frames == expected
    assert len(frames) <= 4


@pytest.mark.parametrize("name", BACKWARD)
def test_backward_reaches_its_tap_body_from_the_hand_written_backward(name):
    call, body, expected = BACKWARD[name]
    frames = frames_to(call, body)
    assert frames == _LINEAR + expected
    assert len(expected) <= 2


def test_forward_mode_reaches_the_tangent_loop():
    frames = frames_to(
        lambda: jax.jvp(lambda x: js.max_pool2d(x, 3, 2, 1), (X,), (X,)), pool.max_tangent_tap
    )
    assert frames[0] == "pool.max_pool2d" and frames[-2:] == [
        "pool._max_tangent",
        "pool.max_tangent_tap",
    ]


def test_the_layers_run_the_same_loops():
    layer = js.layers.MaxPool2d(3, 2, 1)
    frames = frames_to(lambda: layer(X), pool.max_pool_tap)
    assert frames[-3:] == ["pool._max_pool", "pool._max_pool_loop", "pool.max_pool_tap"]
