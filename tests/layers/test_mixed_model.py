"""A model mixing every kind of layer, against its PyTorch twin, weights moved both ways.

Reflect-padded convolution, transposed convolution (grouped, strided, with
``output_padding``), two batch norms (one with PyTorch's cumulative average,
``momentum=None``), max pooling with indices and its unpooling, adaptive average
pooling and a linear layer. Weights go PyTorch -> jspatial; then both give the
same logits in evaluation and training mode, one SGD step moves both to the same
parameters and running statistics, and the exported state loads into a fresh
PyTorch model with ``strict=True``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jspatial.layers import (
    AdaptiveAvgPool2d,
    BatchNorm2d,
    Conv2d,
    ConvTranspose2d,
    Flatten,
    LoadResult,
    MaxPool2d,
    MaxUnpool2d,
    Module,
    load_torch_state_dict,
    to_torch_state_dict,
)
from tests.layers.helpers import assert_close, randomise_torch, rngs

SHAPE = (4, 3, 9, 7)  # odd, non-square
CLASSES = 5
LR = 0.1


class Mixed(Module):
    def __init__(self, *, rngs):
        self.conv = Conv2d(3, 8, 3, padding=1, padding_mode="reflect", rngs=rngs)
        self.bn1 = BatchNorm2d(8)
        self.up = ConvTranspose2d(
            8, 6, 3, stride=2, padding=1, output_padding=1, groups=2, rngs=rngs
        )
        self.bn2 = BatchNorm2d(6, momentum=None)
        self.pool = MaxPool2d(2, return_indices=True)
        self.unpool = MaxUnpool2d(2)
        self.adaptive = AdaptiveAvgPool2d((3, 2))
        self.flatten = Flatten()
        self.fc = nnx.Linear(6 * 3 * 2, CLASSES, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn1(self.conv(x)))
        x = nnx.relu(self.bn2(self.up(x)))  # (N, 6, 18, 14)
        x = self.unpool(*self.pool(x))  # the maxima in place, zeros elsewhere
        return self.fc(self.flatten(self.adaptive(x)))


def torch_mixed(torch):
    nn = torch.nn

    class TorchMixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect")
            self.bn1 = nn.BatchNorm2d(8)
            self.up = nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
            self.bn2 = nn.BatchNorm2d(6, momentum=None)
            self.pool = nn.MaxPool2d(2, return_indices=True)
            self.unpool = nn.MaxUnpool2d(2)
            self.adaptive = nn.AdaptiveAvgPool2d((3, 2))
            self.flatten = nn.Flatten()
            self.fc = nn.Linear(6 * 3 * 2, CLASSES)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv(x)))
            x = torch.relu(self.bn2(self.up(x)))
            x = self.unpool(*self.pool(x))
            return self.fc(self.flatten(self.adaptive(x)))

    return TorchMixed()


def assert_same_state(ours, reference):
    """Every parameter, running statistic and batch count, by PyTorch's name."""
    exported = to_torch_state_dict(ours)
    expected = reference.state_dict()
    assert list(exported) == list(expected)
    for key, tensor in expected.items():
        if key.endswith("num_batches_tracked"):
            assert int(exported[key]) == int(tensor), key
        else:
            assert_close(exported[key].numpy(), tensor.numpy(), atol=2e-4, rtol=2e-4)


def test_mixed_model_matches_torch_both_ways(torch):
    torch.manual_seed(0)
    reference = randomise_torch(torch, torch_mixed(torch), seed=1)
    ours = Mixed(rngs=rngs(2))
    assert load_torch_state_dict(ours, reference.state_dict()) == LoadResult([], [])
    assert_same_state(ours, reference)

    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    labels = np.arange(SHAPE[0]) % CLASSES
    xt, xj = torch.from_numpy(x), jnp.asarray(x)

    # Evaluation: the loaded running statistics.
    reference.eval()
    ours.eval()
    with torch.no_grad():
        assert_close(ours(xj), reference(xt).numpy())

    # Training: one SGD step on the cross-entropy, in both frameworks.
    reference.train()
    ours.train()
    logits_t = reference(xt)
    loss_t = torch.nn.functional.cross_entropy(logits_t, torch.from_numpy(labels))
    loss_t.backward()
    with torch.no_grad():
        for p in reference.parameters():
            p -= LR * p.grad

    optimizer = nnx.Optimizer(ours, optax.sgd(LR), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, labels):
        def loss_fn(model):
            logits = model(x)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, logits

        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return loss, logits

    loss, logits = train_step(ours, optimizer, xj, jnp.asarray(labels))
    assert_close(logits, logits_t.detach().numpy())
    assert_close(loss, loss_t.item())
    # Parameters after the step (so every gradient), running statistics (bn2's from the
    # cumulative average over its loaded count) and the counts themselves.
    assert_same_state(ours, reference)

    # Export: a fresh PyTorch model takes the state as written and gives the same logits.
    fresh = torch_mixed(torch)
    fresh.load_state_dict(to_torch_state_dict(ours), strict=True)
    assert_same_state(ours, fresh)
    fresh.eval()
    ours.eval()
    x2 = rng.standard_normal(SHAPE).astype(np.float32)
    with torch.no_grad():
        assert_close(ours(jnp.asarray(x2)), fresh(torch.from_numpy(x2)).numpy())
