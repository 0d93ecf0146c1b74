"""``jspatial.pad`` against ``torch.nn.functional.pad``: every mode, negative amounts
(crops), values and gradients, jit and eager, and the errors torch raises."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jspatial as js
from tests.test_conv import FORBIDDEN, _primitives
from tests.tolerances import assert_close

X = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)

PADS = {
    "constant": [(1, 2, 3, 0), (2, -1, 0, 1), (-1, 2, -2, 1), (1, 1), (-4, 6, 0, 0), (0, 0, 0, 0)],
    "reflect": [(1, 2, 3, 0), (4, 4, 3, 3), (2, -1, 0, 1), (-1, 2, -2, 1), (-4, 3, 0, 0)],
    "replicate": [(1, 2, 3, 0), (6, 7, 5, 2), (2, -1, 0, 1), (-1, 2, -2, 1), (-5, 2, 0, 0)],
    "circular": [(1, 2, 3, 0), (5, 5, 4, 4), (2, -1, 0, 1), (-1, 2, -2, 1)],
}
CASES = [(mode, pad) for mode, pads in PADS.items() for pad in pads]


def _ids(case):
    return f"{case[0]}-{'_'.join(map(str, case[1]))}"


@pytest.mark.parametrize("case", CASES, ids=map(_ids, CASES))
def test_matches_torch_values_and_gradients(torch, case):
    mode, pad = case
    tx = torch.tensor(X, requires_grad=True)
    ty = torch.nn.functional.pad(tx, pad, mode=mode)
    cot = np.random.default_rng(1).standard_normal(tuple(ty.shape)).astype(np.float32)
    ty.backward(torch.tensor(cot))

    y, pull = jax.vjp(lambda x: js.pad(x, pad, mode), X)
    assert y.shape == tuple(ty.shape) and y.dtype == jnp.float32
    np.testing.assert_array_equal(y, ty.detach().numpy())  # copies: exact
    assert_close(pull(cot)[0], tx.grad.numpy())


NHWC_CASES = [
    ("constant", (1, 2, 3, 0)), ("reflect", (2, -1, 0, 1)), ("replicate", (-1, 2, -2, 1)),
    ("circular", (1, 2, 3, 0)), ("constant", (1, 0, 2, 1, 1, 1)), ("constant", (1, 1)),
]  # fmt: skip


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("case", NHWC_CASES, ids=map(_ids, NHWC_CASES))
def test_nhwc_pads_the_nchw_axes(torch, case, batched):
    """``pad(to_nhwc(x), pad, data_format='NHWC') == to_nhwc(pad(x, pad))``: the amounts
    keep their NCHW axes (W, H, then C); torch's values and gradients, jit and eager."""
    mode, pad = case
    x = X if batched else X[0]
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.pad(tx, pad, mode=mode)
    cot = np.random.default_rng(1).standard_normal(tuple(ty.shape)).astype(np.float32)
    ty.backward(torch.tensor(cot))
    nhwc = lambda a: np.moveaxis(np.asarray(a), -3, -1)  # noqa: E731

    def f(x):
        return js.pad(x, pad, mode, data_format="NHWC")

    y, pull = jax.vjp(jax.jit(f), nhwc(x))
    np.testing.assert_array_equal(y, nhwc(ty.detach()))
    assert_close(pull(nhwc(cot))[0], nhwc(tx.grad))
    with jax.disable_jit():
        np.testing.assert_array_equal(f(nhwc(x)), nhwc(ty.detach()))


@pytest.mark.parametrize(
    "call, err, match",
    [
        (lambda: js.pad(X, (1, 1), data_format="nchw"), ValueError,
         r"^pad data_format must be 'NCHW' or 'NHWC', got 'nchw'"),
        (lambda: js.pad(X[0, 0], (1, 1), data_format="NHWC"), ValueError,
         r"^pad data_format='NHWC' needs a 4D \(batch, height, width, channels\) or 3D "
         r"\(height, width, channels\) input, got 2D"),
        (lambda: js.pad(jnp.ones((1, 5, 4, 2)), (4, 0, 0, 0), "reflect", data_format="NHWC"),
         ValueError, r"^pad reflect padding must be smaller than the input width 4"),
    ],
)  # fmt: skip
def test_nhwc_errors(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_constant_value_jit_and_eager(torch):
    expected = torch.nn.functional.pad(torch.tensor(X), (2, 1, 0, 3), value=-1.5).numpy()
    eager = js.pad(X, (2, 1, 0, 3), "constant", -1.5)
    jitted = jax.jit(lambda x: js.pad(x, (2, 1, 0, 3), value=-1.5))(X)
    np.testing.assert_array_equal(eager, expected)
    np.testing.assert_array_equal(jitted, expected)


@pytest.mark.parametrize("mode", list(PADS))
@pytest.mark.parametrize(
    "shape, pad",
    [((3, 5), (2, 1)), ((2, 3, 5), (-1, 2)), ((3, 4, 5), (1, 2, 3, 0)),
     ((2, 1, 3, 4, 5), (1, 0, 2, 1, 1, 2)), ((1, 3, 4, 5), (0, 1, 2, -1, 1, 1))],
)  # fmt: skip
def test_other_ranks_as_torch(torch, mode, shape, pad):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    expected = torch.nn.functional.pad(torch.tensor(x), pad, mode).numpy()
    np.testing.assert_array_equal(js.pad(x, pad, mode), expected)


def test_constant_pads_any_trailing_axes(torch):
    x = np.arange(24.0, dtype=np.float32).reshape(2, 3, 4)
    for pad in [(1, 1, 1, 1, 1, 1), (0, 0, -1, 1, 2, 0), (1, 2)]:
        expected = torch.nn.functional.pad(torch.tensor(x), pad, value=7.0).numpy()
        np.testing.assert_array_equal(js.pad(x, pad, value=7.0), expected)


def test_keeps_dtype_and_empty_batch(torch):
    x = jnp.arange(12, dtype=jnp.int32).reshape(1, 1, 3, 4)
    y = js.pad(x, (1, 1, 1, 1), "reflect")
    assert y.dtype == jnp.int32
    expected = torch.nn.functional.pad(torch.tensor(np.asarray(x)), (1, 1, 1, 1), "reflect")
    np.testing.assert_array_equal(y, expected.numpy())
    assert js.pad(jnp.ones((2, 1, 3, 3), jnp.bfloat16), (1, 1, 1, 1)).dtype == jnp.bfloat16
    empty, pull = jax.vjp(lambda x: js.pad(x, (1, 2, 3, 4), "circular"), jnp.zeros((0, 2, 4, 4)))
    assert empty.shape == (0, 2, 11, 7)
    assert pull(empty)[0].shape == (0, 2, 4, 4)


@pytest.mark.parametrize("mode", list(PADS))
def test_slices_only_no_window_primitives(mode):
    def f(x):
        return js.pad(x, (2, -1, 1, 2), mode)

    x = jnp.ones((1, 2, 4, 5))
    forward = jax.make_jaxpr(f)(x)
    backward = jax.make_jaxpr(jax.grad(lambda x: jnp.sum(f(x) ** 2)))(x)
    for jaxpr in (forward, backward):
        names = _primitives(jaxpr)
        for bad in FORBIDDEN:
            assert not any(bad in n for n in names), (bad, names)
    # Written with slices: the forward uses no padding primitive at all.
    assert "pad" not in _primitives(forward), _primitives(forward)


@pytest.mark.parametrize(
    "call, err, match",
    [
        (lambda: js.pad(X, (5, 0, 0, 0), "reflect"), ValueError,
         r"^pad reflect padding must be smaller than the input width 5, got \(5, 0\)"),
        (lambda: js.pad(X, (0, 0, 0, 4), "reflect"), ValueError,
         r"^pad reflect padding must be smaller than the input height 4"),
        (lambda: js.pad(X, (6, 0, 0, 0), "circular"), ValueError,
         r"^pad circular padding \(6, 0\) wraps around more than once"),
        (lambda: js.pad(X, (1, 1, 1, 1), "symmetric"), ValueError,
         r"^pad mode must be one of \('constant', 'reflect', 'replicate', 'circular'\)"),
        (lambda: js.pad(X, (1, 1, 1, 1), "reflect", 1.0), ValueError,
         r"^pad mode 'reflect' does not take a value"),
        (lambda: js.pad(X, (1, 1, 1)), ValueError, r"^pad pad must hold pairs .* got 3"),
        (lambda: js.pad(X, (1,) * 10), ValueError, r"pads 5 axes, more than the 4"),
        (lambda: js.pad(X, (1, 1), "reflect"), ValueError,
         r"^pad mode 'reflect' pads the last 1, 2 or 3 axes .* got 2 pad values for a 4D"),
        (lambda: js.pad(X, (1.5, 1)), TypeError, r"^pad pad must be an int"),
        (lambda: js.pad(X, 1), TypeError, r"^pad pad must be a tuple"),
        (lambda: js.pad(X, (-3, -3)), ValueError, r"^pad width 5 with padding \(-3, -3\)"),
        (lambda: js.pad(X[0, 0, 0], (1, 1), "circular"), ValueError,
         r"^pad mode 'circular' pads .* for a 1D input"),
        (lambda: js.pad(jnp.ones((1, 1, 0, 2)), (0, 0, 1, 1), "replicate"), ValueError,
         r"^pad replicate padding needs a non-empty height"),
    ],
)  # fmt: skip
def test_errors(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_torch_tensor_input_is_refused(torch):
    with pytest.raises(TypeError, match=r"^pad input is a torch.Tensor"):
        js.pad(torch.ones(1, 1, 2, 2), (1, 1))


@pytest.mark.parametrize(
    "mode, pad",
    [
        ("reflect", (5, 0, 0, 0)),
        ("circular", (6, 0, 0, 0)),
        ("constant", (1, 1, 1)),
        ("reflect", (1, 1)),
        ("constant", (1,) * 10),
    ],
)
def test_torch_rejects_the_same_calls(torch, mode, pad):
    with pytest.raises((RuntimeError, ValueError)):
        torch.nn.functional.pad(torch.tensor(X), pad, mode=mode)


@pytest.mark.parametrize("mode", list(PADS))
@pytest.mark.parametrize("dtype", ["bool", "complex64"])
def test_bool_and_complex_as_torch(torch, mode, dtype):
    # The parity table's "any dtype": torch pads complex input in every mode and bool input
    # in constant and circular mode; its reflect and replicate kernels refuse bool, which
    # jspatial pads as it pads uint8 (the difference the parity table lists).
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 4, 5)) + (1j * rng.standard_normal((2, 3, 4, 5)))
    x = (x.real > 0) if dtype == "bool" else x.astype(np.complex64)
    pad = (1, 2, 2, 1)
    if dtype == "bool" and mode in ("reflect", "replicate"):
        with pytest.raises(RuntimeError):
            torch.nn.functional.pad(torch.tensor(x), pad, mode)
        expected = torch.nn.functional.pad(torch.tensor(x.astype(np.uint8)), pad, mode)
        expected = expected.numpy().astype(bool)
    else:
        expected = torch.nn.functional.pad(torch.tensor(x), pad, mode).numpy()
    y = js.pad(x, pad, mode)
    assert y.dtype == expected.dtype
    np.testing.assert_array_equal(np.asarray(y), expected)
