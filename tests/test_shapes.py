"""The shape, parameter, cost and receptive-field calculators of ``jspatial.shapes``."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jspatial as js

# --------------------------------------------------------------------- worked values


def test_worked_values():
    assert js.conv2d_output_shape((32, 3, 128, 128), 64, kernel_size=5, stride=2, padding=2) == (
        32,
        64,
        64,
        64,
    )
    assert js.conv2d_params(3, 64, 3) == 1792
    assert js.conv2d_params(64, 128, 3) == 73856
    assert js.conv2d_macs((16, 64, 56, 56), 128, 3, padding=1) == 3_699_376_128
    out = js.conv2d_output_shape((64, 3, 224, 224), 256, kernel_size=7, stride=2, padding=3)
    assert out == (64, 256, 112, 112)
    assert js.activation_bytes(out) == 822_083_584
    assert js.receptive_field([(3, 1), (2, 2), (3, 1), (3, 1)]) == 12
    assert js.receptive_field([(3, 1), (3, 1)]) == 5
    assert js.conv_output_size(224, 3, 2) == 111
    assert js.conv_output_size(32, 3, padding=1) == 32
    assert js.pool2d_output_shape((1, 64, 112, 112), 3, stride=2, padding=1) == (1, 64, 56, 56)


def test_params_variants():
    assert js.conv2d_params(3, 64, 3, bias=False) == 1728
    assert js.conv2d_params(32, 32, 3, groups=32) == 32 * 9 + 32  # depthwise
    assert js.conv2d_params(32, 64, 3, groups=32, bias=False) == 64 * 9  # multiplier 2
    assert js.conv2d_params(4, 6, (3, 1), groups=2) == 6 * 2 * 3 + 6


def test_macs_variants():
    # Grouped: each output channel sees C_in / groups input channels.
    dense = js.conv2d_macs((2, 8, 10, 10), 8, 3, padding=1)
    assert dense == 2 * 8 * 10 * 10 * 8 * 9
    assert js.conv2d_macs((2, 8, 10, 10), 8, 3, padding=1, groups=8) == dense // 8
    assert js.conv2d_macs((1, 3, 9, 7), 4, (3, 1), stride=2) == 1 * 4 * 4 * 4 * 3 * 3
    assert js.conv2d_macs((1, 1, 8, 8), 1, 2, padding="same") == 8 * 8 * 4


@pytest.mark.parametrize(
    "dtype, itemsize",
    [("float32", 4), (jnp.float32, 4), (jnp.bfloat16, 2), ("bfloat16", 2), (np.float16, 2)],
)
def test_activation_bytes_dtypes(dtype, itemsize):
    shape = (64, 256, 112, 112)
    assert js.activation_bytes(shape, dtype) == 64 * 256 * 112 * 112 * itemsize
    assert js.activation_bytes(shape, dtype) == 822_083_584 * itemsize // 4


def test_activation_bytes_default_and_float64():
    assert js.activation_bytes((2, 3)) == 24
    assert js.activation_bytes((2, 3), np.float64) == 48


def test_receptive_field_more():
    assert js.receptive_field([]) == 1
    assert js.receptive_field([(7, 2), (3, 2)]) == 7 + 2 * 2
    assert js.receptive_field([(3, 2), (3, 2), (3, 2)]) == 1 + 2 + 4 + 8


@pytest.mark.parametrize(
    "size, k, s, p, d, expected",
    [
        (224, 3, 2, 0, 1, 111),
        (224, 7, 2, 3, 1, 112),
        (7, 3, 1, 0, 2, 3),
        (9, 2, 3, 0, 1, 3),
        (5, 5, 1, 0, 1, 1),
        (5, 3, 1, (1, 0), 1, 4),
        (6, 4, 1, (1, 2), 1, 6),
    ],
)
def test_conv_output_size(size, k, s, p, d, expected):
    assert js.conv_output_size(size, k, s, p, d) == expected


# -------------------------------------------------------- ceil_mode against PyTorch


def test_ceil_mode_documented_cases():
    assert js.conv_output_size(5, 2, stride=2, ceil_mode=True) == 3
    assert js.conv_output_size(5, 2, stride=2) == 2
    # The ceil'd last window would start in the right padding (at 5 + 1): dropped.
    assert js.conv_output_size(5, 2, stride=2, padding=1, ceil_mode=True) == 3
    assert js.conv_output_size(3, 2, stride=2, padding=1, ceil_mode=True) == 2
    # Size 6, k3, s2, p1: the ceil'd last window starts at input row 5, a real cell: kept.
    assert js.conv_output_size(6, 3, stride=2, padding=1, ceil_mode=True) == 4


def _pool_grid():
    for size, k, s, p, d in itertools.product(range(3, 9), (1, 2, 3), (1, 2, 3), (0, 1), (1, 2)):
        if p > k // 2 or d * (k - 1) + 1 > size + 2 * p:
            continue
        yield size, k, s, p, d


def test_ceil_mode_matches_torch_output_sizes():
    torch = pytest.importorskip("torch")
    checked = 0
    for size, k, s, p, d in _pool_grid():
        x = torch.zeros(1, 1, size, 1)
        for ceil in (False, True):
            expected = torch.nn.functional.max_pool2d(
                x, (k, 1), (s, 1), (p, 0), (d, 1), ceil_mode=ceil
            ).shape[2]
            got = js.conv_output_size(size, k, s, p, d, ceil_mode=ceil)
            assert got == expected, (size, k, s, p, d, ceil)
            shape = js.pool2d_output_shape((1, 1, size, size), k, s, p, d, ceil_mode=ceil)
            assert shape == (1, 1, expected, expected)
            checked += 1
    assert checked > 100


def test_avg_pool_ceil_matches_torch_output_sizes():
    torch = pytest.importorskip("torch")
    for size, k, s, p, d in _pool_grid():
        if d != 1:
            continue
        x = torch.zeros(1, 1, size, 1)
        expected = torch.nn.functional.avg_pool2d(x, (k, 1), (s, 1), (p, 0), ceil_mode=True)
        assert js.conv_output_size(size, k, s, p, ceil_mode=True) == expected.shape[2]


# ------------------------------------------- calculators agree with the ops themselves

CONV_SHAPE_GRID = [
    # input, out_channels, kernel, stride, padding, dilation
    ((1, 2, 7, 9), 3, 3, 1, 0, 1),
    ((1, 2, 7, 9), 3, (3, 2), (2, 1), (1, 0), 1),
    ((1, 2, 7, 9), 1, 2, 3, 0, 1),
    ((1, 2, 7, 9), 2, 3, 1, 2, 2),
    ((1, 2, 7, 9), 2, (1, 3), 2, ((1, 0), (2, 1)), (1, 2)),
    ((1, 2, 7, 9), 3, 4, 1, "same", 1),
    ((1, 2, 5, 5), 3, (2, 3), 1, "same", (2, 1)),
    ((1, 2, 5, 5), 3, 5, 1, "valid", 1),
]


@pytest.mark.parametrize("shape, c_out, k, s, p, d", CONV_SHAPE_GRID)
def test_conv2d_output_shape_matches_conv2d(shape, c_out, k, s, p, d):
    kernel = (k, k) if isinstance(k, int) else k
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    w = jax.ShapeDtypeStruct((c_out, shape[1], *kernel), jnp.float32)
    out = jax.eval_shape(lambda x, w: js.conv2d(x, w, stride=s, padding=p, dilation=d), x, w)
    assert js.conv2d_output_shape(shape, c_out, k, s, p, d) == out.shape


POOL_SHAPE_GRID = [
    # input, kernel, stride, padding, dilation, ceil_mode
    ((1, 2, 7, 9), 2, None, 0, 1, False),
    ((1, 2, 7, 9), 2, None, 0, 1, True),
    ((1, 2, 7, 9), 3, 2, 1, 1, True),
    ((1, 2, 7, 9), (3, 2), (1, 2), (1, 0), 1, False),
    ((1, 2, 7, 9), 3, 2, 1, 2, True),
    ((1, 2, 5, 5), 2, 2, 1, 1, True),
    ((1, 2, 6, 6), 3, 2, 1, 1, True),
    ((1, 2, 5, 5), 2, 3, 0, (2, 1), False),
]


@pytest.mark.parametrize("shape, k, s, p, d, ceil", POOL_SHAPE_GRID)
def test_pool2d_output_shape_matches_pools(shape, k, s, p, d, ceil):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    expected = js.pool2d_output_shape(shape, k, s, p, d, ceil)
    mx = jax.eval_shape(lambda x: js.max_pool2d(x, k, s, p, dilation=d, ceil_mode=ceil), x)
    assert mx.shape == expected
    if d == 1:
        av = jax.eval_shape(lambda x: js.avg_pool2d(x, k, s, p, ceil_mode=ceil), x)
        assert av.shape == expected


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call, err, match",
    [
        (
            lambda: js.conv2d_output_shape((3, 224, 224), 8, 3),
            ValueError,
            r"conv2d_output_shape expected a 4D input shape .*got 3D: \(3, 224, 224\)",
        ),
        (
            lambda: js.pool2d_output_shape((1, 3, 8), 2),
            ValueError,
            r"pool2d_output_shape expected a 4D input shape",
        ),
        (
            lambda: js.conv2d_macs((1, 3, 8), 8, 3),
            ValueError,
            r"expected a 4D input shape",
        ),
        (
            lambda: js.conv_output_size(2, 3),
            ValueError,
            r"conv_output_size kernel 3 \(dilated to 3\) does not fit the padded input 2",
        ),
        (
            lambda: js.conv_output_size(5, 3, dilation=3),
            ValueError,
            r"kernel 3 \(dilated to 7\) does not fit the padded input 5",
        ),
        (lambda: js.conv_output_size(5, 0), ValueError, r"kernel_size must be positive"),
        (lambda: js.conv_output_size(5, 2, stride=0), ValueError, r"stride must be positive"),
        (lambda: js.conv_output_size(5, 2, padding=-1), ValueError, r"padding must be >= 0"),
        (lambda: js.conv_output_size(5, 2.0), TypeError, r"kernel_size must be an int"),
        (
            lambda: js.conv2d_output_shape((1, 3, 8, 8), 8, 3, stride=2, padding="same"),
            ValueError,
            r"padding='same' needs stride 1",
        ),
        (
            lambda: js.pool2d_output_shape((1, 3, 8, 8), 2, padding=2),
            ValueError,
            r"pool2d_output_shape padding must be at most half the kernel size",
        ),
        (
            lambda: js.conv2d_params(4, 6, 3, groups=3),
            ValueError,
            r"conv2d_params groups=3 must divide both in_channels=4 and out_channels=6",
        ),
        (
            lambda: js.conv2d_macs((1, 4, 8, 8), 6, 3, groups=4),
            ValueError,
            r"conv2d_macs groups=4 must divide",
        ),
        (lambda: js.conv2d_params(4, 6, 0), ValueError, r"kernel_size must be positive"),
        (
            lambda: js.receptive_field([(3, 1), 2]),
            ValueError,
            r"receptive_field layers must be \(kernel_size, stride\) pairs, got 2 at position 1",
        ),
        (
            lambda: js.receptive_field([(3, 1, 1)]),
            ValueError,
            r"receptive_field layers must be \(kernel_size, stride\) pairs",
        ),
        (lambda: js.receptive_field([(0, 1)]), ValueError, r"receptive_field kernel must be"),
        (lambda: js.receptive_field([(3, 0)]), ValueError, r"receptive_field stride must be"),
    ],
)
def test_calculator_errors(call, err, match):
    with pytest.raises(err, match=match):
        call()
