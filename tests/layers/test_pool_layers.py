"""The pooling layers, MaxUnpool2d and Flatten: shapes, errors, repr, PyTorch equivalence."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jspatial.layers import (
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool2d,
    Flatten,
    GlobalAvgPool2d,
    MaxPool2d,
    MaxUnpool2d,
)
from tests.layers.helpers import (
    assert_close,
    compare_nhwc_with_torch,
    output_spec,
    random_input,
    to_nhwc,
)

# ---------------------------------------------------------------- shapes and values


@pytest.mark.parametrize(
    ("make", "out_shape"),
    [
        (lambda: MaxPool2d(2), (2, 3, 6, 5)),
        (lambda: MaxPool2d(3, stride=2, padding=1), (2, 3, 6, 6)),
        (lambda: MaxPool2d(2, ceil_mode=True), (2, 3, 6, 6)),
        (lambda: MaxPool2d(3, stride=1, dilation=2), (2, 3, 8, 7)),
        (lambda: AvgPool2d(2), (2, 3, 6, 5)),
        (lambda: AvgPool2d((3, 1), stride=(1, 2), padding=(1, 0)), (2, 3, 12, 6)),
        (lambda: GlobalAvgPool2d(), (2, 3)),
        (lambda: Flatten(), (2, 3 * 12 * 11)),
        (lambda: Flatten(2), (2, 3, 12 * 11)),
        (lambda: Flatten(0, 1), (6, 12, 11)),
    ],
)
def test_output_shape(make, out_shape):
    assert output_spec(make, (2, 3, 12, 11)).shape == out_shape


def test_stride_defaults_to_the_kernel_and_attributes_are_normalised():
    pool = MaxPool2d((3, 2))
    assert (pool.kernel_size, pool.stride, pool.padding, pool.dilation) == (
        (3, 2), (3, 2), (0, 0), (1, 1)
    )  # fmt: skip
    assert pool.ceil_mode is False
    avg = AvgPool2d(3, 1, 1, count_include_pad=False, divisor_override=4)
    assert (avg.kernel_size, avg.stride, avg.padding) == ((3, 3), (1, 1), (1, 1))
    assert avg.count_include_pad is False and avg.divisor_override == 4


def test_forward_and_parameter_free_values():
    x = random_input((2, 3, 9, 8))
    pool = MaxPool2d(3, stride=2, padding=1)  # values: checked against PyTorch below
    np.testing.assert_array_equal(pool.forward(x), pool(x))
    np.testing.assert_allclose(GlobalAvgPool2d()(x), x.mean(axis=(2, 3)), atol=1e-6)
    np.testing.assert_array_equal(Flatten()(x), x.reshape(2, -1))
    np.testing.assert_array_equal(Flatten().forward(x), x.reshape(2, -1))


def test_no_parameters():
    for layer in (MaxPool2d(2), AvgPool2d(2), GlobalAvgPool2d(), Flatten()):
        assert layer.parameters() == []


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: MaxPool2d(0), ValueError, r"^MaxPool2d kernel_size must be positive, got 0$"),
        (lambda: MaxPool2d(2, stride=(1, 2, 3)), ValueError,
         r"^MaxPool2d stride must be an int or a pair \(h, w\), got 3 values"),
        (lambda: MaxPool2d(3, padding=2), ValueError,
         r"^MaxPool2d padding must be at most half the kernel size, got padding=\(2, 2\) "
         r"for kernel_size=\(3, 3\)$"),
        (lambda: MaxPool2d(2, dilation=0), ValueError, r"^MaxPool2d dilation must be positive"),
        (lambda: MaxPool2d(2, ceil_mode="yes"), TypeError,
         r"^MaxPool2d ceil_mode must be a bool, got 'yes' \(str\)$"),
        (lambda: MaxPool2d(2, 2, 0, 1, 1), TypeError,
         r"^MaxPool2d return_indices must be a bool, got 1 \(int\)$"),
        (lambda: AvgPool2d(2.5), TypeError, r"^AvgPool2d kernel_size must be an int or a pair"),
        (lambda: AvgPool2d(2, padding=-1), ValueError, r"^AvgPool2d padding must be >= 0"),
        (lambda: AvgPool2d(2, count_include_pad=1), TypeError,
         r"^AvgPool2d count_include_pad must be a bool, got 1 \(int\)$"),
        (lambda: AvgPool2d(2, divisor_override=0), ValueError,
         r"^AvgPool2d divisor_override must be non-zero, got 0$"),
        (lambda: AvgPool2d(2, divisor_override="4"), TypeError,
         r"^AvgPool2d divisor_override must be a number, got '4'$"),
        (lambda: Flatten(1.0), TypeError, r"^Flatten start_dim must be an int, got 1.0$"),
        (lambda: AdaptiveAvgPool2d((1, 2, 3)), ValueError,
         r"^AdaptiveAvgPool2d output_size must be an int or a pair \(h, w\), got 3 values"),
        (lambda: AdaptiveMaxPool2d(-1), ValueError, r"^AdaptiveMaxPool2d output_size must be >= 0"),
        (lambda: AdaptiveMaxPool2d(2, "no"), TypeError,
         r"^AdaptiveMaxPool2d return_indices must be a bool"),
        (lambda: MaxUnpool2d(0), ValueError, r"^MaxUnpool2d kernel_size must be positive"),
        (lambda: MaxUnpool2d(2, padding=-1), ValueError, r"^MaxUnpool2d padding must be >= 0"),
    ],
)  # fmt: skip
def test_constructor_errors(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize(
    ("layer", "name"),
    [
        (MaxPool2d(2), "MaxPool2d"),
        (AvgPool2d(2), "AvgPool2d"),
        (GlobalAvgPool2d(), "GlobalAvgPool2d"),
        (AdaptiveAvgPool2d(2), "AdaptiveAvgPool2d"),
        (AdaptiveMaxPool2d(2), "AdaptiveMaxPool2d"),
    ],
)
def test_input_errors_name_the_layer(layer, name):
    with pytest.raises(
        ValueError,
        match=rf"^{name} expected (3D \(unbatched: channels, height, width\) or )?4D "
        r"(input )?\(batch, channels, height, width\)( input)?, got 5D: \(1, 1, 3, 8, 8\)$",
    ):
        layer(jnp.ones((1, 1, 3, 8, 8)))
    kinds = "(a )?floating-point (or integer )?input"
    with pytest.raises(TypeError, match=rf"^{name} expected {kinds}"):
        layer(jnp.ones((1, 3, 8, 8), jnp.complex64))


def test_kernel_larger_than_input():
    with pytest.raises(ValueError, match=r"^MaxPool2d kernel \(5, 5\) does not fit the padded"):
        MaxPool2d(5)(jnp.ones((1, 1, 3, 3)))


def test_flatten_dims_out_of_range():
    with pytest.raises(
        ValueError, match=r"^Flatten cannot flatten dims 1..-1 of a 1D input \(4,\)$"
    ):
        Flatten()(jnp.ones((4,)))
    with pytest.raises(ValueError, match=r"^Flatten cannot flatten dims 2..1 of a 4D input"):
        Flatten(2, 1)(jnp.ones((1, 2, 3, 4)))


# ---------------------------------------------------------------- repr


@pytest.mark.parametrize(
    ("layer", "text"),
    [
        (MaxPool2d(2), "MaxPool2d(kernel_size=(2, 2), stride=(2, 2))"),
        (MaxPool2d(3, 2, 1, dilation=2, ceil_mode=True),
         "MaxPool2d(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), dilation=(2, 2), "
         "ceil_mode=True)"),
        (AvgPool2d((2, 3)), "AvgPool2d(kernel_size=(2, 3), stride=(2, 3))"),
        (AvgPool2d(3, 1, 1, count_include_pad=False, divisor_override=2),
         "AvgPool2d(kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), count_include_pad=False, "
         "divisor_override=2)"),
        (MaxPool2d(2, return_indices=True),
         "MaxPool2d(kernel_size=(2, 2), stride=(2, 2), return_indices=True)"),
        (GlobalAvgPool2d(), "GlobalAvgPool2d()"),
        (Flatten(), "Flatten(start_dim=1, end_dim=-1)"),
        (AdaptiveAvgPool2d(7), "AdaptiveAvgPool2d(output_size=(7, 7))"),
        (AdaptiveMaxPool2d((None, 3), True),
         "AdaptiveMaxPool2d(output_size=(None, 3), return_indices=True)"),
        (MaxUnpool2d(3, 2, 1), "MaxUnpool2d(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))"),
    ],
)  # fmt: skip
def test_repr(layer, text):
    assert repr(layer) == text


# ---------------------------------------------------------------- PyTorch


@pytest.mark.parametrize(
    ("kind", "config"),
    [
        ("max", {"kernel_size": 3, "stride": 2, "padding": 1}),
        ("max", {"kernel_size": (2, 3), "stride": 1, "dilation": (2, 1), "ceil_mode": True}),
        ("avg", {"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False}),
        ("avg", {"kernel_size": (3, 2), "stride": (2, 1), "padding": (1, 0), "ceil_mode": True}),
        ("avg", {"kernel_size": 2, "divisor_override": 3}),
    ],
)
def test_matches_torch(kind, config):
    torch = pytest.importorskip("torch")
    torch_cls, ours = (
        (torch.nn.MaxPool2d, MaxPool2d) if kind == "max" else (torch.nn.AvgPool2d, AvgPool2d)
    )
    x = np.array(random_input((2, 3, 9, 8)))  # writable, for torch.from_numpy
    expected = torch_cls(**config)(torch.from_numpy(x)).numpy()
    assert_close(ours(**config)(jnp.asarray(x)), expected)


def test_global_avg_pool_and_flatten_match_torch():
    torch = pytest.importorskip("torch")
    x = np.array(random_input((2, 3, 9, 8)))  # writable, for torch.from_numpy
    gap = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    assert_close(GlobalAvgPool2d()(jnp.asarray(x)), gap(torch.from_numpy(x)).numpy())
    np.testing.assert_array_equal(
        Flatten(1, 2)(jnp.asarray(x)), torch.nn.Flatten(1, 2)(torch.from_numpy(x)).numpy()
    )


# ---------------------------------------------------------------- PyTorch's positional order


def test_positional_arguments_follow_torch():
    torch = pytest.importorskip("torch")
    x = np.array(random_input((2, 3, 9, 8)))
    tx = torch.from_numpy(x)
    # MaxPool2d(kernel_size, stride, padding, dilation, return_indices, ceil_mode)
    y, indices = MaxPool2d(3, 2, 1, 2, True, True)(jnp.asarray(x))
    t_y, t_indices = torch.nn.MaxPool2d(3, 2, 1, 2, True, True)(tx)
    assert_close(y, t_y.numpy())
    np.testing.assert_array_equal(np.asarray(indices), t_indices.numpy())
    # AvgPool2d(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    for args in [(3, 2, 1, True, False), (2, 1, 0, False, True, 3)]:
        expected = torch.nn.AvgPool2d(*args)(tx).numpy()
        assert_close(AvgPool2d(*args)(jnp.asarray(x)), expected)


@pytest.mark.parametrize("output_size", [(3, 4), 5, (None, 2), (11, 9)])
def test_adaptive_layers_match_torch(output_size):
    torch = pytest.importorskip("torch")
    x = np.array(random_input((2, 3, 7, 6)))
    tx = torch.from_numpy(x)
    expected = torch.nn.AdaptiveAvgPool2d(output_size)(tx).numpy()
    assert_close(AdaptiveAvgPool2d(output_size)(jnp.asarray(x)), expected)
    y, indices = AdaptiveMaxPool2d(output_size, True)(jnp.asarray(x))
    t_y, t_indices = torch.nn.AdaptiveMaxPool2d(output_size, True)(tx)
    assert_close(y, t_y.numpy())
    np.testing.assert_array_equal(np.asarray(indices), t_indices.numpy())
    assert_close(AdaptiveMaxPool2d(output_size)(jnp.asarray(x)), t_y.numpy())


def test_max_unpool_layer_round_trip_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.array(random_input((2, 3, 9, 8)))
    tx = torch.from_numpy(x)
    y, indices = MaxPool2d(3, 2, 1, return_indices=True)(jnp.asarray(x))
    t_y, t_indices = torch.nn.MaxPool2d(3, 2, 1, return_indices=True)(tx)
    out = MaxUnpool2d(3, 2, 1)(y, indices, output_size=x.shape)
    expected = torch.nn.MaxUnpool2d(3, 2, 1)(t_y, t_indices, output_size=x.shape).numpy()
    assert out.shape == expected.shape == x.shape
    assert_close(out, expected)
    assert_close(MaxUnpool2d(3, 2, 1).forward(y, indices, x.shape), expected)
    with pytest.raises(ValueError, match=r"^MaxUnpool2d expected indices of the input's shape"):
        MaxUnpool2d(3, 2, 1)(y, indices[:1])


@pytest.mark.parametrize(
    "make",
    [
        lambda: MaxPool2d(3, 2, 1),
        lambda: MaxPool2d(2, return_indices=True),
        lambda: AvgPool2d(3, 2, 1, True, False),
        lambda: AdaptiveAvgPool2d((3, 4)),
        lambda: AdaptiveMaxPool2d((3, 4), True),
    ],
)
def test_empty_batch(make):
    out = make()(jnp.zeros((0, 3, 9, 8)))
    expected = output_spec(make, (2, 3, 9, 8))
    for got, full in zip(*(o if isinstance(o, tuple) else (o,) for o in (out, expected))):
        assert got.shape == (0, *full.shape[1:])


@pytest.mark.parametrize(
    ("layer", "name"),
    [
        (MaxPool2d(2), "MaxPool2d"),
        (AvgPool2d(2), "AvgPool2d"),
        (AdaptiveAvgPool2d(2), "AdaptiveAvgPool2d"),
        (AdaptiveMaxPool2d(2), "AdaptiveMaxPool2d"),
        (GlobalAvgPool2d(), "GlobalAvgPool2d"),
    ],
)
def test_torch_tensor_input_is_refused(layer, name):
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=rf"^{name} input is a torch.Tensor"):
        layer(torch.ones(1, 2, 4, 4))


# ---------------------------------------------------------------- channels last (NHWC)


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
@pytest.mark.parametrize(
    "name, args, shape",
    [
        ("MaxPool2d", (3, 2, 1), (2, 3, 9, 8)),
        ("MaxPool2d", ((2, 3), 1, 0, (2, 1), True, True), (2, 3, 7, 8)),  # indices, ceil_mode
        ("MaxPool2d", (2, 3, 0, 1, True), (3, 7, 8)),  # stride > kernel, unbatched, indices
        ("AvgPool2d", (3, 2, 1, False, False), (2, 3, 9, 8)),
        ("AvgPool2d", ((3, 2), (2, 1), (1, 0), True, True, 3), (1, 2, 7, 6)),
        ("AdaptiveAvgPool2d", ((3, None),), (2, 3, 7, 6)),
        ("AdaptiveMaxPool2d", ((4, 3), True), (2, 3, 7, 6)),
        ("AdaptiveMaxPool2d", (5,), (3, 4, 9)),  # unbatched
    ],
)
def test_pool_layers_nhwc_match_torch(name, args, shape, jit):
    """Values, gradients and indices (``h * W + w``, laid out like the output) of the
    channels-last layer equal torch's, moved to channels last."""
    torch = pytest.importorskip("torch")
    from jspatial import layers

    layer = getattr(layers, name)(*args, data_format="NHWC")
    assert repr(layer).endswith("data_format=NHWC)")
    compare_nhwc_with_torch(layer, getattr(torch.nn, name)(*args), random_input(shape), jit=jit)


@pytest.mark.parametrize("shape", [(2, 3, 9, 8), (3, 9, 8)], ids=["batched", "unbatched"])
def test_max_unpool_nhwc_round_trip_matches_torch(shape):
    """MaxPool2d -> MaxUnpool2d channels last, with ``output_size`` as ``(H, W)`` and as the
    full NHWC shape: torch's result, moved to channels last."""
    torch = pytest.importorskip("torch")
    x = np.array(random_input(shape))
    t_y, t_indices = torch.nn.MaxPool2d(3, 2, 1, return_indices=True)(torch.from_numpy(x))
    unpooled = torch.nn.MaxUnpool2d(3, 2, 1)(t_y, t_indices, output_size=shape[-2:])
    expected = to_nhwc(unpooled.numpy())
    y, indices = MaxPool2d(3, 2, 1, return_indices=True, data_format="NHWC")(to_nhwc(x))
    np.testing.assert_array_equal(np.asarray(indices), to_nhwc(t_indices.numpy()))
    unpool = MaxUnpool2d(3, 2, 1, data_format="NHWC")
    expected_repr = (
        "MaxUnpool2d(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), data_format=NHWC)"
    )
    assert repr(unpool) == expected_repr
    # (H, W), and the full shape as torch takes it: batched (N, H, W, C) only.
    for size in (shape[-2:], *([to_nhwc(x).shape] if len(shape) == 4 else [])):
        out = unpool(y, indices, output_size=size)
        assert out.shape == expected.shape
        assert_close(out, expected)


def test_global_avg_pool_and_flatten_nhwc():
    """GlobalAvgPool2d in NHWC gives the NCHW features; ``Flatten(data_format='NHWC')``
    flattens channels-last input in torch's (c, h, w) order, ``Flatten()`` as it is."""
    torch = pytest.importorskip("torch")
    x = np.array(random_input((2, 3, 5, 4)))
    tx = torch.from_numpy(x)
    gap = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    assert_close(GlobalAvgPool2d(data_format="NHWC")(to_nhwc(x)), gap(tx).numpy())
    assert repr(GlobalAvgPool2d(data_format="NHWC")) == "GlobalAvgPool2d(data_format=NHWC)"
    for dims in [(), (1, 2), (2, 3), (0, 1)]:
        expected = torch.nn.Flatten(*dims)(tx).numpy()
        np.testing.assert_array_equal(Flatten(*dims, data_format="NHWC")(to_nhwc(x)), expected)
    plain = Flatten()(to_nhwc(x))  # (h, w, c) order: a reshape of what it is given
    np.testing.assert_array_equal(plain, to_nhwc(x).reshape(2, -1))
    assert not np.array_equal(plain, torch.nn.Flatten()(tx).numpy())
    with pytest.raises(ValueError, match=r"^Flatten with data_format='NHWC' expected 4D input"):
        Flatten(data_format="NHWC")(jnp.ones((3, 4)))


@pytest.mark.parametrize(
    "make",
    [
        lambda f: MaxPool2d(2, data_format=f),
        lambda f: AvgPool2d(2, data_format=f),
        lambda f: AdaptiveAvgPool2d(2, data_format=f),
        lambda f: AdaptiveMaxPool2d(2, data_format=f),
        lambda f: MaxUnpool2d(2, data_format=f),
        lambda f: GlobalAvgPool2d(data_format=f),
        lambda f: Flatten(data_format=f),
    ],
)
def test_bad_data_format_is_refused_at_construction(make):
    name = type(make("NCHW")).__name__
    with pytest.raises(
        ValueError, match=rf"^{name} data_format must be 'NCHW' or 'NHWC', got 'NWHC'$"
    ):
        make("NWHC")
    with pytest.raises(
        TypeError, match=rf"^{name} data_format must be 'NCHW' or 'NHWC', got 3 \(int\)$"
    ):
        make(3)
