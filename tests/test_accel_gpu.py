"""The GPU kernels (``jspatial._accel.gpu``) on the CPU: Pallas/Triton in interpret mode.

Forward, input gradient and weight gradient against PyTorch CPU, values and gradients,
on tiny shapes chosen so that every tile is partial somewhere (pixels, channels, taps,
the split over pixels of the weight gradient). Compiling for a GPU needs the CUDA
wheels and is not part of this file.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jspatial import _tuning
from jspatial import _windows as win
from jspatial._accel.gpu import conv as gconv
from jspatial._accel.gpu import taps as gtaps
from tests.test_accel import _jit_vjp, _torch, _torch_vjp
from tests.tolerances import assert_close


def _geom(hw, kernel, stride, dilation, padding):
    out = tuple(
        (hw[a] + sum(padding[a]) - dilation[a] * (kernel[a] - 1) - 1) // stride[a] + 1
        for a in range(2)
    )
    return win.Geometry(hw, out, kernel, stride, dilation, padding)


# (N, C_in, C_out, H, W, kernel, stride, dilation, padding, tile settings). Interpret mode
# compiles slowly (seconds a kernel), so three cases cover every branch:
# 1. 40 -> 70 channels: two contraction chunks and two output-channel tiles, both partial,
#    a rectangular dilated kernel, asymmetric padding, 128-pixel tiles (few SMs assumed),
#    pixel counts no multiple of a tile;
# 2. three input channels (a 16-wide chunk, masked), odd sizes, stride (2, 3) with a
#    narrower kernel: six input-gradient phases, one of which no tap reaches (zeros),
#    'valid' on one side; the weight gradient in two tap groups and split over pixels
#    (partial sums allowed) with a shorter last split;
# 3. a 1 x 11 kernel: the weight gradient's 11 taps in two groups of 6, the last slot of
#    the second group past the last tap (masked to zeros).
CASES = [
    (3, 40, 70, 7, 9, (2, 3), (1, 1), (2, 1), ((0, 1), (2, 0)), {"SMS": 2}),
    (9, 3, 6, 9, 8, (3, 2), (2, 3), (1, 1), ((1, 1), (1, 0)),
     {"SMS": 4, "DW_ACC_BYTES": 4096, "DW_PARTIALS": 100.0}),
    (2, 5, 3, 4, 13, (1, 11), (1, 1), (1, 1), ((0, 0), (5, 5)), {"SMS": 4}),
]  # fmt: skip


def _case(case, data_format, monkeypatch, seed=0):
    n, c, o, h, w, kernel, stride, dilation, padding, settings = case
    for name, value in settings.items():
        monkeypatch.setattr(gtaps, name, value)
    geom = _geom((h, w), kernel, stride, dilation, padding)._replace(layout=data_format)
    assert gconv.supports(geom, 1)
    rng = np.random.default_rng(seed)  # NumPy's: jax.random would compile for every shape
    shapes = [win.image_shape(n, c, (h, w), data_format), (o, c, *kernel)]
    shapes.append(win.image_shape(n, o, geom.out_hw, data_format))
    return geom, [rng.standard_normal(s).astype(np.float32) for s in shapes]


def _eqns(jaxpr):
    """Every equation of a jaxpr and of the jaxprs inside it."""
    for e in getattr(jaxpr, "jaxpr", jaxpr).eqns:
        yield e
        for value in e.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                if hasattr(getattr(sub, "jaxpr", sub), "eqns"):
                    yield from _eqns(sub)


def _torch_conv(geom, data_format):
    (top, bottom), (left, right) = geom.padding
    F = _torch().nn.functional

    def ref(tx, tw):  # in and out in data_format, as ours
        if data_format == "NHWC":
            tx = tx.permute(0, 3, 1, 2)
        tx = F.pad(tx, (left, right, top, bottom))
        y = F.conv2d(tx, tw, stride=geom.stride, dilation=geom.dilation)
        return y.permute(0, 2, 3, 1) if data_format == "NHWC" else y

    return ref


@pytest.mark.parametrize("data_format", ["NCHW", "NHWC"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:5])))
def test_conv_kernels_match_torch(case, data_format, monkeypatch):
    """Values and both gradients, each layout through the kernels of its own layout."""
    geom, (x, wt, cot) = _case(case, data_format, monkeypatch)
    assert gconv.kernel_layout(data_format) == data_format
    y, grads = _jit_vjp(lambda x, wt: gconv.conv2d(x, wt, geom, interpret=True), cot, x, wt)
    y_ref, grads_ref = _torch_vjp(_torch_conv(geom, data_format), cot, x, wt)
    assert y.dtype == jnp.float32 and y.shape == y_ref.shape
    assert_close(y, y_ref, scale=5)
    for got, want in zip(grads, grads_ref, strict=True):
        assert_close(got, want, scale=5)
    # No program moves an array: the kernels read x, g and the weight as the caller holds
    # them, and write y, dx and dw in the caller's layouts.
    conv = partial(gconv.conv2d, geom=geom, interpret=True)
    fwd = jax.make_jaxpr(conv)(x, wt)
    bwd = jax.make_jaxpr(lambda x, wt, g: jax.vjp(conv, x, wt)[1](g))(x, wt, cot)
    for jaxpr in (fwd, bwd):
        moved = [e.invars[0].aval.shape for e in _eqns(jaxpr) if e.primitive.name == "transpose"]
        assert not moved, moved


def test_nchw_through_channels_last_kernels(monkeypatch):
    """``_tuning.GPU_CONV_LAYOUT`` may run NCHW callers on the NHWC kernels (transposed in
    and out): the strided case."""
    monkeypatch.setattr(_tuning, "GPU_CONV_LAYOUT", {"NCHW": "NHWC", "NHWC": "NHWC"})
    geom, (x, wt, cot) = _case(CASES[1], "NCHW", monkeypatch, seed=1)
    assert gconv.kernel_layout("NCHW") == "NHWC"
    y, grads = _jit_vjp(lambda x, wt: gconv.conv2d(x, wt, geom, interpret=True), cot, x, wt)
    y_ref, grads_ref = _torch_vjp(_torch_conv(geom, "NCHW"), cot, x, wt)
    assert y.shape == y_ref.shape
    assert_close(y, y_ref, scale=5)
    for got, want in zip(grads, grads_ref, strict=True):
        assert_close(got, want, scale=5)


def test_weight_gradient_plan():
    """One wave of programs within the partial-sum budget; where the pixels are too few to
    split, the taps are split into groups instead (airbench94's and the core suite's 3x3
    layers, H100's 132 SMs)."""
    layers = [(24, 64, 31, 512, 9, 131), (64, 64, 15, 512, 3, 22), (128, 256, 8, 128, 1, 1),
              (256, 256, 8, 128, 1, 1)]  # fmt: skip
    for c, o, hw, n, group, splits in layers:
        io = 4 * n * (c + o) * hw * hw
        bc, bo, g, tg, s, per_split = gtaps._dw_plan(9, c, o, n * hw * hw, io)
        assert (g, s) == (group, splits)
        assert tg * g >= 9 and s * per_split * gtaps.BP >= n * hw * hw
        assert s == 1 or 4 * s * 9 * c * o <= gtaps.DW_PARTIALS * io


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
    x, g, weight = jnp.zeros((n, h, w, c)), jnp.zeros((n, h, w, o)), jnp.zeros((o, c, 3, 3))
    macs = n * h * w * 9 * c * o
    (fwd,) = _estimates(
        lambda x, wm: gtaps.taps_forward(x, wm, (h, w), gconv._forward_phases(geom)), x, weight
    )
    assert fwd.flops == 2 * macs
    assert fwd.bytes_accessed == 4 * (x.size + weight.size + g.size)
    (dw,) = _estimates(lambda x, g: gtaps.taps_weight_grad(x, g, geom), x, g)
    assert dw.flops == 2 * macs
    assert dw.bytes_accessed >= 4 * (x.size + g.size + weight.size)


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


def test_max_pool_on_planes_matches_the_op():
    """Beside NCHW convolution kernels a GPU pools the ``N * C`` planes as they lie: the
    portable loop's values and gradients, with no transpose (overlapping, padded windows)."""
    from jspatial import max_pool2d, pool
    from jspatial._accel import dispatch
    from jspatial._accel.gpu import pool as gpool

    geom = _geom((9, 8), (3, 3), (2, 2), (1, 1), ((1, 1), (1, 1)))
    portable = pool._max_pool_jit

    def kernel(geom, gpu, return_indices=False):
        static = (geom, return_indices)
        return dispatch.kernel_for("max_pool2d", "cuda", *static, gpu=gpu, portable=portable)

    assert kernel(geom, (8, 0)) is not None
    assert kernel(geom, (7, 5)) is None
    assert kernel(geom, (8, 0), return_indices=True) is None
    assert kernel(geom._replace(layout="NHWC"), (9, 0)) is None
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, 3, 9, 8)), jnp.float32)
    cot = jnp.asarray(rng.standard_normal((2, 3, *geom.out_hw)), jnp.float32)
    got, vjp = jax.vjp(lambda x: gpool.max_pool2d_planes(portable, geom, x), x)
    want, vjp_want = jax.vjp(lambda x: max_pool2d(x, 3, 2, 1), x)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(vjp(cot)[0]), np.asarray(vjp_want(cot)[0]))
    moved = [e for e in _eqns(jax.make_jaxpr(vjp)(cot)) if e.primitive.name == "transpose"]
    assert not moved
