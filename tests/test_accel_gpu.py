"""The GPU kernels (``jspatial._accel.gpu``) on the CPU: Pallas/Triton in interpret mode.

Forward, input gradient and weight gradient against PyTorch CPU, values and gradients,
on tiny shapes chosen so that every tile is partial somewhere (pixels, channels, taps,
the split over pixels of the weight gradient). Compiling for a GPU needs the CUDA
wheels and is not part of this file.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jspatial import _windows as win
from jspatial._accel.gpu import conv as gconv
from tests.test_accel import _jit_vjp, _torch, _torch_vjp
from tests.tolerances import assert_close


def _geom(hw, kernel, stride, dilation, padding):
    out = tuple(
        (hw[a] + sum(padding[a]) - dilation[a] * (kernel[a] - 1) - 1) // stride[a] + 1
        for a in range(2)
    )
    return win.Geometry(hw, out, kernel, stride, dilation, padding)


# (N, C_in, C_out, H, W, kernel, stride, dilation, padding, tile settings). Interpret mode
# compiles slowly (seconds a kernel), so two cases cover every branch:
# 1. 40 -> 70 channels: two contraction chunks and two output-channel tiles, both partial,
#    a rectangular dilated kernel, asymmetric padding, 128-pixel tiles (few SMs assumed),
#    pixel counts no multiple of a tile;
# 2. three input channels (a 16-wide chunk, masked), odd sizes, stride (2, 3) with a
#    narrower kernel: six input-gradient phases, one of which no tap reaches (zeros),
#    'valid' on one side; the weight gradient in two tap groups (the second half empty)
#    and split over pixels with a shorter last split.
CASES = [
    (3, 40, 70, 7, 9, (2, 3), (1, 1), (2, 1), ((0, 1), (2, 0)), {"SMS": 2}),
    (9, 3, 6, 9, 8, (3, 2), (2, 3), (1, 1), ((1, 1), (1, 0)), {"SMS": 4, "DW_ACC_BYTES": 4096}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:5])))
def test_conv_kernels_match_torch(case, monkeypatch):
    n, c, o, h, w, kernel, stride, dilation, padding, settings = case
    for name, value in settings.items():
        monkeypatch.setattr(gconv, name, value)
    geom = _geom((h, w), kernel, stride, dilation, padding)
    assert gconv.supports(geom, 1)
    rng = np.random.default_rng(0)  # NumPy's: jax.random would compile for every shape
    shapes = [(n, c, h, w), (o, c, *kernel), (n, o, *geom.out_hw)]
    x, wt, cot = (rng.standard_normal(s).astype(np.float32) for s in shapes)
    y, grads = _jit_vjp(lambda x, wt: gconv.conv2d(x, wt, geom, interpret=True), cot, x, wt)
    (top, bottom), (left, right) = padding
    F = _torch().nn.functional

    def ref(tx, tw):
        return F.conv2d(F.pad(tx, (left, right, top, bottom)), tw, stride=stride, dilation=dilation)

    y_ref, grads_ref = _torch_vjp(ref, cot, x, wt)
    assert y.dtype == jnp.float32 and y.shape == y_ref.shape
    assert_close(y, y_ref, scale=5)
    for got, want in zip(grads, grads_ref, strict=True):
        assert_close(got, want, scale=5)


def test_conv_kernels_nhwc_match_torch(monkeypatch):
    """``data_format='NHWC'``: the kernels' own layout, no transpose around them. The
    strided case (input-gradient phases, tap groups, pixel splits)."""
    n, c, o, h, w, kernel, stride, dilation, padding, settings = CASES[1]
    for name, value in settings.items():
        monkeypatch.setattr(gconv, name, value)
    geom = _geom((h, w), kernel, stride, dilation, padding)._replace(layout="NHWC")
    rng = np.random.default_rng(1)
    shapes = [(n, h, w, c), (o, c, *kernel), (n, *geom.out_hw, o)]
    x, wt, cot = (rng.standard_normal(s).astype(np.float32) for s in shapes)
    y, grads = _jit_vjp(lambda x, wt: gconv.conv2d(x, wt, geom, interpret=True), cot, x, wt)
    (top, bottom), (left, right) = padding
    F = _torch().nn.functional

    def ref(tx, tw):  # NHWC in and out, as ours
        tx = F.pad(tx.permute(0, 3, 1, 2), (left, right, top, bottom))
        return F.conv2d(tx, tw, stride=stride, dilation=dilation).permute(0, 2, 3, 1)

    y_ref, grads_ref = _torch_vjp(ref, cot, x, wt)
    assert y.shape == y_ref.shape
    assert_close(y, y_ref, scale=5)
    for got, want in zip(grads, grads_ref, strict=True):
        assert_close(got, want, scale=5)
    # The forward program moves no activations: the kernel reads x as the caller holds it.
    jaxpr = jax.make_jaxpr(lambda x, wt: gconv.conv2d(x, wt, geom, interpret=True))(x, wt)
    moved = [e for e in jaxpr.eqns if e.primitive.name == "transpose" and e.invars[0].aval.ndim]
    assert all(e.invars[0].aval.shape == wt.shape for e in moved), moved


def test_supports():
    same = _geom((8, 8), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)))
    assert gconv.supports(same, 1)
    assert not gconv.supports(same, 2)  # groups take the portable loop
    assert gconv.supports(_geom((8, 8), (3, 3), (2, 2), (1, 1), ((1, 1), (1, 1))), 1)
    assert gconv.supports(_geom((8, 8), (2, 2), (1, 1), (1, 1), ((0, 0), (0, 0))), 1)
    assert gconv.supports(_geom((8, 8), (3, 3), (1, 1), (3, 3), ((4, 4), (4, 4))), 1)


def test_empty_batch():
    geom = _geom((5, 5), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)))
    x, wt = jnp.zeros((0, 2, 5, 5)), jnp.ones((3, 2, 3, 3))
    y, vjp = jax.vjp(lambda x, wt: gconv.conv2d(x, wt, geom, interpret=True), x, wt)
    dx, dw = vjp(jnp.zeros_like(y))
    assert y.shape == (0, 3, 5, 5) and dx.shape == x.shape
    assert not dw.any()
    nhwc = geom._replace(layout="NHWC")
    y = gconv.conv2d(jnp.zeros((0, 5, 5, 2)), wt, nhwc, interpret=True)
    assert y.shape == (0, 5, 5, 3)


def _estimates(fn, *args):
    jaxpr = jax.make_jaxpr(fn)(*args)
    return [e.params["cost_estimate"] for e in jaxpr.eqns if e.primitive.name == "pallas_call"]


def test_cost_estimates_count_the_convolution():
    """With whole tiles the kernels' FLOPs are the convolution's, and each reads its
    inputs and writes its output once."""
    n, h, w, c, o = 2, 8, 8, 32, 64
    geom = _geom((h, w), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)))
    x, g, w_taps = jnp.zeros((n, h, w, c)), jnp.zeros((n, h, w, o)), jnp.zeros((9, c, o))
    macs = n * h * w * 9 * c * o
    (fwd,) = _estimates(
        lambda x, wm: gconv.taps_forward(x, wm, (h, w), gconv._forward_phases(geom)), x, w_taps
    )
    assert fwd.flops == 2 * macs
    assert fwd.bytes_accessed == 4 * (x.size + w_taps.size + g.size)
    (dw,) = _estimates(lambda x, g: gconv.taps_weight_grad(x, g, geom), x, g)
    assert dw.flops == 2 * macs
    assert dw.bytes_accessed >= 4 * (x.size + g.size + w_taps.size)


@pytest.mark.parametrize("stride, kernel", [((2, 2), (3, 3)), ((2, 3), (3, 2)), ((3, 1), (5, 1))])
def test_input_gradient_phases_run_every_tap_once(stride, kernel):
    """Each tap reaches the input pixels of exactly one phase per axis, so the strided input
    gradient does the forward pass's products and no more (no products with zeros)."""
    geom = _geom((11, 10), kernel, stride, (1, 1), ((1, 1), (1, 0)))
    phases = gconv._input_grad_phases(geom)
    assert len(phases) == stride[0] * stride[1]
    taps = sorted(t for ph in phases for t, _, _ in ph.taps)
    assert taps == list(range(geom.taps))


def test_forward_mode_matches_xla():
    # Forward mode (jax.jvp) of the kernels, against XLA's convolution: the tangent is the
    # kernel applied to the tangents, conv(dx, w) + conv(x, dw).
    geom = win.Geometry((5, 6), (5, 6), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)))
    rng = np.random.default_rng(7)
    x, dx = (jnp.asarray(rng.standard_normal((2, 3, 5, 6)), jnp.float32) for _ in range(2))
    w, dw = (jnp.asarray(rng.standard_normal((4, 3, 3, 3)), jnp.float32) for _ in range(2))

    def xla(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)))

    got = jax.jvp(lambda x, w: gconv.conv2d(x, w, geom, interpret=True), (x, w), (dx, dw))
    want = jax.jvp(xla, (x, w), (dx, dw))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
