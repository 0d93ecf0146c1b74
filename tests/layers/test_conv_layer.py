"""Conv2d: construction, shapes, initialisation, dtypes, errors, repr, PyTorch equivalence."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jspatial as js
from jspatial.layers import Conv2d, ConvTranspose2d
from tests.layers.helpers import (
    BF16_ATOL,
    assert_close,
    compare_nhwc_with_torch,
    output_spec,
    random_input,
    rngs,
    to_nhwc,
)


def conv(*args, seed=0, **kwargs):
    return Conv2d(*args, rngs=rngs(seed), **kwargs)


# ---------------------------------------------------------------- shapes and attributes


@pytest.mark.parametrize(
    ("kwargs", "out_shape"),
    [
        ({"kernel_size": 3, "padding": 1}, (2, 8, 12, 12)),
        ({"kernel_size": 3, "stride": 2}, (2, 8, 5, 5)),
        ({"kernel_size": (3, 5), "padding": "same"}, (2, 8, 12, 12)),
        ({"kernel_size": 3, "dilation": 2, "padding": 2}, (2, 8, 12, 12)),
        ({"kernel_size": 1, "groups": 4}, (2, 8, 12, 12)),
    ],
)
def test_output_shape(kwargs, out_shape):
    spec = output_spec(lambda: conv(4, 8, **kwargs), (2, 4, 12, 12))
    assert (
        spec.shape
        == out_shape
        == js.conv2d_output_shape(
            (2, 4, 12, 12), 8, **{k: v for k, v in kwargs.items() if k != "groups"}
        )
    )
    assert spec.dtype == jnp.float32


def test_normalised_hyper_parameters():
    # Built abstractly: attributes only, no parameter drawn.
    layer = nnx.eval_shape(lambda: conv(3, 64, 3, padding=1))
    assert layer.in_channels == 3 and layer.out_channels == 64
    assert layer.kernel_size == (3, 3)
    assert layer.stride == (1, 1)
    assert layer.padding == ((1, 1), (1, 1))
    assert layer.dilation == (1, 1)
    assert layer.groups == 1
    same = nnx.eval_shape(lambda: conv(3, 8, (2, 4), padding="same", dilation=(1, 2)))
    assert same.padding == ((0, 1), (3, 3))  # the even kernel's extra cell goes bottom/right


def test_parameters_shapes_and_count():
    layer = conv(3, 8, 3)
    weight, bias = layer.parameters()
    assert weight.shape == (8, 3, 3, 3) and bias.shape == (8,)
    assert isinstance(layer.weight, nnx.Param) and isinstance(layer.bias, nnx.Param)
    np.testing.assert_array_equal(bias, 0.0)
    big = nnx.eval_shape(lambda: conv(64, 128, 3))  # shapes only: nothing drawn
    assert big.weight.shape == (128, 64, 3, 3) and big.bias.shape == (128,)
    assert big.weight.size + big.bias.size == 73_856 == js.conv2d_params(64, 128, 3)


def test_grouped_and_biasless_parameters():
    layer = nnx.eval_shape(lambda: conv(8, 16, 3, groups=4, bias=False))
    assert layer.bias is None
    assert layer.weight.shape == (16, 2, 3, 3)
    assert layer.weight.size == js.conv2d_params(8, 16, 3, bias=False, groups=4)
    assert len(conv(4, 4, 4, padding="same", groups=4, bias=False).parameters()) == 1


# ---------------------------------------------------------------- initialisation


@pytest.mark.parametrize(("c_in", "c_out", "groups"), [(256, 256, 1), (512, 256, 4)])
def test_he_normal_statistics(c_in, c_out, groups):
    weight = np.asarray(conv(c_in, c_out, 3, groups=groups).weight[...], np.float64)
    fan_in = c_in // groups * 9
    expected_std = math.sqrt(2.0 / fan_in)
    # Sample std of n normal draws has relative error ~ 1/sqrt(2n) (here < 0.2 %).
    assert weight.std() == pytest.approx(expected_std, rel=0.01)
    assert abs(weight.mean()) < 4 * expected_std / math.sqrt(weight.size)
    # A plain normal, not a truncated one: about 0.3 % of draws lie beyond 3 std.
    assert 0.001 < np.mean(np.abs(weight) > 3 * expected_std) < 0.006


def test_init_is_reproducible_and_seeded():
    a, b, c = conv(3, 8, 3, seed=1), conv(3, 8, 3, seed=1), conv(3, 8, 3, seed=2)
    np.testing.assert_array_equal(a.weight[...], b.weight[...])
    assert not np.array_equal(a.weight[...], c.weight[...])


def test_custom_kernel_init():
    seen = {}

    def init(key, shape, dtype):
        seen.update(shape=shape, dtype=dtype)
        return jnp.full(shape, 0.5, dtype)

    layer = conv(4, 6, (3, 2), groups=2, kernel_init=init)
    assert seen == {"shape": (6, 2, 3, 2), "dtype": jnp.float32}
    np.testing.assert_array_equal(layer.weight[...], 0.5)
    # Any JAX initialiser with this signature works too.
    layer = conv(4, 6, 3, kernel_init=jax.nn.initializers.zeros)
    np.testing.assert_array_equal(layer.weight[...], 0.0)


def test_kernel_init_with_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match=r"Conv2d kernel_init returned shape \(3, 3\), expected"):
        conv(4, 6, 3, kernel_init=lambda key, shape, dtype: jnp.zeros((3, 3), dtype))


# ---------------------------------------------------------------- dtypes


def test_compute_dtype_casts_input_and_parameters():
    layer = conv(3, 8, 3, padding=1, dtype=jnp.bfloat16)
    assert layer.weight[...].dtype == jnp.float32  # stored in param_dtype
    x = random_input((2, 3, 8, 8))
    y = layer(x)
    assert y.dtype == jnp.bfloat16
    reference = conv(3, 8, 3, padding=1)(x)  # same seed, float32
    assert_close(y, reference, atol=BF16_ATOL, rtol=BF16_ATOL)


@pytest.mark.parametrize(
    ("kwargs", "x_dtype", "y_dtype"),
    [
        ({}, jnp.bfloat16, jnp.bfloat16),  # no dtype: the input's
        ({}, jnp.float16, jnp.float16),
        ({"param_dtype": jnp.bfloat16}, jnp.float32, jnp.float32),
        ({"dtype": jnp.float16}, jnp.float32, jnp.float16),
    ],
)
def test_output_dtype(kwargs, x_dtype, y_dtype):
    assert output_spec(lambda: conv(3, 8, 3, **kwargs), (1, 3, 5, 5), x_dtype).dtype == y_dtype


def test_param_dtype():
    layer = nnx.eval_shape(lambda: conv(3, 8, 3, param_dtype=jnp.bfloat16))
    assert layer.weight.dtype == jnp.bfloat16 and layer.bias.dtype == jnp.bfloat16


# ---------------------------------------------------------------- errors


def test_input_errors():
    layer = conv(3, 8, 3)
    with pytest.raises(
        ValueError,
        match=r"^Conv2d expected 3D \(unbatched: channels, height, width\) or 4D \(batch, "
        r"channels, height, width\) input, got 2D: \(224, 224\)$",
    ):
        layer(jnp.ones((224, 224)))
    with pytest.raises(ValueError, match=r"^Conv2d expected 3 input channels, got 4"):
        layer(jnp.ones((1, 4, 8, 8)))
    integer = r"weight must have the dtype of the integer input, int32, got float32"
    with pytest.raises(TypeError, match=rf"^Conv2d {integer}"):
        layer(jnp.ones((1, 3, 8, 8), jnp.int32))
    # The integer check happens before the cast to the compute dtype.
    with pytest.raises(TypeError, match=rf"^Conv2d {integer}"):
        conv(3, 8, 3, dtype=jnp.float32)(jnp.ones((1, 3, 8, 8), jnp.int32))
    with pytest.raises(ValueError, match=r"^Conv2d kernel \(3, 3\) does not fit the padded input"):
        layer(jnp.ones((1, 3, 2, 2)))


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        ((4, 8, 3), {"groups": 3}, ValueError,
         r"^Conv2d groups=3 must divide both in_channels=4 and out_channels=8$"),
        ((4, 6, 3), {"groups": 4}, ValueError, r"^Conv2d groups=4 must divide both"),
        ((4, 8, 3), {"groups": 0}, ValueError, r"^Conv2d groups must be positive, got 0$"),
        ((4, 8, 0), {}, ValueError, r"^Conv2d kernel_size must be positive, got 0$"),
        ((4, 8, (3, 3, 3)), {}, ValueError, r"^Conv2d kernel_size must be an int or a pair"),
        ((4, 8, 3.0), {}, TypeError, r"^Conv2d kernel_size must be an int or a pair of ints"),
        ((4, 8, 3), {"stride": 0}, ValueError, r"^Conv2d stride must be positive, got 0$"),
        ((4, 8, 3), {"dilation": -1}, ValueError, r"^Conv2d dilation must be positive"),
        ((4, 8, 3), {"padding": -1}, ValueError, r"^Conv2d padding must be >= 0, got -1$"),
        ((4, 8, 3), {"padding": "full"}, ValueError, r"^Conv2d padding must be an int, a pair"),
        ((4, 8, 3), {"padding": "same", "stride": 2}, ValueError,
         r"^Conv2d padding='same' needs stride 1"),
        ((0, 8, 3), {}, ValueError, r"^Conv2d in_channels must be a positive int, got 0$"),
        ((4, 8.0, 3), {}, TypeError, r"^Conv2d out_channels must be a positive int, got 8.0$"),
        ((4, 8, 3), {"bias": "yes"}, TypeError, r"^Conv2d bias must be a bool, got 'yes' \(str\)$"),
    ],
)  # fmt: skip
def test_constructor_errors(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        conv(*args, **kwargs)


def test_rngs_is_required_and_checked():
    with pytest.raises(TypeError, match="rngs"):
        Conv2d(3, 8, 3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"^Conv2d rngs must be an nnx.Rngs \(e.g. rngs=nnx.Rngs"):
        Conv2d(3, 8, 3, rngs=0)  # type: ignore[arg-type]


# ---------------------------------------------------------------- repr


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"padding": 1},
         "Conv2d(3, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))"),
        ({}, "Conv2d(3, 64, kernel_size=(3, 3), stride=(1, 1))"),
        ({"stride": 2, "padding": (0, 1), "bias": False},
         "Conv2d(3, 64, kernel_size=(3, 3), stride=(2, 2), padding=(0, 1), bias=False)"),
        ({"padding": "same", "kernel_size": 2},
         "Conv2d(3, 64, kernel_size=(2, 2), stride=(1, 1), padding=((0, 1), (0, 1)))"),
        ({"padding": 2, "dilation": 2},
         "Conv2d(3, 64, kernel_size=(3, 3), stride=(1, 1), padding=(2, 2), dilation=(2, 2))"),
    ],
)  # fmt: skip
def test_repr(kwargs, text):
    kwargs.setdefault("kernel_size", 3)
    assert repr(conv(3, 64, **kwargs)) == text


def test_repr_groups():
    assert repr(conv(64, 64, 3, padding=1, groups=64, bias=False)) == (
        "Conv2d(64, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), groups=64, bias=False)"
    )


# ---------------------------------------------------------------- PyTorch


@pytest.mark.parametrize(
    "config",
    [
        {"in_channels": 3, "out_channels": 8, "kernel_size": 3, "padding": 1},
        {"in_channels": 4, "out_channels": 6, "kernel_size": (3, 2), "stride": (2, 1),
         "padding": ((0, 1), (1, 0)), "dilation": (1, 2), "groups": 2},
        {"in_channels": 4, "out_channels": 4, "kernel_size": 4, "padding": "same",
         "groups": 4, "bias": False},
    ],
)  # fmt: skip
# PyTorch notes that padding='same' with an even kernel copies the input: true, and fine.
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_matches_torch(config):
    layer = conv(**config)
    if layer.bias is not None:
        layer.bias[...] = jnp.linspace(-1.0, 1.0, layer.out_channels)
    x = random_input((2, config["in_channels"], 8, 8), seed=1)
    y = layer(x)
    np.testing.assert_array_equal(layer.forward(x), y)

    torch = pytest.importorskip("torch")
    bias = None if layer.bias is None else layer.bias[...]
    # PyTorch takes asymmetric padding only as 'same'; pad the input explicitly instead.
    torch_config = dict(config)
    x_torch = torch.from_numpy(np.array(x))  # writable copy
    if isinstance(config.get("padding"), tuple) and isinstance(config["padding"][0], tuple):
        (top, bottom), (left, right) = torch_config.pop("padding")
        x_torch = torch.nn.functional.pad(x_torch, (left, right, top, bottom))
    reference = torch.nn.Conv2d(**torch_config)
    with torch.no_grad():
        reference.weight.copy_(torch.from_numpy(np.array(layer.weight[...])))
        if bias is not None:
            reference.bias.copy_(torch.from_numpy(np.array(bias)))
        expected = reference(x_torch).numpy()
    assert_close(y, expected)


# ---------------------------------------------------------------- torch's argument order


def test_positional_arguments_follow_torch():
    # nn.Conv2d(in, out, kernel_size, stride, padding, dilation, groups, bias, padding_mode)
    layer = nnx.eval_shape(lambda: conv(4, 8, 3, 2, 1, 2, 2, False, "circular"))
    assert layer.stride == (2, 2) and layer.padding == ((1, 1), (1, 1))
    assert layer.dilation == (2, 2) and layer.groups == 2
    assert layer.bias is None and layer.padding_mode == "circular"


def test_default_init_is_documented_he_normal_not_torchs():
    # torch.nn.Conv2d draws U(+-1/sqrt(fan_in)); ours is He normal with a zero bias.
    assert "Initialisation differs from torch's" in Conv2d.__doc__
    weight = np.asarray(conv(64, 64, 3).weight[...])
    assert np.abs(weight).max() > 1 / math.sqrt(64 * 9)  # beyond torch's uniform bound


# ---------------------------------------------------------------- padding_mode


def _torch_conv_from(layer, torch_cls, **config):
    torch = pytest.importorskip("torch")
    reference = torch_cls(**config)
    with torch.no_grad():
        reference.weight.copy_(torch.from_numpy(np.array(layer.weight[...])))
        if layer.bias is not None:
            reference.bias.copy_(torch.from_numpy(np.array(layer.bias[...])))
    return reference


def _compare_with_torch(layer, reference, x, call=None):
    """Values and gradients (input, weight, bias) of ``layer(x)`` against ``reference``."""
    torch = pytest.importorskip("torch")
    call = call or (lambda m, x: m(x))
    reference.zero_grad()
    tx = torch.tensor(np.asarray(x), requires_grad=True)
    ty = call(reference, tx)
    cot = np.random.default_rng(3).standard_normal(tuple(ty.shape)).astype(np.float32)
    ty.backward(torch.tensor(cot))

    def loss(model, x):
        return jnp.vdot(call(model, x), cot)

    y = call(layer, x)
    grads, dx = nnx.grad(loss, argnums=(0, 1))(layer, x)
    assert_close(y, ty.detach().numpy())
    assert_close(dx, tx.grad.numpy())
    assert_close(grads.weight[...], reference.weight.grad.numpy())
    if layer.bias is not None:
        assert_close(grads.bias[...], reference.bias.grad.numpy())


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize(
    "config",
    [
        {"in_channels": 2, "out_channels": 3, "kernel_size": 3, "padding": 1},
        {"in_channels": 4, "out_channels": 2, "kernel_size": (3, 2), "stride": (2, 1),
         "padding": (2, 1), "dilation": (1, 2), "groups": 2},
        {"in_channels": 2, "out_channels": 2, "kernel_size": (2, 4), "padding": "same",
         "bias": False},
    ],
)  # fmt: skip
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_padding_modes_match_torch(padding_mode, config):
    torch = pytest.importorskip("torch")
    layer = conv(**config, padding_mode=padding_mode)
    if layer.bias is not None:
        layer.bias[...] = jnp.linspace(-1.0, 1.0, layer.out_channels)
    reference = _torch_conv_from(layer, torch.nn.Conv2d, **config, padding_mode=padding_mode)
    if not isinstance(config["padding"], str):  # ours spells 'same' out as the amounts
        assert repr(layer) == repr(reference)
    _compare_with_torch(layer, reference, random_input((2, config["in_channels"], 5, 6), seed=2))


def test_padding_mode_errors():
    with pytest.raises(ValueError, match=r"^Conv2d padding_mode must be one of \('zeros', "):
        conv(3, 8, 3, padding_mode="symmetric")
    layer = conv(1, 1, 3, padding=3, padding_mode="reflect")
    # torch: "Padding size should be less than the corresponding input dimension"
    with pytest.raises(ValueError, match=r"^Conv2d reflect padding must be smaller than the input"):
        layer(jnp.ones((1, 1, 3, 3)))


# ---------------------------------------------------------------- ConvTranspose2d


def deconv(*args, seed=0, **kwargs):
    return ConvTranspose2d(*args, rngs=rngs(seed), **kwargs)


@pytest.mark.parametrize(
    "config",
    [
        {"in_channels": 4, "out_channels": 3, "kernel_size": 3, "stride": 2, "padding": 1,
         "output_padding": 1},
        {"in_channels": 4, "out_channels": 6, "kernel_size": (3, 2), "stride": (1, 3),
         "padding": (0, 1), "output_padding": (0, 2), "groups": 2, "dilation": (2, 1),
         "bias": False},
        {"in_channels": 3, "out_channels": 3, "kernel_size": 2, "stride": 3, "groups": 3},
    ],
)  # fmt: skip
def test_conv_transpose_matches_torch(config):
    torch = pytest.importorskip("torch")
    layer = deconv(**config)
    reference = _torch_conv_from(layer, torch.nn.ConvTranspose2d, **config)
    assert repr(layer) == repr(reference)
    assert [tuple(p.shape) for p in layer.parameters()] == [
        tuple(p.shape) for p in reference.parameters()
    ]
    _compare_with_torch(layer, reference, random_input((2, config["in_channels"], 4, 5), seed=1))


def test_conv_transpose_positional_arguments_follow_torch():
    # nn.ConvTranspose2d(in, out, kernel_size, stride, padding, output_padding, groups, bias,
    #                    dilation, padding_mode)
    layer = nnx.eval_shape(lambda: deconv(4, 6, 3, 2, 1, 1, 2, False, 2, "zeros"))
    assert layer.stride == (2, 2) and layer.padding == (1, 1) and layer.output_padding == (1, 1)
    assert layer.groups == 2 and layer.bias is None and layer.dilation == (2, 2)
    assert layer.weight.shape == (4, 3, 3, 3)


def test_conv_transpose_output_size_matches_torch():
    torch = pytest.importorskip("torch")
    layer = deconv(4, 3, 3, stride=2, padding=1)
    reference = _torch_conv_from(layer, torch.nn.ConvTranspose2d, in_channels=4, out_channels=3,
                                 kernel_size=3, stride=2, padding=1)  # fmt: skip
    x = random_input((2, 4, 4, 5))
    for size in [(7, 9), (8, 10), (8, 9), (2, 4, 8, 10)]:
        _compare_with_torch(
            layer, reference, x, call=lambda m, x, size=size: m(x, output_size=list(size))
        )
    with pytest.raises(ValueError, match=r"output_size \(9, 9\) is not reachable"):
        layer(x, output_size=(9, 9))


def test_conv_transpose_default_init_is_torchs():
    # torch: kaiming_uniform_(a=sqrt(5)) with fan_in from weight.shape[1] * kh * kw, i.e.
    # U(+-1/sqrt(fan_in)), and the bias U(+-1/sqrt(fan_in)) with the same fan_in.
    layer = deconv(64, 96, 3, groups=2)
    fan_in = 96 // 2 * 9
    bound = 1 / math.sqrt(fan_in)
    weight, bias = (np.asarray(p, np.float64) for p in layer.parameters())
    assert weight.shape == (64, 48, 3, 3)
    assert np.abs(weight).max() <= bound and np.abs(weight).max() > 0.99 * bound
    assert weight.std() == pytest.approx(bound / math.sqrt(3), rel=0.02)  # uniform's std
    assert np.abs(bias).max() <= bound and bias.std() > bound / 4
    torch = pytest.importorskip("torch")
    reference = torch.nn.ConvTranspose2d(64, 96, 3, groups=2)
    assert torch.nn.init._calculate_fan_in_and_fan_out(reference.weight)[0] == fan_in
    assert reference.weight.abs().max().item() <= bound


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        ((4, 6, 3), {"stride": 2, "output_padding": 2}, ValueError,
         r"^ConvTranspose2d output_padding must be smaller than either stride or dilation"),
        ((4, 6, 3), {"groups": 4}, ValueError, r"^ConvTranspose2d groups=4 must divide both"),
        ((4, 6, 3), {"padding_mode": "reflect"}, ValueError,
         r"^ConvTranspose2d supports only padding_mode='zeros'"),
        ((4, 6, 3), {"padding": "same"}, TypeError, r"^ConvTranspose2d padding must be an int"),
        ((4, 6, 3), {"bias": 1}, TypeError, r"^ConvTranspose2d bias must be a bool"),
    ],
)  # fmt: skip
def test_conv_transpose_constructor_errors(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        deconv(*args, **kwargs)


def test_conv_transpose_input_errors_and_dtype():
    layer = deconv(4, 6, 3, stride=2)
    with pytest.raises(ValueError, match=r"^ConvTranspose2d expected 4 input channels"):
        layer(jnp.ones((1, 3, 5, 5)))
    with pytest.raises(TypeError, match=r"^ConvTranspose2d weight must have the dtype of"):
        deconv(4, 6, 3, dtype=jnp.float32)(jnp.ones((1, 4, 5, 5), jnp.int32))
    y = deconv(4, 6, 3, dtype=jnp.bfloat16)(jnp.ones((0, 4, 5, 5)))
    assert y.shape == (0, 6, 7, 7) and y.dtype == jnp.bfloat16


# ---------------------------------------------------------------- channels last (NHWC)


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
@pytest.mark.parametrize(
    "config, shape",
    [
        ({"in_channels": 4, "out_channels": 6, "kernel_size": (3, 2), "stride": (2, 1),
          "padding": (1, 0), "groups": 2}, (2, 4, 7, 6)),
        ({"in_channels": 3, "out_channels": 2, "kernel_size": 2, "stride": 3, "dilation": (1, 2),
          "bias": False}, (1, 3, 8, 9)),
        ({"in_channels": 2, "out_channels": 3, "kernel_size": 3, "padding": 1,
          "padding_mode": "reflect"}, (2, 2, 5, 6)),
        ({"in_channels": 2, "out_channels": 3, "kernel_size": 3, "padding": "same"}, (2, 5, 4)),
    ],
    ids=["grouped_rect", "stride_gt_kernel_dilated", "reflect", "unbatched"],
)  # fmt: skip
def test_conv2d_nhwc_matches_torch(config, shape, jit):
    torch = pytest.importorskip("torch")
    layer = conv(**config, data_format="NHWC")
    reference = _torch_conv_from(layer, torch.nn.Conv2d, **config)
    compare_nhwc_with_torch(layer, reference, random_input(shape), jit=jit)


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
@pytest.mark.parametrize(
    "config, shape, output_size",
    [
        ({"in_channels": 4, "out_channels": 3, "kernel_size": 3, "stride": 2, "padding": 1,
          "output_padding": 1}, (2, 4, 4, 5), None),
        ({"in_channels": 4, "out_channels": 6, "kernel_size": (3, 2), "stride": (1, 3),
          "groups": 2, "dilation": (2, 1)}, (1, 4, 3, 4), None),
        ({"in_channels": 4, "out_channels": 3, "kernel_size": 3, "stride": 2, "padding": 1},
         (2, 4, 4, 5), (8, 9)),
        ({"in_channels": 4, "out_channels": 3, "kernel_size": 3, "stride": 2, "padding": 1},
         (2, 4, 4, 5), "full"),
        ({"in_channels": 4, "out_channels": 3, "kernel_size": 3, "stride": 2, "padding": 1},
         (4, 4, 5), "full"),
    ],
    ids=["output_padding", "grouped_dilated", "output_size", "full_shape", "unbatched"],
)  # fmt: skip
def test_conv_transpose2d_nhwc_matches_torch(config, shape, output_size, jit):
    """``output_size`` as ``(H, W)`` or, channels last, as the full ``(N, H, W, C)`` (or
    unbatched ``(H, W, C)``) shape: the same output padding torch picks from ``(N, C, H, W)``."""
    torch = pytest.importorskip("torch")
    layer = deconv(**config, data_format="NHWC")
    reference = _torch_conv_from(layer, torch.nn.ConvTranspose2d, **config)
    call = None
    if output_size == "full":  # the layout's own full shape, one cell more than the default
        torch_size = (*shape[:-3], 3, 2 * shape[-2], 2 * shape[-1])

        def call(m, x):
            size = torch_size if m is reference else tuple(to_nhwc(np.empty(torch_size)).shape)
            return m(x, output_size=size)
    elif output_size is not None:
        call = lambda m, x: m(x, output_size=output_size)  # noqa: E731
    compare_nhwc_with_torch(layer, reference, random_input(shape), call, jit=jit)


def test_nhwc_layers_repr_state_dict_and_errors(torch):
    from jspatial.layers import load_torch_state_dict, to_torch_state_dict

    layer = conv(3, 8, 3, padding=1, data_format="NHWC")
    assert repr(layer) == (
        "Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), data_format=NHWC)"
    )
    up = deconv(8, 4, 2, stride=2, data_format="NHWC")
    assert repr(up) == "ConvTranspose2d(8, 4, kernel_size=(2, 2), stride=(2, 2), data_format=NHWC)"
    assert layer.weight.shape == (8, 3, 3, 3) and up.weight.shape == (8, 4, 2, 2)  # torch's
    for ours in (layer, up):
        reference = {k: v.clone() for k, v in to_torch_state_dict(ours).items()}
        fresh = type(ours)(*([3, 8, 3] if ours is layer else [8, 4, 2]), rngs=rngs(5),
                           data_format="NHWC")  # fmt: skip
        load_torch_state_dict(fresh, reference)
        for name, value in to_torch_state_dict(fresh).items():
            np.testing.assert_array_equal(np.asarray(value), reference[name].numpy())
    with pytest.raises(
        ValueError, match=r"^Conv2d data_format must be 'NCHW' or 'NHWC', got 'HWC'"
    ):
        conv(3, 8, 3, data_format="HWC")
    with pytest.raises(TypeError, match=r"^ConvTranspose2d data_format must be 'NCHW' or 'NHWC'"):
        deconv(3, 8, 3, data_format=None)
    with pytest.raises(ValueError, match=r"output_size \(5, 5\) is not reachable: on axis 1"):
        up(jnp.ones((1, 3, 3, 8)), output_size=(5, 5))
