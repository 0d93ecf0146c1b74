"""``jspatial.batch_norm`` against PyTorch CPU, plain ``jnp`` autodiff and float64 NumPy."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

import jspatial as js
from tests.test_conv import _primitives
from tests.tolerances import assert_close, fast_jit

CASES = {
    # name: (x shape, momentum, eps). N=4 merges four batch chunks, N=3 three.
    "n4_default": ((4, 3, 5, 7), 0.1, 1e-5),
    "n3_momentum_0.3_eps_1e-3": ((3, 2, 5, 5), 0.3, 1e-3),
}


def make_data(shape, dtype=np.float32, seed=0, loc=0.5, scale=2.0):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = (loc + scale * rng.standard_normal(shape)).astype(dtype)
    params = dict(
        weight=(1 + 0.5 * rng.standard_normal(c)).astype(dtype),
        bias=rng.standard_normal(c).astype(dtype),
        running_mean=rng.standard_normal(c).astype(np.float32),
        running_var=(0.5 + rng.random(c)).astype(np.float32),
    )
    cots = (
        rng.standard_normal(shape).astype(dtype),
        rng.standard_normal(c).astype(np.float32),
        rng.standard_normal(c).astype(np.float32),
    )
    return x, params, cots


def numpy_bn(x, running_mean, running_var, weight, bias, training, momentum=0.1, eps=1e-5):
    """The definition in float64, with PyTorch's running-statistics convention."""
    x = np.asarray(x, np.float64)
    c = x.shape[1]
    pc = lambda v: np.asarray(v, np.float64).reshape(1, c, 1, 1)
    if training:
        mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
        count = x.size // c
        new_mean = (1 - momentum) * np.float64(running_mean) + momentum * mean
        new_var = (1 - momentum) * np.float64(running_var) + momentum * var * count / (count - 1)
    else:
        mean, var = np.float64(running_mean), np.float64(running_var)
        new_mean, new_var = running_mean, running_var
    w = np.ones(c) if weight is None else weight
    b = np.zeros(c) if bias is None else bias
    y = (x - pc(mean)) / np.sqrt(pc(var) + eps) * pc(w) + pc(b)
    return y, new_mean, new_var


def jnp_bn(x, running_mean, running_var, weight, bias, training, momentum, eps):
    """Plain ``jnp`` batch norm (autodiff oracle for the hand-written VJP)."""
    axes = (0, 2, 3)
    pc = lambda v: v[None, :, None, None]
    if training:
        mean, var = jnp.mean(x, axes), jnp.var(x, axes)
        count = x.size // x.shape[1]
        new_mean = (1 - momentum) * running_mean + momentum * mean
        new_var = (1 - momentum) * running_var + momentum * var * count / (count - 1)
    else:
        mean, var, new_mean, new_var = running_mean, running_var, running_mean, running_var
    y = (x - pc(mean)) * pc(jax.lax.rsqrt(var + eps)) * pc(weight) + pc(bias)
    return y, new_mean, new_var


def bn_runner(fn):
    """Jitted ``(x, w, b, rm, rv, cots) -> (outputs, (dx, dw, db))``: every output gets a
    cotangent, so the gradient that flows through the new running statistics is tested too."""

    @fast_jit
    def run(x, w, b, rm, rv, cots):
        outs, pull = jax.vjp(lambda x, w, b: fn(x, rm, rv, w, b), x, w, b)
        return outs, pull(cots)

    return run


@functools.cache
def js_runner(name, training):
    _, momentum, eps = CASES[name]
    return bn_runner(
        # Positionally, exactly as F.batch_norm(x, rm, rv, w, b, training, momentum, eps).
        lambda x, rm, rv, w, b: js.batch_norm(x, rm, rv, w, b, training, momentum, eps)
    )


def run_case(runner, x, params, cots, training=True):
    p = params
    cots = cots if training else (cots[0], jnp.zeros_like(cots[1]), jnp.zeros_like(cots[2]))
    return runner(x, p["weight"], p["bias"], p["running_mean"], p["running_var"], cots)


@functools.cache
def js_results(name, training):
    x, params, cots = make_data(CASES[name][0])
    outs, grads = run_case(js_runner(name, training), x, params, cots, training)
    return [np.asarray(o) for o in outs], [np.asarray(g) for g in grads]


def torch_bn(x, params, cot, training, momentum, eps, affine=True):
    torch = pytest.importorskip("torch")
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(params["weight"], requires_grad=True) if affine else None
    tb = torch.tensor(params["bias"], requires_grad=True) if affine else None
    rm = torch.tensor(params["running_mean"])
    rv = torch.tensor(params["running_var"])
    y = torch.nn.functional.batch_norm(tx, rm, rv, tw, tb, training, momentum, eps)
    y.backward(torch.tensor(cot))
    grads = [tx.grad.numpy()] + ([tw.grad.numpy(), tb.grad.numpy()] if affine else [])
    return y.detach().numpy(), rm.numpy(), rv.numpy(), grads


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", CASES)
def test_batch_norm_matches_torch(name, training):
    shape, momentum, eps = CASES[name]
    x, params, cots = make_data(shape)
    y_t, rm_t, rv_t, grads_t = torch_bn(x, params, cots[0], training, momentum, eps)
    # Only y carries a cotangent in torch; rerun jspatial the same way.
    zero = np.zeros_like(cots[1])
    outs, grads = run_case(js_runner(name, training), x, params, (cots[0], zero, zero), training)
    (y, rm, rv) = outs
    assert y.dtype == jnp.float32
    assert_close(y, y_t, err_msg="y")
    assert_close(rm, rm_t, err_msg="running_mean")
    assert_close(rv, rv_t, err_msg="running_var")
    for g, g_t, what in zip(grads, grads_t, ("dx", "dweight", "dbias")):
        assert_close(g, g_t, err_msg=what)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", CASES)
def test_batch_norm_matches_jnp_autodiff_and_float64(name, training):
    shape, momentum, eps = CASES[name]
    x, params, cots = make_data(shape)
    outs, grads = js_results(name, training)
    ref = functools.partial(jnp_bn, training=training, momentum=momentum, eps=eps)
    outs_ref, grads_ref = run_case(bn_runner(ref), x, params, cots, training)
    for o, o_ref, what in zip(outs, outs_ref, ("y", "running_mean", "running_var")):
        assert_close(o, o_ref, err_msg=what)
    for g, g_ref, what in zip(grads, grads_ref, ("dx", "dweight", "dbias")):
        assert_close(g, g_ref, err_msg=what)
    for o, o64 in zip(outs, numpy_bn(x, **params, training=training, momentum=momentum, eps=eps)):
        assert_close(o, o64)


def test_eval_returns_running_stats_unchanged():
    x, params, _ = make_data((2, 3, 4, 4))
    rm, rv = jnp.asarray(params["running_mean"]), jnp.asarray(params["running_var"])
    _, new_mean, new_var = js.batch_norm(x, rm, rv)  # training=False is the default
    assert new_mean is rm and new_var is rv


def test_momentum_convention_and_unbiased_variance_by_hand():
    x = jnp.arange(8.0).reshape(2, 1, 2, 2)  # mean 3.5, biased var 5.25, unbiased 6.0
    y, mean, var = js.batch_norm(x, jnp.zeros(1), jnp.ones(1), training=True)
    np.testing.assert_allclose(mean, [0.35], rtol=1e-6)  # 0.9 * 0 + 0.1 * 3.5
    np.testing.assert_allclose(var, [1.5], rtol=1e-6)  # 0.9 * 1 + 0.1 * 6.0
    np.testing.assert_allclose(y.ravel(), (np.arange(8) - 3.5) / np.sqrt(5.25 + 1e-5), rtol=1e-5)
    _, mean, var = js.batch_norm(x, jnp.zeros(1), jnp.ones(1), training=True, momentum=1.0)
    np.testing.assert_allclose([mean[0], var[0]], [3.5, 6.0], rtol=1e-6)
    _, mean, var = js.batch_norm(x, jnp.zeros(1), jnp.ones(1), training=True, momentum=0.0)
    np.testing.assert_array_equal([mean[0], var[0]], [0.0, 1.0])


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_weight_and_bias_none(training):
    x, params, cots = make_data((2, 3, 5, 5), seed=1)
    y_t, rm_t, rv_t, (dx_t,) = torch_bn(x, params, cots[0], training, 0.1, 1e-5, affine=False)
    rm, rv = params["running_mean"], params["running_var"]

    @fast_jit
    def run(x, cot):
        f = lambda x: js.batch_norm(x, rm, rv, training=training)
        outs, pull = jax.vjp(f, x)
        return outs, pull((cot, jnp.zeros_like(rm), jnp.zeros_like(rv)))[0]

    (y, new_rm, new_rv), dx = run(x, cots[0])
    assert_close(y, y_t)
    assert_close(new_rm, rm_t)
    assert_close(new_rv, rv_t)
    assert_close(dx, dx_t)


def test_running_stats_none_in_training():
    torch = pytest.importorskip("torch")
    x, params, cots = make_data((2, 3, 5, 5), seed=2)
    w, b = params["weight"], params["bias"]

    @fast_jit
    def run(x, w, b, cot):
        f = lambda x, w, b: js.batch_norm(x, None, None, w, b, training=True)[0]
        y, pull = jax.vjp(f, x, w, b)
        return y, pull(cot)

    y, grads = run(x, w, b, cots[0])
    _, none_mean, none_var = js.batch_norm(x, None, None, w, b, training=True)
    assert none_mean is None and none_var is None
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.batch_norm(tx, None, None, tw, tb, training=True)
    ty.backward(torch.tensor(cots[0]))
    assert_close(y, ty.detach().numpy())
    for g, tg in zip(grads, (tx, tw, tb)):
        assert_close(g, tg.grad.numpy())


def test_large_mean_small_spread_is_accurate():
    # mean 1e4, std 1: E[x^2] - E[x]^2 in float32 would lose every digit of the variance.
    rng = np.random.default_rng(5)
    x = (1e4 + rng.standard_normal((4, 3, 6, 6))).astype(np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    y, new_mean, new_var = fast_jit(
        lambda x: js.batch_norm(x, rm, rv, training=True, momentum=1.0)
    )(x)
    y64, mean64, var64 = numpy_bn(x, rm, rv, None, None, training=True, momentum=1.0)
    np.testing.assert_allclose(new_mean, mean64, rtol=1e-6)  # 1e4 +- one float32 ulp
    np.testing.assert_allclose(new_var, var64, rtol=1e-3)
    # float32 cannot hold the mean to better than ulp(1e4) / 2 ~ 5e-4, so neither y.
    np.testing.assert_allclose(y, y64, atol=3e-3)
    assert abs(float(jnp.mean(y))) < 1e-3


# ------------------------------------------------------------------ dtypes and x64


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_dtypes(dtype):
    name = "n4_default"
    x, params, cots = make_data(CASES[name][0])
    p = dict(params)
    x_lo, p["weight"], p["bias"] = (jnp.asarray(a, dtype) for a in (x, p["weight"], p["bias"]))
    cots_lo = (jnp.asarray(cots[0], dtype), *cots[1:])
    outs, grads = run_case(js_runner(name, True), x_lo, p, cots_lo)
    p32 = {k: jnp.asarray(v, jnp.float32) for k, v in p.items()}
    cots32 = (cots_lo[0].astype(jnp.float32), *cots[1:])
    outs32, grads32 = run_case(js_runner(name, True), x_lo.astype(jnp.float32), p32, cots32)
    y, rm, rv = outs
    assert y.dtype == dtype
    assert rm.dtype == rv.dtype == jnp.float32  # the running statistics keep their dtype
    assert grads[0].dtype == dtype
    assert_close(y, outs32[0], dtype)
    assert_close(rm, outs32[1])
    assert_close(rv, outs32[2])
    for g, g32 in zip(grads, grads32):
        assert_close(g, g32, dtype, scale=4)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_check_grads_float64(x64, training):
    x, params, _ = make_data((3, 2, 3, 4), dtype=np.float64)
    rm, rv = (jnp.asarray(params[k], jnp.float64) for k in ("running_mean", "running_var"))
    # All three outputs, so the gradient through the new running statistics is checked.
    fn = jax.jit(lambda x, w, b: js.batch_norm(x, rm, rv, w, b, training, momentum=0.2, eps=1e-3))
    args = (jnp.asarray(x), jnp.asarray(params["weight"]), jnp.asarray(params["bias"]))
    y, new_mean, new_var = fn(*args)
    assert y.dtype == new_mean.dtype == jnp.float64
    expected = numpy_bn(x, rm, rv, params["weight"], params["bias"], training, 0.2, 1e-3)
    for o, o64 in zip((y, new_mean, new_var), expected):
        assert_close(o, o64, jnp.float64)
    jax.test_util.check_grads(fn, args, order=1, modes=("rev",))


# -------------------------------------------------------------- transformations


def test_jit_equals_eager():
    name = "n3_momentum_0.3_eps_1e-3"
    shape, momentum, eps = CASES[name]
    x, p, _ = make_data(shape)
    f = lambda x: js.batch_norm(x, **p, training=True, momentum=momentum, eps=eps)
    eager, jitted = f(x), jax.jit(f)(x)  # default compiler options
    for e, j, j_fast in zip(eager, jitted, js_results(name, True)[0]):
        assert_close(j, e)
        assert_close(j_fast, e)


def test_vmap_over_extra_leading_axis_equals_loop():
    x, p, _ = make_data((2, 3, 4, 5))
    xs = np.stack([x, 3 * x + 1, -x])
    f = lambda x: js.batch_norm(x, **p, training=True)
    batched = fast_jit(jax.vmap(f))(xs)
    for i in range(3):
        for b, o in zip(batched, fast_jit(f)(xs[i])):
            assert_close(b[i], o)


# ------------------------------------------------ PyTorch's calling conventions


def test_positional_call_copied_from_torch():
    """``F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)``
    pasted as is: the same output and the same updated statistics."""
    torch = pytest.importorskip("torch")
    x, p, _ = make_data((3, 2, 4, 5), seed=3)
    rm, rv = torch.tensor(p["running_mean"]), torch.tensor(p["running_var"])
    w, b = torch.tensor(p["weight"]), torch.tensor(p["bias"])
    for args in ((rm, rv, w, b, True, 0.3, 1e-3), (rm, rv, w, b), (rm, rv)):
        ours = js.batch_norm(x, *(a.numpy().copy() if hasattr(a, "numpy") else a for a in args))
        expected = torch.nn.functional.batch_norm(torch.tensor(x), *args)  # updates rm, rv
        assert_close(ours[0], expected.numpy())
        assert_close(ours[1], rm.numpy())
        assert_close(ours[2], rv.numpy())


def test_momentum_is_traced_not_static():
    """An array momentum that changes every step (``1 / step``, the cumulative average)
    reuses one compilation, eager or inside jit, and gives the average of the batch
    statistics. (A Python-number momentum is static: its constants fold as written.)"""
    from jspatial import norm

    xs = [make_data((2, 3, 4, 4), seed=s)[0] for s in range(3)]
    rm, rv = jnp.zeros(3), jnp.ones(3)
    before = norm._running_stats_traced._cache_size()
    for step, x in enumerate(xs, start=1):
        _, rm, rv = js.batch_norm(x, rm, rv, training=True, momentum=jnp.float32(1 / step))
    assert norm._running_stats_traced._cache_size() - before == 1
    stacked = np.stack(xs).astype(np.float64)
    assert_close(rm, stacked.mean(axis=(1, 3, 4)).mean(axis=0))

    @fast_jit
    def step_fn(x, rm, rv, momentum):
        return js.batch_norm(x, rm, rv, None, None, True, momentum)

    _, m1, _ = step_fn(xs[0], jnp.zeros(3), jnp.ones(3), jnp.float32(1.0))
    _, m2, _ = step_fn(xs[1], m1, jnp.ones(3), jnp.float32(0.5))
    assert step_fn._cache_size() == 1
    assert_close(m2, stacked[:2].mean(axis=(1, 3, 4)).mean(axis=0))


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_empty_batch(training):
    """N == 0 works in both modes, forward and backward, as in PyTorch: an empty output,
    zero gradients, and (in training) running statistics left as they were."""
    torch = pytest.importorskip("torch")
    x = np.zeros((0, 3, 4, 5), np.float32)
    _, p, _ = make_data((2, 3, 4, 5))
    rm, rv, w, b = (p[k] for k in ("running_mean", "running_var", "weight", "bias"))

    def loss(x, w, b):
        y, new_mean, new_var = js.batch_norm(x, rm, rv, w, b, training)
        return jnp.sum(y), (y, new_mean, new_var)

    for fn in (
        jax.grad(loss, argnums=(0, 1, 2), has_aux=True),
        fast_jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True)),
    ):  # eager and jit
        (dx, dw, db), (y, new_mean, new_var) = fn(x, w, b)
        assert y.shape == dx.shape == (0, 3, 4, 5)
        np.testing.assert_array_equal(dw, np.zeros(3))
        np.testing.assert_array_equal(db, np.zeros(3))
        np.testing.assert_array_equal(new_mean, rm)
        np.testing.assert_array_equal(new_var, rv)
    t_rm, t_rv = torch.tensor(rm), torch.tensor(rv)
    ty = torch.nn.functional.batch_norm(torch.tensor(x), t_rm, t_rv, None, None, training)
    assert tuple(ty.shape) == (0, 3, 4, 5)
    np.testing.assert_array_equal(t_rm.numpy(), rm)  # PyTorch leaves them too


def test_nested_lists_are_arrays():
    x, p, _ = make_data((2, 2, 2, 3), seed=4)
    as_lists = {k: v.tolist() for k, v in p.items()}
    from_lists = js.batch_norm(x.tolist(), **as_lists, training=True)
    from_arrays = js.batch_norm(x, **p, training=True)
    for a, b in zip(from_lists, from_arrays):
        assert_close(a, b)


@pytest.mark.parametrize("name", ["input", "running_mean", "running_var", "weight", "bias"])
def test_torch_tensors_are_refused_by_name(name):
    torch = pytest.importorskip("torch")
    x, p, _ = make_data((2, 3, 2, 2))
    args = {"input": x, **{k: p[k] for k in ("running_mean", "running_var", "weight", "bias")}}
    args[name] = torch.tensor(args[name])
    with pytest.raises(TypeError, match=rf"^batch_norm {name} is a torch.Tensor; .*jnp.asarray"):
        js.batch_norm(*args.values(), training=True)


def test_batch_chunks_are_merged_accurately():
    """Batches big enough to be split: each chunk's statistics merged with Chan's formula
    match float64, also for a mean that dwarfs the spread."""
    from jspatial import _windows as win

    shape = (12, 2, 32, 32)
    assert win.batch_chunks(shape[0], shape[2] * shape[3]) == 3
    rng = np.random.default_rng(6)
    x = (1e3 + rng.standard_normal(shape)).astype(np.float32)
    rm, rv = np.zeros(2, np.float32), np.ones(2, np.float32)
    y, mean, var = fast_jit(lambda x: js.batch_norm(x, rm, rv, training=True, momentum=1.0))(x)
    y64, mean64, var64 = numpy_bn(x, rm, rv, None, None, training=True, momentum=1.0)
    np.testing.assert_allclose(mean, mean64, rtol=1e-6)
    np.testing.assert_allclose(var, var64, rtol=1e-4)
    np.testing.assert_allclose(y, y64, atol=2e-4)


# --------------------------------------------------------------------------- errors

X = jnp.ones((2, 3, 4, 4))
C3 = jnp.ones(3)


@pytest.mark.parametrize(
    "args, kwargs, err, match",
    [
        (
            (jnp.ones(3), C3, C3, C3, C3),
            {},
            ValueError,
            r"^batch_norm expected input \(batch, channels, \*\) of at least 2 dimensions, "
            r"got 1D: \(3,\)$",
        ),
        (
            (jnp.ones((2, 3)), None, None),
            {"training": False},
            ValueError,
            r"training=False needs running_mean",
        ),
        (
            (jnp.ones((1, 3)), None, None),
            {},
            ValueError,
            r"expected more than 1 value per channel when training, got input \(1, 3\)",
        ),
        (
            (X, C3, C3, jnp.ones(2), C3),
            {},
            ValueError,
            r"batch_norm channel mismatch: expected 3 channels, got weight of shape \(2,\)",
        ),
        ((X, C3, C3, C3, jnp.ones(4)), {}, ValueError, r"got bias of shape \(4,\)"),
        ((X, jnp.ones(2), C3, C3, C3), {}, ValueError, r"got running_mean of shape \(2,\)"),
        ((X, C3, jnp.ones((3, 1))), {}, ValueError, r"got running_var of shape \(3, 1\)"),
        ((X, jnp.ones(2), jnp.ones(2)), {"training": False}, ValueError, r"channel mismatch"),
        (
            (X, C3, C3),
            {"momentum": None},
            TypeError,
            r"batch_norm momentum must be a number, got None; .*"
            r"BatchNorm2d\(momentum=None\)",
        ),
        ((X, C3, C3), {"momentum": True}, TypeError, r"momentum must be a number"),
        ((X, C3, C3), {"momentum": jnp.ones(2)}, TypeError, r"momentum must be a number"),
        ((X, C3, C3), {"eps": 0.0}, ValueError, r"batch_norm eps must be a positive"),
        ((X, C3, C3), {"eps": -1e-5}, ValueError, r"eps must be a positive number"),
        ((X, C3, C3), {"training": 1}, TypeError, r"batch_norm training must be a bool"),
        ((X, C3, None), {}, ValueError, r"needs both running_mean and running_var"),
        (
            (X, None, None),
            {"training": False},
            ValueError,
            r"training=False needs running_mean and running_var",
        ),
        (
            (jnp.ones((1, 3, 1, 1)), C3, C3),
            {},
            ValueError,
            r"^batch_norm expected more than 1 value per channel when training, "
            r"got input \(1, 3, 1, 1\)$",
        ),
        (
            (jnp.ones((2, 3, 4, 4), jnp.int32), C3, C3),
            {},
            TypeError,
            r"batch_norm expected floating-point input .*got int32",
        ),
        (
            (jnp.ones((2, 3, 4, 4), jnp.bool_), C3, C3),
            {},
            TypeError,
            r"batch_norm expected floating-point input .*got bool",
        ),
        ((X, C3, C3, jnp.ones(3, jnp.int32)), {}, TypeError, r"floating-point weight"),
    ],
)
def test_batch_norm_errors(args, kwargs, err, match):
    kwargs = {"training": True} | kwargs
    with pytest.raises(err, match=match):
        js.batch_norm(*args, **kwargs)


# --------------------------------------------------------------- channels last (NHWC)

NHWC_SHAPES = {
    # NCHW shape of the data; NHWC moves the channels (axis 1) to the end.
    "4d": (3, 2, 5, 7),
    "2d": (5, 3),
    "3d": (4, 3, 6),
    "5d": (2, 2, 3, 4, 5),
}


def to_last(a):
    return np.moveaxis(np.asarray(a), 1, -1)


@pytest.mark.parametrize("mode", ["jit", "eager"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", NHWC_SHAPES)
def test_batch_norm_nhwc_matches_torch(name, training, mode):
    """``batch_norm(to_last(x), ..., data_format='NHWC') == to_last(F.batch_norm(x, ...))``:
    values, updated statistics and gradients, jitted and eager."""
    x, params, cots = make_data(NHWC_SHAPES[name], seed=7)
    y_t, rm_t, rv_t, grads_t = torch_bn(x, params, cots[0], training, 0.3, 1e-3)
    p = params

    def run(x, w, b, cot):
        f = lambda x, w, b: js.batch_norm(
            x, p["running_mean"], p["running_var"], w, b, training, 0.3, 1e-3, data_format="NHWC"
        )
        outs, pull = jax.vjp(f, x, w, b)
        return outs, pull((cot, jnp.zeros_like(outs[1]), jnp.zeros_like(outs[2])))

    args = (to_last(x), p["weight"], p["bias"], to_last(cots[0]))
    if mode == "jit":
        (y, rm, rv), grads = fast_jit(run)(*args)
    else:
        with jax.disable_jit():
            (y, rm, rv), grads = run(*args)
    assert y.shape == to_last(x).shape
    assert_close(y, to_last(y_t), err_msg="y")
    assert_close(rm, rm_t, err_msg="running_mean")
    assert_close(rv, rv_t, err_msg="running_var")
    expected = (to_last(grads_t[0]), *grads_t[1:])
    for g, g_t, what in zip(grads, expected, ("dx", "dweight", "dbias")):
        assert_close(g, g_t, err_msg=what)


def test_batch_norm_nhwc_gradient_through_statistics_and_forward_mode():
    """Cotangents on all three outputs (reverse mode) and a JVP (forward mode) in NHWC equal
    the NCHW results, moved to channels last."""
    x, p, cots = make_data((4, 3, 5, 7), seed=8)
    args = (p["weight"], p["bias"], p["running_mean"], p["running_var"])

    def bn(layout):
        return lambda x, rm, rv, w, b: js.batch_norm(x, rm, rv, w, b, True, data_format=layout)

    outs, grads = bn_runner(bn("NCHW"))(x, *args, cots)
    cots_last = (to_last(cots[0]), *cots[1:])
    outs_l, grads_l = bn_runner(bn("NHWC"))(to_last(x), *args, cots_last)
    for a, b, what in zip(outs_l, (to_last(outs[0]), *outs[1:]), ("y", "mean", "var")):
        assert_close(a, b, err_msg=what)
    for a, b, what in zip(grads_l, (to_last(grads[0]), *grads[1:]), ("dx", "dw", "db")):
        assert_close(a, b, err_msg=what)

    def jvp(layout, x, dx):
        f = lambda x, w, b: bn(layout)(x, args[2], args[3], w, b)
        return jax.jvp(f, (x, args[0], args[1]), (dx, cots[1], cots[2]))[1]

    tangent_l = fast_jit(functools.partial(jvp, "NHWC"))(to_last(x), to_last(cots[0]))
    tangent = fast_jit(functools.partial(jvp, "NCHW"))(x, cots[0])
    for a, b in zip(tangent_l, (to_last(tangent[0]), *tangent[1:])):
        assert_close(a, b)


def test_batch_norm_nhwc_runs_without_transposes():
    """Channels last reduces over ``(N, H, W)`` in place: no transpose in the program,
    forward or backward."""
    x = jnp.ones((2, 4, 5, 3))

    def loss(x, w, b):
        return jnp.sum(js.batch_norm(x, None, None, w, b, True, data_format="NHWC")[0])

    for f in (loss, jax.grad(loss, argnums=(0, 1, 2))):
        names = _primitives(jax.make_jaxpr(f)(x, jnp.ones(3), jnp.zeros(3)))
        assert "transpose" not in names, names
    assert names & {"while", "scan"}, names  # the chunked statistics loop


def test_batch_norm_nhwc_empty_batch_and_one_value_rule():
    y, mean, var = js.batch_norm(
        jnp.zeros((0, 4, 4, 3)), jnp.zeros(3), jnp.ones(3), training=True, data_format="NHWC"
    )
    assert y.shape == (0, 4, 4, 3)
    np.testing.assert_array_equal(mean, np.zeros(3))
    with pytest.raises(ValueError, match=r"more than 1 value per channel .*\(1, 1, 1, 3\)"):
        js.batch_norm(jnp.ones((1, 1, 1, 3)), None, None, training=True, data_format="NHWC")


@pytest.mark.parametrize(
    "args, kwargs, err, match",
    [
        ((X, C3, C3), {"data_format": "NCWH"}, ValueError, r"^batch_norm data_format must be "),
        ((X, C3, C3), {"data_format": None}, TypeError, r"^batch_norm data_format must be .*None"),
        (
            (jnp.ones((2, 4, 4, 3)), jnp.ones(4), jnp.ones(4)),
            {"data_format": "NHWC"},
            ValueError,
            r"batch_norm channel mismatch: expected 3 channels, got running_mean of shape \(4,\)",
        ),
        (
            (jnp.ones(3), C3, C3),
            {"data_format": "NHWC"},
            ValueError,
            r"^batch_norm expected input \(batch, \*, channels\) of at least 2 dimensions",
        ),
    ],
)
def test_batch_norm_data_format_errors(args, kwargs, err, match):
    with pytest.raises(err, match=match):
        js.batch_norm(*args, training=True, **kwargs)
