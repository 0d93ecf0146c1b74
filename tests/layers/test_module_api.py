"""The PyTorch-style surface and Flax NNX composition: forward, parameters(), eval()/train(),
nnx.jit/grad/value_and_grad/split/merge/Optimizer/Sequential, repr of composite models."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jspatial.layers import (
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    Flatten,
    GlobalAvgPool2d,
    MaxPool2d,
    Module,
    named_parameters,
    named_variables,
    parameters,
)
from tests.layers.helpers import random_input, rngs

X = random_input((2, 3, 8, 8))


class Block(Module):
    """A user's module: direct children, an nnx.List and an nnx.Sequential."""

    def __init__(self, *, rngs):
        self.conv1 = Conv2d(3, 8, 3, padding=1, rngs=rngs)
        self.bn1 = BatchNorm2d(8)
        self.branches = nnx.List([BatchNorm2d(8), nnx.Dropout(0.5, rngs=rngs)])
        self.head = nnx.Sequential(GlobalAvgPool2d(), nnx.Linear(8, 4, rngs=rngs))

    def __call__(self, x):
        return self.head(nnx.relu(self.branches[0](self.bn1(self.conv1(x)))))


class Outer(nnx.Module):
    """A plain nnx.Module, not a jspatial one, holding the block twice removed."""

    def __init__(self, *, rngs):
        self.features = nnx.Sequential(Block(rngs=rngs))
        self.bn = BatchNorm2d(4)


# ---------------------------------------------------------------- forward and parameters()


def test_forward_is_call():
    conv = Conv2d(3, 8, 3, padding=1, rngs=rngs())
    np.testing.assert_array_equal(conv.forward(X), conv(X))
    block = Block(rngs=rngs())  # a user's Module inherits it too
    np.testing.assert_array_equal(block.forward(X), block(X))
    # (Each layer's own tests call forward as well.)


def test_parameters_follow_attribute_order_recursively():
    block = Block(rngs=rngs())
    names = [name for name, _ in block.named_parameters()]
    assert names == [
        "conv1.weight", "conv1.bias",
        "bn1.weight", "bn1.bias",
        "branches.0.weight", "branches.0.bias",
        "head.1.weight", "head.1.bias",  # PyTorch's names for an nn.Sequential and nn.Linear
    ]  # fmt: skip
    arrays = block.parameters()
    assert [a.shape for a in arrays] == [
        (8, 3, 3, 3), (8,), (8,), (8,), (8,), (8,), (4, 8), (4,)  # Linear: PyTorch's (out, in)
    ]  # fmt: skip
    np.testing.assert_array_equal(arrays[6], block.head.layers[1].kernel[...].T)
    assert all(isinstance(a, jax.Array) for a in arrays)
    np.testing.assert_array_equal(arrays[0], block.conv1.weight[...])
    # The function form takes any nnx.Module, here a plain one.
    assert [n for n, _ in named_parameters(Outer(rngs=rngs()))][-3:] == [
        "features.0.head.1.bias", "bn.weight", "bn.bias"
    ]  # fmt: skip
    # The set of parameters is nnx's: only the order differs (nnx sorts by name).
    assert sum(a.size for a in arrays) == sum(
        v.size for _, v in nnx.to_flat_state(nnx.state(block, nnx.Param))
    )


def test_running_statistics_are_not_parameters():
    stats = named_variables(BatchNorm2d(3), nnx.BatchStat)
    assert [path for path, _ in stats] == [
        ("running_mean",), ("running_var",), ("num_batches_tracked",)
    ]  # fmt: skip
    assert len(BatchNorm2d(3).parameters()) == 2


def test_shared_layer_is_listed_once():
    conv = Conv2d(3, 8, 3, rngs=rngs())
    model = nnx.Sequential(conv, nnx.relu, conv)
    assert len(parameters(model)) == 2


def test_parameter_count_of_a_small_cnn():
    def build():
        r = nnx.Rngs(0)
        return nnx.Sequential(
            Conv2d(3, 16, 3, padding=1, rngs=r), nnx.relu, MaxPool2d(2),
            Conv2d(16, 32, 3, padding=1, rngs=r), nnx.relu, MaxPool2d(2),
            Flatten(), nnx.Linear(2048, 10, rngs=r),
        )  # fmt: skip

    # Built abstractly (shapes only, nothing compiled or drawn).
    model = nnx.eval_shape(build)
    sizes = [math.prod(v.shape) for _, v in named_variables(model, nnx.Param)]
    assert sizes == [432, 16, 4608, 32, 20480, 10]
    assert sum(sizes) == 25_578


# ---------------------------------------------------------------- eval() / train()


def _modes(model):
    """(use_running_average of every BatchNorm2d, deterministic of every Dropout)."""
    found = [m for _, m in nnx.iter_modules(model)]
    return (
        {m.use_running_average for m in found if isinstance(m, BatchNorm2d)},
        {m.deterministic for m in found if isinstance(m, nnx.Dropout)},
    )


def test_eval_and_train_reach_every_nested_batch_norm():
    model = Outer(rngs=rngs())
    assert sum(isinstance(m, BatchNorm2d) for _, m in nnx.iter_modules(model)) == 3
    assert _modes(model) == ({False}, {False})
    model.eval()
    assert _modes(model) == ({True}, {True})
    model.train()
    assert _modes(model) == ({False}, {False})
    # From the middle of the tree: only that subtree switches.
    model.features.eval()
    assert model.features.layers[0].branches[0].use_running_average is True
    assert model.bn.use_running_average is False
    # Layers without a mode gain no attribute.
    assert not hasattr(model.features.layers[0].conv1, "use_running_average")


def test_sequential_eval_stops_running_statistic_updates():
    model = nnx.Sequential(Conv2d(3, 8, 3, padding=1, rngs=rngs()), BatchNorm2d(8), nnx.relu)
    model(X)
    moved = np.array(model.layers[1].running_mean[...])
    assert np.any(moved != 0)
    model.eval()
    model(X)
    np.testing.assert_array_equal(model.layers[1].running_mean[...], moved)


# ---------------------------------------------------------------- transforms


def _conv_bn_pool():
    """Conv -> BatchNorm -> ReLU -> MaxPool -> AvgPool."""
    return nnx.Sequential(
        Conv2d(3, 8, 3, padding=1, rngs=rngs()), BatchNorm2d(8), nnx.relu,
        MaxPool2d(2), AvgPool2d(2),
    )  # fmt: skip


def test_gradients_reach_every_parameter():
    model = _conv_bn_pool()
    # With running statistics, as in evaluation: in training mode the batch mean
    # cancels the convolution's bias, whose gradient is then (numerically) zero.
    model.eval()
    target = random_input((2, 8, 2, 2), seed=7)  # a random weighting: no gradient cancels
    # Under nnx.jit: one compilation of the whole backward pass, cheaper than the
    # layer-by-layer ones of an eager nnx.grad.
    grads = nnx.jit(nnx.grad(lambda model: jnp.sum(model(X) * target)))(model)
    flat = nnx.to_flat_state(grads)
    assert {path for path, _ in flat} == {
        ("layers", 0, "weight"), ("layers", 0, "bias"), ("layers", 1, "weight"),
        ("layers", 1, "bias"),
    }  # fmt: skip
    for path, grad in flat:
        assert np.count_nonzero(grad[...]) == grad[...].size, path


def test_split_merge_round_trip():
    model = _conv_bn_pool()
    model.layers[1].running_mean[...] = jnp.linspace(-1.0, 1.0, 8)
    model.layers[1].running_var[...] = jnp.linspace(0.5, 2.0, 8)
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    assert {p for p, _ in nnx.to_flat_state(stats)} == {
        ("layers", 1, "running_mean"), ("layers", 1, "running_var"),
        ("layers", 1, "num_batches_tracked"),
    }  # fmt: skip
    clone = nnx.merge(graphdef, params, stats)
    assert isinstance(clone.layers[0], Conv2d) and clone.layers[0].padding == ((1, 1), (1, 1))
    # Same parameters in the same order, though NNX rebuilt ``clone`` attribute by
    # attribute in alphabetical order.
    assert [n for n, _ in named_parameters(clone)] == [
        "0.weight", "0.bias", "1.weight", "1.bias"
    ]  # fmt: skip
    for a, b in zip(parameters(clone), parameters(model)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(clone.layers[1].running_var[...], jnp.linspace(0.5, 2.0, 8))
    model.eval()
    clone.eval()
    np.testing.assert_array_equal(clone(X), model(X))


def test_optimizer_steps_lower_the_loss_and_move_everything():
    r = rngs(3)
    model = nnx.Sequential(
        # No bias before a training-mode BatchNorm: the batch mean would cancel it.
        Conv2d(3, 8, 3, padding=1, bias=False, rngs=r), BatchNorm2d(8), nnx.relu, MaxPool2d(2),
        AvgPool2d(2), Flatten(), nnx.Linear(8 * 2 * 2, 4, rngs=r),
    )  # fmt: skip
    optimizer = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
    x = random_input((8, 3, 8, 8), seed=1)
    labels = jnp.arange(8) % 4

    @nnx.jit
    def train_step(model, optimizer, x, labels):
        def loss_fn(model):
            logits = model(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss, grads

    names = [n for n, _ in named_parameters(model)]
    before_params = [np.array(p) for p in parameters(model)]
    before_stats = np.array(model.layers[1].running_var[...])
    losses = []
    for step in range(6):
        loss, grads = train_step(model, optimizer, x, labels)
        losses.append(float(loss))
        if step == 0:  # the gradient reaches every parameter
            for path, grad in nnx.to_flat_state(grads):
                assert np.any(np.asarray(grad[...]) != 0), path
    assert losses[-1] < losses[0]
    assert [n for n, _ in named_parameters(model)] == names  # order survives nnx.jit
    for name, old, new in zip(names, before_params, parameters(model)):
        assert not np.allclose(old, np.asarray(new)), f"{name} did not move"
    # The running statistics were updated inside the jitted step.
    assert not np.allclose(before_stats, np.asarray(model.layers[1].running_var[...]))


# ---------------------------------------------------------------- repr


def test_repr_of_composite_models():
    model = nnx.Sequential(Conv2d(3, 8, 3, padding=1, rngs=rngs()), BatchNorm2d(8), MaxPool2d(2))
    text = repr(model)
    assert "Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))" in text
    assert (
        "BatchNorm2d(8, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)"
        in text
    )
    assert "MaxPool2d(kernel_size=(2, 2), stride=(2, 2))" in text
    # A user's Module keeps Flax's tree display, with the one-line layers inside.
    text = repr(Block(rngs=rngs()))
    assert text.startswith("Block(")
    assert "conv1=Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))" in text


@pytest.mark.parametrize("layer", [Flatten(), GlobalAvgPool2d(), MaxPool2d(2), AvgPool2d(3)])
def test_str_is_repr(layer):
    assert str(layer) == repr(layer)
