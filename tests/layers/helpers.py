"""Shared by the layer tests: tolerances, and one small CNN written for both frameworks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jspatial.layers import BatchNorm2d, Conv2d, Flatten, MaxPool2d, Module

# float32 against PyTorch or the pure functions: the same maths summed in a
# different order, so a few ulps of the largest partial sums.
ATOL = 1e-4
RTOL = 1e-4
# bfloat16 keeps 8 mantissa bits.
BF16_ATOL = 5e-2


def rngs(seed: int = 0) -> nnx.Rngs:
    """``nnx.Rngs`` on the ``rbg`` generator.

    The default threefry generator costs about two seconds of XLA compilation on
    CPU for every new parameter shape; ``rbg`` a fraction of that. The layers
    do not care which generator feeds them (``test_conv_layer`` checks the
    default once), and this keeps the suite fast.
    """
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def output_spec(make_layer, shape, dtype=jnp.float32) -> jax.ShapeDtypeStruct:
    """Shape and dtype of ``make_layer()(x)``, traced without compiling or running anything."""
    return nnx.eval_shape(lambda: make_layer()(jnp.zeros(shape, dtype)))


def assert_close(actual, expected, atol=ATOL, rtol=RTOL):
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), np.asarray(expected, np.float64), atol=atol, rtol=rtol
    )


def random_input(shape, seed=0, dtype=np.float32):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


def snapshot(model) -> dict:
    """Copies of every parameter and running statistic, by path."""
    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    return {path: np.array(v[...]) for path, v in nnx.to_flat_state(state)}


class SmallCNN(Module):
    """Conv-BN-ReLU-MaxPool twice, then Flatten and Linear; attribute names match TorchCNN."""

    def __init__(self, channels=(3, 8, 16), size=16, classes=10, *, rngs):
        c0, c1, c2 = channels
        self.conv1 = Conv2d(c0, c1, 3, padding=1, rngs=rngs)
        self.bn1 = BatchNorm2d(c1)
        self.conv2 = Conv2d(c1, c2, 3, padding=1, rngs=rngs)
        self.bn2 = BatchNorm2d(c2)
        self.pool = MaxPool2d(2)
        self.flatten = Flatten()
        self.fc = nnx.Linear(c2 * (size // 4) ** 2, classes, rngs=rngs)

    def __call__(self, x):
        x = self.pool(nnx.relu(self.bn1(self.conv1(x))))
        x = self.pool(nnx.relu(self.bn2(self.conv2(x))))
        return self.fc(self.flatten(x))


def torch_cnn(torch, channels=(3, 8, 16), size=16, classes=10):
    """The PyTorch twin of ``SmallCNN`` (same attribute names, so the same state_dict keys)."""
    nn = torch.nn
    c0, c1, c2 = channels

    class TorchCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(c0, c1, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(c1)
            self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(c2)
            self.pool = nn.MaxPool2d(2)
            self.flatten = nn.Flatten()
            self.fc = nn.Linear(c2 * (size // 4) ** 2, classes)

        def forward(self, x):
            x = self.pool(torch.relu(self.bn1(self.conv1(x))))
            x = self.pool(torch.relu(self.bn2(self.conv2(x))))
            return self.fc(self.flatten(x))

    return TorchCNN()


def randomise_torch(torch, model, seed=0):
    """Non-trivial weights and running statistics, so a wrong mapping cannot pass by luck."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(int(torch.randint(1, 100, (), generator=gen)))
                continue
            noise = torch.rand(tensor.shape, generator=gen)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + noise)
            elif name.endswith(("running_mean", "bias")):
                tensor.copy_(noise - 0.5)
            elif "bn" in name:  # batch-norm weight
                tensor.copy_(0.5 + noise)
            else:
                tensor.copy_((noise - 0.5) * 0.5)
    return model
