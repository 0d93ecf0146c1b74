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


def to_nhwc(a):
    """An NCHW array (or unbatched CHW) moved to channels last, as NumPy."""
    return np.moveaxis(np.asarray(a), -3, -1)


def compare_nhwc_with_torch(layer, reference, x, call=None, *, jit=False):
    """``layer`` (channels last) on ``to_nhwc(x)`` against torch's ``reference`` on ``x``:
    the outputs (indices exactly), and the gradients of the first output with respect to
    the input and the parameters, torch's moved to channels last. ``jit``: under
    ``nnx.jit``; else eagerly, under ``jax.disable_jit()``."""
    import pytest

    torch = pytest.importorskip("torch")
    call = call or (lambda m, x: m(x))
    first = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731
    reference.zero_grad()
    tx = torch.tensor(np.asarray(x), requires_grad=True)
    outs_t = call(reference, tx)
    cot = np.random.default_rng(3).standard_normal(tuple(first(outs_t).shape)).astype(np.float32)
    first(outs_t).backward(torch.tensor(cot))

    def forward_and_grads(model, x):
        outs = call(model, x)
        loss = lambda model, x: jnp.vdot(first(call(model, x)), to_nhwc(cot))  # noqa: E731
        return outs, nnx.grad(loss, argnums=(0, 1))(model, x)

    xj = jnp.asarray(to_nhwc(x))
    if jit:
        outs, (grads, dx) = nnx.jit(forward_and_grads)(layer, xj)
    else:
        with jax.disable_jit():
            outs, (grads, dx) = forward_and_grads(layer, xj)
    outs = outs if isinstance(outs, tuple) else (outs,)
    outs_t = outs_t if isinstance(outs_t, tuple) else (outs_t,)
    assert len(outs) == len(outs_t)
    assert_close(outs[0], to_nhwc(outs_t[0].detach().numpy()))
    for ours, theirs in zip(outs[1:], outs_t[1:]):  # pooling indices: exactly torch's
        np.testing.assert_array_equal(np.asarray(ours), to_nhwc(theirs.numpy()))
    assert_close(dx, to_nhwc(tx.grad.numpy()))
    for name in ("weight", "bias"):
        if getattr(layer, name, None) is not None:
            assert_close(getattr(grads, name)[...], getattr(reference, name).grad.numpy())


class SmallCNN(Module):
    """Conv-BN-ReLU-MaxPool twice, then Flatten and Linear; attribute names match TorchCNN.

    With ``data_format='NHWC'`` every layer runs channels last and ``Flatten`` orders the
    features as torch does, so a TorchCNN ``state_dict`` gives TorchCNN's logits."""

    def __init__(self, channels=(3, 8, 16), size=16, classes=10, *, rngs, data_format="NCHW"):
        c0, c1, c2 = channels
        fmt = {"data_format": data_format}
        self.conv1 = Conv2d(c0, c1, 3, padding=1, rngs=rngs, **fmt)
        self.bn1 = BatchNorm2d(c1, **fmt)
        self.conv2 = Conv2d(c1, c2, 3, padding=1, rngs=rngs, **fmt)
        self.bn2 = BatchNorm2d(c2, **fmt)
        self.pool = MaxPool2d(2, **fmt)
        self.flatten = Flatten(**fmt)
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
