"""``adaptive_avg_pool2d``/``adaptive_max_pool2d`` against PyTorch CPU: values, gradients, indices.

Each configuration runs once through jspatial (value and VJP, jitted, cached) and
is compared with torch; a few also run eagerly. Shapes are tiny on purpose.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

import jspatial as js
from jspatial import _windows as win
from tests.test_pool import forward_and_backward_primitives, to_nhwc
from tests.tolerances import assert_close, fast_jit


def _random_configs(count, seed=11):
    """Random odd-sized planes and output sizes, some above the input, some ``None``."""
    rng = np.random.default_rng(seed)
    configs = {}
    for i in range(count):
        h, w = (int(v) for v in rng.integers(1, 12, 2))
        out = [int(v) for v in rng.integers(1, 14, 2)]
        if i % 3 == 2:
            out[i % 2] = None
        configs[f"random{i}_{h}x{w}_to_{out[0]}x{out[1]}"] = ((1, 2, h, w), tuple(out))
    return configs


CONFIGS = {
    "divisible_6x8_to_3x4": ((2, 3, 6, 8), (3, 4)),  # the ordinary pool, kernel = stride
    "odd_7x9_to_3x4": ((2, 3, 7, 9), (3, 4)),  # overlapping windows of 3 and 4 cells
    "larger_5x4_to_7x6": ((2, 2, 5, 4), (7, 6)),  # more outputs than inputs: windows repeat
    "none_13x6_to_keep_x4": ((1, 3, 13, 6), (None, 4)),
    "one_axis_divisible_6x7_to_3x3": ((1, 2, 6, 7), (3, 3)),
    "int_size_3": ((2, 3, 5, 7), 3),
    "long_windows_17x3_to_4x2": ((1, 2, 17, 3), (4, 2)),
    **_random_configs(4),
}


def call(kind, output_size, x, data_format="NCHW"):
    if kind == "avg":
        return js.adaptive_avg_pool2d(x, output_size, data_format=data_format)
    return js.adaptive_max_pool2d(x, output_size, return_indices=True, data_format=data_format)


def make_data(name, dtype=np.float32, seed=0):
    shape, output_size = CONFIGS[name]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    out_shape = jax.eval_shape(lambda x: js.adaptive_avg_pool2d(x, output_size), x).shape
    return x, rng.standard_normal(out_shape).astype(dtype)


def vjp_fn(kind, output_size, data_format="NCHW"):
    """``(x, cot) -> (y, dx)`` or, for max, ``(x, cot) -> (y, indices, dx)``."""

    def run(x, cot):
        out, pull = jax.vjp(lambda x: call(kind, output_size, x, data_format), x)
        if kind == "avg":
            return out, pull(cot)[0]
        y, indices = out
        return y, indices, pull((cot, np.zeros(indices.shape, jax.dtypes.float0)))[0]

    return run


@functools.cache
def js_results(kind, name):
    out = fast_jit(vjp_fn(kind, CONFIGS[name][1]))(*make_data(name))
    return tuple(np.asarray(a) for a in out)


def torch_results(torch, kind, output_size, x, cot):
    F = torch.nn.functional
    tx = torch.tensor(x, requires_grad=True)
    if kind == "avg":
        y = F.adaptive_avg_pool2d(tx, output_size)
        y.backward(torch.tensor(cot))
        return y.detach().numpy(), tx.grad.numpy()
    y, indices = F.adaptive_max_pool2d(tx, output_size, return_indices=True)
    y.backward(torch.tensor(cot))
    return y.detach().numpy(), indices.numpy(), tx.grad.numpy()


@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("name", CONFIGS)
def test_matches_torch(torch, kind, name):
    x, cot = make_data(name)
    ours = js_results(kind, name)
    expected = torch_results(torch, kind, CONFIGS[name][1], x, cot)
    assert ours[0].shape == expected[0].shape
    assert_close(ours[0], expected[0], err_msg="value")
    assert_close(ours[-1], expected[-1], err_msg="dx")
    if kind == "max":
        assert ours[1].dtype == np.int32  # no 64-bit integers outside JAX's x64 mode
        np.testing.assert_array_equal(ours[1], expected[1])


@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("name", ["odd_7x9_to_3x4", "divisible_6x8_to_3x4"])
@pytest.mark.parametrize("disable_jit", [False, True])
def test_eager_matches_torch(torch, kind, name, disable_jit):
    x, cot = make_data(name)
    if disable_jit:  # the op's own jit too: every loop runs op by op, in Python
        with jax.disable_jit():
            ours = vjp_fn(kind, CONFIGS[name][1])(x, cot)
    else:
        ours = vjp_fn(kind, CONFIGS[name][1])(x, cot)  # no outer jit
    expected = torch_results(torch, kind, CONFIGS[name][1], x, cot)
    for a, b in zip(ours, expected, strict=True):
        assert_close(a, b)


NHWC_CONFIGS = [
    "divisible_6x8_to_3x4",
    "odd_7x9_to_3x4",
    "larger_5x4_to_7x6",
    "none_13x6_to_keep_x4",
    "long_windows_17x3_to_4x2",
]


@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize(
    "name, eager",
    [(n, False) for n in NHWC_CONFIGS] + [(n, True) for n in NHWC_CONFIGS[:2]],  # eager: slow
)
def test_nhwc_matches_torch(torch, kind, name, eager):
    # f(to_nhwc(x), data_format='NHWC') == to_nhwc(torch's f(x)): values, indices, gradients.
    x, cot = make_data(name)
    expected = torch_results(torch, kind, CONFIGS[name][1], x, cot)
    run = vjp_fn(kind, CONFIGS[name][1], "NHWC")
    if eager:
        with jax.disable_jit():
            ours = run(to_nhwc(x), to_nhwc(cot))
    else:
        ours = fast_jit(run)(to_nhwc(x), to_nhwc(cot))
    assert ours[0].shape == to_nhwc(expected[0]).shape
    assert_close(ours[0], to_nhwc(expected[0]), err_msg="value")
    assert_close(ours[-1], to_nhwc(expected[-1]), err_msg="dx")
    if kind == "max":
        np.testing.assert_array_equal(np.asarray(ours[1]), to_nhwc(expected[1]))


def test_nhwc_unbatched_and_empty(torch):
    F = torch.nn.functional
    x = make_data("odd_7x9_to_3x4")[0][0]  # (3, 7, 9); (7, 9, 3) is its unbatched NHWC
    y, indices = js.adaptive_max_pool2d(to_nhwc(x), (3, 4), True, data_format="NHWC")
    t_y, t_indices = F.adaptive_max_pool2d(torch.from_numpy(x), (3, 4), True)
    assert y.shape == (3, 4, 3)
    np.testing.assert_array_equal(np.asarray(indices), to_nhwc(t_indices.numpy()))
    assert_close(y, to_nhwc(t_y.numpy()))
    avg = js.adaptive_avg_pool2d(to_nhwc(x), (None, 2), data_format="NHWC")
    assert_close(avg, to_nhwc(F.adaptive_avg_pool2d(torch.from_numpy(x), (None, 2)).numpy()))
    # Zero output sizes and an empty batch keep the channels last.
    assert js.adaptive_avg_pool2d(jnp.ones((2, 5, 7, 3)), (0, 3), data_format="NHWC").shape == (
        2, 0, 3, 3,
    )  # fmt: skip
    y, indices = js.adaptive_max_pool2d(jnp.ones((2, 5, 7, 3)), 0, True, data_format="NHWC")
    assert y.shape == indices.shape == (2, 0, 0, 3)
    out, pull = jax.vjp(lambda x: call("avg", (3, 4), x, "NHWC"), jnp.zeros((0, 7, 9, 3)))
    assert out.shape == (0, 3, 4, 3)
    assert pull(out)[0].shape == (0, 7, 9, 3)


@pytest.mark.parametrize("kind", ["avg", "max"])
def test_nhwc_jaxpr_is_a_tap_loop_without_transposes(kind):
    fn = lambda x: call(kind, (3, 4), x, "NHWC")[0 if kind == "max" else ...]  # noqa: E731
    forward, backward = forward_and_backward_primitives(fn, jnp.ones((2, 7, 9, 3)))
    assert forward & {"while", "scan"} and backward & {"while", "scan"}, (forward, backward)
    assert "transpose" not in forward, forward


def test_output_larger_than_input_repeats_cells():
    x = jnp.arange(1.0, 4.0).reshape(1, 1, 1, 3)
    np.testing.assert_array_equal(
        js.adaptive_avg_pool2d(x, (1, 5))[0, 0], [[1.0, 1.5, 2.0, 2.5, 3.0]]
    )
    y, indices = js.adaptive_max_pool2d(x, (2, 4), return_indices=True)
    np.testing.assert_array_equal(y[0, 0], [[1.0, 2.0, 3.0, 3.0]] * 2)
    np.testing.assert_array_equal(indices[0, 0], [[0, 1, 2, 2]] * 2)


def test_windows_follow_torch_rule():
    # start = floor(i * 7 / 3), end = ceil((i + 1) * 7 / 3): [0, 3), [2, 5), [4, 7)
    assert win.adaptive_windows(7, 3) == ((0, 2, 4), (3, 3, 3))
    assert win.adaptive_windows(3, 5) == ((0, 0, 1, 1, 2), (1, 2, 1, 2, 1))
    for size in range(1, 12):
        for out in range(1, 14):
            _, lengths = win.adaptive_windows(size, out)
            assert min(lengths) >= 1 and max(lengths) <= -(-size // out) + 1


def test_max_ties_nans_and_minus_inf_match_torch(torch):
    rng = np.random.default_rng(5)
    x = rng.integers(0, 3, (2, 2, 7, 9)).astype(np.float32)  # ties in every window
    x[0, 0, 1, 1] = x[0, 0, 1, 2] = x[0, 0, 2, 1] = np.nan  # the last NaN wins
    x[1, 1, :3] = -np.inf  # windows of only -inf: the first cell wins
    cot = rng.standard_normal((2, 2, 3, 4)).astype(np.float32)
    y, indices, dx = fast_jit(vjp_fn("max", (3, 4)))(x, cot)
    t_y, t_indices, t_dx = torch_results(torch, "max", (3, 4), x, cot)
    np.testing.assert_array_equal(np.asarray(y), t_y)  # NaNs in the same places
    np.testing.assert_array_equal(np.asarray(indices), t_indices)
    assert_close(dx, t_dx)


def test_zero_output_size_is_empty():
    x = jnp.ones((2, 3, 5, 7))
    assert js.adaptive_avg_pool2d(x, (0, 3)).shape == (2, 3, 0, 3)
    y, indices = js.adaptive_max_pool2d(x, 0, return_indices=True)
    assert y.shape == indices.shape == (2, 3, 0, 0)
    dx = jax.grad(lambda x: js.adaptive_avg_pool2d(x, (0, 3)).sum())(x)
    np.testing.assert_array_equal(dx, 0.0)


@pytest.mark.parametrize("kind", ["avg", "max"])
def test_empty_batch_forward_and_backward(kind):
    x = jnp.zeros((0, 3, 7, 9))
    out, pull = jax.vjp(lambda x: call(kind, (3, 4), x), x)
    y = out if kind == "avg" else out[0]
    assert y.shape == (0, 3, 3, 4)
    cot = y if kind == "avg" else (y, np.zeros(y.shape, jax.dtypes.float0))
    assert pull(cot)[0].shape == x.shape


@pytest.mark.parametrize("kind", ["avg", "max"])
def test_float64_and_int64_indices(x64, torch, kind):
    F = torch.nn.functional
    x = np.asarray(make_data("odd_7x9_to_3x4")[0], np.float64)
    tx = torch.from_numpy(x)
    if kind == "max":
        y, indices = jax.jit(lambda x: call(kind, (3, 4), x))(x)
        assert indices.dtype == jnp.int64
        t_y, t_indices = F.adaptive_max_pool2d(tx, (3, 4), True)
        np.testing.assert_array_equal(np.asarray(indices), t_indices.numpy())
    else:
        fn = jax.jit(lambda x: call(kind, (3, 4), x))
        y, t_y = fn(x), F.adaptive_avg_pool2d(tx, (3, 4))
        # Max's gradient is a routing, checked against torch; the average's is arithmetic.
        jax.test_util.check_grads(fn, (jnp.asarray(x),), order=1, modes=("rev",))
    assert y.dtype == jnp.float64
    assert_close(y, t_y.numpy(), jnp.float64)


@pytest.mark.parametrize("name", ["odd_7x9_to_3x4", "divisible_6x8_to_3x4"])
@pytest.mark.parametrize("kind", ["avg", "max"])
def test_jaxpr_is_a_tap_loop(kind, name):
    shape, output_size = CONFIGS[name]
    if kind == "avg":
        fn = lambda x: js.adaptive_avg_pool2d(x, output_size)  # noqa: E731
    else:
        fn = lambda x: js.adaptive_max_pool2d(x, output_size, True)[0]  # noqa: E731
    for names in forward_and_backward_primitives(fn, jnp.ones(shape)):
        assert names & {"while", "scan"}, names


def test_bfloat16(torch):
    x, cot = make_data("odd_7x9_to_3x4")
    x, cot = jnp.asarray(x, jnp.bfloat16), jnp.asarray(cot, jnp.bfloat16)
    for kind in ("avg", "max"):
        out = fast_jit(vjp_fn(kind, (3, 4)))(x, cot)
        assert out[0].dtype == out[-1].dtype == jnp.bfloat16
        # Torch in float32 on the same (rounded) data.
        ref = torch_results(torch, kind, (3, 4), *(np.asarray(a, np.float32) for a in (x, cot)))
        for a, b in zip(out, ref, strict=True):
            assert_close(a, b, jnp.bfloat16)


# --------------------------------------------------------------------------- errors

ADAPTIVE = {
    "adaptive_avg_pool2d": js.adaptive_avg_pool2d,
    "adaptive_max_pool2d": js.adaptive_max_pool2d,
}


@pytest.mark.parametrize("op", ADAPTIVE)
@pytest.mark.parametrize(
    "x, output_size, err, match",
    [
        (jnp.ones((2, 3, 5, 5)), (2, 2, 2), ValueError, r"output_size must be an int or a pair"),
        (jnp.ones((2, 3, 5, 5)), 2.0, TypeError, r"output_size must hold ints or None"),
        (jnp.ones((2, 3, 5, 5)), (2, "3"), TypeError, r"output_size must hold ints or None"),
        (jnp.ones((2, 3, 5, 5)), (2, -1), ValueError, r"output_size must be >= 0"),
        (jnp.ones((2, 3, 5, 5)), None, TypeError, r"output_size must be an int or a pair"),
        (jnp.ones((2, 3, 0, 5)), 2, ValueError, r"expected an input with non-empty planes"),
        (jnp.ones((2, 0, 5, 5)), 2, ValueError, r"expected at least one channel"),
        (jnp.ones((5, 5)), 2, ValueError, r"expected 3D \(unbatched.* or 4D .*got 2D"),
        (jnp.ones((1, 1, 5, 5), jnp.int32), 2, TypeError, r"expected floating-point input"),
    ],
)
def test_errors(op, x, output_size, err, match):
    with pytest.raises(err, match=rf"^{op} {match}"):
        ADAPTIVE[op](x, output_size)


@pytest.mark.parametrize("op", ADAPTIVE)
def test_torch_tensor_is_refused_and_nested_lists_convert(torch, op):
    with pytest.raises(TypeError, match=rf"^{op} input is a torch.Tensor"):
        ADAPTIVE[op](torch.ones(1, 2, 5, 5), 2)
    nested = np.arange(50.0, dtype=np.float32).reshape(1, 2, 5, 5)
    np.testing.assert_array_equal(ADAPTIVE[op](nested.tolist(), 2), ADAPTIVE[op](nested, 2))


def test_return_indices_must_be_a_bool():
    with pytest.raises(TypeError, match=r"^adaptive_max_pool2d return_indices must be a bool"):
        js.adaptive_max_pool2d(jnp.ones((1, 1, 4, 4)), 2, 1)
