"""From each convolution to its loop body: the frames a debugger steps through.

A reader who steps into ``js.conv2d`` reaches the code that runs once per tap in three
calls: the public op, the algorithm's custom-derivative function, the loop over batch
chunks, the tap body (``tests/frames.py`` counts the jspatial frames, on a CPU host).
The backward loops are reached the same way from the custom derivative's backward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import jspatial as js
from jspatial import conv, im2col, winograd
from tests.frames import frames_to

X = jnp.ones((2, 3, 9, 8))
W = jnp.ones((4, 3, 3, 3))
XW, WW = jnp.ones((2, 8, 9, 8)), jnp.ones((8, 8, 3, 3))
WT = jnp.ones((3, 4, 3, 3))

FORWARD = {
    "conv2d direct": (
        lambda: js.conv2d(X, W, padding=1, algorithm="direct"),
        conv.conv_tap,
        ["conv.conv2d", "conv._conv_direct", "conv._forward_loop", "conv.conv_tap"],
    ),
    "conv2d direct NHWC, grouped, strided": (
        lambda: js.conv2d(
            jnp.ones((2, 9, 8, 4)),
            jnp.ones((4, 2, 3, 2)),
            stride=2,
            groups=2,
            data_format="NHWC",
        ),
        conv.conv_tap,
        ["conv.conv2d", "conv._conv_direct", "conv._forward_loop", "conv.conv_tap"],
    ),  # fmt: skip
    "conv2d im2col": (
        lambda: js.conv2d(X, W, padding=1, algorithm="im2col"),
        im2col.im2col_tap,
        ["conv.conv2d", "im2col._conv_im2col", "im2col._forward_loop", "im2col.im2col_tap"],
    ),
    "conv2d winograd": (
        lambda: js.conv2d(XW, WW, padding=1, algorithm="winograd"),
        winograd._products,
        ["conv.conv2d", "winograd._conv3x3", "winograd._forward_loop", "winograd._products"],
    ),
    "conv_transpose2d": (
        lambda: js.conv_transpose2d(X, WT, stride=2),
        conv.conv_transpose_tap,
        [
            "conv_transpose.conv_transpose2d",
            "conv_transpose._conv_transpose",
            "conv._input_grad_loop",
            "conv.conv_transpose_tap",
        ],
    ),
}


@pytest.mark.parametrize("name", list(FORWARD))
def test_forward_reaches_its_tap_body_in_four_frames(name):
    call, body, expected = FORWARD[name]
    frames = frames_to(call, body)
    assert frames == expected
    assert len(frames) <= 4


def test_the_layer_adds_one_frame():
    from flax import nnx

    layer = js.layers.Conv2d(3, 4, 3, padding=1, algorithm="direct", rngs=nnx.Rngs(0))
    frames = frames_to(lambda: layer(X), conv.conv_tap)
    assert frames == [
        "layers.conv.__call__", "conv._conv_direct", "conv._forward_loop", "conv.conv_tap"
    ]  # fmt: skip


BACKWARD = {
    "conv2d direct": (
        lambda x: js.conv2d(x, W, padding=1, algorithm="direct"),
        conv.conv_backward_tap,
        ["conv._conv_bwd", "conv._input_grad_loop", "conv.conv_backward_tap"],
    ),
    "conv2d im2col": (
        lambda x: js.conv2d(x, W, padding=1, algorithm="im2col"),
        im2col.col2im_tap,
        ["im2col._im2col_bwd", "im2col._backward_loop", "im2col.col2im_tap"],
    ),
    "conv_transpose2d": (
        lambda x: js.conv_transpose2d(x, WT, stride=2),
        conv._tap_and_weight_grad,
        [
            "conv_transpose._conv_transpose_bwd",
            "conv._forward_loop",
            "conv._tap_and_weight_grad",
        ],
    ),
}


@pytest.mark.parametrize("name", list(BACKWARD))
def test_backward_reaches_its_tap_body_from_the_custom_derivative(name):
    op, body, expected = BACKWARD[name]
    frames = frames_to(lambda: jax.grad(lambda x: op(x).sum())(X), body)
    # Above the backward function: JAX's transpose of the linear_call (jspatial._linear).
    assert frames[-3:] == expected
    assert all(f.startswith("_linear.") for f in frames[:-3])
