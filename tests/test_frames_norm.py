"""The frames from ``batch_norm`` (and the layers) to the body of its statistics loop.

A reader stepping into ``js.batch_norm(x, ..., training=True)`` on a CPU sees the op, its
``custom_jvp`` function (``_bn_train``: the loop and the normalisation), the loop's body
(``_stats_step``: one batch chunk) and the two functions that body calls.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import jspatial as js
from jspatial import _normalise, norm
from jspatial.layers import BatchNorm1d, BatchNorm2d
from tests.frames import frames_to

# (shape, data_format): one chunk and several (N = 64 splits into _tuning.BN_MAX_CHUNKS).
CASES = [
    ((4, 3, 5, 5), "NCHW"),
    ((64, 3, 4, 4), "NCHW"),
    ((64, 4, 4, 3), "NHWC"),
    ((8, 3), "NCHW"),
    ((8, 5, 3), "NHWC"),
]
BODIES = {"_stats_step": norm._stats_step, "chunk_stats": norm.chunk_stats,
          "merge_stats": norm.merge_stats}  # fmt: skip


def _channels(shape, data_format):
    return shape[1] if data_format == "NCHW" else shape[-1]


@pytest.mark.parametrize("body", list(BODIES))
@pytest.mark.parametrize(("shape", "data_format"), CASES)
def test_batch_norm_reaches_its_loop_body_in_four_frames(shape, data_format, body):
    x = jnp.ones(shape)
    c = _channels(shape, data_format)
    rm, rv = jnp.zeros(c), jnp.ones(c)
    frames = frames_to(
        lambda: js.batch_norm(x, rm, rv, training=True, data_format=data_format), BODIES[body]
    )
    path = ["norm.batch_norm", "norm._bn_train", "norm._stats_step"]
    assert frames == (path if body == "_stats_step" else [*path, f"norm.{body}"])
    assert len(frames) <= 4


@pytest.mark.parametrize(
    ("layer", "shape"),
    [(BatchNorm2d(3), (64, 3, 4, 4)), (BatchNorm2d(3, data_format="NHWC"), (4, 4, 4, 3)),
     (BatchNorm1d(3, momentum=None), (8, 3, 5)), (BatchNorm2d(3, track_running_stats=False),
     (4, 3, 2, 2))],
)  # fmt: skip
def test_the_layers_reach_the_same_loop_body(layer, shape):
    x = jnp.ones(shape)
    frames = frames_to(lambda: layer(x), norm.merge_stats)
    assert frames == ["layers.norm.__call__", "norm._bn_train", "norm._stats_step",
                      "norm.merge_stats"]  # fmt: skip


def test_the_backward_frames():
    """Reverse mode runs the hand-written backward as the transpose of the tangent
    (``jspatial._linear``): the tangent is reached from the op through the JVP rule, the
    backward from JAX's transpose, each through ``_linear``'s three frames."""
    x, rm, rv = jnp.ones((8, 3, 4, 4)), jnp.zeros(3), jnp.ones(3)

    def grad():
        return jax.grad(lambda x: js.batch_norm(x, rm, rv, training=True)[0].sum())(x)

    linear = ["_linear.linear_call", "_linear.<lambda>", "_linear.__call__"]
    assert frames_to(grad, _normalise.tangent) == [
        "norm.batch_norm", "_normalise.jvp", *linear, "_normalise.tangent"
    ]  # fmt: skip
    assert frames_to(grad, _normalise.backward) == [
        "_linear._transpose_rule", *linear, "_normalise.backward"
    ]  # fmt: skip
