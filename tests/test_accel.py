"""The accelerator path (``jspatial._accel``) on the CPU: Pallas in interpret mode.

Every kernel is checked against PyTorch CPU, values and gradients, on tiny shapes,
and the per-backend dispatch is checked to keep the portable loops on CPU and GPU and
to pick the kernels when lowering for a TPU (that lowering needs libtpu: it runs
where ``jax[tpu]`` is installed, e.g. ``.venv-tpu`` of ``make bench-accel``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jspatial import _windows as win
from jspatial._accel import dispatch
from jspatial._accel.tpu import conv as aconv
from jspatial._accel.tpu import norm as anorm
from jspatial._accel.tpu import pool as apool
from tests.tolerances import assert_close, fast_jit


def _torch():
    return pytest.importorskip("torch")


def _same_geom(hw, kernel, dilation):
    total = [dilation[a] * (kernel[a] - 1) for a in range(2)]
    pads = tuple((t // 2, t - t // 2) for t in total)
    return win.Geometry(hw, hw, kernel, (1, 1), dilation, pads)


def _random(key, *shapes):
    keys = jax.random.split(jax.random.key(key), len(shapes))
    return [np.asarray(jax.random.normal(k, s), np.float32) for k, s in zip(keys, shapes)]  # noqa: B905


def _jit_vjp(f, cot, *arrays):
    """``(f(*arrays), vjp(cot))`` compiled as one program."""

    def both(cot, *arrays):
        y, vjp = jax.vjp(f, *arrays)
        return y, vjp(cot)

    return fast_jit(both)(cot, *arrays)


def _torch_vjp(f, cot, *arrays):
    torch = _torch()
    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    y = f(*tensors)
    y.backward(torch.tensor(cot))
    return y.detach().numpy(), [t.grad.numpy() for t in tensors]


# (N, C_in, C_out, H, W, kernel, dilation): odd sizes, dilation, a rectangular kernel
# with an even side (asymmetric 'same' padding), and a batch of two 128-image lane blocks
# (the weight gradient summed over grid steps, the output written in row blocks).
CONV_CASES = [
    (2, 3, 5, 6, 7, (3, 3), (1, 1)),
    (3, 4, 6, 5, 5, (3, 3), (2, 2)),
    (1, 2, 3, 12, 11, (2, 3), (1, 1)),
    (256, 8, 16, 5, 3, (3, 3), (1, 1)),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv_kernel_matches_torch(case, monkeypatch):
    n, c, o, h, w, kernel, dilation = case
    if n >= 128:  # one output row per grid step, so the row blocks are exercised too
        monkeypatch.setattr(aconv, "BLOCK_BYTES", 1)
    geom = _same_geom((h, w), kernel, dilation)
    assert aconv.supports(geom, 1)
    x, wt, cot = _random(0, (n, c, h, w), (o, c, *kernel), (n, o, h, w))
    y, grads = _jit_vjp(lambda x, wt: aconv.conv2d(x, wt, geom, True), cot, x, wt)
    (top, bottom), (left, right) = geom.padding

    F = _torch().nn.functional

    def ref(tx, tw):
        tx = F.pad(tx, (left, right, top, bottom))
        return F.conv2d(tx, tw, dilation=dilation)

    y_ref, grads_ref = _torch_vjp(ref, cot, x, wt)
    assert_close(y, y_ref, scale=5)
    for got, want in zip(grads, grads_ref, strict=True):
        assert_close(got, want, scale=10)


@pytest.mark.parametrize(
    "hw, kernel, padding",
    [((9, 8), (2, 2), ((0, 0), (0, 0))), ((7, 10), (3, 2), ((1, 0), (0, 0)))],
    ids=str,
)
def test_conv_kernel_cropped_from_same_matches_torch(hw, kernel, padding):
    """A stride-1 layer padded less than 'same' (the 2x2 'valid' whitening layer) runs as
    the 'same' kernel with the missing padding at the bottom/right, then cropped."""
    out = tuple(hw[a] + sum(padding[a]) - kernel[a] + 1 for a in range(2))
    geom = win.Geometry(hw, out, kernel, (1, 1), (1, 1), padding)
    assert not aconv.supports(geom, 1) and aconv.same_size(geom, 1) is not None
    x, wt, cot = _random(3, (2, 3, *hw), (4, 3, *kernel), (2, 4, *out))
    y, grads = _jit_vjp(lambda x, wt: aconv.conv2d_cropped(x, wt, geom, True), cot, x, wt)
    (top, bottom), (left, right) = padding
    F = _torch().nn.functional
    y_ref, grads_ref = _torch_vjp(
        lambda tx, tw: F.conv2d(F.pad(tx, (left, right, top, bottom)), tw), cot, x, wt
    )
    assert_close(y, y_ref, scale=5)
    for got, want in zip(grads, grads_ref, strict=True):
        assert_close(got, want, scale=10)


@pytest.mark.parametrize(
    "hw, kernel, padding",
    [((7, 6), (3, 2), ((1, 0), (0, 0)))],
    ids=str,
)
def test_conv_kernel_nhwc_matches_torch(hw, kernel, padding):
    """``data_format='NHWC'``: the kernel takes and returns channels-last arrays (its
    ``(H, W, C, N)`` order reached by one transpose each way, as from NCHW), here padded
    less than 'same' (the 'same' kernel, cropped in NHWC)."""
    out = tuple(hw[a] + sum(padding[a]) - kernel[a] + 1 for a in range(2))
    geom = win.Geometry(hw, out, kernel, (1, 1), (1, 1), padding, "NHWC")
    x, wt, cot = _random(4, (2, *hw, 3), (4, 3, *kernel), (2, *out, 4))
    y, grads = _jit_vjp(lambda x, wt: aconv.conv2d_cropped(x, wt, geom, True), cot, x, wt)
    (top, bottom), (left, right) = padding
    F = _torch().nn.functional

    def ref(tx, tw):  # NHWC in and out, as the kernel
        tx = F.pad(tx.permute(0, 3, 1, 2), (left, right, top, bottom))
        return F.conv2d(tx, tw).permute(0, 2, 3, 1)

    y_ref, grads_ref = _torch_vjp(ref, cot, x, wt)
    assert y.shape == y_ref.shape
    assert_close(y, y_ref, scale=5)
    for got, want in zip(grads, grads_ref, strict=True):
        assert_close(got, want, scale=10)


def test_conv_kernel_rejects_what_it_cannot_do():
    geom = _same_geom((8, 8), (3, 3), (1, 1))
    assert not aconv.supports(geom, 2)  # groups
    strided = win.Geometry((8, 8), (4, 4), (3, 3), (2, 2), (1, 1), ((1, 1), (1, 1)))
    assert not aconv.supports(strided, 1)
    valid = win.Geometry((8, 8), (6, 6), (3, 3), (1, 1), (1, 1), ((0, 0), (0, 0)))
    assert not aconv.supports(valid, 1)
    assert aconv.same_size(valid, 1) is not None  # ... but runs as 'same', cropped
    wide = win.Geometry((8, 8), (10, 10), (3, 3), (1, 1), (1, 1), ((2, 2), (2, 2)))
    assert aconv.same_size(wide, 1) is None  # more padding than 'same'
    assert aconv.same_size(strided, 1) is None


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("shape,kernel", [((2, 3, 8, 8), 2), ((1, 2, 9, 7), 3)])
def test_max_pool_matches_torch(shape, kernel, layout):
    geom = win.Geometry(
        shape[2:], (shape[2] // kernel, shape[3] // kernel), (kernel,) * 2, (kernel,) * 2,
        (1, 1), ((0, 0), (0, 0)), layout,
    )  # fmt: skip
    assert apool.supports(geom)
    x = np.array(jax.random.normal(jax.random.key(1), shape), np.float32)
    x[0, 0, 0, :2] = 3.0  # a tie: the first maximum in window order takes the gradient
    out = (shape[0], shape[1], *geom.out_hw)
    cot = np.asarray(jax.random.normal(jax.random.key(2), out), np.float32)
    F = _torch().nn.functional
    y_ref, (dx_ref,) = _torch_vjp(lambda t: F.max_pool2d(t, kernel), cot, x)
    if layout == "NHWC":  # the caller's data_format: the kernel's result is torch's, transposed
        x, cot, y_ref, dx_ref = (np.transpose(a, (0, 2, 3, 1)) for a in (x, cot, y_ref, dx_ref))
    y, grads = _jit_vjp(lambda x: apool.max_pool2d(x, geom, True), cot, x)
    np.testing.assert_array_equal(np.asarray(y), y_ref)
    assert_close(grads[0], dx_ref)


def test_batch_norm_matches_torch():
    x, w, b, cot = _random(3, (4, 3, 5, 6), (3,), (3,), (4, 3, 5, 6))
    x = x * 3 + 10  # a mean large against the spread
    cots = (cot, np.zeros(3, np.float32), np.zeros(3, np.float32))
    (y, mean, var), grads = _jit_vjp(lambda x, w, b: anorm.bn_train(x, w, b, 1e-5), cots, x, w, b)
    F = _torch().nn.functional
    ref = lambda tx, tw, tb: F.batch_norm(tx, None, None, tw, tb, training=True)  # noqa: E731
    y_ref, grads_ref = _torch_vjp(ref, cot, x, w, b)
    assert_close(y, y_ref, scale=5)
    assert_close(mean, x.mean(axis=(0, 2, 3)), scale=5)
    assert_close(var, x.var(axis=(0, 2, 3)), scale=50)
    for got, want in zip(grads, grads_ref, strict=True):
        assert_close(got, want, scale=10)


def _dispatched(x, w, geom, portable):
    """The convolution as ``jspatial.conv`` stages it: the TPU kernel where one applies."""
    return dispatch.per_target(
        portable, {"tpu": dispatch.kernel_for("conv2d", "tpu", geom, 1)}, x, w
    )


def _lowered(f, platform, *args):
    return jax.jit(f).trace(*args).lower(lowering_platforms=(platform,)).as_text()


def test_dispatch_keeps_portable_loops_off_tpu(monkeypatch):
    import jspatial.conv as jconv

    # Staged as on a host with libtpu: both versions in the program, the lowering picks.
    monkeypatch.setattr(dispatch, "STAGE_TPU", True)

    geom = _same_geom((8, 8), (3, 3), (1, 1))
    x, w = jnp.ones((2, 4, 8, 8)), jnp.ones((5, 4, 3, 3))

    def step(x, w):
        portable = lambda x, w: jconv._conv_direct(x, w, geom, 1)  # noqa: E731
        return jax.grad(lambda x, w: _dispatched(x, w, geom, portable).sum(), (0, 1))(x, w)

    for platform in ("cpu", "cuda"):
        text = _lowered(step, platform, x, w)
        assert "tpu_custom_call" not in text and "while" in text  # the tap loop, no kernel
    # On the CPU the result is the portable loop's, bit for bit.
    portable = lambda x, w: jconv._conv_direct(x, w, geom, 1)  # noqa: E731
    dispatched = jax.jit(lambda x, w: _dispatched(x, w, geom, portable))(x, w)
    np.testing.assert_array_equal(np.asarray(jax.jit(portable)(x, w)), np.asarray(dispatched))


def _tpu_mesh():
    """A v5e device from libtpu's topology description, or skip where libtpu is absent."""
    pytest.importorskip("libtpu")
    from jax.experimental import topologies
    from jax.sharding import Mesh

    topo = topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu")
    return Mesh(np.array(topo.devices[:1]), ("d",))


def test_dispatch_lowers_kernels_for_tpu():
    import jspatial.conv as jconv

    mesh = _tpu_mesh()
    geom = _same_geom((8, 8), (3, 3), (1, 1))
    x, w = jnp.ones((2, 4, 8, 8)), jnp.ones((5, 4, 3, 3))

    def step(x, w):
        portable = lambda x, w: jconv._conv_direct(x, w, geom, 1)  # noqa: E731
        return jax.grad(lambda x, w: _dispatched(x, w, geom, portable).sum(), (0, 1))(x, w)

    with jax.set_mesh(mesh):
        text = _lowered(step, "tpu", x, w)
    assert text.count("tpu_custom_call") == 3  # forward, input gradient, weight gradient
