"""BatchNorm2d: parameters, training/evaluation, running statistics, dtypes, errors, PyTorch."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jspatial.layers import BatchNorm2d
from tests.layers.helpers import BF16_ATOL, assert_close, random_input

SHAPE = (4, 3, 5, 6)  # one shape for most tests: every new one is a new compilation


def batch(seed=0, scale=2.0, shift=3.0):
    return random_input(SHAPE, seed) * scale + shift


def moments(x):
    x = np.asarray(x, np.float64)
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))
    return mean, var, var * count / (count - 1)


# ---------------------------------------------------------------- construction


def test_parameters_and_statistics():
    bn = BatchNorm2d(16)
    assert isinstance(bn.weight, nnx.Param) and isinstance(bn.bias, nnx.Param)
    assert isinstance(bn.running_mean, nnx.BatchStat) and isinstance(bn.running_var, nnx.BatchStat)
    weight, bias = bn.parameters()
    np.testing.assert_array_equal(weight, np.ones(16))
    np.testing.assert_array_equal(bias, np.zeros(16))
    np.testing.assert_array_equal(bn.running_mean[...], np.zeros(16))
    np.testing.assert_array_equal(bn.running_var[...], np.ones(16))
    assert isinstance(bn.num_batches_tracked, nnx.BatchStat)
    count = bn.num_batches_tracked[...]
    assert count.shape == () and jnp.issubdtype(count.dtype, jnp.integer) and int(count) == 0
    assert bn.use_running_average is False
    assert (bn.eps, bn.momentum) == (1e-5, 0.1)


def test_affine_false_and_no_tracking():
    bn = BatchNorm2d(4, affine=False, track_running_stats=False)
    assert bn.weight is None and bn.bias is None and bn.parameters() == []
    assert bn.running_mean is None and bn.running_var is None and bn.num_batches_tracked is None
    assert nnx.state(bn, nnx.BatchStat) == nnx.State({})


# ---------------------------------------------------------------- training and evaluation


def test_training_normalises_each_channel():
    bn = BatchNorm2d(3)
    y = np.asarray(bn(batch()), np.float64)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.std(axis=(0, 2, 3)), 1.0, atol=1e-4)


def test_training_moves_running_statistics_with_momentum():
    bn = BatchNorm2d(3)
    x1, x2 = batch(0), batch(1, scale=0.5, shift=-1.0)
    m1, _, u1 = moments(x1)
    m2, _, u2 = moments(x2)
    bn(x1)
    assert_close(bn.running_mean[...], 0.1 * m1, atol=1e-6, rtol=1e-6)
    assert_close(bn.running_var[...], 0.9 * 1.0 + 0.1 * u1, atol=1e-6, rtol=1e-6)
    bn(x2)
    assert_close(bn.running_mean[...], 0.9 * 0.1 * m1 + 0.1 * m2, atol=1e-6, rtol=1e-6)
    assert_close(bn.running_var[...], 0.9 * (0.9 + 0.1 * u1) + 0.1 * u2, atol=1e-6, rtol=1e-6)


def test_custom_momentum():
    bn = BatchNorm2d(3, momentum=0.25)
    x = batch()
    mean, _, unbiased = moments(x)
    bn(x)
    assert_close(bn.running_mean[...], 0.25 * mean, atol=1e-6, rtol=1e-6)
    assert_close(bn.running_var[...], 0.75 + 0.25 * unbiased, atol=1e-6, rtol=1e-6)


def test_eval_uses_running_statistics_and_leaves_them_untouched():
    bn = BatchNorm2d(3)
    bn.running_mean[...] = jnp.array([1.0, -2.0, 0.5])
    bn.running_var[...] = jnp.array([4.0, 0.25, 1.0])
    bn.weight[...] = jnp.array([2.0, 1.0, -1.0])
    bn.bias[...] = jnp.array([0.0, 1.0, 3.0])
    bn.eval()
    assert bn.use_running_average is True
    x = batch()
    y = bn(x)
    per_channel = lambda v: np.asarray(v)[None, :, None, None]  # noqa: E731
    expected = (np.asarray(x) - per_channel([1.0, -2.0, 0.5])) / np.sqrt(
        per_channel([4.0, 0.25, 1.0]) + 1e-5
    ) * per_channel([2.0, 1.0, -1.0]) + per_channel([0.0, 1.0, 3.0])
    assert_close(y, expected)
    np.testing.assert_array_equal(bn.running_mean[...], [1.0, -2.0, 0.5])
    np.testing.assert_array_equal(bn.running_var[...], [4.0, 0.25, 1.0])
    bn.train()
    assert bn.use_running_average is False


def test_call_override_of_the_mode():
    bn = BatchNorm2d(3)
    x = batch()
    bn(x, use_running_average=True)  # training-mode layer, evaluated once
    np.testing.assert_array_equal(bn.running_mean[...], np.zeros(3))
    bn.eval()
    bn(x, use_running_average=False)  # eval-mode layer, trained once
    assert np.all(np.asarray(bn.running_mean[...]) != 0)
    assert bn.use_running_average is True  # the override does not stick


def test_constant_input_is_finite():
    bn = BatchNorm2d(3)
    y = bn(jnp.full(SHAPE, 7.0))
    assert np.isfinite(np.asarray(y)).all()
    # Zero deviation, times weight 1, plus bias 0; up to the rounding of the mean
    # (a few ulps of 7), magnified by 1 / sqrt(eps) = 316.
    np.testing.assert_allclose(y, 0.0, atol=1e-3)
    assert_close(bn.running_mean[...], 0.7, atol=1e-6, rtol=1e-6)
    assert_close(bn.running_var[...], 0.9, atol=1e-6, rtol=1e-6)


def test_without_running_statistics_batch_statistics_are_used_in_both_modes():
    bn = BatchNorm2d(3, track_running_stats=False)
    x = batch()
    y_train = bn(x)
    bn.eval()
    np.testing.assert_array_equal(bn(x), y_train)


def test_running_statistics_update_inside_jit():
    bn = BatchNorm2d(3)
    x = batch()

    @nnx.jit
    def forward(bn, x):
        return bn(x)

    forward(bn, x)
    mean, _, unbiased = moments(x)
    assert_close(bn.running_mean[...], 0.1 * mean, atol=1e-6, rtol=1e-6)
    assert_close(bn.running_var[...], 0.9 + 0.1 * unbiased, atol=1e-6, rtol=1e-6)
    bn.eval()
    before = np.array(bn.running_mean[...])
    forward(bn, x)  # re-traced for the new mode, which is static
    np.testing.assert_array_equal(bn.running_mean[...], before)


# ---------------------------------------------------------------- dtypes


def test_bfloat16_compute_keeps_float32_statistics():
    bn = BatchNorm2d(3, dtype=jnp.bfloat16)
    x = batch()
    y = bn(x)
    assert y.dtype == jnp.bfloat16
    assert bn.running_mean[...].dtype == jnp.float32 and bn.running_var[...].dtype == jnp.float32
    assert bn.weight[...].dtype == jnp.float32
    reference = BatchNorm2d(3)
    assert_close(y, reference(x), atol=BF16_ATOL, rtol=BF16_ATOL)
    # The statistics come from the bfloat16 input, gathered in float32.
    assert_close(bn.running_mean[...], reference.running_mean[...], atol=1e-2, rtol=1e-2)


def test_bfloat16_input_without_dtype():
    bn = BatchNorm2d(3)
    y = bn(batch().astype(jnp.bfloat16))
    assert y.dtype == jnp.bfloat16 and bn.running_var[...].dtype == jnp.float32


# ---------------------------------------------------------------- errors


def test_channel_mismatch():
    with pytest.raises(
        ValueError, match=r"^BatchNorm2d channel mismatch: expected 16 channels, got 8"
    ):
        BatchNorm2d(16)(jnp.ones((2, 8, 4, 4)))


def test_input_errors():
    bn = BatchNorm2d(3)
    with pytest.raises(
        ValueError,
        match=r"^BatchNorm2d expected 4D input \(batch, channels, height, width\), got 3D: "
        r"\(3, 4, 4\)$",
    ):
        bn(jnp.ones((3, 4, 4)))
    with pytest.raises(TypeError, match=r"^BatchNorm2d expected floating-point input"):
        bn(jnp.ones((2, 3, 4, 4), jnp.int32))
    with pytest.raises(
        ValueError, match=r"^BatchNorm2d expected more than 1 value per channel when training"
    ):
        bn(jnp.ones((1, 3, 1, 1)))
    with pytest.raises(TypeError, match=r"^BatchNorm2d use_running_average must be a bool"):
        bn(jnp.ones((2, 3, 4, 4)), use_running_average="yes")


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        ((0,), {}, ValueError, r"^BatchNorm2d num_features must be a positive int, got 0$"),
        ((3.0,), {}, TypeError, r"^BatchNorm2d num_features must be a positive int, got 3.0$"),
        ((3,), {"eps": 0.0}, ValueError, r"^BatchNorm2d eps must be a positive number, got 0.0$"),
        ((3,), {"momentum": "0.1"}, TypeError,
         r"^BatchNorm2d momentum must be a number, got '0.1'"),
        ((3,), {"affine": 1}, TypeError, r"^BatchNorm2d affine must be a bool, got 1 \(int\)$"),
        ((3,), {"track_running_stats": "no"}, TypeError,
         r"^BatchNorm2d track_running_stats must be a bool"),
    ],
)  # fmt: skip
def test_constructor_errors(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        BatchNorm2d(*args, **kwargs)


def test_repr():
    assert repr(BatchNorm2d(16)) == (
        "BatchNorm2d(16, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)"
    )
    # affine and track_running_stats are positional, as in PyTorch.
    assert repr(BatchNorm2d(8, 1e-3, None, False, False)) == (
        "BatchNorm2d(8, eps=0.001, momentum=None, affine=False, bias=False, "
        "track_running_stats=False)"
    )


def test_bias_false_keeps_weight_only():
    bn = BatchNorm2d(3, bias=False)
    assert bn.bias is None and [n for n, _ in bn.named_parameters()] == ["weight"]
    with pytest.raises(TypeError, match=r"^BatchNorm2d bias must be a bool"):
        BatchNorm2d(3, bias=None)


# ---------------------------------------------------------------- PyTorch


def copy_affine(torch, reference, ours):
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        ours.weight[...] = jnp.asarray(reference.weight.numpy())
        if reference.bias is not None:
            reference.bias.uniform_(-1, 1)
            ours.bias[...] = jnp.asarray(reference.bias.numpy())


@pytest.mark.parametrize(
    "config",
    [
        {"eps": 1e-5, "momentum": 0.1},
        {"eps": 1e-3, "momentum": 0.3},
        {"eps": 1e-5, "momentum": None},
        {"eps": 1e-5, "momentum": 0.1, "affine": False},
        {"eps": 1e-5, "momentum": 0.1, "bias": False},
        {"eps": 1e-5, "momentum": 0.1, "track_running_stats": False},
    ],
)
def test_matches_torch_in_train_and_eval(config):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    reference = torch.nn.BatchNorm2d(3, **config)
    ours = BatchNorm2d(3, **config)
    if reference.affine:
        copy_affine(torch, reference, ours)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in reference.named_parameters()]
    for step in range(3):  # training mode: the running averages compound
        x = np.array(batch(step, scale=1 + step, shift=step))  # writable, for torch.from_numpy
        assert_close(ours(jnp.asarray(x)), reference(torch.from_numpy(x)).detach().numpy())
    if reference.track_running_stats:
        assert_close(ours.running_mean[...], reference.running_mean.numpy())
        assert_close(ours.running_var[...], reference.running_var.numpy())
        assert int(ours.num_batches_tracked[...]) == int(reference.num_batches_tracked) == 3
    assert repr(ours) == repr(reference)
    reference.eval()
    ours.eval()
    x = np.array(batch(5))
    assert_close(ours(jnp.asarray(x)), reference(torch.from_numpy(x)).detach().numpy())
    if reference.track_running_stats:
        assert int(ours.num_batches_tracked[...]) == 3  # evaluation does not count


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_cumulative_average_compiles_once(jit):
    """momentum=None: the factor 1 / num_batches_tracked is a traced value (inside
    nnx.jit) or an array (eager), so every step reuses the first step's compilation;
    the results are PyTorch's."""
    torch = pytest.importorskip("torch")
    from jspatial import norm

    reference = torch.nn.BatchNorm2d(3, momentum=None)
    ours = BatchNorm2d(3, momentum=None)
    copy_affine(torch, reference, ours)
    traces = []

    def step(bn, x):
        traces.append(1)  # runs once per trace
        return bn(x)

    step = nnx.jit(step) if jit else step
    compiled = norm._running_stats_traced._cache_size()
    for i in range(4):
        x = np.array(batch(i, scale=1 + i, shift=-i))
        assert_close(step(ours, jnp.asarray(x)), reference(torch.from_numpy(x)).detach().numpy())
    assert len(traces) == (1 if jit else 4)
    assert norm._running_stats_traced._cache_size() - compiled <= 1  # eager: one new entry at most
    assert int(ours.num_batches_tracked[...]) == 4
    assert_close(ours.running_mean[...], reference.running_mean.numpy())
    assert_close(ours.running_var[...], reference.running_var.numpy())


def test_num_batches_tracked_counts_training_calls_only():
    bn = BatchNorm2d(3)
    x = batch()
    bn(x)
    bn(x, use_running_average=True)  # evaluated once: not counted
    bn(x)
    assert int(bn.num_batches_tracked[...]) == 2
    bn.eval()
    bn(x)
    assert int(bn.num_batches_tracked[...]) == 2


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_empty_batch_as_torch(train):
    """N == 0: an empty output in both modes; training counts the batch but leaves the
    running statistics where they were, as PyTorch does."""
    torch = pytest.importorskip("torch")
    reference, ours = torch.nn.BatchNorm2d(3), BatchNorm2d(3)
    ours.running_mean[...] = jnp.array([1.0, 2.0, 3.0])
    with torch.no_grad():
        reference.running_mean.copy_(torch.tensor([1.0, 2.0, 3.0]))
    if not train:
        reference.eval()
        ours.eval()
    x = np.zeros((0, 3, 4, 4), np.float32)
    y = ours(jnp.asarray(x))
    assert y.shape == tuple(reference(torch.from_numpy(x)).shape) == (0, 3, 4, 4)
    assert int(ours.num_batches_tracked[...]) == int(reference.num_batches_tracked) == int(train)
    np.testing.assert_array_equal(ours.running_mean[...], reference.running_mean.numpy())
    np.testing.assert_array_equal(ours.running_var[...], reference.running_var.numpy())
    grads = nnx.grad(lambda bn: jnp.sum(bn(jnp.asarray(x))))(ours)
    for _, g in nnx.to_flat_state(grads):
        np.testing.assert_array_equal(g[...], 0.0)


def test_torch_tensor_and_nested_list_inputs():
    torch = pytest.importorskip("torch")
    bn = BatchNorm2d(3)
    with pytest.raises(TypeError, match=r"^BatchNorm2d input is a torch.Tensor; .*jnp.asarray"):
        bn(torch.ones(2, 3, 4, 4))
    assert int(bn.num_batches_tracked[...]) == 0  # a refused call counts nothing
    x = batch()
    assert_close(bn(np.asarray(x).tolist()), BatchNorm2d(3)(x))


# ---------------------------------------------------------------- channels last (NHWC)


@pytest.mark.parametrize(
    "layer, shape",
    [("BatchNorm2d", SHAPE), ("BatchNorm1d", (6, 3)), ("BatchNorm1d", (4, 3, 5))],
    ids=["2d", "1d_features", "1d_sequence"],
)
def test_nhwc_matches_torch_and_keeps_the_state_dict(layer, shape):
    """``data_format='NHWC'`` takes channels last and gives torch's output moved there; the
    parameters and running statistics (and so the state dict) are those of NCHW, and a torch
    state dict loads into it and back unchanged."""
    torch = pytest.importorskip("torch")
    from jspatial import layers
    from jspatial.layers import load_torch_state_dict, to_torch_state_dict

    reference = getattr(torch.nn, layer)(3, momentum=0.3)
    ours = getattr(layers, layer)(3, momentum=0.3, data_format="NHWC")
    copy_affine(torch, reference, ours)
    last = lambda a: np.moveaxis(np.asarray(a), 1, -1)  # noqa: E731
    for step in range(2):
        x = np.array(random_input(shape, step)) * (1 + step) + step
        y = ours(jnp.asarray(last(x)))
        assert_close(y, last(reference(torch.from_numpy(x)).detach().numpy()))
    assert_close(ours.running_mean[...], reference.running_mean.numpy())
    assert_close(ours.running_var[...], reference.running_var.numpy())
    reference.eval()
    ours.eval()
    x = np.array(random_input(shape, 9))
    assert_close(ours(jnp.asarray(last(x))), last(reference(torch.from_numpy(x)).detach().numpy()))
    state = to_torch_state_dict(ours)
    assert sorted(state) == sorted(reference.state_dict())
    fresh = getattr(layers, layer)(3, data_format="NHWC")
    load_torch_state_dict(fresh, reference.state_dict())
    for name, value in to_torch_state_dict(fresh).items():
        np.testing.assert_array_equal(np.asarray(value), reference.state_dict()[name].numpy())
    assert repr(ours) == repr(reference)[:-1] + ", data_format=NHWC)"


def test_nhwc_under_nnx_jit_and_errors():
    bn = BatchNorm2d(3, data_format="NHWC")
    x = jnp.moveaxis(batch(), 1, -1)
    y = nnx.jit(lambda bn, x: bn(x))(bn, x)
    assert_close(y, jnp.moveaxis(BatchNorm2d(3)(batch()), 1, -1))
    assert int(bn.num_batches_tracked[...]) == 1
    with pytest.raises(ValueError, match=r"^BatchNorm2d channel mismatch: expected 3 channels"):
        bn(batch())  # NCHW input to an NHWC layer: the last axis is not 3
    with pytest.raises(
        ValueError, match=r"^BatchNorm2d expected 4D input \(batch, height, width, channels\)"
    ):
        bn(jnp.ones((4, 3)))
    with pytest.raises(ValueError, match=r"^BatchNorm2d data_format must be 'NCHW' or 'NHWC'"):
        BatchNorm2d(3, data_format="channels_last")
