"""Every op under JAX's transformations, against XLA's primitives.

Forward mode (``jax.jvp``, ``jax.jacfwd``, ``jax.linearize``), reverse mode through a
``jax.linear_transpose``, second derivatives (``jax.hessian``: forward over reverse,
and reverse over reverse), ``jax.vmap`` and ``jax.checkpoint``. The oracle of each op is
XLA's own primitive (``lax.conv_general_dilated``, ``lax.reduce_window``) or a plain
``jnp`` formula, whose derivatives JAX derives itself; ``check_grads`` compares both
modes with finite differences up to second order. Tiny shapes, float64.
"""

from __future__ import annotations

import contextlib
import io
from functools import partial
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax
from jax.test_util import check_grads

import jspatial as js
from jspatial import _windows as win
from jspatial._accel.tpu import conv as aconv
from jspatial._accel.tpu import norm as anorm
from jspatial._accel.tpu import pool as apool
from jspatial.layers import BatchNorm2d, Conv2d, MaxPool2d
from tests.tolerances import assert_close, fast_jit

DN = ("NCHW", "OIHW", "NCHW")


class Case(NamedTuple):
    fn: object  # jspatial
    ref: object  # XLA primitives / jnp
    shapes: tuple  # argument shapes (all differentiated)


def _conv_ref(stride=1, padding=0, dilation=1, groups=1):
    def ref(x, w):
        pads = [(padding, padding)] * 2
        return lax.conv_general_dilated(
            x, w, (stride,) * 2, pads, rhs_dilation=(dilation,) * 2,
            dimension_numbers=DN, feature_group_count=groups, precision="highest",
        )  # fmt: skip

    return ref


def _conv_transpose_ref(x, w):  # stride 2, padding 1, output_padding 1, 3x3
    return lax.conv_transpose(
        x, w, (2, 2), [(1, 2), (1, 2)], dimension_numbers=DN, transpose_kernel=True,
        precision="highest",
    )  # fmt: skip


def _reduce(x, init, op, k, s, p):
    return lax.reduce_window(x, init, op, (1, 1, k, k), (1, 1, s, s), [(0, 0)] * 2 + [(p, p)] * 2)


def _adaptive_ref(reduce):
    def ref(x):  # windows of (5, 7) -> (3, 4): every one its own slice
        (r0, rl), (c0, cl) = win.adaptive_windows(5, 3), win.adaptive_windows(7, 4)
        rows = [
            jnp.stack([reduce(x[:, :, a : a + la, b : b + lb]) for b, lb in zip(c0, cl)], -1)
            for a, la in zip(r0, rl)
        ]
        return jnp.stack(rows, -2)

    return ref


_INDICES = np.array([[[[5, 2], [13, 11]]]] * 2).repeat(2, axis=1)  # (2, 2, 2, 2) into 4x4


def _unpool_ref(x):
    flat = jnp.zeros((2, 2, 16), x.dtype)
    flat = flat.at[np.arange(2)[:, None, None], np.arange(2)[None, :, None],
                   _INDICES.reshape(2, 2, 4)].set(x.reshape(2, 2, 4))  # fmt: skip
    return flat.reshape(2, 2, 4, 4)


def _bn(x, w, b):
    y, mean, var = js.batch_norm(x, jnp.zeros(2, x.dtype), jnp.ones(2, x.dtype), w, b, True)
    return y, mean, var


def _bn_ref(x, w, b):
    mean = jnp.mean(x, axis=(0, 2, 3))
    var = jnp.var(x, axis=(0, 2, 3))
    pc = lambda v: v[None, :, None, None]  # noqa: E731
    y = (x - pc(mean)) * pc(lax.rsqrt(var + 1e-5)) * pc(w) + pc(b)
    count = x.shape[0] * x.shape[2] * x.shape[3]
    return y, 0.1 * mean, 0.9 + 0.1 * var * count / (count - 1)


CASES = {
    "conv_direct": Case(
        lambda x, w: js.conv2d(x, w, None, 2, 1, 1, 2, algorithm="direct"),
        _conv_ref(2, 1, 1, 2),
        ((2, 4, 5, 6), (2, 2, 3, 2)),
    ),
    "conv_im2col": Case(
        lambda x, w: js.conv2d(x, w, None, 1, 1, algorithm="im2col"),
        _conv_ref(1, 1),
        ((2, 2, 4, 5), (3, 2, 3, 3)),
    ),
    "conv_winograd": Case(
        lambda x, w: js.conv2d(x, w, None, 1, 1, algorithm="winograd"),
        _conv_ref(1, 1),
        ((1, 2, 5, 4), (2, 2, 3, 3)),
    ),
    "conv_transpose": Case(
        lambda x, w: js.conv_transpose2d(x, w, None, 2, 1, 1),
        _conv_transpose_ref,
        ((1, 2, 3, 3), (2, 2, 3, 3)),
    ),
    "max_pool": Case(
        lambda x: js.max_pool2d(x, 3, 2, 1),
        lambda x: _reduce(x, -jnp.inf, lax.max, 3, 2, 1),
        ((2, 2, 5, 5),),
    ),
    "avg_pool": Case(
        lambda x: js.avg_pool2d(x, 3, 2, 1),
        lambda x: _reduce(x, 0.0, lax.add, 3, 2, 1) / 9,
        ((2, 2, 5, 5),),
    ),
    "adaptive_avg": Case(
        lambda x: js.adaptive_avg_pool2d(x, (3, 4)),
        _adaptive_ref(lambda v: jnp.mean(v, axis=(2, 3))),
        ((1, 2, 5, 7),),
    ),
    "adaptive_max": Case(
        lambda x: js.adaptive_max_pool2d(x, (3, 4)),
        _adaptive_ref(lambda v: jnp.max(v, axis=(2, 3))),
        ((1, 2, 5, 7),),
    ),
    "max_unpool": Case(
        lambda x: js.max_unpool2d(x, jnp.asarray(_INDICES), 2), _unpool_ref, ((2, 2, 2, 2),)
    ),
    "batch_norm": Case(_bn, _bn_ref, ((3, 2, 2, 3), (2,), (2,))),
    "pad_reflect": Case(
        lambda x: js.pad(x, (1, 2, 2, 1), "reflect"),
        lambda x: jnp.pad(x, [(0, 0), (0, 0), (2, 1), (1, 2)], mode="reflect"),
        ((1, 2, 4, 4),),
    ),
}
NAMES = list(CASES)
# check_grads evaluates many perturbed programs: one case of each kind of op.
CHECK_GRADS = ["conv_direct", "conv_transpose", "max_pool", "max_unpool", "batch_norm"]


def _args(case, seed=0):
    keys = jax.random.split(jax.random.key(seed), len(case.shapes))
    return tuple(jax.random.normal(k, s, jnp.float64) for k, s in zip(keys, case.shapes))


def _loss(fn):
    # A nonlinear scalar of the output, so that the Hessian is not zero for a linear op.
    return lambda *a: sum(jnp.sum(jnp.sin(y) * y) for y in jax.tree.leaves(fn(*a)))


def _transformed(fn, args, tangents, cotangent):
    """``fn`` under every transformation, as a dict of results (one program to compile)."""
    argnums = tuple(range(len(args)))
    loss = _loss(fn)
    _, f_lin = jax.linearize(fn, *args)
    grads = lambda *a: jax.grad(loss, argnums)(*a)  # noqa: E731
    # Every argument batched (weights too: per-example weights, as jacfwd batches them).
    batch = tuple(jnp.stack([a, 2 * a - 1]) for a in args)
    batch_t = tuple(jnp.stack([t, -t]) for t in tangents)
    remat = jax.checkpoint(fn)
    return {
        "jvp": jax.jvp(fn, args, tangents),
        "jacfwd": jax.jacfwd(fn, argnums)(*args),
        "jacrev": jax.jacrev(fn, argnums)(*args),
        "linearize": f_lin(*tangents),
        "linear_transpose": jax.linear_transpose(f_lin, *args)(cotangent),
        # jax.hessian is forward over reverse: jacfwd of the hand-written backward.
        "hessian": jax.hessian(loss, argnums)(*args),
        "grad_of_grad": jax.grad(lambda *a: sum(jnp.sum(g**2) for g in grads(*a)), argnums)(*args),
        "vmap": jax.vmap(fn)(*batch),
        "vmap_jvp": jax.vmap(lambda a, t: jax.jvp(fn, a, t)[1])(batch, batch_t),
        "vmap_grad": jax.vmap(grads)(*batch),
        "checkpoint_grad": jax.grad(_loss(remat), argnums)(*args),
        "checkpoint_jvp": jax.jvp(remat, args, tangents),
    }


@pytest.mark.parametrize("name", NAMES)
def test_transformations_match_xla(x64, name):
    case = CASES[name]
    args, tangents = _args(case), _args(case, seed=1)
    cotangent = jax.tree.map(jnp.cos, case.ref(*args))
    ours = fast_jit(partial(_transformed, case.fn))(args, tangents, cotangent)
    xla = fast_jit(partial(_transformed, case.ref))(args, tangents, cotangent)
    for key in ours:
        close = partial(assert_close, dtype=jnp.float64, err_msg=key)
        jax.tree.map(close, ours[key], xla[key])
    # And each side's forward-mode Jacobian is its reverse-mode one.
    jax.tree.map(lambda a, e: assert_close(a, e, jnp.float64), ours["jacfwd"], ours["jacrev"])


@pytest.mark.parametrize("name", CHECK_GRADS)
def test_check_grads_to_second_order(x64, name):
    # Finite differences, both modes, up to second derivatives.
    case = CASES[name]
    check_grads(case.fn, _args(case), order=2, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)


def _close(actual, expected):
    jax.tree.map(lambda a, e: assert_close(a, e, jnp.float64), actual, expected)


class _Tiny(nnx.Module):
    def __init__(self, rngs):
        self.conv = Conv2d(2, 3, 3, padding=1, rngs=rngs)
        self.norm = BatchNorm2d(3, track_running_stats=False)  # batch statistics, no state
        self.pool = MaxPool2d(2)

    def __call__(self, x):
        return jnp.tanh(self.pool(self.norm(self.conv(x)))).sum()


def test_layer_model_jacfwd_hessian_and_check_grads(x64):
    model = _Tiny(nnx.Rngs(0))
    graph, params, rest = nnx.split(model, nnx.Param, ...)
    x = jax.random.normal(jax.random.key(1), (2, 2, 4, 4), jnp.float64)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)

    def loss(params, x):
        return nnx.merge(graph, params, rest)(x)

    _close(fast_jit(jax.jacfwd(loss))(params, x), fast_jit(jax.grad(loss))(params, x))
    hessian = fast_jit(jax.hessian(loss, 1))(params, x)
    _close(hessian, fast_jit(jax.jacrev(jax.jacrev(loss, 1), 1))(params, x))
    assert np.abs(np.asarray(hessian)).max() > 0
    check_grads(loss, (params, x), order=2, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)


def test_readme_forward_mode_example():
    # The README's example (tests/test_packaging.py also runs it from the installed wheel).
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Forward mode and second derivatives", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    expected = section.split("```text\n", 1)[1].split("```", 1)[0]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert out.getvalue() == expected


def _same(hw, k):
    return win.Geometry(hw, hw, (k, k), (1, 1), (1, 1), (((k - 1) // 2, k // 2),) * 2)


ACCEL = {
    # The TPU versions (jspatial._accel), run on the CPU with Pallas in interpret mode.
    "conv": (
        lambda x, w: aconv.conv2d(x, w, _same((5, 4), 3), True),
        _conv_ref(1, 1),
        ((2, 3, 5, 4), (4, 3, 3, 3)),
    ),
    "max_pool": (
        lambda x: apool.max_pool2d(
            x, win.Geometry((4, 6), (2, 3), (2, 2), (2, 2), (1, 1), ((0, 0), (0, 0))), True
        ),
        lambda x: _reduce(x, -jnp.inf, lax.max, 2, 2, 0),
        ((2, 3, 4, 6),),
    ),  # fmt: skip
    "batch_norm": (
        lambda x, w, b: anorm.bn_train(x, w, b, 1e-5),
        lambda x, w, b: _bn_ref(x, w, b)[0],
        ((3, 2, 2, 3), (2,), (2,)),
    ),
}


@pytest.mark.parametrize("name", list(ACCEL))
def test_accelerator_versions_forward_and_reverse(name):
    fn, ref, shapes = ACCEL[name]
    if name == "batch_norm":
        fn = (lambda f: lambda *a: f(*a)[0])(fn)  # the normalised output
    case = Case(fn, ref, shapes)
    keys = jax.random.split(jax.random.key(0), 2 * len(shapes))
    args = tuple(jax.random.normal(k, s) for k, s in zip(keys, shapes))
    tangents = tuple(jax.random.normal(k, s) for k, s in zip(keys[len(shapes) :], shapes))
    argnums = tuple(range(len(shapes)))

    def run(f):
        return jax.jvp(f, args, tangents), jax.grad(_loss(f), argnums)(*args)

    jax.tree.map(
        lambda a, e: assert_close(a, e, scale=10), jax.jit(partial(run, case.fn))(),
        jax.jit(partial(run, case.ref))(),
    )  # fmt: skip
