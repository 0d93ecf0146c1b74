"""Tests for train/models.py: shapes, parameter counts, airbench's initialisation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jspatial as js
from jspatial.layers import BatchNorm2d, Conv2d, GlobalAvgPool2d, MaxPool2d
from tests.tolerances import assert_close
from train import models


def output_shape(model, x_shape=(2, 3, 32, 32)):
    """The logits' shape, by tracing only (no compilation, no FLOPs)."""
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    return jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, x).shape


@pytest.mark.parametrize(
    "name, trainable, frozen",
    [
        # airbench94 in PyTorch has 1,971,640 parameters; 288 of them (the whitening
        # filters) have requires_grad=False, as have the 1,152 BatchNorm scales (all ones).
        ("airbench94", 1_971_352, 288 + 2 * (64 + 256 + 256)),
        ("resnet18", 11_173_962, 0),  # the usual CIFAR ResNet-18 count
        ("vgg11", 9_228_362, 0),
        ("simple_cnn", 25_578, 0),
    ],
)
def test_shapes_and_parameter_counts(name, trainable, frozen):
    model = nnx.eval_shape(lambda: models.build_model(name))  # abstract: nothing is computed
    assert output_shape(model) == (2, 10)
    assert models.count_params(model) == trainable
    assert models.count_params(model, models.Frozen) == frozen


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'lenet'.*airbench94"):
        models.build_model("lenet")


@pytest.fixture(scope="module")
def airbench():
    return models.build_model("airbench94")


def test_airbench_structure(airbench):
    model = airbench
    assert isinstance(model.whiten.weight, models.Frozen)
    assert isinstance(model.whiten.bias, nnx.Param)
    assert model.whiten.weight.shape == (24, 3, 2, 2)
    for group in model.groups:
        for norm in (group.norm1, group.norm2):
            assert isinstance(norm.weight, models.Frozen) and isinstance(norm.bias, nnx.Param)
            assert norm.momentum == pytest.approx(0.4) and norm.eps == 1e-12
            np.testing.assert_array_equal(norm.weight[...], 1.0)
    # Only the six BatchNorm shifts get the bias learning rate.
    assert models.bn_bias_paths(model) == {
        ("groups", g, f"norm{i}", "bias") for g in range(3) for i in (1, 2)
    }


def test_airbench_convs_start_as_identity_on_their_inputs(airbench):
    for group in airbench.groups:
        for conv in (group.conv1, group.conv2):
            w = np.asarray(conv.weight[...])
            c_in = w.shape[1]
            expected = np.zeros((c_in, c_in, 3, 3), np.float32)
            expected[np.arange(c_in), np.arange(c_in), 1, 1] = 1
            np.testing.assert_array_equal(w[:c_in], expected)
            rest = w[c_in:]
            bound = 1 / np.sqrt(c_in * 9)  # PyTorch's default init elsewhere
            assert rest.size == 0 or (np.abs(rest).max() <= bound and rest.std() > bound / 3)


def test_dirac_init_is_identity_conv():
    x = np.random.default_rng(0).normal(size=(2, 5, 6, 6)).astype(np.float32)
    w = models.dirac_init(jnp.zeros((8, 5, 3, 3)), 5)
    y = js.conv2d(x, w, padding=1)
    np.testing.assert_allclose(y[:, :5], x, atol=1e-6)
    np.testing.assert_array_equal(y[:, 5:], 0)


def correlated_images(n=400, seed=0):
    """Smooth, channel-correlated random images: far from white."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3, 33, 33))
    x = x[:, :, 1:, 1:] + x[:, :, :-1, :-1] + 0.5 * x[:, :, 1:, :-1]  # spatial correlation
    mix = np.array([[1.0, 0.8, 0.6], [0.2, 1.0, 0.5], [0.1, 0.3, 1.0]])
    return np.einsum("dc,nchw->ndhw", mix, x).astype(np.float32)


def patch_covariance(out):
    flat = np.asarray(out, np.float64).transpose(1, 0, 2, 3).reshape(out.shape[1], -1)
    return flat @ flat.T / flat.shape[1]


def test_whitening_filters_decorrelate_patches():
    x = correlated_images()
    assert np.abs(patch_covariance(x) - np.eye(3)).max() > 0.5  # the input is correlated
    w = models.whitening_weights(x, kernel_size=2, eps=5e-4)
    assert w.shape == (24, 3, 2, 2)
    np.testing.assert_array_equal(w[12:], -w[:12])
    out = js.conv2d(jnp.asarray(x), w[:12])
    cov = patch_covariance(out)
    np.testing.assert_allclose(cov, np.eye(12), atol=2e-3)


def test_whitening_filters_are_ordered_by_eigenvalue():
    x = correlated_images(100)
    w = np.asarray(models.whitening_weights(x, eps=0.0))
    norms = np.linalg.norm(w[:12].reshape(12, -1), axis=1)  # = 1 / sqrt(eigenvalue)
    assert np.all(np.diff(norms) >= 0)  # largest eigenvalue (smallest filter) first


def test_init_whitening_sets_the_frozen_weight(airbench):
    model = nnx.clone(airbench)
    x = correlated_images(50)
    models.init_whitening(model, x)
    np.testing.assert_allclose(model.whiten.weight[...], models.whitening_weights(x), rtol=1e-6)
    models.init_whitening(models.build_model("simple_cnn"), x)  # no whitening layer: no-op


def test_first_conv():
    for name, shape in [("airbench94", (24, 3, 2, 2)), ("resnet18", (64, 3, 3, 3))]:
        model = nnx.eval_shape(lambda name=name: models.build_model(name))
        assert models.first_conv(model).weight.shape == shape


# ----------------------------------------------------------------------------- layouts


def test_model_input_moves_nchw_images_to_the_layout():
    x = jnp.arange(2 * 3 * 4 * 5, dtype=jnp.float32).reshape(2, 3, 4, 5)
    assert models.model_input(x, "NCHW") is x
    np.testing.assert_array_equal(models.model_input(x, "NHWC"), jnp.transpose(x, (0, 2, 3, 1)))


def _layers_take_data_format() -> bool:
    try:
        Conv2d(3, 4, 3, data_format="NHWC", rngs=nnx.Rngs(0))
        MaxPool2d(2, data_format="NHWC")
        BatchNorm2d(4, data_format="NHWC")
        GlobalAvgPool2d(data_format="NHWC")
    except TypeError:
        return False
    return True


SMALL_MODELS = {  # the models' structure, narrow: one forward pass each stays cheap
    "simple_cnn": lambda rngs, data_format: models.SimpleCNN(rngs=rngs, data_format=data_format),
    "airbench94": lambda rngs, data_format: models.Airbench94(
        widths=(8, 16, 16), rngs=rngs, data_format=data_format
    ),
    "resnet18": lambda rngs, data_format: models.ResNet18(
        widths=(4, 8, 8, 8), blocks=(1, 1, 1, 1), rngs=rngs, data_format=data_format
    ),
}


@pytest.mark.skipif(not _layers_take_data_format(), reason="the layers take no data_format yet")
@pytest.mark.parametrize("name", SMALL_MODELS)
def test_nhwc_model_matches_nchw_model_with_the_same_parameters(name):
    build = SMALL_MODELS[name]
    nchw = build(nnx.Rngs(jax.random.key(0, impl="rbg")), "NCHW")
    nhwc = build(nnx.Rngs(jax.random.key(0, impl="rbg")), "NHWC")
    same = jax.tree.map(np.array_equal, nnx.to_pure_dict(nnx.state(nchw)),
                        nnx.to_pure_dict(nnx.state(nhwc)))  # fmt: skip
    assert all(jax.tree.leaves(same))  # the same parameters (OIHW kernels) from the same key
    x = jax.random.normal(jax.random.key(0), (2, 3, 32, 32))
    models.init_whitening(nchw, x)
    models.init_whitening(nhwc, x)
    assert_close(nhwc(models.model_input(x, "NHWC")), nchw(x))


def test_gelu_values_are_jax_s_and_its_derivative_torch_s(x64):
    # gelu's hand-written derivative must be GELU's, in value (jax.nn.gelu's, bit for
    # bit: only the backward pass is new) and in gradient (torch's GELU, and float64
    # autodiff of jax.nn.gelu), over the range where the derivative bends and saturates.
    torch = pytest.importorskip("torch")
    x = np.linspace(-9.0, 9.0, 2001, dtype=np.float32)
    np.testing.assert_array_equal(models.gelu(x), jax.nn.gelu(x, approximate=False))

    dx = jax.grad(lambda v: models.gelu(v).sum())(x)
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.functional.gelu(xt).sum().backward()
    assert_close(dx, xt.grad.numpy())
    exact = jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))(x.astype(np.float64))
    assert_close(dx, exact)
    assert abs(float(dx[0])) < 1e-7 and abs(float(dx[-1]) - 1.0) < 1e-7  # saturated tails
    # Forward mode and second derivatives go through the same rule.
    _, tangent = jax.jvp(models.gelu, (x,), (np.ones_like(x),))
    np.testing.assert_array_equal(tangent, dx)
    # GELU'' = phi(x) (2 - x^2): by hand at x = 0 and sqrt(2), then where it bends.
    d2 = jax.vmap(jax.grad(jax.grad(models.gelu)))
    np.testing.assert_allclose(d2(np.array([0.0, np.sqrt(2.0)])), [2 / np.sqrt(2 * np.pi), 0.0],
                               atol=1e-15)  # fmt: skip
    xs = np.linspace(-4.0, 4.0, 81)
    exact2 = jax.vmap(jax.grad(jax.grad(lambda v: jax.nn.gelu(v, approximate=False))))(xs)
    assert_close(d2(xs), exact2, jnp.float64)
