"""Every public op and the airbench94 train step lower for GPU and TPU from this CPU host.

``jax.jit(f).trace(...).lower(lowering_platforms=...)`` builds the StableHLO that a GPU
or TPU would compile; nothing runs. The checks: it lowers at all (no CPU-only
construct), and the text holds no host callback (a ``custom_call`` back into Python,
which would stall an accelerator on the host every step).

Pallas TPU kernels lower only where libtpu names the chip, so here the TPU lowering
takes the portable loops (``dispatch.USE_PALLAS = False``); ``tests/test_accel.py``
lowers the kernels themselves where libtpu is installed, and ``make bench-accel``
compiles them for a v5e.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

import jspatial as js
from jspatial._accel import dispatch

PLATFORMS = ("cuda", "tpu")


@pytest.fixture(autouse=True)
def _portable_tpu(monkeypatch):
    monkeypatch.setattr(dispatch, "USE_PALLAS", False)


def _custom_calls(traced, platform):
    text = traced.lower(lowering_platforms=(platform,)).as_text()
    return re.findall(r"custom_call @([\w.$]+)", text)


def _check(fn, *args):
    traced = jax.jit(fn).trace(*args)  # traced once, lowered for each platform
    for platform in PLATFORMS:
        calls = _custom_calls(traced, platform)
        assert not [c for c in calls if "callback" in c], (platform, calls)


def test_check_sees_host_callbacks():
    def f(x):
        return jax.pure_callback(lambda a: a, jax.ShapeDtypeStruct(x.shape, x.dtype), x)

    # Lowering for a CPU shows the callback; lowering it for an accelerator from this host
    # fails outright, which the lowering in every test below would report too.
    traced = jax.jit(f).trace(X)
    assert any("callback" in c for c in _custom_calls(traced, "cpu"))
    with pytest.raises(ValueError, match="platform"):
        _custom_calls(traced, "cuda")


def _fwd_bwd(f, *args):
    """``f`` and its gradient with respect to every argument, as one function."""

    def both(*args):
        y, vjp = jax.vjp(f, *args)
        return y, vjp(jax.tree.map(jnp.ones_like, y))

    _check(both, *args)


X = jnp.ones((2, 4, 8, 8))

OPS = {
    "conv2d": (lambda x, w: js.conv2d(x, w, padding=1), (X, jnp.ones((6, 4, 3, 3)))),
    "conv2d_strided_grouped": (
        lambda x, w: js.conv2d(x, w, stride=2, groups=2),
        (X, jnp.ones((6, 2, 3, 3))),
    ),
    "max_pool2d": (lambda x: js.max_pool2d(x, 2), (X,)),
    "avg_pool2d": (lambda x: js.avg_pool2d(x, 3, 2, 1), (X,)),
    "global_avg_pool2d": (js.global_avg_pool2d, (X,)),
    "batch_norm": (
        lambda x, w, b: js.batch_norm(x, w, b, jnp.zeros(4), jnp.ones(4), training=True)[0],
        (X, jnp.ones(4), jnp.zeros(4)),
    ),
}
OPTIONAL = {
    "conv_transpose2d": lambda: (
        lambda x, w: js.conv_transpose2d(x, w, stride=2, padding=1),
        (X, jnp.ones((4, 3, 3, 3))),
    ),
    "pad": lambda: (lambda x: js.pad(x, (1, 2, 0, 1), mode="reflect"), (X,)),
    "adaptive_avg_pool2d": lambda: (lambda x: js.adaptive_avg_pool2d(x, (3, 5)), (X,)),
    "adaptive_max_pool2d": lambda: (lambda x: js.adaptive_max_pool2d(x, 3), (X,)),
}
for _name, _make in OPTIONAL.items():
    if _name in js.__all__:
        OPS[_name] = _make()


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_lowers_for_accelerators(name):
    f, args = OPS[name]
    _fwd_bwd(f, *args)


@pytest.mark.skipif("max_unpool2d" not in js.__all__, reason="no max_unpool2d")
def test_max_unpool_lowers_for_accelerators():
    y, idx = js.max_pool2d(X, 2, return_indices=True)
    _fwd_bwd(lambda y: js.max_unpool2d(y, idx, 2), y)


def test_airbench94_train_step_lowers_for_accelerators():
    from train.models import Airbench94

    model = Airbench94(rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.sgd(1e-3, momentum=0.85, nesterov=True)

    def step(params, rest, opt_state, x, y):
        model = nnx.merge(graphdef, params, rest)

        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).sum()

        loss, grads = nnx.value_and_grad(loss_fn)(model)  # w.r.t. nnx.Param
        updates, opt_state = tx.update(grads, opt_state, params)
        rest = nnx.state(model, nnx.Not(nnx.Param))  # the new BatchNorm statistics
        return optax.apply_updates(params, updates), rest, opt_state, loss

    args = (params, rest, tx.init(params), jnp.ones((4, 3, 32, 32)), jnp.zeros(4, jnp.int32))
    _check(step, *args)


# ------------------------------------------------------------ the GPU setting of the loops
#
# Where JAX's CUDA plugin is installed, the ops also stage the GPU's settings of the portable
# loops (jspatial._tuning, "GPU"), chosen when lowering for cuda. Here the plugin is absent,
# so the staging is switched on by hand: the CPU's answer must not change, and the program
# must still lower for both platforms.


@pytest.fixture
def gpu_staged(monkeypatch):
    from jspatial import _tuning

    monkeypatch.setattr(_tuning, "STAGE_GPU", True)
    jax.clear_caches()
    yield
    jax.clear_caches()


def _grads(f, *args):
    return jax.jit(jax.grad(lambda *a: f(*a).sum(), tuple(range(len(args)))))(*args)


GPU_CASES = {
    # a batch of 16 makes several batch chunks on the CPU, one on the GPU
    "conv2d direct": (
        lambda x, w: js.conv2d(x, w, padding=1, algorithm="direct"),
        (jnp.ones((16, 4, 9, 9)), jnp.ones((6, 4, 3, 3))),
    ),
    "conv2d auto (im2col on a GPU)": (
        lambda x, w: js.conv2d(x, w, padding=1),
        (jnp.ones((16, 64, 7, 7)) / 7, jnp.ones((64, 64, 3, 3)) / 9),
    ),
    "conv2d grouped strided": (
        lambda x, w: js.conv2d(x, w, stride=2, groups=2),
        (jnp.ones((16, 4, 9, 9)), jnp.ones((6, 2, 3, 3))),
    ),
    # 25 taps: a rolled loop on the CPU (jspatial._tuning.POOL_UNROLL_TAPS), unrolled on a GPU
    "max_pool2d": (
        lambda x: js.max_pool2d(x, 5, 2, 2),
        (jnp.arange(16 * 4 * 81.0).reshape(16, 4, 9, 9),),
    ),
    "batch_norm": (
        lambda x: js.batch_norm(x, None, None, training=True)[0],
        (jnp.arange(16 * 4 * 81.0).reshape(16, 4, 9, 9) / 100,),
    ),
}


@pytest.mark.parametrize("name", sorted(GPU_CASES))
def test_gpu_setting_keeps_cpu_results(name, monkeypatch):
    from jspatial import _tuning

    f, args = GPU_CASES[name]
    jax.clear_caches()
    want = _grads(f, *args)
    monkeypatch.setattr(_tuning, "STAGE_GPU", True)
    jax.clear_caches()
    try:
        got = _grads(f, *args)
        traced = jax.jit(jax.value_and_grad(lambda *a: f(*a).sum())).trace(*args)
        for platform in ("cpu", "cuda"):
            assert "stablehlo.case" in traced.lower(lowering_platforms=(platform,)).as_text()
    finally:
        jax.clear_caches()
    for a, b in zip(want, got, strict=True):
        assert (a == b).all()


def test_gpu_kernels_need_a_known_recent_gpu(gpu_staged):
    from jspatial import _windows as win

    geom = win.Geometry((8, 8), (8, 8), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)))
    assert dispatch.gpu_target() is None  # no GPU here, and no GPU mesh set
    for capability in (None, (7, 5)):  # unknown, or a T4: the portable loops
        assert dispatch.kernel_for("conv2d", "cuda", geom, 1, gpu=capability) is None
