"""The argument normaliser ``jspatial._args`` on its own."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jspatial import _args

# ----------------------------------------------------------------------------- pair


@pytest.mark.parametrize(
    "value, expected",
    [
        (3, (3, 3)),
        ((2, 5), (2, 5)),
        ([4, 1], (4, 1)),
        (np.int64(2), (2, 2)),
        ((np.int32(1), np.int64(7)), (1, 7)),
    ],
)
def test_pair_accepts_ints_and_pairs(value, expected):
    result = _args.pair(value, "conv2d", "stride")
    assert result == expected
    assert all(type(v) is int for v in result)


@pytest.mark.parametrize(
    "value",
    [True, np.bool_(True), 2.0, "3", None, (1, 2.0), (True, 1), ((1, 1), (1, 1)), jnp.float32(2)],
)
def test_pair_rejects_non_ints_with_type_error(value):
    with pytest.raises(TypeError, match=r"conv2d stride must be an int or a pair of ints, got"):
        _args.pair(value, "conv2d", "stride")


@pytest.mark.parametrize("value", [(), (1, 2, 3), [1, 2, 3, 4]])  # (1,) is torch's (1, 1)
def test_pair_rejects_wrong_length_with_value_error(value):
    with pytest.raises(ValueError, match=rf"max_pool2d kernel_size .* got {len(value)} values"):
        _args.pair(value, "max_pool2d", "kernel_size")


@pytest.mark.parametrize("value", [0, -1, (1, 0), (0, 3)])
def test_pair_minimum_one_by_default(value):
    with pytest.raises(ValueError, match=r"conv2d dilation must be positive, got"):
        _args.pair(value, "conv2d", "dilation")


def test_pair_custom_minimum():
    assert _args.pair(0, "conv2d", "padding", minimum=0) == (0, 0)
    with pytest.raises(ValueError, match=r"conv2d padding must be >= 0, got -1"):
        _args.pair(-1, "conv2d", "padding", minimum=0)
    with pytest.raises(ValueError, match=r"must be >= 2, got \(2, 1\)"):
        _args.pair((2, 1), "op", "x", minimum=2)


# ---------------------------------------------------------------------- conv_padding


def _pad(padding, kernel=(3, 3), stride=(1, 1), dilation=(1, 1)):
    return _args.conv_padding(padding, kernel, stride, dilation, "conv2d")


@pytest.mark.parametrize(
    "padding, expected",
    [
        (0, ((0, 0), (0, 0))),
        (2, ((2, 2), (2, 2))),
        ((1, 2), ((1, 1), (2, 2))),
        ([0, 3], ((0, 0), (3, 3))),
        (((1, 0), (2, 1)), ((1, 0), (2, 1))),
        ([[0, 2], [3, 0]], ((0, 2), (3, 0))),
        (np.int64(1), ((1, 1), (1, 1))),
        ("valid", ((0, 0), (0, 0))),
        ("VALID", ((0, 0), (0, 0))),
    ],
)
def test_conv_padding_forms(padding, expected):
    assert _pad(padding) == expected


@pytest.mark.parametrize(
    "kernel, dilation, expected",
    [
        ((3, 3), (1, 1), ((1, 1), (1, 1))),  # odd: symmetric
        ((5, 1), (1, 1), ((2, 2), (0, 0))),
        ((3, 3), (2, 3), ((2, 2), (3, 3))),  # dilated odd: d * (k - 1) / 2
        # Even kernels: total // 2 on top/left, the rest bottom/right (PyTorch's
        # choice; test_conv checks the outputs against torch's padding='same').
        ((4, 4), (1, 1), ((1, 2), (1, 2))),
        ((2, 4), (1, 1), ((0, 1), (1, 2))),
        ((4, 2), (2, 3), ((3, 3), (1, 2))),  # even kernel, dilation makes totals 6 and 3
    ],
)
def test_conv_padding_same(kernel, dilation, expected):
    assert _pad("same", kernel=kernel, dilation=dilation) == expected
    assert _pad("SAME", kernel=kernel, dilation=dilation) == expected


@pytest.mark.parametrize("stride", [(2, 2), (1, 2), (2, 1)])
def test_conv_padding_same_needs_stride_one(stride):
    with pytest.raises(ValueError, match=r"conv2d padding='same' needs stride 1"):
        _pad("same", stride=stride)


def test_conv_padding_valid_allows_any_stride():
    assert _pad("valid", stride=(3, 2)) == ((0, 0), (0, 0))


@pytest.mark.parametrize(
    "padding, err, match",
    [
        ("full", ValueError, r"conv2d padding must be an int, a pair, 'valid' or 'same', got 'f"),
        (-1, ValueError, r"conv2d padding must be >= 0"),
        ((1, -1), ValueError, r"conv2d padding must be >= 0"),
        (((1, -1), (0, 0)), ValueError, r"conv2d padding must be >= 0"),
        ((1, 2, 3), ValueError, r"got 3 values"),
        (((1, 0, 0), (0, 0)), ValueError, r"got 3 values"),
        (1.0, TypeError, r"conv2d padding must be an int or a pair of ints"),
        (((1, 0), 2), TypeError, r"conv2d padding must be an int or a pair of ints"),
        (((1.5, 0), (0, 0)), TypeError, r"conv2d padding must be an int or a pair of ints"),
        (None, TypeError, r"conv2d padding must be an int or a pair of ints"),
    ],
)
def test_conv_padding_errors(padding, err, match):
    with pytest.raises(err, match=match):
        _pad(padding)


# ----------------------------------------------------------------------- pool_params


def test_pool_params_stride_none_means_kernel():
    kernel, stride, pads, dil = _args.pool_params((3, 2), None, 0, 1, "max_pool2d")
    assert (kernel, stride, pads, dil) == ((3, 2), (3, 2), (0, 0), (1, 1))


def test_pool_params_normalises_every_argument():
    got = _args.pool_params(4, (1, 2), (2, 1), np.int64(2), "avg_pool2d")
    assert got == ((4, 4), (1, 2), (2, 1), (2, 2))


@pytest.mark.parametrize(
    "kernel, padding, expected_kernel, expected_pads",
    [(3, 1, (3, 3), (1, 1)), (2, 1, (2, 2), (1, 1)), ((4, 2), (2, 1), (4, 2), (2, 1)),
     ((5, 1), (2, 0), (5, 1), (2, 0)), (1, 0, (1, 1), (0, 0))],
)  # fmt: skip
def test_pool_params_padding_up_to_half_kernel(kernel, padding, expected_kernel, expected_pads):
    got = _args.pool_params(kernel, None, padding, 1, "max_pool2d")
    assert got == (expected_kernel, expected_kernel, expected_pads, (1, 1))  # kept as given


@pytest.mark.parametrize(
    "kernel, padding",
    [(3, 2), (2, 2), (1, 1), ((4, 2), (1, 2)), ((3, 5), (2, 1))],
)
def test_pool_params_padding_above_half_kernel(kernel, padding):
    with pytest.raises(ValueError, match=r"max_pool2d padding must be at most half the kernel"):
        _args.pool_params(kernel, None, padding, 1, "max_pool2d")


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(kernel_size=0), ValueError, r"avg_pool2d kernel_size must be positive"),
        (dict(stride=0), ValueError, r"avg_pool2d stride must be positive"),
        (dict(padding=-1), ValueError, r"avg_pool2d padding must be >= 0"),
        (dict(dilation=0), ValueError, r"avg_pool2d dilation must be positive"),
        (dict(kernel_size="2"), TypeError, r"avg_pool2d kernel_size must be an int"),
        (dict(stride=1.0), TypeError, r"avg_pool2d stride must be an int"),
        (dict(padding=((0, 0), (0, 0))), TypeError, r"avg_pool2d padding must be an int"),
        (dict(kernel_size=(2, 2, 2)), ValueError, r"avg_pool2d kernel_size .* got 3 values"),
    ],
)
def test_pool_params_errors(kwargs, err, match):
    args = dict(kernel_size=2, stride=None, padding=0, dilation=1) | kwargs
    with pytest.raises(err, match=match):
        _args.pool_params(op="avg_pool2d", **args)


# ----------------------------------------------------------------- checks on inputs


@pytest.mark.parametrize("shape", [(), (3,), (3, 224, 224), (1, 1, 1, 1, 1)])
def test_check_input_rank(shape):
    x = np.zeros(shape, np.float32)
    with pytest.raises(ValueError, match=rf"op expected 4D input .*got {len(shape)}D"):
        _args.check_input(x, "op")


@pytest.mark.parametrize("dtype", [np.int32, np.int8, np.uint8, np.bool_, jnp.int16])
def test_check_input_dtype(dtype):
    with pytest.raises(TypeError, match=r"op expected floating-point input"):
        _args.check_input(np.zeros((1, 1, 2, 2), dtype), "op")


@pytest.mark.parametrize("dtype", [np.float32, np.float16, jnp.bfloat16])
def test_check_input_accepts_floats(dtype):
    x = jnp.zeros((1, 1, 2, 2), dtype)
    checked = _args.check_input(x, "op")
    assert checked.shape == x.shape and checked.dtype == x.dtype  # returned unchanged


def test_check_fits():
    _args.check_fits((2, 2), (4, 4), (3, 3), (1, 1), "conv2d")
    with pytest.raises(ValueError, match=r"conv2d kernel \(3, 3\) does not fit the padded input"):
        _args.check_fits((2, 2), (2, 2), (3, 3), (1, 1), "conv2d")
    with pytest.raises(ValueError, match=r"kernel \(2, 2\) \(dilated to \(3, 3\)\) does not fit"):
        _args.check_fits((2, 2), (2, 2), (2, 2), (2, 2), "max_pool2d")


@pytest.mark.parametrize(
    "c_in, c_out, groups, err, match",
    [
        (4, 6, 3, ValueError, r"groups=3 must divide both in_channels=4 and out_channels=6"),
        (4, 6, 4, ValueError, r"groups=4 must divide"),
        (4, 6, 0, ValueError, r"groups must be positive, got 0"),
        (4, 6, -2, ValueError, r"groups must be positive"),
        (4, 6, 2.0, TypeError, r"groups must be a positive int"),
        (4, 6, True, TypeError, r"groups must be a positive int"),
    ],
)
def test_check_groups_errors(c_in, c_out, groups, err, match):
    with pytest.raises(err, match=match):
        _args.check_groups(c_in, c_out, groups, "conv2d")


def test_check_groups_ok():
    assert _args.check_groups(4, 6, 2, "conv2d") == 2
    assert _args.check_groups(3, 6, np.int64(3), "conv2d") == 3


# ----------------------------------------------------------------------------- arrays


def test_check_input_returns_the_array_and_converts_nested_lists():
    x = jnp.ones((1, 2, 3, 3))
    assert _args.check_input(x, "conv2d") is x
    nested = np.ones((1, 1, 2, 2)).tolist()
    converted = _args.check_input(nested, "conv2d")
    assert converted.shape == (1, 1, 2, 2)
    assert jnp.issubdtype(converted.dtype, jnp.floating)


def test_check_input_ragged_list_is_a_type_error():
    with pytest.raises(TypeError, match=r"conv2d input must be an array; a nested list"):
        _args.check_input([[[[1.0, 2.0], [3.0]]]], "conv2d")


@pytest.mark.parametrize("value", [None, 3.0, "x", object()])
def test_check_input_rejects_non_arrays(value):
    with pytest.raises(TypeError, match=r"max_pool2d input must be an array, got"):
        _args.check_input(value, "max_pool2d")


def test_check_input_accepts_an_empty_batch():
    assert _args.check_input(jnp.ones((0, 3, 4, 4)), "avg_pool2d").shape == (0, 3, 4, 4)


def test_check_input_rejects_zero_channels():
    with pytest.raises(ValueError, match=r"batch_norm expected at least one channel, got input"):
        _args.check_input(jnp.ones((2, 0, 4, 4)), "batch_norm")


def test_torch_tensors_get_the_conversion_recipe():
    torch = pytest.importorskip("torch")
    t = torch.ones(1, 3, 4, 4)
    with pytest.raises(TypeError) as info:
        _args.check_input(t, "conv2d")
    message = str(info.value)
    assert message.startswith("conv2d input is a torch.Tensor")
    assert "jnp.asarray(t.detach().cpu().numpy())" in message
    with pytest.raises(TypeError, match=r"conv2d weight is a torch.Tensor"):
        _args.check_array(torch.nn.Parameter(torch.ones(2)), "conv2d", "weight")


def test_check_array_dtype():
    with pytest.raises(TypeError, match=r"conv2d expected a floating-point weight"):
        _args.check_array(jnp.ones(3, jnp.int32), "conv2d", "weight")
    idx = jnp.ones(3, jnp.int32)
    assert _args.check_array(idx, "max_unpool2d", "indices", floating=False) is idx


@pytest.mark.parametrize("value", [True, False, np.True_, np.bool_(False)])
def test_check_bool_accepts_python_and_numpy_bools(value):
    assert _args.check_bool(value, "MaxPool2d", "ceil_mode") is bool(value)


@pytest.mark.parametrize("value", [1, 0, "yes", None, 1.0])
def test_check_bool_rejects_the_rest(value):
    with pytest.raises(TypeError, match=r"MaxPool2d ceil_mode must be a bool, got"):
        _args.check_bool(value, "MaxPool2d", "ceil_mode")


@pytest.mark.parametrize("value, err", [(0, ValueError), (-3, ValueError), (2.0, TypeError),
                                        (True, TypeError), ("4", TypeError)])  # fmt: skip
def test_positive_int(value, err):
    with pytest.raises(err, match=r"Conv2d in_channels must be a positive int, got"):
        _args.positive_int(value, "Conv2d", "in_channels")
    assert _args.positive_int(np.int64(4), "Conv2d", "in_channels") == 4
