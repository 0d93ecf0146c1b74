"""``max_pool2d``/``avg_pool2d`` against ``lax.reduce_window``, PyTorch CPU and the NumPy loops.

Every case runs once through jspatial (value and VJP, jitted, cached) and is then
compared with each oracle in its own test. Shapes are tiny on purpose.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from jax import lax

import jspatial as js
from jspatial import reference
from tests.test_conv import FORBIDDEN, _primitives
from tests.tolerances import assert_close, fast_jit


@dataclass(frozen=True)
class Case:
    op: str  # "max" or "avg"
    x_shape: tuple[int, int, int, int]
    kernel: Any
    stride: Any = None
    padding: Any = 0
    dilation: Any = 1  # max only
    ceil_mode: bool = False
    count_include_pad: bool = True  # avg only
    divisor_override: int | None = None  # avg only
    torch: bool = True  # PyTorch is a valid oracle for this case

    def call(self, x, return_indices=False):
        # Positional, in PyTorch's order: a call copied from torch must mean the same.
        if self.op == "max":
            return js.max_pool2d(
                x, self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode,
                return_indices,
            )  # fmt: skip
        return js.avg_pool2d(
            x, self.kernel, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
            self.divisor_override,
        )  # fmt: skip

    def pairs(self):
        """``kernel, stride, padding, dilation`` as ``(h, w)`` pairs."""
        p = lambda v: (v, v) if isinstance(v, int) else tuple(v)
        k = p(self.kernel)
        return k, (k if self.stride is None else p(self.stride)), p(self.padding), p(self.dilation)


X79, X55, X66 = (2, 3, 7, 9), (2, 3, 5, 5), (2, 2, 6, 6)

CASES = {
    # ---- max
    "max_rect_3x2_s12_p10": Case("max", X79, (3, 2), (1, 2), (1, 0)),
    # The ceil'd last window would start in the right padding: dropped (5 -> 3, not 4).
    "max_ceil_dropped_5_k2_s2_p1": Case("max", X55, 2, 2, 1, ceil_mode=True),
    "max_ceil_kept_6_k3_s2_p1": Case("max", X66, 3, 2, 1, ceil_mode=True),  # 6 -> 4
    "max_stride_gt_kernel": Case("max", X79, 2, 3, 1),
    "max_dilation_2x3_ceil": Case("max", X79, 3, 2, 1, dilation=(2, 3), ceil_mode=True),
    # Columns -1 and 2 of a 2-wide input: every window lies entirely in padding.
    # (PyTorch's CPU backward writes out of bounds here, so it is no oracle.)
    "max_all_padding_window": Case("max", (2, 3, 5, 2), 2, 1, 1, dilation=(1, 3), torch=False),
    # ---- avg
    "avg_k2_7x9": Case("avg", X79, 2),  # stride defaults to the kernel; last row/col unused
    "avg_rect_2x1_stride_gt_kernel_exclude_pad": Case(
        "avg", X79, (2, 1), 3, (1, 0), count_include_pad=False
    ),
    "avg_ceil_5_k2_s2": Case("avg", X55, 2, 2, ceil_mode=True),  # 5 -> 3, partial last window
    "avg_ceil_6_k3_s2_p1": Case("avg", X66, 3, 2, 1, ceil_mode=True),
    "avg_ceil_6_k3_s2_p1_exclude_pad": Case(
        "avg", X66, 3, 2, 1, ceil_mode=True, count_include_pad=False
    ),
    "avg_divisor_override_3": Case("avg", X79, 3, 2, 1, ceil_mode=True, divisor_override=3),
}


def torch_out_size(size, k, s, p, d, ceil):
    """PyTorch's ``pooling_output_shape``, written out independently of jspatial."""
    out = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    return out


def lax_pads(case: Case, hw):
    """Per-axis ``(lo, hi)`` padding for ``reduce_window`` and the expected output size."""
    pads, outs = [], []
    for size, k, s, p, d in zip(hw, *case.pairs()):
        out = torch_out_size(size, k, s, p, d, case.ceil_mode)
        needed = (out - 1) * s + d * (k - 1) + 1 - size - p
        pads.append((p, max(p, needed)))
        outs.append(out)
    return pads, outs


def lax_pool(case: Case, x):
    (kh, kw), (sh, sw), _, (dh, dw) = case.pairs()
    pads, (oh, ow) = lax_pads(case, x.shape[2:])
    window, strides, padding = (1, 1, kh, kw), (1, 1, sh, sw), ((0, 0), (0, 0), *pads)
    if case.op == "max":
        y = lax.reduce_window(x, -jnp.inf, lax.max, window, strides, padding, None, (1, 1, dh, dw))
        return y[:, :, :oh, :ow]
    total = lax.reduce_window(x, 0.0, lax.add, window, strides, padding)[:, :, :oh, :ow]
    if case.divisor_override is not None:
        return total / case.divisor_override
    # Divisor: count the cells of each window that are real (or explicit padding).
    (ph, pw) = case.pairs()[2]
    fill = 1.0 if case.count_include_pad else 0.0
    mask = jnp.pad(jnp.ones(x.shape[2:], x.dtype), ((ph, ph), (pw, pw)), constant_values=fill)
    extra = ((0, pads[0][1] - ph), (0, pads[1][1] - pw))
    counts = lax.reduce_window(mask, 0.0, lax.add, (kh, kw), (sh, sw), extra)[:oh, :ow]
    return total / counts


def make_data(case: Case, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.x_shape).astype(dtype)
    out = jax.eval_shape(case.call, x).shape
    return x, rng.standard_normal(out).astype(dtype)


def vjp_fn(fn):
    """``(x, cot) -> (y, dx)`` for ``fn(x)``."""

    def run(x, cot):
        y, pull = jax.vjp(fn, x)
        return y, pull(cot)[0]

    return run


def vjp_runner(fn):
    return fast_jit(vjp_fn(fn))


@functools.cache
def js_runner(name):
    return vjp_runner(CASES[name].call)


def value_and_grad(fn, x, rng):
    """``(y, cot, dx)`` of ``fn`` at ``x`` for a random cotangent, via ``vjp_runner``."""
    shape = jax.eval_shape(fn, x).shape
    cot = rng.standard_normal(shape).astype(np.float32)
    y, dx = vjp_runner(fn)(x, cot)
    return y, cot, dx


@functools.cache
def js_results(name):
    y, dx = js_runner(name)(*make_data(CASES[name]))
    return np.asarray(y), np.asarray(dx)


def torch_pool(case: Case, x, cot):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    tx = torch.tensor(np.asarray(x, np.float32), requires_grad=True)
    if case.op == "max":
        y = F.max_pool2d(tx, case.kernel, case.stride, case.padding, case.dilation, case.ceil_mode)
    else:
        y = F.avg_pool2d(
            tx, case.kernel, case.stride, case.padding, case.ceil_mode,
            case.count_include_pad, case.divisor_override,
        )  # fmt: skip
    y.backward(torch.tensor(np.asarray(cot, np.float32)))
    return y.detach().numpy(), tx.grad.numpy()


def reference_pool(case: Case, x):
    kernel, stride, padding, dilation = case.pairs()
    if case.op == "max":
        return reference.max_pool2d(x, kernel, stride, padding, dilation, case.ceil_mode)
    return reference.avg_pool2d(
        x, kernel, stride, padding, case.ceil_mode, case.count_include_pad, case.divisor_override
    )


@pytest.mark.parametrize("name", CASES)
def test_pool_matches_lax(name):
    case = CASES[name]
    x, cot = make_data(case)
    y, dx = js_results(name)
    expected_shape = (*x.shape[:2], *lax_pads(case, x.shape[2:])[1])
    if case.pairs()[3] != (1, 1):
        # JAX has no VJP for a dilated reduce_window max: values only here (the
        # gradients of the dilated cases are checked against torch and check_grads).
        y_ref = fast_jit(functools.partial(lax_pool, case))(x)
        assert y.shape == y_ref.shape == expected_shape
        assert_close(y, y_ref, err_msg="value")
        return
    y_ref, dx_ref = vjp_runner(functools.partial(lax_pool, case))(x, cot)
    assert y.shape == y_ref.shape == expected_shape
    assert_close(y, y_ref, err_msg="value")
    assert_close(dx, dx_ref, err_msg="dx")


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.torch])
def test_pool_matches_torch(name):
    case = CASES[name]
    y_ref, dx_ref = torch_pool(case, *make_data(case))
    y, dx = js_results(name)
    assert y.shape == y_ref.shape
    assert_close(y, y_ref, err_msg="value")
    assert_close(dx, dx_ref, err_msg="dx")


@pytest.mark.parametrize("name", CASES)
def test_pool_matches_numpy_reference(name):
    case = CASES[name]
    x, _ = make_data(case)
    assert_close(js_results(name)[0], reference_pool(case, x))


def test_expected_output_sizes():
    # The documented ceil_mode cases, on the outputs of the ops themselves.
    assert js_results("avg_ceil_5_k2_s2")[0].shape[2:] == (3, 3)
    assert js_results("max_ceil_dropped_5_k2_s2_p1")[0].shape[2:] == (3, 3)
    assert js_results("max_ceil_kept_6_k3_s2_p1")[0].shape[2:] == (4, 4)
    assert js_results("avg_ceil_6_k3_s2_p1")[0].shape[2:] == (4, 4)


def test_window_entirely_in_padding_is_minus_inf_with_zero_gradient():
    y, dx = js_results("max_all_padding_window")
    assert y.shape == (2, 3, 6, 1)
    assert np.all(np.isneginf(y))
    np.testing.assert_array_equal(dx, 0.0)


def test_max_pool_padding_never_wins():
    # All-negative input: a zero from the padding must never be the max.
    x = -1.0 - jnp.arange(16.0).reshape(1, 1, 4, 4)
    y = fast_jit(lambda x: js.max_pool2d(x, 3, 1, 1))(x)
    assert float(y.max()) == -1.0
    np.testing.assert_array_equal(y[0, 0, 0], [-1.0, -1.0, -2.0, -3.0])


# ------------------------------------------------------------------- hand-made cases

X16 = jnp.arange(1.0, 17.0).reshape(1, 1, 4, 4)


def test_hand_computed_max_and_avg_k2():
    y_max, y_avg = fast_jit(lambda x: (js.max_pool2d(x, 2), js.avg_pool2d(x, 2)))(X16)
    np.testing.assert_array_equal(y_max[0, 0], [[6.0, 8.0], [14.0, 16.0]])
    np.testing.assert_array_equal(y_avg[0, 0], [[3.5, 5.5], [11.5, 13.5]])


def test_hand_computed_count_include_pad():
    x = jnp.ones((1, 1, 3, 3))
    f = fast_jit(
        lambda x: (
            js.avg_pool2d(x, 3, 1, 1),
            js.avg_pool2d(x, 3, 1, 1, count_include_pad=False),
            js.avg_pool2d(x, 3, 1, 1, divisor_override=2),
        )
    )
    include, exclude, override = f(x)
    np.testing.assert_allclose(include[0, 0] * 9, [[4, 6, 4], [6, 9, 6], [4, 6, 4]], rtol=1e-6)
    np.testing.assert_array_equal(exclude[0, 0], np.ones((3, 3)))
    np.testing.assert_array_equal(override[0, 0], [[2, 3, 2], [3, 4.5, 3], [2, 3, 2]])


def test_max_pool_tie_gradient_goes_to_first_maximum():
    x = jnp.ones((1, 1, 2, 2))
    dx = fast_jit(jax.grad(lambda x: js.max_pool2d(x, 2).sum()))(x)
    np.testing.assert_array_equal(dx[0, 0], [[1.0, 0.0], [0.0, 0.0]])
    # Overlapping windows: each window's gradient lands on its own first maximum.
    x = jnp.array([[[[0.0, 2.0, 2.0, 2.0]]]])
    dx = fast_jit(jax.grad(lambda x: js.max_pool2d(x, (1, 2), 1).sum()))(x)
    np.testing.assert_array_equal(dx[0, 0], [[0.0, 2.0, 1.0, 0.0]])


def test_max_pool_nan_and_minus_inf_inputs_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 2, 5, 6)).astype(np.float32)
    x[0, 0, 1, 1] = x[0, 0, 1, 2] = np.nan  # NaN wins its windows
    x[0, 1, :3, :] = -np.inf  # windows of only -inf: the first real cell takes the gradient
    kw = dict(kernel_size=3, stride=1, padding=1)
    y, cot, dx = value_and_grad(lambda x: js.max_pool2d(x, **kw), x, rng)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.max_pool2d(tx, **kw)
    ty.backward(torch.tensor(cot))
    np.testing.assert_array_equal(np.asarray(y), ty.detach().numpy())  # NaNs in the same places
    assert_close(dx, tx.grad.numpy())


TIE_CASES = {
    "k3_s1_p1": dict(kernel_size=3, stride=1, padding=1),
    "k2x3_s1x2_p1_ceil_dilated": dict(
        kernel_size=(2, 3), stride=(1, 2), padding=1, dilation=(2, 1), ceil_mode=True
    ),
}


@pytest.mark.parametrize("name", TIE_CASES)
def test_max_pool_ties_match_torch(name):
    torch = pytest.importorskip("torch")
    kw = TIE_CASES[name]
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, X79).astype(np.float32)  # many equal values in every window
    y, cot, dx = value_and_grad(lambda x: js.max_pool2d(x, **kw), x, rng)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.max_pool2d(tx, **kw)
    ty.backward(torch.tensor(cot))
    np.testing.assert_array_equal(np.asarray(y), ty.detach().numpy())
    assert_close(dx, tx.grad.numpy())


# ------------------------------------------------------------------ dtypes and x64


@pytest.mark.parametrize(
    "name, dtype",
    [
        ("max_dilation_2x3_ceil", jnp.bfloat16),
        ("avg_ceil_6_k3_s2_p1_exclude_pad", jnp.float16),
        ("avg_divisor_override_3", jnp.bfloat16),
    ],
)
def test_low_precision_dtypes(name, dtype):
    x, cot = (jnp.asarray(a, dtype) for a in make_data(CASES[name]))
    y, dx = js_runner(name)(x, cot)
    y32, dx32 = js_runner(name)(x.astype(jnp.float32), cot.astype(jnp.float32))
    assert y.dtype == dx.dtype == dtype
    assert_close(y, y32, dtype)
    assert_close(dx, dx32, dtype)


X64_CASES = {
    "max": Case("max", (2, 2, 5, 6), 3, 2, 1, dilation=(1, 2), ceil_mode=True),
    "avg": Case("avg", (2, 2, 5, 6), 3, 2, 1, ceil_mode=True, count_include_pad=False),
    "avg_divisor_override": Case("avg", (2, 2, 5, 6), 3, 2, 1, divisor_override=3),
}


@pytest.mark.parametrize("name", ["max", "avg"])
def test_check_grads_float64(x64, name):
    case = X64_CASES[name]
    x = jnp.asarray(make_data(case)[0], jnp.float64)  # random: no ties in max windows
    fn = jax.jit(case.call)
    assert fn(x).dtype == jnp.float64
    jax.test_util.check_grads(fn, (x,), order=1, modes=("rev",))


@pytest.mark.parametrize("name", X64_CASES)
def test_float64_is_float64_accurate(x64, name):
    # x64 mode is supported, so results must be float64-accurate, not float32-accurate.
    case = X64_CASES[name]
    x, cot = (jnp.asarray(a, jnp.float64) for a in make_data(case))
    y, dx = vjp_runner(case.call)(x, cot)
    assert y.dtype == dx.dtype == jnp.float64
    assert_close(y, reference_pool(case, np.asarray(x)), jnp.float64, err_msg="value")
    if case.op == "avg":  # linear: the gradient is the transposed average
        _, dx_ref = vjp_runner(functools.partial(lax_pool, case))(x, cot)
        assert_close(dx, dx_ref, jnp.float64, err_msg="dx")


# -------------------------------------------------------------- transformations


@pytest.mark.parametrize("name", ["avg_ceil_6_k3_s2_p1_exclude_pad"])
def test_jit_equals_eager(name):
    x, _ = make_data(CASES[name])
    with jax.disable_jit():  # the op's own jit too: every loop runs op by op, in Python
        eager = CASES[name].call(x)
    jitted = jax.jit(CASES[name].call)(x)  # default compiler options
    assert_close(jitted, eager)
    assert_close(js_results(name)[0], eager)


@pytest.mark.parametrize("name", ["max_rect_3x2_s12_p10"])
def test_vmap_value_and_grad_equals_loop(name):
    x, cot = make_data(CASES[name])
    rng = np.random.default_rng(4)
    xs = rng.standard_normal((3, *x.shape)).astype(np.float32)
    cots = rng.standard_normal((3, *cot.shape)).astype(np.float32)
    ys, dxs = fast_jit(jax.vmap(vjp_fn(CASES[name].call)))(xs, cots)
    run = js_runner(name)
    for i in range(3):
        y, dx = run(xs[i], cots[i])
        assert_close(ys[i], y)
        assert_close(dxs[i], dx)


def test_global_avg_pool2d():
    x, _ = make_data(CASES["avg_k2_7x9"])
    y = fast_jit(js.global_avg_pool2d)(x)
    assert y.shape == (2, 3)
    assert_close(y, x.astype(np.float64).mean(axis=(2, 3)))
    y16 = fast_jit(js.global_avg_pool2d)(jnp.asarray(x, jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16
    with pytest.raises(ValueError, match=r"global_avg_pool2d expected 4D input"):
        js.global_avg_pool2d(jnp.ones((3, 5, 5)))


# --------------------------------------------------------------------------- errors

X = jnp.ones((2, 3, 6, 6))
POOLS = {"max_pool2d": js.max_pool2d, "avg_pool2d": js.avg_pool2d}


@pytest.mark.parametrize("op", POOLS)
@pytest.mark.parametrize(
    "args, kwargs, err, match",
    [
        ((jnp.ones((6, 6)), 2), {}, ValueError, r"{op} expected 3D \(unbatched.* or 4D .*got 2D"),
        ((jnp.ones((1, 2, 3, 6, 6)), 2), {}, ValueError, r"{op} expected 3D .* or 4D .*got 5D"),
        (
            (jnp.ones((1, 1, 2, 2)), 3),
            {},
            ValueError,
            r"^{op} kernel \(3, 3\) does not fit the padded input \(2, 2\)",
        ),  # noqa: E501
        ((jnp.ones((1, 1, 2, 8)), (3, 1)), {}, ValueError, r"{op} kernel \(3, 1\) does not fit"),
        ((X, 0), {}, ValueError, r"{op} kernel_size must be positive"),
        ((X, (2, -1)), {}, ValueError, r"{op} kernel_size must be positive"),
        ((X, 2, 0), {}, ValueError, r"{op} stride must be positive"),
        ((X, 2, 2, -1), {}, ValueError, r"{op} padding must be >= 0"),
        ((X, 2, 2, 2), {}, ValueError, r"{op} padding must be at most half the kernel size"),
        ((X, 3, 1, (1, 2)), {}, ValueError, r"{op} padding must be at most half the kernel"),
        ((X, "2"), {}, TypeError, r"{op} kernel_size must be an int or a pair of ints"),
        ((X, 2.0), {}, TypeError, r"{op} kernel_size must be an int or a pair of ints"),
        ((X, True), {}, TypeError, r"{op} kernel_size must be an int or a pair of ints"),
        ((X, 2, 1.5), {}, TypeError, r"{op} stride must be an int or a pair of ints"),
        ((X, 2, "1"), {}, TypeError, r"{op} stride must be an int or a pair of ints"),
        ((X, 2, 1, 0.0), {}, TypeError, r"{op} padding must be an int or a pair of ints"),
        ((X, 3, 1, ((1, 1), (1, 1))), {}, TypeError, r"{op} padding must be an int or a pair"),
        ((X, ((2, 2), (2, 2))), {}, TypeError, r"{op} kernel_size must be an int or a pair"),
        ((X, (2, 2, 2)), {}, ValueError, r"{op} kernel_size must be .*got 3 values"),
        ((X, 2, (1, 1, 1)), {}, ValueError, r"{op} stride must be .*got 3 values"),
        ((X, 2), {"ceil_mode": 1}, TypeError, r"{op} ceil_mode must be a bool"),
        (
            (jnp.ones((2, 3, 6, 6), jnp.complex64), 2),
            {},
            TypeError,
            r"{op} expected (a )?floating-point (or integer )?input .*complex64",
        ),  # noqa: E501
        (
            (jnp.ones((2, 3, 6, 6), jnp.bool_), 2),
            {},
            TypeError,
            r"{op} expected (a )?floating-point (or integer )?input .*bool",
        ),  # noqa: E501
    ],
)
def test_pool_errors(op, args, kwargs, err, match):
    with pytest.raises(err, match=match.format(op=op)):
        POOLS[op](*args, **kwargs)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(dilation=0), ValueError, r"max_pool2d dilation must be positive"),
        (dict(dilation=1.0), TypeError, r"max_pool2d dilation must be an int"),
        (dict(dilation=3), ValueError, r"max_pool2d kernel \(3, 3\) \(dilated to \(7, 7\)\) does"),
    ],
)
def test_max_pool_dilation_errors(kwargs, err, match):
    with pytest.raises(err, match=match):
        js.max_pool2d(X, 3, **kwargs)


@pytest.mark.parametrize(
    "value, err, match",
    [
        (0, ValueError, r"avg_pool2d divisor_override must be non-zero, got 0"),
        ("2", TypeError, r"avg_pool2d divisor_override must be a number"),
        (True, TypeError, r"avg_pool2d divisor_override must be a number"),
    ],
)
def test_avg_pool_divisor_override_errors(value, err, match):
    with pytest.raises(err, match=match):
        js.avg_pool2d(X, 2, divisor_override=value)


# ------------------------------------------------------------------- return_indices


@functools.cache
def js_indices(name):
    case = CASES[name]
    y, indices = fast_jit(lambda x: case.call(x, return_indices=True))(make_data(case)[0])
    return np.asarray(y), np.asarray(indices)


@pytest.mark.parametrize("data_format", ["NCHW", "NHWC"])
@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.op == "max"])
def test_max_pool_indices_match_torch(name, data_format):
    # Torch's forward is sound even where its backward is not (windows all in padding).
    # In NHWC the indices keep torch's meaning (h * W + w in the channel's plane) and are
    # laid out like the output.
    torch = pytest.importorskip("torch")
    case = CASES[name]
    x = make_data(case)[0]
    t_y, t_indices = torch.nn.functional.max_pool2d(
        torch.from_numpy(x), case.kernel, case.stride, case.padding, case.dilation,
        case.ceil_mode, True,
    )  # fmt: skip
    t_y, t_indices = t_y.numpy(), t_indices.numpy()
    if data_format == "NHWC":
        y, indices = map(np.asarray, fast_jit(nhwc_call(case, return_indices=True))(to_nhwc(x)))
        t_y, t_indices = to_nhwc(t_y), to_nhwc(t_indices)
    else:
        y, indices = js_indices(name)
        np.testing.assert_array_equal(y, js_results(name)[0])  # the same y as without indices
    assert indices.dtype == np.int32  # no 64-bit integers outside JAX's x64 mode
    np.testing.assert_array_equal(indices, t_indices)
    assert_close(y, t_y)


def test_max_pool_indices_of_ties_and_nans_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    x = rng.integers(0, 3, (2, 2, 7, 9)).astype(np.float32)  # ties in every window
    x[0, 0, 2, 3] = x[0, 0, 2, 4] = np.nan
    x[1, 1, :4] = -np.inf
    kw = dict(kernel_size=3, stride=2, padding=1, dilation=(1, 2))
    y, indices = js.max_pool2d(x, return_indices=True, **kw)  # eager
    t_y, t_indices = torch.nn.functional.max_pool2d(torch.from_numpy(x), return_indices=True, **kw)
    np.testing.assert_array_equal(np.asarray(indices), t_indices.numpy())
    np.testing.assert_array_equal(np.asarray(y), t_y.numpy())


def test_max_pool_indices_are_int64_in_x64_mode(x64):
    torch = pytest.importorskip("torch")
    case = X64_CASES["max"]
    x = make_data(case, np.float64)[0]
    y, indices = jax.jit(lambda x: case.call(x, return_indices=True))(x)
    assert y.dtype == jnp.float64 and indices.dtype == jnp.int64
    t_y, t_indices = torch.nn.functional.max_pool2d(
        torch.from_numpy(x), 3, 2, 1, (1, 2), True, return_indices=True
    )
    np.testing.assert_array_equal(np.asarray(indices), t_indices.numpy())
    assert_close(y, t_y.numpy(), jnp.float64)


def test_gradient_flows_through_y_with_indices():
    case = CASES["max_rect_3x2_s12_p10"]
    x, cot = make_data(case)
    y, pull = jax.vjp(lambda x: case.call(x, return_indices=True), x)
    dx = pull((cot, np.zeros(y[1].shape, jax.dtypes.float0)))[0]
    assert_close(dx, js_results("max_rect_3x2_s12_p10")[1])


def test_positional_arguments_follow_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = make_data(CASES["max_rect_3x2_s12_p10"])[0]
    tx = torch.from_numpy(x)
    # max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
    y, indices = js.max_pool2d(x, 3, 2, 1, 2, True, True)
    t_y, t_indices = F.max_pool2d(tx, 3, 2, 1, 2, True, True)
    assert_close(y, t_y.numpy())
    np.testing.assert_array_equal(np.asarray(indices), t_indices.numpy())
    # avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    assert_close(js.avg_pool2d(x, 3, 2, 1, True, False), F.avg_pool2d(tx, 3, 2, 1, True, False))
    y = js.avg_pool2d(x, 2, 1, 0, False, True, 3)
    assert_close(y, F.avg_pool2d(tx, 2, 1, 0, False, True, 3))


# ------------------------------------------------------ empty batch, foreign inputs, jaxpr

EMPTY_OPS = {
    "max": lambda x: js.max_pool2d(x, 3, 2, 1, (1, 2), True),
    "max_indices": lambda x: js.max_pool2d(x, 3, 2, 1, return_indices=True)[0],
    "avg": lambda x: js.avg_pool2d(x, 3, 2, 1, True, False),
    "global_avg": js.global_avg_pool2d,
}


@pytest.mark.parametrize("name", EMPTY_OPS)
def test_empty_batch_forward_and_backward(name):
    torch = pytest.importorskip("torch")
    fn = EMPTY_OPS[name]
    x = jnp.zeros((0, 3, 7, 9))
    y, pull = jax.vjp(fn, x)
    expected = {
        "global_avg": (0, 3),
        "max": torch.nn.functional.max_pool2d(torch.zeros(0, 3, 7, 9), 3, 2, 1, (1, 2), True).shape,
    }.get(name, (0, 3, 4, 5))
    assert y.shape == tuple(expected)
    dx = pull(jnp.zeros_like(y))[0]
    assert dx.shape == x.shape and dx.dtype == x.dtype


def test_max_pool_empty_batch_indices():
    y, indices = js.max_pool2d(jnp.zeros((0, 2, 5, 5)), 2, return_indices=True)
    assert y.shape == indices.shape == (0, 2, 2, 2)


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d", "global_avg_pool2d"])
def test_torch_tensor_is_refused_and_nested_lists_convert(op):
    torch = pytest.importorskip("torch")
    fn = {
        "max_pool2d": lambda x: js.max_pool2d(x, 2),
        "avg_pool2d": lambda x: js.avg_pool2d(x, 2),
        "global_avg_pool2d": js.global_avg_pool2d,
    }[op]
    with pytest.raises(TypeError, match=rf"^{op} input is a torch.Tensor.*jnp.asarray\(t.detach"):
        fn(torch.ones(1, 2, 4, 4))
    nested = np.arange(32.0).reshape(1, 2, 4, 4)
    np.testing.assert_array_equal(np.asarray(fn(nested.tolist())), np.asarray(fn(nested)))


def forward_and_backward_primitives(fn, x) -> list[set[str]]:
    """The primitives of ``fn(x)`` and of its gradient, after checking for window primitives."""
    found = []
    for f in (fn, jax.grad(lambda x: jnp.sum(fn(x) ** 2))):
        names = _primitives(jax.make_jaxpr(f)(x))
        for bad in FORBIDDEN:
            assert not any(bad in n for n in names), (bad, names)
        found.append(names)
    return found


def test_max_pool_with_indices_is_a_tap_loop():
    fn = lambda x: js.max_pool2d(x, 3, 2, 1, (1, 2), True, True)[0]  # noqa: E731
    for names in forward_and_backward_primitives(fn, jnp.ones((2, 2, 7, 9))):
        assert names & {"while", "scan"}, names


# ---------------------------------------------------------------- data_format='NHWC'


def to_nhwc(a):
    """``(N, C, H, W) -> (N, H, W, C)``, and ``(C, H, W) -> (H, W, C)`` unbatched."""
    a = np.asarray(a)
    return np.transpose(a, (0, 2, 3, 1) if a.ndim == 4 else (1, 2, 0))


def nhwc_call(case: Case, return_indices=False):
    """``case.call`` in ``data_format='NHWC'``, positional in PyTorch's order as there."""
    if case.op == "max":
        return lambda x: js.max_pool2d(
            x, case.kernel, case.stride, case.padding, case.dilation, case.ceil_mode,
            return_indices, data_format="NHWC",
        )  # fmt: skip
    return lambda x: js.avg_pool2d(
        x, case.kernel, case.stride, case.padding, case.ceil_mode, case.count_include_pad,
        case.divisor_override, data_format="NHWC",
    )  # fmt: skip


NHWC_CASES = [
    "max_rect_3x2_s12_p10",
    "max_ceil_kept_6_k3_s2_p1",
    "max_stride_gt_kernel",
    "max_dilation_2x3_ceil",
    "avg_rect_2x1_stride_gt_kernel_exclude_pad",
    "avg_ceil_5_k2_s2",
    "avg_divisor_override_3",
]


@pytest.mark.parametrize("name", NHWC_CASES)
def test_nhwc_matches_torch(name):
    # f(to_nhwc(x), data_format='NHWC') == to_nhwc(torch's f(x)), values and gradients.
    case = CASES[name]
    x, cot = make_data(case)
    y_ref, dx_ref = torch_pool(case, x, cot)
    y, dx = vjp_runner(nhwc_call(case))(to_nhwc(x), to_nhwc(cot))
    assert y.shape == to_nhwc(y_ref).shape
    assert_close(y, to_nhwc(y_ref), err_msg="value")
    assert_close(dx, to_nhwc(dx_ref), err_msg="dx")


def test_nhwc_window_entirely_in_padding_matches_nchw():
    # PyTorch's backward is no oracle here (see CASES); the NCHW results are (the indices
    # are checked against torch's forward in test_max_pool_indices_match_torch).
    name = "max_all_padding_window"
    x, cot = make_data(CASES[name])
    y, dx = vjp_runner(nhwc_call(CASES[name]))(to_nhwc(x), to_nhwc(cot))
    y_nchw, dx_nchw = js_results(name)
    np.testing.assert_array_equal(np.asarray(y), to_nhwc(y_nchw))
    np.testing.assert_array_equal(np.asarray(dx), to_nhwc(dx_nchw))


@pytest.mark.parametrize("name", ["max_dilation_2x3_ceil", "avg_ceil_6_k3_s2_p1_exclude_pad"])
def test_nhwc_eager_matches_torch(name):
    case = CASES[name]
    x, cot = make_data(case)
    y_ref, dx_ref = torch_pool(case, x, cot)
    with jax.disable_jit():  # the op's own jit too: every loop runs op by op
        y, dx = vjp_fn(nhwc_call(case))(to_nhwc(x), to_nhwc(cot))
    assert_close(y, to_nhwc(y_ref), err_msg="value")
    assert_close(dx, to_nhwc(dx_ref), err_msg="dx")


def test_nhwc_unbatched_is_a_batch_of_one():
    # (H, W, C) is unbatched NHWC, as (C, H, W) is unbatched NCHW.
    x = make_data(CASES["max_rect_3x2_s12_p10"])[0][0]  # (3, 7, 9)
    y, indices = js.max_pool2d(to_nhwc(x), 3, 2, 1, return_indices=True, data_format="NHWC")
    y_ref, indices_ref = js.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert y.shape == indices.shape == (4, 5, 3)
    np.testing.assert_array_equal(np.asarray(y), to_nhwc(y_ref))
    np.testing.assert_array_equal(np.asarray(indices), to_nhwc(indices_ref))
    avg = js.avg_pool2d(to_nhwc(x), (2, 3), 1, (1, 0), data_format="NHWC")
    assert_close(avg, to_nhwc(js.avg_pool2d(x, (2, 3), 1, (1, 0))))


def test_nhwc_integer_input_and_global_avg_pool2d():
    x = np.random.default_rng(9).integers(-50, 50, (2, 3, 5, 7)).astype(np.int32)
    y = js.max_pool2d(to_nhwc(x), 2, 1, 1, data_format="NHWC")
    assert y.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(y), to_nhwc(js.max_pool2d(x, 2, 1, 1)))
    xf = make_data(CASES["avg_k2_7x9"])[0]
    g = fast_jit(lambda x: js.global_avg_pool2d(x, data_format="NHWC"))(to_nhwc(xf))
    assert g.shape == (2, 3)
    assert_close(g, xf.astype(np.float64).mean(axis=(2, 3)))
    dx = jax.grad(lambda x: js.global_avg_pool2d(x, data_format="NHWC").sum())(to_nhwc(xf))
    assert_close(dx, np.full(to_nhwc(xf).shape, 1 / 63))


@pytest.mark.parametrize("name", ["max", "max_indices", "avg", "global_avg"])
def test_nhwc_empty_batch(name):
    fn = {
        "max": lambda x: js.max_pool2d(x, 3, 2, 1, (1, 2), True, data_format="NHWC"),
        "max_indices": lambda x: js.max_pool2d(x, 3, 2, 1, return_indices=True, data_format="NHWC")[
            0
        ],
        "avg": lambda x: js.avg_pool2d(x, 3, 2, 1, True, False, data_format="NHWC"),
        "global_avg": lambda x: js.global_avg_pool2d(x, data_format="NHWC"),
    }[name]
    x = jnp.zeros((0, 7, 9, 3))
    nchw = jax.eval_shape(EMPTY_OPS[name], jnp.zeros((0, 3, 7, 9))).shape
    y, pull = jax.vjp(fn, x)
    assert y.shape == (nchw if name == "global_avg" else (0, *nchw[2:], 3))
    assert pull(jnp.zeros_like(y))[0].shape == x.shape


NHWC_OPS = {
    "max_pool2d": lambda x, **kw: js.max_pool2d(x, 2, **kw),
    "avg_pool2d": lambda x, **kw: js.avg_pool2d(x, 2, **kw),
    "global_avg_pool2d": lambda x, **kw: js.global_avg_pool2d(x, **kw),
    "adaptive_avg_pool2d": lambda x, **kw: js.adaptive_avg_pool2d(x, 2, **kw),
    "adaptive_max_pool2d": lambda x, **kw: js.adaptive_max_pool2d(x, 2, **kw),
    "max_unpool2d": lambda x, **kw: js.max_unpool2d(x, jnp.zeros(x.shape, jnp.int32), 2, **kw),
}


@pytest.mark.parametrize("op", NHWC_OPS)
@pytest.mark.parametrize(
    "value, err, match",
    [
        ("nhwc", ValueError, r"got 'nhwc'"),
        ("NCW", ValueError, r"got 'NCW'"),
        (None, TypeError, r"got None \(NoneType\)"),
        (1, TypeError, r"got 1 \(int\)"),
    ],
)
def test_bad_data_format(op, value, err, match):
    with pytest.raises(err, match=rf"^{op} data_format must be 'NCHW' or 'NHWC', {match}"):
        NHWC_OPS[op](X, data_format=value)


@pytest.mark.parametrize("op", NHWC_OPS)
def test_nhwc_checks_the_channels_last_axis(op):
    # (2, 6, 6, 0) has no channels in NHWC (it would have 6 in NCHW).
    with pytest.raises(ValueError, match=rf"^{op} expected at least one channel"):
        NHWC_OPS[op](jnp.ones((2, 6, 6, 0)), data_format="NHWC")
    with pytest.raises(
        ValueError, match=rf"^{op} expected .*4D .*\(batch, height, width, channels\)"
    ):
        NHWC_OPS[op](jnp.ones((1, 2, 6, 6, 3)), data_format="NHWC")


def test_data_format_is_keyword_only():
    with pytest.raises(TypeError):
        js.max_pool2d(X, 2, 2, 0, 1, False, False, "NHWC")
    with pytest.raises(TypeError):
        js.avg_pool2d(X, 2, 2, 0, False, True, None, "NHWC")


@pytest.mark.parametrize("op", ["max_indices", "max", "avg"])
def test_nhwc_is_a_tap_loop_without_transposes(op):
    # Channels last is the loops' own layout: no transpose in the forward pass.
    fn = {
        "max_indices": lambda x: js.max_pool2d(x, 3, 2, 1, (1, 2), True, True, data_format="NHWC")[
            0
        ],
        "max": lambda x: js.max_pool2d(x, 2, data_format="NHWC"),
        "avg": lambda x: js.avg_pool2d(x, 3, 2, 1, data_format="NHWC"),
    }[op]
    forward, backward = forward_and_backward_primitives(fn, jnp.ones((2, 7, 9, 2)))
    assert forward & {"while", "scan"}, forward
    assert "transpose" not in forward, forward
    assert backward & {"while", "scan"}, backward


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_tpu_kernel_forward_mode_takes_each_winners_tangent(layout):
    # The kernel's forward mode finds the winners itself (no import of jspatial.pool):
    # the same tangents as the portable loop, ties and NaNs included. Pallas interpreted.
    from jspatial import _windows as win
    from jspatial._accel.tpu import pool as apool

    x = np.array(jax.random.normal(jax.random.key(3), (2, 3, 6, 7)), np.float32)
    x[0, 0, 0, :2] = 3.0  # a tie: the first maximum's tangent
    x[1, 2, 2:4, 2:4] = [[np.nan, 1.0], [np.nan, 5.0]]  # two NaNs: the last one's tangent
    dx = np.array(jax.random.normal(jax.random.key(4), x.shape), np.float32)
    if layout == "NHWC":
        x, dx = np.transpose(x, (0, 2, 3, 1)), np.transpose(dx, (0, 2, 3, 1))
    hw = x.shape[2:] if layout == "NCHW" else x.shape[1:3]
    geom = win.Geometry(hw, (3, 3), (2, 2), (2, 2), (1, 1), ((0, 0), (0, 0)), layout)
    assert apool.supports(geom) and not apool.supports(geom, return_indices=True)
    _, dy = jax.jvp(lambda a: apool.max_pool2d(a, geom, True), (x,), (dx,))
    _, want = jax.jvp(lambda a: js.max_pool2d(a, 2, data_format=layout), (x,), (dx,))
    np.testing.assert_array_equal(np.asarray(dy), np.asarray(want))


def test_tpu_kernel_does_not_import_the_portable_pool():
    import ast
    import inspect

    from jspatial._accel.tpu import pool as apool

    tree = ast.parse(inspect.getsource(apool))
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {
        f"{n.module}.{a.name}"
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module
        for a in n.names
    }
    assert not {m for m in modules if m.startswith("jspatial.pool")}
