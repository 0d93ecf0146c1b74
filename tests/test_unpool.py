"""``max_unpool2d`` against PyTorch CPU: round trips with torch's own indices, gradients, errors."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jspatial as js
from tests.test_pool import forward_and_backward_primitives, to_nhwc
from tests.tolerances import assert_close, fast_jit

# name: (input shape of the pooling, kernel_size, stride, padding, pass output_size)
CONFIGS = {
    "k2_even": ((2, 3, 6, 8), 2, None, 0, False),
    "k2_odd_needs_output_size": ((2, 3, 7, 9), 2, None, 0, True),
    "k3_s2_p1_rect_odd": ((2, 2, 7, 9), 3, 2, 1, True),
    "k3x2_s1_overlapping": ((1, 2, 5, 6), (3, 2), 1, (1, 0), False),  # repeated indices
    "stride_gt_kernel": ((1, 2, 9, 7), 2, 3, 0, True),
}


def pooled(torch, name, seed=0):
    """Torch's ``max_pool2d`` of a random input: ``(x, y, indices as int32, cotangent)``."""
    shape, k, s, p, _ = CONFIGS[name]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    y, indices = torch.nn.functional.max_pool2d(torch.from_numpy(x), k, s, p, return_indices=True)
    cot = rng.standard_normal(shape).astype(np.float32)
    return x, y.numpy(), indices.numpy().astype(np.int32), cot


def unpool_args(name, data_format="NCHW"):
    shape, k, s, p, with_size = CONFIGS[name]
    if data_format == "NHWC":  # the full output_size is the pooling's input shape, channels last
        shape = (shape[0], *shape[2:], shape[1])
    return k, s, p, (shape if with_size else None)


def unpool_vjp(name, data_format="NCHW"):
    """``(y, indices, cot) -> (out, dy)``, the cotangent cropped to the output's shape."""
    args = unpool_args(name, data_format)

    def run(y, indices, cot):
        out, pull = jax.vjp(
            lambda y: js.max_unpool2d(y, indices, *args, data_format=data_format), y
        )
        return out, pull(cot[tuple(slice(0, n) for n in out.shape)])[0]

    return run


@functools.cache
def js_results(torch, name):
    _, y, indices, cot = pooled(torch, name)
    return tuple(np.asarray(a) for a in fast_jit(unpool_vjp(name))(y, indices, cot))


def torch_results(torch, name, y, indices, cot):
    ty = torch.tensor(y, requires_grad=True)
    t_indices = torch.from_numpy(indices.astype(np.int64))
    out = torch.nn.functional.max_unpool2d(ty, t_indices, *unpool_args(name))
    out.backward(torch.from_numpy(cot[tuple(slice(0, n) for n in out.shape)].copy()))
    return out.detach().numpy(), ty.grad.numpy()


@pytest.mark.parametrize("name", CONFIGS)
def test_matches_torch(torch, name):
    x, y, indices, cot = pooled(torch, name)
    out, dy = js_results(torch, name)
    t_out, t_dy = torch_results(torch, name, y, indices, cot)
    assert out.shape == t_out.shape
    assert_close(out, t_out, err_msg="value")
    assert_close(dy, t_dy, err_msg="dy")


@pytest.mark.parametrize(
    "name, eager", [(n, False) for n in CONFIGS] + [("k3_s2_p1_rect_odd", True)]
)
def test_nhwc_matches_torch(torch, name, eager):
    # Input and indices channels last, torch's flat h * W + w: to_nhwc of torch's result.
    x, y, indices, cot = pooled(torch, name)
    t_out, t_dy = torch_results(torch, name, y, indices, cot)
    run = unpool_vjp(name, "NHWC")
    nhwc = (to_nhwc(y), to_nhwc(indices), to_nhwc(cot))
    if eager:
        with jax.disable_jit():
            out, dy = run(*nhwc)
    else:
        out, dy = fast_jit(run)(*nhwc)
    assert out.shape == to_nhwc(t_out).shape
    assert_close(out, to_nhwc(t_out), err_msg="value")
    assert_close(dy, to_nhwc(t_dy), err_msg="dy")


def test_nhwc_round_trip_with_our_indices_and_unbatched(torch):
    F = torch.nn.functional
    x, y, indices, _ = pooled(torch, "k3_s2_p1_rect_odd")
    ours_y, ours_indices = js.max_pool2d(
        to_nhwc(x), 3, 2, 1, return_indices=True, data_format="NHWC"
    )
    np.testing.assert_array_equal(np.asarray(ours_indices), to_nhwc(indices))
    out = js.max_unpool2d(ours_y, ours_indices, 3, 2, 1, (7, 9), data_format="NHWC")
    expected = to_nhwc(
        F.max_unpool2d(
            torch.from_numpy(y), torch.from_numpy(indices.astype(np.int64)), 3, 2, 1, (7, 9)
        ).numpy()
    )
    np.testing.assert_array_equal(np.asarray(out), expected)
    # (H, W, C) is unbatched NHWC: a batch of one.
    one = js.max_unpool2d(ours_y[0], ours_indices[0], 3, 2, 1, (7, 9), data_format="NHWC")
    np.testing.assert_array_equal(np.asarray(one), expected[0])


def test_nhwc_empty_batch_and_out_of_range_indices_under_jit():
    y, indices = jnp.zeros((0, 2, 3, 3)), jnp.zeros((0, 2, 3, 3), jnp.int32)
    out, pull = jax.vjp(lambda y: js.max_unpool2d(y, indices, 2, data_format="NHWC"), y)
    assert out.shape == (0, 4, 6, 3)
    assert pull(out)[0].shape == y.shape
    # Two channels of one 1x2 plane: channel 1's value aimed outside the plane is dropped.
    x = jnp.array([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2): (N, H, W, C)
    i = jnp.array([[[[1, 99], [0, 3]]]])
    fn = jax.jit(lambda x, i: js.max_unpool2d(x, i, (1, 2), data_format="NHWC"))
    np.testing.assert_array_equal(fn(x, i), [[[[3.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 4.0]]]])


def test_nhwc_jaxpr_is_one_scatter_and_one_gather_without_transposes():
    indices = jnp.zeros((2, 3, 4, 2), jnp.int32)
    fn = lambda y: js.max_unpool2d(y, indices, 2, data_format="NHWC")  # noqa: E731
    forward, backward = forward_and_backward_primitives(fn, jnp.ones((2, 3, 4, 2)))
    assert "scatter" in forward and "gather" not in forward, forward
    assert "gather" in backward, backward
    assert "transpose" not in forward | backward, (forward, backward)


@pytest.mark.parametrize("name", ["k3_s2_p1_rect_odd", "k3x2_s1_overlapping"])
def test_round_trip_keeps_the_maxima(torch, name):
    # Unpooling puts every maximum back where it was, and zeros elsewhere.
    x, _, _, _ = pooled(torch, name)
    shape, k, s, p, _ = CONFIGS[name]
    y, indices = js.max_pool2d(x, k, s, p, return_indices=True)
    out = np.asarray(js.max_unpool2d(y, indices, k, s, p, output_size=shape))
    kept = out != 0
    np.testing.assert_array_equal(out[kept], x[kept])
    planes = np.asarray(indices).reshape(shape[0] * shape[1], -1)
    assert kept.sum() == sum(len(np.unique(plane)) for plane in planes)  # one cell per index


def test_eager_with_our_indices_matches_torch(torch):
    x, y, indices, cot = pooled(torch, "k3_s2_p1_rect_odd")
    ours_y, ours_indices = js.max_pool2d(x, 3, 2, 1, return_indices=True)
    np.testing.assert_array_equal(np.asarray(ours_indices), indices)
    out, pull = jax.vjp(lambda y: js.max_unpool2d(y, ours_indices, 3, 2, 1, x.shape), ours_y)
    t_out, t_dy = torch_results(torch, "k3_s2_p1_rect_odd", y, indices, cot)
    assert_close(out, t_out)
    assert_close(pull(jnp.asarray(cot))[0], t_dy)


def test_hand_computed_and_default_size():
    x = jnp.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    indices = jnp.array([[[[0, 3], [13, 10]]]])
    out = js.max_unpool2d(x, indices, 2)  # default (2 - 1) * 2 + 2 = 4
    expected = np.zeros(16)
    expected[[0, 3, 13, 10]] = [1.0, 2.0, 3.0, 4.0]
    np.testing.assert_array_equal(np.asarray(out).reshape(-1), expected)


def test_int64_indices_in_x64_mode(x64, torch):
    F = torch.nn.functional
    x = np.random.default_rng(2).standard_normal((1, 2, 5, 6))
    y, indices = js.max_pool2d(x, 2, return_indices=True)
    assert indices.dtype == jnp.int64 and y.dtype == jnp.float64
    out = js.max_unpool2d(y, indices, 2, output_size=(5, 6))
    t_y, t_indices = F.max_pool2d(torch.from_numpy(x), 2, return_indices=True)
    t_out = F.max_unpool2d(t_y, t_indices, 2, output_size=(5, 6))
    assert out.dtype == jnp.float64
    np.testing.assert_array_equal(np.asarray(out), t_out.numpy())


def test_empty_batch_forward_and_backward():
    y = jnp.zeros((0, 3, 2, 3))
    indices = jnp.zeros((0, 3, 2, 3), jnp.int32)
    out, pull = jax.vjp(lambda y: js.max_unpool2d(y, indices, 2), y)
    assert out.shape == (0, 3, 4, 6)
    assert pull(out)[0].shape == y.shape


def test_out_of_range_indices_under_jit_are_dropped():
    # Traced indices cannot be checked; values aimed outside the plane are not written.
    x = jnp.array([[[[1.0, 2.0]]]])
    out = jax.jit(lambda x, i: js.max_unpool2d(x, i, (1, 2)))(x, jnp.array([[[[1, 99]]]]))
    np.testing.assert_array_equal(out, [[[[0.0, 1.0, 0.0, 0.0]]]])


def test_jaxpr_is_one_scatter_and_one_gather():
    # Documented: no window loop; the forward is a scatter, its gradient a gather.
    indices = jnp.zeros((2, 2, 3, 4), jnp.int32)
    fn = lambda y: js.max_unpool2d(y, indices, 2)  # noqa: E731
    forward, backward = forward_and_backward_primitives(fn, jnp.ones((2, 2, 3, 4)))
    assert "scatter" in forward and "gather" not in forward, forward
    assert "gather" in backward, backward


# --------------------------------------------------------------------------- errors

Y = jnp.ones((1, 2, 3, 4))
IDX = jnp.zeros((1, 2, 3, 4), jnp.int32)
Y_NHWC, IDX_NHWC = Y.transpose(0, 2, 3, 1), IDX.transpose(0, 2, 3, 1)


@pytest.mark.parametrize(
    "args, kwargs, err, match",
    [
        ((Y, IDX[:, :1], 2), {}, ValueError, r"expected indices of the input's shape"),
        ((Y, IDX + 48, 2), {}, ValueError, r"found an invalid index 48: .* \[0, 48\)"),
        ((Y, IDX - 1, 2), {}, ValueError, r"found an invalid index -1"),
        ((Y, IDX.astype(jnp.float32), 2), {}, TypeError, r"expected integer indices"),
        (
            (Y, IDX, 2),
            {"output_size": (9, 8)},
            ValueError,
            r"output_size \(9, 8\) is invalid: dim 0 must be strictly between 4 and 8",
        ),
        ((Y, IDX, 2), {"output_size": 6}, TypeError, r"output_size must be \(H, W\)"),
        ((Y, IDX, 2), {"output_size": (1, 1, 6)}, TypeError, r"output_size must be \(H, W\)"),
        ((Y, IDX, 2, 1, 3), {}, ValueError, r"output size must be non-negative"),
        ((Y, IDX, 0), {}, ValueError, r"kernel_size must be positive"),
        ((Y, IDX, 2, 2, -1), {}, ValueError, r"padding must be >= 0"),
        ((Y[0, 0], IDX[0, 0], 2), {}, ValueError, r"expected 3D \(unbatched.* or 4D .*got 2D"),
    ],
)
def test_errors(args, kwargs, err, match):
    with pytest.raises(err, match=rf"^max_unpool2d {match}"):
        js.max_unpool2d(*args, **kwargs)


@pytest.mark.parametrize(
    "args, kwargs, err, match",
    [
        # The index range is one output plane, (2 * 3) * (2 * 4) = 48 cells, also channels last.
        ((Y_NHWC, IDX_NHWC + 48, 2), {}, ValueError, r"found an invalid index 48: .* \[0, 48\)"),
        ((Y_NHWC, IDX_NHWC[..., :1], 2), {}, ValueError, r"expected indices of the input's shape"),
        (
            (Y_NHWC, IDX_NHWC, 2),
            {"output_size": (1, 6, 11, 2)},  # (N, H, W, C): W = 11 is out of range, H = 6 fits
            ValueError,
            r"output_size \(1, 6, 11, 2\) is invalid: dim 1 must be strictly between 6 and 10",
        ),
        (
            (Y_NHWC, IDX_NHWC, 2),
            {"output_size": 6},
            TypeError,
            r"output_size must be \(H, W\) or a full \(N, H, W, C\) shape",
        ),
        ((jnp.ones((1, 2, 3, 0)), IDX_NHWC, 2), {}, ValueError, r"expected at least one channel"),
    ],
)
def test_nhwc_errors(args, kwargs, err, match):
    with pytest.raises(err, match=rf"^max_unpool2d {match}"):
        js.max_unpool2d(*args, **kwargs, data_format="NHWC")


def test_full_shape_and_pair_output_size_agree():
    out = js.max_unpool2d(Y, IDX, 2, output_size=(1, 2, 7, 9))
    assert out.shape == (1, 2, 7, 9)
    np.testing.assert_array_equal(out, js.max_unpool2d(Y, IDX, 2, output_size=[7, 9]))


def test_torch_tensors_are_refused(torch):
    with pytest.raises(TypeError, match=r"^max_unpool2d input is a torch.Tensor"):
        js.max_unpool2d(torch.ones(1, 2, 3, 4), IDX, 2)
    with pytest.raises(TypeError, match=r"^max_unpool2d indices is a torch.Tensor"):
        js.max_unpool2d(Y, torch.zeros(1, 2, 3, 4, dtype=torch.int64), 2)
