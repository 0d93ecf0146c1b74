"""``jspatial.conv2d`` against ``lax.conv_general_dilated``, PyTorch CPU and the NumPy loops.

Every case of ``CASES`` is run once through jspatial (value and VJP, jitted, cached)
and compared with each oracle in its own test. Shapes are tiny on purpose.
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
from jspatial._conv_args import conv2d_args
from jspatial.conv import conv2d_program
from tests.tolerances import assert_close, fast_jit


@dataclass(frozen=True)
class Case:
    x_shape: tuple[int, int, int, int]
    w_shape: tuple[int, int, int, int]
    stride: Any = 1
    padding: Any = 0
    dilation: Any = 1
    groups: int = 1
    bias: bool = True

    def kwargs(self):
        return dict(
            stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups
        )


CASES = {
    "same_odd_dilated_5x5": Case((2, 3, 5, 5), (4, 3, 3, 3), padding="same", dilation=2),
    "rect_1x3_stride_gt_kernel_valid_no_bias_5x5": Case(
        (2, 2, 5, 5), (3, 2, 1, 3), stride=(3, 4), padding="valid", bias=False
    ),
    "rect_3x2_stride_2x1": Case((2, 3, 7, 9), (4, 3, 3, 2), stride=(2, 1), padding=(1, 0)),
    "dilation_2x3_stride_2": Case(
        (2, 3, 7, 9), (2, 3, 3, 2), stride=2, padding=(1, 2), dilation=(2, 3)
    ),
    "groups_2": Case((2, 4, 7, 9), (6, 2, 3, 3), padding=1, groups=2),
    "depthwise": Case((2, 3, 7, 9), (3, 1, 3, 3), padding=1, groups=3),
    "depthwise_multiplier_2": Case((2, 3, 7, 9), (6, 1, 3, 3), stride=2, padding=1, groups=3),
    "same_even_4x4": Case((2, 2, 7, 9), (3, 2, 4, 4), padding="same"),
    "same_even_2x4_dilated": Case((2, 2, 5, 5), (3, 2, 2, 4), padding="same", dilation=(3, 1)),
    "asymmetric_pad_groups": Case((2, 4, 7, 9), (4, 2, 3, 2), padding=((1, 0), (2, 1)), groups=2),
}


def conv2d_as_layer(x, w, b, stride, padding, dilation, groups, **kwargs):
    """``conv2d`` on the layers' path: the checked arguments (``op``, ``padding_mode``,
    ``dtype``), then the program that runs them."""
    a = conv2d_args(x, w, b, stride, padding, dilation, groups, **kwargs)
    return a.finish(conv2d_program(a)(a.x, a.weight))


def explicit_pads(case: Case):
    """``((top, bottom), (left, right))`` written out here, independently of ``_args``."""
    kernel = case.w_shape[2:]
    dil = (case.dilation,) * 2 if isinstance(case.dilation, int) else case.dilation
    p = case.padding
    if p == "valid":
        return ((0, 0), (0, 0))
    if p == "same":  # PyTorch: total // 2 before, the rest after
        totals = [d * (k - 1) for k, d in zip(kernel, dil)]
        return tuple((t // 2, t - t // 2) for t in totals)
    if isinstance(p, int):
        return ((p, p), (p, p))
    if isinstance(p[0], int):
        return ((p[0], p[0]), (p[1], p[1]))
    return tuple(tuple(side) for side in p)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def lax_conv(case: Case, x, w, b):
    y = lax.conv_general_dilated(
        x,
        w,
        window_strides=_pair(case.stride),
        padding=explicit_pads(case),
        rhs_dilation=_pair(case.dilation),
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
        feature_group_count=case.groups,
        precision=lax.Precision.HIGHEST,
    )
    return y if b is None else y + b[None, :, None, None]


def make_data(case: Case, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.x_shape).astype(dtype)
    w = (rng.standard_normal(case.w_shape) / np.sqrt(np.prod(case.w_shape[1:]))).astype(dtype)
    b = rng.standard_normal(case.w_shape[0]).astype(dtype) if case.bias else None
    out = jax.eval_shape(lambda x, w: lax_conv(case, x, w, None), x, w).shape
    cot = rng.standard_normal(out).astype(dtype)
    return x, w, b, cot


def vjp_fn(fn, has_bias):
    """``(x, w, b, cot) -> (y, [dx, dw(, db)])`` for ``fn(x, w, b)``."""

    def run(x, w, b, cot):
        if has_bias:
            y, pull = jax.vjp(fn, x, w, b)
        else:
            y, pull = jax.vjp(lambda x, w: fn(x, w, None), x, w)
        return y, list(pull(cot))

    return run


def vjp_runner(fn, has_bias):
    """``vjp_fn`` jitted. Runners are cached per case, so other data with the same shapes
    and dtypes (the float32 copy of a bfloat16 input, a vmap loop) reuses the compiled code."""
    return fast_jit(vjp_fn(fn, has_bias))


@functools.cache
def js_vjp(name):
    case = CASES[name]
    return vjp_fn(lambda x, w, b: js.conv2d(x, w, b, **case.kwargs()), case.bias)


@functools.cache
def js_runner(name):
    return fast_jit(js_vjp(name))


@functools.cache
def js_results(name):
    """jspatial's value and gradients on ``make_data(CASES[name])``, as NumPy arrays."""
    y, grads = js_runner(name)(*make_data(CASES[name]))
    return np.asarray(y), [np.asarray(g) for g in grads]


def torch_results(case: Case, x, w, b, cot):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    tx, tw = (torch.tensor(a, requires_grad=True) for a in (x, w))
    tb = None if b is None else torch.tensor(b, requires_grad=True)
    padding = case.padding
    inp = tx
    if not (isinstance(padding, (int, str)) or isinstance(padding[0], int)):
        (t, bo), (le, r) = padding
        inp, padding = F.pad(tx, (le, r, t, bo)), 0
    y = F.conv2d(inp, tw, tb, case.stride, padding, case.dilation, case.groups)
    y.backward(torch.tensor(cot))
    grads = [tx.grad, tw.grad] + ([] if tb is None else [tb.grad])
    return y.detach().numpy(), [g.numpy() for g in grads]


@pytest.mark.parametrize("name", CASES)
def test_conv2d_matches_lax(name):
    case = CASES[name]
    x, w, b, cot = make_data(case)
    y, grads = js_results(name)
    y_ref, grads_ref = vjp_runner(functools.partial(lax_conv, case), case.bias)(x, w, b, cot)
    assert y.shape == y_ref.shape
    assert_close(y, y_ref, err_msg="value")
    for g, g_ref, what in zip(grads, grads_ref, ("dx", "dw", "db")):
        assert g.shape == g_ref.shape
        assert_close(g, g_ref, err_msg=what)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("name", CASES)
def test_conv2d_matches_torch(name):
    case = CASES[name]
    x, w, b, cot = make_data(case)
    y_ref, grads_ref = torch_results(case, x, w, b, cot)
    y, grads = js_results(name)
    assert y.shape == y_ref.shape
    assert_close(y, y_ref, err_msg="value")
    assert len(grads) == len(grads_ref)
    for g, g_ref, what in zip(grads, grads_ref, ("dx", "dw", "db")):
        assert_close(g, g_ref, err_msg=what)


@pytest.mark.parametrize("name", CASES)
def test_conv2d_matches_numpy_reference(name):
    # The reference takes the fast op's own arguments: one can stand in for the other.
    case = CASES[name]
    x, w, b, _ = make_data(case)
    expected = reference.conv2d(x, w, b, **case.kwargs())
    assert_close(js_results(name)[0], expected)


def test_reference_takes_the_same_positional_arguments():
    case = CASES["dilation_2x3_stride_2"]
    x, w, b, _ = make_data(case)
    args = (case.stride, case.padding, case.dilation, case.groups)
    assert_close(reference.conv2d(x, w, b, *args), js.conv2d(x, w, b, *args))


# ------------------------------------------------------------- small hand-made cases


def test_hand_computed_identity_diagonal_kernel():
    x = jnp.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    w = jnp.array([[[[1.0, 0.0], [0.0, 1.0]]]])
    run = vjp_runner(lambda x, w, b: js.conv2d(x, w), has_bias=False)
    y, (dx, _) = run(x, w, None, jnp.ones((1, 1, 2, 2)))
    np.testing.assert_array_equal(y[0, 0], [[6.0, 8.0], [12.0, 14.0]])
    assert y.dtype == jnp.float32
    # Each input cell's gradient counts how many times it is multiplied by 1.
    np.testing.assert_array_equal(dx[0, 0], [[1, 1, 0], [1, 2, 1], [0, 1, 1]])


def test_hand_computed_bias_and_stride():
    x = jnp.ones((1, 2, 4, 4))
    w = jnp.ones((3, 2, 2, 2))
    y = fast_jit(lambda x, w: js.conv2d(x, w, jnp.array([0.0, 1.0, -8.0]), stride=2))(x, w)
    assert y.shape == (1, 3, 2, 2)
    np.testing.assert_array_equal(y[0, :, 0, 0], [8.0, 9.0, 0.0])


def test_same_padding_keeps_spatial_size_for_even_kernels():
    x = jnp.ones((1, 1, 5, 6))
    for k in (2, 3, 4, (2, 5)):
        kernel = (k, k) if isinstance(k, int) else k
        w = jnp.ones((1, 1, *kernel))
        y = jax.eval_shape(lambda x, w: js.conv2d(x, w, padding="same"), x, w)
        assert y.shape == x.shape


# ------------------------------------------------------------------ dtypes and x64


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_dtypes(dtype):
    name = "groups_2"
    # Round the inputs once; the float32 run on the rounded values is the target.
    lo = [jnp.asarray(a, dtype) for a in make_data(CASES[name])]
    y, grads = js_runner(name)(*lo)
    y32, grads32 = js_runner(name)(*(a.astype(jnp.float32) for a in lo))
    assert y.dtype == dtype
    assert [g.dtype for g in grads] == [dtype] * 3
    assert_close(y, y32, dtype)
    for g, g32 in zip(grads, grads32):
        # The backward rounds the incoming gradient to ``dtype`` once more.
        assert_close(g, g32, dtype, scale=2)


def test_check_grads_float64(x64):
    case = Case((2, 4, 5, 6), (4, 2, 2, 3), stride=2, padding=((0, 2), (1, 0)), groups=2)
    x, w, b, _ = (jnp.asarray(a, jnp.float64) for a in make_data(case))
    assert x.dtype == jnp.float64
    fn = jax.jit(lambda x, w, b: js.conv2d(x, w, b, **case.kwargs()))
    y = fn(x, w, b)
    assert y.dtype == jnp.float64
    assert_close(y, lax_conv(case, x, w, b), jnp.float64)
    jax.test_util.check_grads(fn, (x, w, b), order=1, modes=("rev",))


# -------------------------------------------------------------- transformations


def test_jit_equals_eager():
    name = "dilation_2x3_stride_2"
    case = CASES[name]
    x, w, b, _ = make_data(case)
    with jax.disable_jit():  # the op's own jit too: every loop runs op by op, in Python
        eager = js.conv2d(x, w, b, **case.kwargs())
    jitted = jax.jit(lambda x, w, b: js.conv2d(x, w, b, **case.kwargs()))(x, w, b)  # default -O
    assert eager.dtype == jitted.dtype == jnp.float32
    assert_close(jitted, eager)
    assert_close(js_results(name)[0], eager)


def test_vmap_value_and_grad_equals_loop():
    name = "depthwise_multiplier_2"
    rng = np.random.default_rng(1)
    x, w, b, cot = make_data(CASES[name])
    xs = rng.standard_normal((3, *x.shape)).astype(np.float32)
    cots = rng.standard_normal((3, *cot.shape)).astype(np.float32)
    batched = fast_jit(jax.vmap(js_vjp(name), in_axes=(0, None, None, 0)))
    batched_y, batched_grads = batched(xs, w, b, cots)
    run = js_runner(name)
    for i in range(3):
        y, grads = run(xs[i], w, b, cots[i])
        assert_close(batched_y[i], y)
        for g_batched, g in zip(batched_grads, grads):
            assert_close(g_batched[i], g)


# ------------------------------------------------------------- PyTorch's calling habits


def test_positional_arguments_follow_torch():
    # F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    case = CASES["asymmetric_pad_groups"]
    x, w, b, _ = make_data(case)
    positional = js.conv2d(x, w, b, case.stride, case.padding, case.dilation, case.groups)
    assert_close(positional, js_results("asymmetric_pad_groups")[0])


@pytest.mark.parametrize("stride", [2, 2.0, (2, 2)])
def test_stride_in_the_bias_slot_names_bias(stride):
    with pytest.raises(TypeError, match=r"^conv2d bias must be an array of shape \(C_out,\) or"):
        js.conv2d(X, W, stride)


def test_torch_tensors_are_refused_with_the_conversion():
    torch = pytest.importorskip("torch")
    cases = [
        ((torch.ones(2, 4, 6, 6), W), "input"),
        ((X, torch.ones(6, 4, 3, 3)), "weight"),
        ((X, W, torch.ones(6)), "bias"),
    ]
    for args, name in cases:
        with pytest.raises(TypeError, match=rf"^conv2d {name} is a torch.Tensor.*jnp.asarray"):
            js.conv2d(*args)


def test_nested_lists_convert_like_arrays():
    x = [[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]]]
    w = [[[[1.0, 0.0], [0.0, 1.0]]]]
    y = js.conv2d(x, w, [0.5])
    np.testing.assert_array_equal(y[0, 0], [[6.5, 8.5], [12.5, 14.5]])


@pytest.mark.parametrize("algorithm", ["direct", "im2col", "winograd"])
def test_empty_batch_forward_and_backward(algorithm):
    x, w, b = jnp.zeros((0, 3, 6, 5)), jnp.ones((4, 3, 3, 3)), jnp.ones((4,))

    def f(x, w, b):
        return js.conv2d(x, w, b, 1, 1, algorithm=algorithm)

    y, pull = jax.vjp(f, x, w, b)
    assert y.shape == (0, 4, 6, 5)
    dx, dw, db = pull(jnp.ones(y.shape))
    assert dx.shape == x.shape
    np.testing.assert_array_equal(dw, np.zeros(w.shape))
    np.testing.assert_array_equal(db, np.zeros(b.shape))


# ------------------------------------------------------------ channels last (NHWC)


def to_nhwc(a):
    """NCHW -> NHWC (``(C, H, W)`` -> ``(H, W, C)`` unbatched), NumPy or JAX."""
    return None if a is None else np.moveaxis(np.asarray(a), -3, -1)


NHWC_CASES = [
    "rect_1x3_stride_gt_kernel_valid_no_bias_5x5",
    "dilation_2x3_stride_2",
    "depthwise_multiplier_2",
    "asymmetric_pad_groups",
]


@pytest.mark.parametrize("algorithm", ["direct", "auto"])
@pytest.mark.parametrize("name", NHWC_CASES)
def test_conv2d_nhwc_matches_torch(name, algorithm):
    case = CASES[name]
    x, w, b, cot = make_data(case)
    y_ref, (dx_ref, *dparams_ref) = torch_results(case, x, w, b, cot)

    def fn(x, w, b):
        return js.conv2d(x, w, b, **case.kwargs(), algorithm=algorithm, data_format="NHWC")

    y, (dx, *dparams) = vjp_runner(fn, case.bias)(to_nhwc(x), w, b, to_nhwc(cot))
    assert y.shape == to_nhwc(y_ref).shape
    assert_close(y, to_nhwc(y_ref), err_msg="value")
    assert_close(dx, to_nhwc(dx_ref), err_msg="dx")
    for g, g_ref in zip(dparams, dparams_ref, strict=True):  # weights stay OIHW
        assert_close(g, g_ref, err_msg="dw, db")


def test_conv2d_nhwc_jit_eager_and_unbatched():
    case = CASES["dilation_2x3_stride_2"]
    x, w, b, _ = make_data(case)
    expected = to_nhwc(js_results("dilation_2x3_stride_2")[0])
    fn = functools.partial(js.conv2d, **case.kwargs(), data_format="NHWC")
    with jax.disable_jit():
        eager = fn(to_nhwc(x), w, b)
    assert_close(eager, expected)
    assert_close(jax.jit(fn)(to_nhwc(x), w, b), expected)
    unbatched = fn(to_nhwc(x[1]), w, b)  # (H, W, C)
    assert unbatched.shape == expected.shape[1:]
    assert_close(unbatched, expected[1])


@pytest.mark.parametrize("padding_mode", ["reflect", "circular"])
def test_conv2d_padding_mode_nhwc_matches_torch(padding_mode):
    # The layers' path: pad with jspatial.pad (its NHWC axes), then convolve unpadded.
    torch = pytest.importorskip("torch")
    x, w, b, _ = make_data(Case((2, 3, 5, 6), (4, 3, 3, 2)))
    pads = ((1, 1), (2, 1))  # 'same' for a 3x2 kernel, asymmetric
    tx = torch.nn.functional.pad(torch.tensor(x), (2, 1, 1, 1), mode=padding_mode)
    y_ref = torch.nn.functional.conv2d(tx, torch.tensor(w), torch.tensor(b)).numpy()
    y = conv2d_as_layer(
        to_nhwc(x), w, b, 1, pads, 1, 1, op="Conv2d", padding_mode=padding_mode,
        data_format="NHWC",
    )  # fmt: skip
    assert_close(y, to_nhwc(y_ref))


def test_conv2d_nhwc_integers_match_nchw():
    x = jnp.arange(2 * 3 * 5 * 4, dtype=jnp.int32).reshape(2, 3, 5, 4) % 7
    w = jnp.arange(2 * 3 * 3 * 3, dtype=jnp.int32).reshape(2, 3, 3, 3) % 5 - 2
    y = js.conv2d(x, w, None, 2, 1)
    np.testing.assert_array_equal(js.conv2d(to_nhwc(x), w, None, 2, 1, data_format="NHWC"),
                                  to_nhwc(y))  # fmt: skip


def _eqns(jaxpr):
    """Every equation of ``jaxpr``, including those of nested jaxprs."""
    for eqn in getattr(jaxpr, "jaxpr", jaxpr).eqns:
        yield eqn
        for value in eqn.params.values():
            for v in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(v, "eqns") or hasattr(getattr(v, "jaxpr", None), "eqns"):
                    yield from _eqns(v)


def transposed_shapes(fn, *args):
    """The shapes of every array ``fn`` transposes (forward and backward)."""
    grad = jax.grad(lambda *a: jnp.sum(fn(*a) ** 2), argnums=tuple(range(len(args))))
    shapes = set()
    for f in (fn, grad):
        for eqn in _eqns(jax.make_jaxpr(f)(*args)):
            if eqn.primitive.name == "transpose":
                shapes.add(tuple(eqn.invars[0].aval.shape))
    return shapes


@pytest.mark.parametrize("algorithm", ["direct", "im2col", "winograd"])
def test_nhwc_moves_no_activations(algorithm):
    """In NHWC the loops run on the caller's arrays: no transpose of the input, the output
    or their gradients (the weights are still rearranged into taps). NCHW has them."""
    x, w = jnp.ones((2, 6, 7, 4)), jnp.ones((5, 4, 3, 3))
    activations = {x.shape, (2, 6, 7, 5), (2, 4, 6, 7), (2, 5, 6, 7)}
    for data_format, xin in (("NHWC", x), ("NCHW", jnp.transpose(x, (0, 3, 1, 2)))):

        def fn(x, w, data_format=data_format):
            return js.conv2d(x, w, padding=1, algorithm=algorithm, data_format=data_format)

        moved = transposed_shapes(fn, xin, w) & activations
        assert bool(moved) == (data_format == "NCHW"), (data_format, moved)


@pytest.mark.parametrize("fmt", ["nhwc", "NCWH", None, 1])
def test_bad_data_format(fmt):
    err = TypeError if not isinstance(fmt, str) else ValueError
    with pytest.raises(err, match=r"^conv2d data_format"):
        js.conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 2, 3, 3)), data_format=fmt)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: js.conv2d(jnp.ones((1, 6, 6, 4)), jnp.ones((3, 6, 3, 3)), data_format="NHWC"),
         r"^conv2d expected 6 input channels, got 4"),
        (lambda: js.conv2d(jnp.ones((6, 6)), jnp.ones((3, 6, 3, 3)), data_format="NHWC"),
         r"^conv2d expected 3D \(unbatched: height, width, channels\) or 4D \(batch, height, "
         r"width, channels\) input, got 2D"),
        (lambda: js.conv2d(jnp.ones((1, 2, 2, 4)), jnp.ones((3, 4, 3, 3)), data_format="NHWC"),
         r"^conv2d kernel \(3, 3\) does not fit the padded input \(2, 2\)"),
        (lambda: js.conv2d(jnp.ones((1, 6, 6, 0)), jnp.ones((3, 0, 3, 3)), data_format="NHWC"),
         r"^conv2d expected at least one channel"),
    ],
)  # fmt: skip
def test_nhwc_errors_read_the_channel_axis(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- errors

X = jnp.ones((2, 4, 6, 6))
W = jnp.ones((6, 4, 3, 3))


@pytest.mark.parametrize(
    "call, err, match",
    [
        (
            lambda: js.conv2d(jnp.ones((224, 224)), jnp.ones((8, 3, 3, 3))),
            ValueError,
            r"^conv2d expected 3D \(unbatched: channels, height, width\) or 4D \(batch, "
            r"channels, height, width\) input, got 2D: \(224, 224\)$",
        ),
        (
            lambda: js.conv2d(jnp.ones((1, 1, 3, 224, 224)), W),
            ValueError,
            r"conv2d expected 3D .* or 4D .*got 5D",
        ),
        (
            lambda: js.conv2d(X, jnp.ones((6, 4, 3))),
            ValueError,
            r"conv2d expected 4D weight",
        ),
        (
            lambda: js.conv2d(X, jnp.ones((6, 3, 3, 3))),
            ValueError,
            r"conv2d expected 3 input channels, got 4",
        ),
        (
            lambda: js.conv2d(X, jnp.ones((6, 4, 3, 3)), groups=2),
            ValueError,
            r"conv2d expected 8 input channels, got 4 .*groups=2",
        ),
        (
            lambda: js.conv2d(X, jnp.ones((6, 1, 3, 3)), groups=2),
            ValueError,
            r"conv2d expected 2 input channels, got 4",
        ),
        (
            lambda: js.conv2d(X, jnp.ones((6, 2, 3, 3)), groups=4),
            ValueError,
            r"conv2d groups=4 must divide both in_channels=4 and out_channels=6",
        ),
        (
            # Both wrong: groups=3 divides neither 5 nor 4, and 5 != 1 * 3. Groups first.
            lambda: js.conv2d(jnp.ones((2, 5, 6, 6)), jnp.ones((4, 1, 3, 3)), groups=3),
            ValueError,
            r"conv2d groups=3 must divide both in_channels=5 and out_channels=4",
        ),
        (lambda: js.conv2d(X, W, groups=0), ValueError, r"conv2d groups must be positive"),
        (lambda: js.conv2d(X, W, groups=1.0), TypeError, r"conv2d groups must be a positive int"),
        (
            lambda: js.conv2d(jnp.ones((1, 1, 2, 2)), jnp.ones((1, 1, 3, 3))),
            ValueError,
            r"^conv2d kernel \(3, 3\) does not fit the padded input \(2, 2\)",
        ),
        (
            lambda: js.conv2d(jnp.ones((1, 1, 4, 4)), jnp.ones((1, 1, 3, 3)), dilation=2),
            ValueError,
            r"conv2d kernel \(3, 3\) \(dilated to \(5, 5\)\) does not fit",
        ),
        (lambda: js.conv2d(X, W, stride=0), ValueError, r"conv2d stride must be positive"),
        (
            lambda: js.conv2d(X, W, stride=(1, -1)),
            ValueError,
            r"conv2d stride must be positive",
        ),
        (lambda: js.conv2d(X, W, dilation=0), ValueError, r"conv2d dilation must be positive"),
        (lambda: js.conv2d(X, W, padding=-1), ValueError, r"conv2d padding must be >= 0"),
        (
            lambda: js.conv2d(X, W, padding=((0, -1), (0, 0))),
            ValueError,
            r"conv2d padding must be >= 0",
        ),
        (
            lambda: js.conv2d(X, W, stride=2, padding="same"),
            ValueError,
            r"conv2d padding='same' needs stride 1",
        ),
        (
            lambda: js.conv2d(X, W, padding="full"),
            ValueError,
            r"conv2d padding must be an int, a pair, 'valid' or 'same'",
        ),
        (lambda: js.conv2d(X, W, stride="2"), TypeError, r"conv2d stride must be an int"),
        (lambda: js.conv2d(X, W, stride=1.0), TypeError, r"conv2d stride must be an int"),
        (lambda: js.conv2d(X, W, dilation=True), TypeError, r"conv2d dilation must be an int"),
        (lambda: js.conv2d(X, W, stride=(1, 1, 1)), ValueError, r"conv2d stride .*3 values"),
        (
            lambda: js.conv2d(X, W, padding=(1, 1, 1)),
            ValueError,
            r"conv2d padding .*3 values",
        ),
        (
            lambda: js.conv2d(X, W, jnp.ones((4,))),
            ValueError,
            r"conv2d expected bias of shape \(6,\), got \(4,\)",
        ),
        (
            lambda: js.conv2d(jnp.ones((2, 4, 6, 6), jnp.int32), W),
            TypeError,
            r"conv2d weight must have the dtype of the integer input, int32, got float32",
        ),
        (
            lambda: js.conv2d(jnp.ones((2, 4, 6, 6), jnp.bool_), W),
            TypeError,
            r"conv2d expected a floating-point or integer input .*got bool",
        ),
        (
            lambda: js.conv2d(X, jnp.ones((6, 4, 3, 3), jnp.int32)),
            TypeError,
            r"conv2d expected a floating-point weight",
        ),
    ],
)
def test_conv2d_errors(call, err, match):
    with pytest.raises(err, match=match):
        call()


# --------------------------------------------- the ops never call the oracles they are tested on

FORBIDDEN = ("conv_general_dilated", "reduce_window", "select_and_scatter", "select_and_gather")


def _primitives(jaxpr) -> set[str]:
    """Every primitive name in ``jaxpr``, including nested (loop, call, custom_vjp) jaxprs."""
    names = set()

    def visit(j):
        j = getattr(j, "jaxpr", j)  # ClosedJaxpr -> Jaxpr
        for eqn in j.eqns:
            names.add(eqn.primitive.name)
            for value in eqn.params.values():
                for v in value if isinstance(value, (tuple, list)) else (value,):
                    if hasattr(v, "eqns") or hasattr(getattr(v, "jaxpr", None), "eqns"):
                        visit(v)

    visit(jaxpr)
    return names


OPS = {
    "conv2d": (
        lambda x: js.conv2d(x, jnp.ones((3, 2, 3, 2)), stride=2, padding=1),
        (2, 2, 7, 9),
    ),
    "max_pool2d": (lambda x: js.max_pool2d(x, 3, 2, 1, dilation=(1, 2)), (2, 2, 7, 9)),
    "avg_pool2d": (lambda x: js.avg_pool2d(x, 3, 2, 1, ceil_mode=True), (2, 2, 7, 9)),
    "conv_transpose2d": (
        lambda x: js.conv_transpose2d(x, jnp.ones((2, 3, 3, 2)), None, 2, 1, 1),
        (2, 2, 4, 5),
    ),
    "conv2d_padding_mode": (
        lambda x: conv2d_as_layer(
            x, jnp.ones((3, 2, 3, 3)), None, 1, 1, 1, 1, op="Conv2d", padding_mode="reflect"
        ),
        (2, 2, 5, 6),
    ),
    "conv2d_nhwc": (
        lambda x: js.conv2d(x, jnp.ones((3, 2, 3, 2)), stride=2, padding=1, data_format="NHWC"),
        (2, 7, 9, 2),
    ),
    "conv_transpose2d_nhwc": (
        lambda x: js.conv_transpose2d(x, jnp.ones((2, 3, 3, 2)), None, 2, 1, 1, data_format="NHWC"),
        (2, 4, 5, 2),
    ),
    "conv2d_padding_mode_nhwc": (
        lambda x: conv2d_as_layer(
            x,
            jnp.ones((3, 2, 3, 3)),
            None,
            1,
            1,
            1,
            1,
            op="Conv2d",
            padding_mode="reflect",
            data_format="NHWC",
        ),  # fmt: skip
        (2, 5, 6, 2),
    ),
}


@pytest.mark.parametrize("op", OPS)
def test_no_oracle_primitives(op):
    fn, shape = OPS[op]
    x = jnp.ones(shape)
    for f in (fn, jax.grad(lambda x: jnp.sum(fn(x) ** 2))):
        jaxpr = jax.make_jaxpr(f)(x)
        names = _primitives(jaxpr)
        text = str(jaxpr)
        for bad in FORBIDDEN:
            assert not any(bad in n for n in names), (op, bad, names)
            assert bad not in text, (op, bad)
        # lax.fori_loop with static bounds is a ``scan`` (a ``while`` when traced bounds).
        assert names & {"while", "scan"}, (op, names)
