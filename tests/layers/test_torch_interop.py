"""load_torch_state_dict / to_torch_state_dict, and the same CNN in PyTorch and jspatial."""

from __future__ import annotations

import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jspatial.layers import (
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    Flatten,
    GlobalAvgPool2d,
    LoadResult,
    MaxPool2d,
    MaxUnpool2d,
    StateDictError,
    load_torch_state_dict,
    named_parameters,
    to_torch_state_dict,
)
from tests.layers.helpers import (
    SmallCNN,
    assert_close,
    randomise_torch,
    rngs,
    snapshot,
    torch_cnn,
)

SIZE = 16  # input height and width of the small CNN


def numpy_state(model):
    """A ``state_dict`` of NumPy arrays, as a user without PyTorch would hold one."""
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def assert_model_unchanged(model, before):
    after = snapshot(model)
    assert after.keys() == before.keys()
    for path in before:
        np.testing.assert_array_equal(after[path], before[path], err_msg=str(path))


# ---------------------------------------------------------------- the integration test


@pytest.mark.parametrize("data_format", ["NCHW", "NHWC"])
def test_same_cnn_in_torch_and_jspatial(torch, data_format):
    """Copy a PyTorch CNN's weights: same logits (eval and train), same running statistics,
    and the exported state dict is torch's. Built with ``data_format='NHWC'`` and fed the
    channels-last input, the same model loads the same state dict and gives the same logits
    (its ``Flatten`` orders the features as torch's)."""
    torch.manual_seed(0)
    reference = randomise_torch(torch, torch_cnn(torch, size=SIZE))
    ours = SmallCNN(size=SIZE, rngs=rngs(), data_format=data_format)
    assert load_torch_state_dict(ours, reference.state_dict()) == LoadResult([], [])

    x = np.random.default_rng(0).standard_normal((4, 3, SIZE, SIZE)).astype(np.float32)
    xt = torch.from_numpy(x)
    xj = jnp.asarray(x if data_format == "NCHW" else np.moveaxis(x, 1, -1))
    for mode in ("eval", "train"):
        getattr(reference, mode)()
        getattr(ours, mode)()
        with torch.no_grad():
            expected = reference(xt).numpy()
        assert_close(ours(xj), expected)
    for name in ("bn1", "bn2"):
        torch_bn, our_bn = getattr(reference, name), getattr(ours, name)
        assert_close(our_bn.running_mean[...], torch_bn.running_mean.numpy())
        assert_close(our_bn.running_var[...], torch_bn.running_var.numpy())
        # Loaded (randomised), then counted once more by the training-mode call.
        assert int(our_bn.num_batches_tracked[...]) == int(torch_bn.num_batches_tracked) > 1
    exported = to_torch_state_dict(ours)
    assert list(exported) == list(reference.state_dict())
    for key, value in reference.state_dict().items():
        assert_close(exported[key].numpy(), value.numpy())


def test_sequential_models_and_export_round_trip(torch):
    """jspatial nnx.Sequential -> to_torch_state_dict -> torch nn.Sequential: same outputs."""
    nn = torch.nn
    r = rngs(1)
    # The first layers and the input shape of the test above: their compilations are shared.
    ours = nnx.Sequential(
        Conv2d(3, 8, 3, padding=1, rngs=r), BatchNorm2d(8), nnx.relu, MaxPool2d(2),
        Flatten(), nnx.Linear(8 * 8 * 8, 5, rngs=r),
    )  # fmt: skip
    ours.layers[1].running_mean[...] = jnp.linspace(-1.0, 1.0, 8)
    ours.layers[1].running_var[...] = jnp.linspace(0.5, 2.0, 8)
    reference = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 8 * 8, 5),
    )  # fmt: skip

    ours.layers[1].num_batches_tracked[...] = 7
    exported = to_torch_state_dict(ours)
    assert list(exported) == list(reference.state_dict())  # same keys, in PyTorch's order
    assert exported["5.weight"].shape == (5, 512)  # nnx.Linear kernel (512, 5), transposed
    assert all(isinstance(v, torch.Tensor) for v in exported.values())
    assert exported["1.num_batches_tracked"].dtype == torch.int64
    reference.load_state_dict(to_torch_state_dict(ours), strict=True)  # as written
    assert int(reference[1].num_batches_tracked) == 7
    # The names (and shapes) a model reports are PyTorch's.
    assert [(n, tuple(a.shape)) for n, a in named_parameters(ours)] == [
        (n, tuple(p.shape)) for n, p in reference.named_parameters()
    ]

    x = np.random.default_rng(2).standard_normal((4, 3, SIZE, SIZE)).astype(np.float32)
    reference.eval()
    ours.eval()
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    assert_close(ours(jnp.asarray(x)), expected)

    # And back: PyTorch's keys (features.N) land on .layers.N; nothing changes.
    before = snapshot(ours)
    load_torch_state_dict(ours, reference.state_dict())
    assert_model_unchanged(ours, before)


def test_nested_sequential_key_mapping(torch):
    class Net(nnx.Module):
        def __init__(self):
            self.features = nnx.Sequential(Conv2d(3, 4, 3, rngs=rngs()), nnx.relu)
            self.blocks = nnx.List([BatchNorm2d(4)])

    keys = list(to_torch_state_dict(Net()))
    assert keys == [
        "features.0.weight", "features.0.bias",
        "blocks.0.weight", "blocks.0.bias", "blocks.0.running_mean", "blocks.0.running_var",
        "blocks.0.num_batches_tracked",
    ]  # fmt: skip


# ---------------------------------------------------------------- errors


def test_missing_unexpected_and_misshaped_keys_are_reported_together(torch):
    model = SmallCNN(size=SIZE, rngs=rngs())
    before = snapshot(model)
    state = numpy_state(torch_cnn(torch, size=SIZE))
    del state["bn1.running_var"], state["fc.bias"]
    state["conv3.weight"] = np.zeros((2, 2, 3, 3), np.float32)
    state["conv1.weight"] = np.zeros((8, 3, 5, 5), np.float32)
    state["fc.weight"] = state["fc.weight"].T.copy()  # jspatial's layout, not PyTorch's

    with pytest.raises(StateDictError) as caught:
        load_torch_state_dict(model, state)
    message = str(caught.value)
    assert message.startswith("load_torch_state_dict: the state_dict does not fit the model")
    assert "missing keys (2): bn1.running_var, fc.bias" in message
    assert "unexpected keys (1): conv3.weight" in message
    assert "conv1.weight: expected (8, 3, 3, 3), got (8, 3, 5, 5)" in message
    assert "fc.weight: expected (10, 256), got (256, 10)" in message
    assert caught.value.missing == ["bn1.running_var", "fc.bias"]
    assert caught.value.unexpected == ["conv3.weight"]
    assert caught.value.mismatched == ["conv1.weight", "fc.weight"]
    # Valid entries (conv2, bn2, ...) were not loaded either.
    assert_model_unchanged(model, before)


def test_errors_are_key_and_value_errors(torch):
    model = BatchNorm2d(2)
    with pytest.raises(KeyError, match=r"missing keys \(4\): weight, bias, running_mean"):
        load_torch_state_dict(model, {})
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): scale"):
        load_torch_state_dict(model, {**to_torch_state_dict(model), "scale": np.ones(2)})
    with pytest.raises(ValueError, match=r"weight: expected numbers, got dtype <U"):
        load_torch_state_dict(model, {**to_torch_state_dict(model), "weight": np.array(["a", "b"])})


def test_non_strict_skips_missing_and_unexpected_but_not_misshaped(torch):
    model = SmallCNN(size=SIZE, rngs=rngs())
    state = numpy_state(randomise_torch(torch, torch_cnn(torch, size=SIZE)))
    del state["fc.weight"]
    state["extra.weight"] = np.ones(3, np.float32)
    before = snapshot(model)
    result = load_torch_state_dict(model, state, strict=False)
    assert result == LoadResult(missing_keys=["fc.weight"], unexpected_keys=["extra.weight"])
    np.testing.assert_array_equal(model.conv1.weight[...], state["conv1.weight"])
    np.testing.assert_array_equal(model.fc.kernel[...], before[("fc", "kernel")])  # kept

    state["bn2.bias"] = np.zeros(3, np.float32)
    loaded = snapshot(model)
    with pytest.raises(StateDictError, match=r"mis-shaped keys \(1\): bn2.bias: expected \(16,\)"):
        load_torch_state_dict(model, state, strict=False)
    assert_model_unchanged(model, loaded)


def test_num_batches_tracked_is_loaded_optional_and_only_on_batch_norm_layers(torch):
    model = SmallCNN(size=SIZE, rngs=rngs())
    state = torch_cnn(torch, size=SIZE).state_dict()
    state["bn1.num_batches_tracked"].fill_(12)
    load_torch_state_dict(model, state)
    assert int(model.bn1.num_batches_tracked[...]) == 12
    # Missing, it keeps the layer's count, as PyTorch does: no error even when strict.
    del state["bn1.num_batches_tracked"]
    state["bn2.num_batches_tracked"].fill_(3)
    assert load_torch_state_dict(model, state) == LoadResult([], [])
    assert int(model.bn1.num_batches_tracked[...]) == 12
    assert int(model.bn2.num_batches_tracked[...]) == 3
    state["conv1.num_batches_tracked"] = torch.tensor(0)
    with pytest.raises(StateDictError, match=r"unexpected keys \(1\): conv1.num_batches_tracked"):
        load_torch_state_dict(model, state)


# ---------------------------------------------------------------- copies and dtypes


def test_loading_copies_numpy_and_torch_sources(torch):
    model = nnx.Sequential(Conv2d(2, 3, 1, rngs=rngs()), BatchNorm2d(3))
    state = {
        "0.weight": np.ones((3, 2, 1, 1), np.float32),
        "0.bias": torch.zeros(3),
        "1.weight": np.ones(3, np.float32),
        "1.bias": np.zeros(3, np.float32),
        "1.running_mean": np.zeros(3, np.float32),
        "1.running_var": torch.ones(3),
    }
    load_torch_state_dict(model, state)
    state["0.weight"][...] = 7.0  # mutate every source in place
    state["0.bias"].fill_(7.0)
    state["1.running_var"].fill_(7.0)
    np.testing.assert_array_equal(model.layers[0].weight[...], 1.0)
    np.testing.assert_array_equal(model.layers[0].bias[...], 0.0)
    np.testing.assert_array_equal(model.layers[1].running_var[...], 1.0)


def test_exported_tensors_are_copies(torch):
    model = BatchNorm2d(3)
    exported = to_torch_state_dict(model)
    exported["weight"].fill_(5.0)
    exported["running_var"].fill_(5.0)
    np.testing.assert_array_equal(model.weight[...], 1.0)
    np.testing.assert_array_equal(model.running_var[...], 1.0)


def test_values_are_cast_to_the_variable_dtype(torch):
    model = BatchNorm2d(2, param_dtype=jnp.bfloat16)
    state = {
        "weight": np.array([1.5, 2.0], np.float64),
        "bias": torch.tensor([0.25, 1.0], dtype=torch.bfloat16),  # no NumPy equivalent
        "running_mean": [0.0, 1.0],  # any array-like
        "running_var": jnp.array([1.0, 2.0]),
    }
    load_torch_state_dict(model, state)
    for var in (model.weight, model.bias, model.running_mean, model.running_var):
        assert var[...].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(model.bias[...], np.float32), [0.25, 1.0])
    np.testing.assert_array_equal(np.asarray(model.running_mean[...], np.float32), [0.0, 1.0])
    # And back: bfloat16 tensors, which a bfloat16 PyTorch layer takes as they are.
    exported = to_torch_state_dict(model)
    assert exported["bias"].dtype == torch.bfloat16
    reference = torch.nn.BatchNorm2d(2, dtype=torch.bfloat16)
    reference.load_state_dict(exported, strict=True)
    assert reference.bias.float().tolist() == [0.25, 1.0]


def test_export_needs_torch_and_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # "import torch" now fails
    with pytest.raises(ImportError, match=r"^to_torch_state_dict .*pip install torch"):
        to_torch_state_dict(BatchNorm2d(2))


def test_every_state_variable_but_random_state_is_exported(torch):
    """A frozen array of a user-defined variable type is state (PyTorch: a parameter with
    requires_grad=False); a Dropout's random-number streams are not."""

    class Frozen(nnx.Variable):
        pass

    class Net(nnx.Module):
        def __init__(self):
            self.fc = nnx.Linear(3, 2, rngs=rngs())
            self.fc.kernel = Frozen(self.fc.kernel[...])
            self.drop = nnx.Dropout(0.5, rngs=rngs())

    net = Net()
    reference = torch.nn.Module()
    reference.fc = torch.nn.Linear(3, 2)
    reference.fc.weight.requires_grad_(False)
    reference.drop = torch.nn.Dropout(0.5)
    exported = to_torch_state_dict(net)
    assert list(exported) == ["fc.weight", "fc.bias"]
    reference.load_state_dict(exported, strict=True)
    np.testing.assert_array_equal(reference.fc.weight.numpy(), np.asarray(net.fc.kernel[...]).T)
    with torch.no_grad():
        reference.fc.weight.fill_(0.5)
    load_torch_state_dict(net, reference.state_dict())
    np.testing.assert_array_equal(net.fc.kernel[...], 0.5)


def test_parameter_free_layers_have_no_keys_in_either_framework(torch):
    nn = torch.nn
    ours = nnx.Sequential(
        MaxPool2d(2), AvgPool2d(2), GlobalAvgPool2d(), AdaptiveAvgPool2d(3),
        AdaptiveMaxPool2d(2), MaxUnpool2d(2), Flatten(),
    )  # fmt: skip
    reference = nn.Sequential(
        nn.MaxPool2d(2), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1), nn.AdaptiveAvgPool2d(3),
        nn.AdaptiveMaxPool2d(2), nn.MaxUnpool2d(2), nn.Flatten(),
    )  # fmt: skip
    assert to_torch_state_dict(ours) == {} == reference.state_dict()
    assert load_torch_state_dict(ours, reference.state_dict()) == LoadResult([], [])
