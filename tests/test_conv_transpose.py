"""``jspatial.conv_transpose2d`` against PyTorch CPU, ``lax.conv_transpose`` and the NumPy
scatter loops: values and gradients (input, weight, bias), jit and eager."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jspatial as js
from jspatial import reference
from tests.test_conv import FORBIDDEN, _primitives, to_nhwc, transposed_shapes
from tests.tolerances import assert_close, fast_jit

# (x shape, C_out per group, kernel, stride, padding, output_padding, groups, dilation, bias)
CASES = {
    "upsample_2x": ((2, 4, 4, 5), 3, 3, 2, 1, 1, 1, 1, True),
    "stride_1_no_bias": ((2, 3, 5, 4), 2, 3, 1, 0, 0, 1, 1, False),
    "rect_kernel_rect_stride": ((1, 3, 4, 5), 2, (3, 2), (2, 1), (1, 0), (1, 0), 1, 1, True),
    "stride_gt_kernel": ((2, 2, 3, 4), 3, 2, 3, 0, 2, 1, 1, True),
    "groups_2": ((2, 4, 5, 3), 3, 3, 2, 1, 0, 2, 1, True),
    "depthwise": ((1, 3, 4, 4), 1, 3, 2, 0, 1, 3, 1, True),
    "dilation_output_padding": ((1, 2, 4, 5), 2, 3, 1, 1, (1, 0), 1, (2, 1), True),
    "padding_crops_more_than_kernel": ((1, 2, 6, 6), 2, 2, 2, 2, 1, 1, 1, True),
}


def _random_cases(count, seed=0):
    """Random configurations that torch accepts (seeded, so failures reproduce)."""
    rng = np.random.default_rng(seed)
    cases = {}
    while len(cases) < count:
        groups = int(rng.choice([1, 1, 2]))
        kernel = tuple(int(k) for k in rng.integers(1, 4, 2))
        stride = tuple(int(s) for s in rng.integers(1, 4, 2))
        dilation = tuple(int(d) for d in rng.integers(1, 3, 2))
        out_pad = tuple(int(rng.integers(0, max(s, d))) for s, d in zip(stride, dilation))
        padding = tuple(int(rng.integers(0, 2)) for _ in range(2))
        shape = (int(rng.integers(1, 3)), groups * int(rng.integers(1, 3)), *rng.integers(2, 6, 2))
        sizes = [
            (h - 1) * s - 2 * p + d * (k - 1) + o + 1
            for h, s, p, d, k, o in zip(shape[2:], stride, padding, dilation, kernel, out_pad)
        ]
        if min(sizes) < 1:
            continue
        bias = bool(rng.integers(0, 2))
        cases[f"random_{len(cases)}"] = (
            tuple(int(v) for v in shape), int(rng.integers(1, 3)), kernel, stride, padding,
            out_pad, groups, dilation, bias,
        )  # fmt: skip
    return cases


CASES.update(_random_cases(5))


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def make_data(name, seed=0):
    shape, og, kernel, stride, padding, out_pad, groups, dilation, bias = CASES[name]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((shape[1], og, *_pair(kernel))).astype(np.float32) / 3
    b = rng.standard_normal(og * groups).astype(np.float32) if bias else None
    kwargs = dict(stride=stride, padding=padding, output_padding=out_pad, groups=groups,
                  dilation=dilation)  # fmt: skip
    return x, w, b, kwargs


def torch_results(torch, x, w, b, kwargs, cot_seed=1):
    F = torch.nn.functional
    tx, tw = (torch.tensor(a, requires_grad=True) for a in (x, w))
    tb = None if b is None else torch.tensor(b, requires_grad=True)
    y = F.conv_transpose2d(tx, tw, tb, **kwargs)
    cot = np.random.default_rng(cot_seed).standard_normal(tuple(y.shape)).astype(np.float32)
    y.backward(torch.tensor(cot))
    grads = [tx.grad, tw.grad] + ([] if tb is None else [tb.grad])
    return y.detach().numpy(), cot, [g.numpy() for g in grads]


@functools.cache
def js_runner(name):
    """The value and VJP of one case, jitted (cached: compiled once per case)."""
    *_, kwargs = make_data(name)
    has_bias = CASES[name][-1]

    def run(x, w, b, cot):
        if has_bias:
            y, pull = jax.vjp(lambda x, w, b: js.conv_transpose2d(x, w, b, **kwargs), x, w, b)
        else:
            y, pull = jax.vjp(lambda x, w: js.conv_transpose2d(x, w, **kwargs), x, w)
        return y, list(pull(cot))

    return fast_jit(run)


@pytest.mark.parametrize("name", CASES)
def test_matches_torch_values_and_gradients(torch, name):
    x, w, b, kwargs = make_data(name)
    y_ref, cot, grads_ref = torch_results(torch, x, w, b, kwargs)
    y, grads = js_runner(name)(x, w, b, cot)
    assert y.shape == y_ref.shape and y.dtype == jnp.float32
    assert_close(y, y_ref, err_msg="value")
    assert len(grads) == len(grads_ref)
    for g, g_ref, what in zip(grads, grads_ref, ("dx", "dw", "db")):
        assert g.shape == g_ref.shape
        assert_close(g, g_ref, err_msg=what)


def test_eager_equals_jit_and_torch(torch):
    x, w, b, kwargs = make_data("groups_2")
    y_ref, _, _ = torch_results(torch, x, w, b, kwargs)
    eager = js.conv_transpose2d(x, w, b, **kwargs)
    # torch's positional order: stride, padding, output_padding, groups, dilation
    positional = js.conv_transpose2d(
        x, w, b, kwargs["stride"], kwargs["padding"], kwargs["output_padding"],
        kwargs["groups"], kwargs["dilation"],
    )  # fmt: skip
    jitted = jax.jit(lambda x, w, b: js.conv_transpose2d(x, w, b, **kwargs))(x, w, b)
    for y in (eager, positional, jitted):
        assert_close(y, y_ref)


@pytest.mark.parametrize(
    "name", ["upsample_2x", "rect_kernel_rect_stride", "stride_gt_kernel", "depthwise"]
)
def test_nhwc_matches_torch_values_and_gradients(torch, name):
    x, w, b, kwargs = make_data(name)
    y_ref, cot, (dx_ref, *dparams_ref) = torch_results(torch, x, w, b, kwargs)

    def run(x, w, b, cot):
        y, pull = jax.vjp(
            lambda x, w, b: js.conv_transpose2d(x, w, b, **kwargs, data_format="NHWC"), x, w, b
        )
        return y, pull(cot)

    args = (w, np.zeros(w.shape[1] * kwargs["groups"], np.float32) if b is None else b)
    y, (dx, *dparams) = fast_jit(run)(to_nhwc(x), *args, to_nhwc(cot))
    assert y.shape == to_nhwc(y_ref).shape
    assert_close(y, to_nhwc(y_ref), err_msg="value")
    assert_close(dx, to_nhwc(dx_ref), err_msg="dx")
    for g, g_ref in zip(dparams, dparams_ref):  # weights stay (C_in, C_out / groups, kh, kw)
        assert_close(g, g_ref, err_msg="dw, db")


def test_nhwc_eager_and_unbatched(torch):
    x, w, b, kwargs = make_data("groups_2")
    y_ref, _, _ = torch_results(torch, x, w, b, kwargs)
    with jax.disable_jit():
        eager = js.conv_transpose2d(to_nhwc(x), w, b, **kwargs, data_format="NHWC")
    assert_close(eager, to_nhwc(y_ref))
    unbatched = js.conv_transpose2d(to_nhwc(x[0]), w, b, **kwargs, data_format="NHWC")
    assert unbatched.shape == to_nhwc(y_ref[0]).shape
    assert_close(unbatched, to_nhwc(y_ref[0]))


def test_nhwc_moves_no_activations():
    # The scatter loop writes the caller's channels-last array directly: no transpose of
    # the input, the output or their gradients (NCHW has them).
    x, w = jnp.ones((2, 4, 5, 3)), jnp.ones((3, 2, 3, 3))
    activations = {(2, 4, 5, 3), (2, 8, 10, 2), (2, 3, 4, 5), (2, 2, 8, 10)}
    for data_format, xin in (("NHWC", x), ("NCHW", jnp.transpose(x, (0, 3, 1, 2)))):

        def fn(x, w, data_format=data_format):
            return js.conv_transpose2d(x, w, None, 2, 1, 1, data_format=data_format)

        moved = transposed_shapes(fn, xin, w) & activations
        assert bool(moved) == (data_format == "NCHW"), (data_format, moved)


def test_nhwc_bad_data_format_and_channel_axis():
    with pytest.raises(ValueError, match=r"^conv_transpose2d data_format must be 'NCHW' or"):
        js.conv_transpose2d(jnp.ones((1, 4, 4, 2)), jnp.ones((2, 3, 3, 3)), data_format="CHWN")
    with pytest.raises(ValueError, match=r"^conv_transpose2d expected 2 input channels .* got 4"):
        js.conv_transpose2d(jnp.ones((1, 2, 2, 4)), jnp.ones((2, 3, 3, 3)), data_format="NHWC")


@pytest.mark.parametrize("name", ["upsample_2x", "rect_kernel_rect_stride", "groups_2"])
def test_matches_lax_conv_transpose(name):
    # XLA's oracle: an input-dilated convolution with the kernel flipped and transposed.
    x, w, b, kwargs = make_data(name)
    kernel, stride, pads, out_pads, dil = (
        w.shape[2:], *map(_pair, (kwargs["stride"], kwargs["padding"],
                                  kwargs["output_padding"], kwargs["dilation"])),
    )  # fmt: skip
    groups = kwargs["groups"]
    padding = [
        (d * (k - 1) - p, d * (k - 1) - p + o) for k, p, o, d in zip(kernel, pads, out_pads, dil)
    ]
    # lax.conv_transpose has no groups: run each group on its slice of channels.
    ci = w.shape[0] // groups
    expected = jnp.concatenate(
        [
            lax.conv_transpose(
                x[:, g * ci : (g + 1) * ci],
                w[g * ci : (g + 1) * ci],
                stride,
                padding,
                rhs_dilation=dil,
                dimension_numbers=("NCHW", "OIHW", "NCHW"),
                transpose_kernel=True,
                precision="highest",
            )  # fmt: skip
            for g in range(groups)
        ],
        axis=1,
    )
    expected = expected if b is None else expected + b[:, None, None]
    assert_close(js.conv_transpose2d(x, w, b, **kwargs), expected)


@pytest.mark.parametrize("name", ["upsample_2x", "groups_2", "dilation_output_padding"])
def test_reference_scatter_loops_match_torch(torch, name):
    x, w, b, kwargs = make_data(name)
    y_ref, _, _ = torch_results(torch, x, w, b, kwargs)
    assert_close(reference.conv_transpose2d(x, w, b, **kwargs), y_ref)


def test_is_the_input_gradient_of_conv2d():
    # The definition the module teaches: conv_transpose2d(g, w) = d/dz <conv2d(z, w), g>.
    x, w, _, kwargs = make_data("upsample_2x")
    y = js.conv_transpose2d(x, w, **kwargs)
    conv = functools.partial(js.conv2d, stride=kwargs["stride"], padding=kwargs["padding"])
    _, pull = jax.vjp(lambda z: conv(z, w), jnp.zeros(y.shape))
    assert_close(y, pull(x)[0])


def test_hand_computed_stamps():
    # Each input pixel stamps its value times the kernel, stride 2 apart: no overlap.
    x = jnp.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    y = js.conv_transpose2d(x, jnp.ones((1, 1, 2, 2)), stride=2)
    expected = np.kron(np.array([[1.0, 2.0], [3.0, 4.0]]), np.ones((2, 2)))
    np.testing.assert_array_equal(y[0, 0], expected)


def test_empty_batch_forward_and_backward():
    x, w, b = jnp.zeros((0, 4, 3, 5)), jnp.ones((4, 3, 3, 3)), jnp.ones((6,))
    y, pull = jax.vjp(lambda x, w, b: js.conv_transpose2d(x, w, b, 2, 1, 1, 2), x, w, b)
    assert y.shape == (0, 6, 6, 10)
    dx, dw, db = pull(jnp.ones(y.shape))
    assert dx.shape == x.shape
    np.testing.assert_array_equal(dw, np.zeros(w.shape))
    np.testing.assert_array_equal(db, np.zeros(b.shape))


def test_bfloat16_keeps_dtype():
    x, w, b, kwargs = make_data("upsample_2x")
    lo = [jnp.asarray(a, jnp.bfloat16) for a in (x, w, b)]
    y = js.conv_transpose2d(*lo, **kwargs)
    assert y.dtype == jnp.bfloat16
    y32 = js.conv_transpose2d(*(a.astype(jnp.float32) for a in lo), **kwargs)
    assert_close(y, y32, jnp.bfloat16, scale=2)


def test_loops_and_no_oracle_primitives_forward_and_backward():
    w = jnp.ones((2, 3, 3, 2))

    def fn(x, w):
        return js.conv_transpose2d(x, w, None, 2, 1, 1)

    x = jnp.ones((2, 2, 4, 5))
    for f in (fn, jax.grad(lambda x, w: jnp.sum(fn(x, w) ** 2), argnums=(0, 1))):
        jaxpr = jax.make_jaxpr(f)(x, w)
        names, text = _primitives(jaxpr), str(jaxpr)
        # (lax.conv_transpose is a conv_general_dilated, so FORBIDDEN covers it)
        for bad in FORBIDDEN:
            assert not any(bad in n for n in names) and bad not in text, bad
        assert names & {"while", "scan"}, names


X = jnp.ones((2, 4, 5, 5))
W = jnp.ones((4, 3, 3, 3))


@pytest.mark.parametrize(
    "call, err, match",
    [
        (lambda: js.conv_transpose2d(X, W, None, 2, 0, 2), ValueError,
         r"^conv_transpose2d output_padding must be smaller than either stride or dilation"),
        (lambda: js.conv_transpose2d(X, W, output_padding=1), ValueError,
         r"output_padding=\(1, 1\), stride=\(1, 1\), dilation=\(1, 1\)"),
        (lambda: js.conv_transpose2d(X, W, 2), TypeError,
         r"^conv_transpose2d bias must be an array of shape \(C_out,\) or None, got 2"),
        (lambda: js.conv_transpose2d(X, jnp.ones((3, 3, 3, 3))), ValueError,
         r"^conv_transpose2d expected 3 input channels .* got 4"),
        (lambda: js.conv_transpose2d(X, W, groups=3), ValueError,
         r"^conv_transpose2d groups=3 must divide in_channels=4$"),
        (lambda: js.conv_transpose2d(X, W, groups=0), ValueError,
         r"^conv_transpose2d groups must be a positive int, got 0"),
        (lambda: js.conv_transpose2d(X, W, jnp.ones((4,))), ValueError,
         r"^conv_transpose2d expected bias of shape \(3,\), got \(4,\)"),
        (lambda: js.conv_transpose2d(X, W, padding="same"), TypeError,
         r"^conv_transpose2d padding must be an int or a pair of ints"),
        (lambda: js.conv_transpose2d(X, W, padding=-1), ValueError,
         r"^conv_transpose2d padding must be >= 0"),
        (lambda: js.conv_transpose2d(X, jnp.ones((4, 3, 3))), ValueError,
         r"^conv_transpose2d expected 4D weight \(in_channels, out_channels // groups"),
        (lambda: js.conv_transpose2d(jnp.ones((5, 5)), W), ValueError,
         r"^conv_transpose2d expected 3D \(unbatched.* or 4D .*got 2D"),
        (lambda: js.conv_transpose2d(X.astype(jnp.int32), W), TypeError,
         r"^conv_transpose2d weight must have the dtype of the integer input"),
        (lambda: js.conv_transpose2d(X.astype(jnp.bool_), W), TypeError,
         r"^conv_transpose2d expected a floating-point or integer input"),
    ],
)  # fmt: skip
def test_errors(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_torch_tensor_input_is_refused(torch):
    with pytest.raises(TypeError, match=r"^conv_transpose2d input is a torch.Tensor"):
        js.conv_transpose2d(torch.ones(2, 4, 5, 5), W)


def test_output_size_too_small_matches_torch(torch):
    # torch: "Output size is too small"; padding 3 on a 5x5 input with a 3x3 kernel gives 1x1,
    # padding 4 gives -1.
    with pytest.raises(RuntimeError):
        torch.nn.functional.conv_transpose2d(torch.ones(2, 4, 5, 5), torch.ones(4, 3, 3, 3),
                                             padding=4)  # fmt: skip
    with pytest.raises(ValueError, match=r"output size \(-1, -1\) is too small"):
        js.conv_transpose2d(X, W, padding=4)
    assert js.conv_transpose2d(X, W, padding=3).shape == (2, 3, 1, 1)
