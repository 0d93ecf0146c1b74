"""``jspatial.summary`` (``jspatial.layers.summary``): rows and totals against the calculators,
fields against brute force."""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jspatial as js
from jspatial import layers
from jspatial.layers import (
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    Flatten,
    GlobalAvgPool2d,
    MaxPool2d,
    MaxUnpool2d,
)
from jspatial.layers.summary import Summary, SummaryRow
from jspatial.shapes.fields import _Field
from tests.tolerances import fast_jit
from train import models

BATCH = (2, 3, 32, 32)
TRAINING_MODELS = ("airbench94", "resnet18", "vgg11", "simple_cnn")


def _ones(key, shape, dtype=jnp.float32):
    return jnp.ones(shape, dtype)


def _abstract(build):
    """A model built under ``nnx.eval_shape``: shapes only, no weights drawn (fast)."""
    return nnx.eval_shape(build)


def _module_at(model, name):
    """The module a row's PyTorch-style dotted name points at."""
    node = model
    for part in name.split(".") if name else ():
        if isinstance(node, nnx.Sequential):
            node = node.layers[int(part)]
        elif part.isdigit():
            node = node[int(part)]
        else:
            node = getattr(node, part)
    return node


def _param_count(module):
    return sum(math.prod(v.shape) for _, v in layers.named_variables(module, nnx.Param))


@pytest.fixture(scope="module")
def training_summaries():
    """Each training model, built abstractly (nothing drawn), and its summary of a batch of 2."""
    result = {}
    for name in TRAINING_MODELS:
        model = nnx.eval_shape(lambda name=name: models.build_model(name))
        result[name] = (model, js.summary(model, BATCH, print_table=False))
    return result


# --------------------------------------------------------------------- training models


@pytest.mark.parametrize("name", TRAINING_MODELS)
def test_training_model_params(training_summaries, name):
    model, s = training_summaries[name]
    assert s.total_params == models.count_params(model)
    assert sum(r.params for r in s.rows) == s.total_params and s.uncalled == {}
    for row in s.rows:
        layer = _module_at(model, row.name)
        if not isinstance(layer, nnx.Module):  # a function of a Sequential (nnx.relu)
            assert row.params == 0, row
        elif row.call == 1:
            assert row.params == _param_count(layer), row
        else:
            assert row.params == 0, row
    frozen = models.count_params(model, models.Frozen)
    assert s.frozen == frozen and (frozen > 0) == (name == "airbench94")


@pytest.mark.parametrize("name", TRAINING_MODELS)
def test_training_model_macs_and_shapes_match_the_calculators(training_summaries, name):
    model, s = training_summaries[name]
    kinds = set()
    for row in s.rows:
        layer = _module_at(model, row.name)
        kinds.add(row.type)
        if isinstance(layer, Conv2d):
            args = (row.input_shape, layer.out_channels, layer.kernel_size, layer.stride,
                    layer.padding, layer.dilation)  # fmt: skip
            assert row.output_shape == js.conv2d_output_shape(*args)
            assert row.macs == js.conv2d_macs(*args, layer.groups)
            n, c_out, h, w = row.output_shape
            kh, kw = layer.kernel_size
            assert row.macs == n * c_out * h * w * row.input_shape[1] // layer.groups * kh * kw
        elif isinstance(layer, MaxPool2d):
            assert row.output_shape == js.pool2d_output_shape(
                row.input_shape, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                layer.ceil_mode,
            )  # fmt: skip
            assert row.macs == 0
        elif isinstance(layer, nnx.Linear):
            assert row.macs == row.input_shape[0] * layer.in_features * layer.out_features
            assert row.output_shape == (*row.input_shape[:-1], layer.out_features)
        elif layer is nnx.relu:  # in a Sequential: a row of its own, as torchinfo lists ReLU
            assert row.type == "relu" and row.output_shape == row.input_shape
            assert row.macs == 0 and row.params == 0
        else:
            assert isinstance(layer, (BatchNorm2d, Flatten, GlobalAvgPool2d)), row
            assert row.macs == 0
        assert row.activation_bytes == math.prod(row.output_shape) * 4
    assert {"Conv2d", "Linear"} <= kinds
    assert s.total_macs == sum(r.macs for r in s.rows)
    assert s.total_activation_bytes == sum(r.activation_bytes for r in s.rows)


@pytest.mark.parametrize("name", TRAINING_MODELS)
def test_training_model_output_matches_the_plain_forward(training_summaries, name):
    model, s = training_summaries[name]
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct(BATCH, jnp.float32)
    plain = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
    assert s.output_shape == plain.shape == (2, models.NUM_CLASSES)
    assert s.rows[-1].output_shape == s.output_shape


def _materialised(name):
    """A training model with concrete (constant) weights, built without drawing any."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: models.build_model(name)))
    return nnx.merge(graphdef, jax.tree.map(lambda a: jnp.full(a.shape, 0.01, a.dtype), state))


def test_simple_cnn_rows_match_a_real_forward(training_summaries):
    # The forward written out by hand and run for real, eagerly, layer by layer.
    _, s = training_summaries["simple_cnn"]
    m = _materialised("simple_cnn")
    x = jnp.ones(BATCH)
    shapes = []
    for step in (m.conv1, nnx.relu, m.pool, m.conv2, nnx.relu, m.pool, m.flatten, m.head):
        x = step(x)
        if step is not nnx.relu:
            shapes.append((x.shape, x.nbytes))
    assert [(r.output_shape, r.activation_bytes) for r in s.rows] == shapes
    assert [r.name for r in s.rows] == ["conv1", "pool", "conv2", "pool", "flatten", "head"]
    assert [r.call for r in s.rows] == [1, 1, 1, 2, 1, 1]


def test_airbench94_output_matches_a_real_forward(training_summaries):
    _, s = training_summaries["airbench94"]
    graphdef, state = nnx.split(_materialised("airbench94"))
    y = fast_jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, jnp.ones(BATCH))
    assert s.output_shape == y.shape and bool(jnp.isfinite(y).all())


def test_airbench94_table(training_summaries):
    model, s = training_summaries["airbench94"]
    assert [r.name for r in s.rows[:3]] == ["whiten", "groups.0.conv1", "groups.0.pool"]
    assert s.rows[0].params == 24  # the whitening filters are frozen: the bias only
    assert s.rows[0].macs == js.conv2d_macs(BATCH, 24, 2) == 2 * 24 * 31 * 31 * 3 * 4
    # conv2 (k2) -> conv3 -> pool2 -> conv3 -> ... -> pool3: the field and the jump.
    fields = [(r.name, r.receptive_field, r.jump) for r in s.rows if r.type != "BatchNorm2d"]
    assert fields[:4] == [
        ("whiten", (2, 2), (1, 1)),
        ("groups.0.conv1", (4, 4), (1, 1)),
        ("groups.0.pool", (5, 5), (2, 2)),
        ("groups.0.conv2", (9, 9), (2, 2)),
    ]
    assert fields[-3:] == [("pool", (67, 67), (24, 24)), ("flatten", None, None),
                           ("head", "all", None)]  # fmt: skip
    table = s.table()
    assert "groups.2.conv2" in table and f"{s.total_params:,}" in table
    assert "Frozen (never trained) arrays: 1,440 elements" in table


def test_resnet18_fields_follow_the_residual_branches(training_summaries):
    _, s = training_summaries["resnet18"]
    rows = {r.name: r for r in s.rows}
    # The shortcut reads the block's input (field 11), not conv2's output (field 17).
    assert rows["layers.1.bn2"].receptive_field == (11, 11)
    assert rows["layers.2.conv2"].receptive_field == (17, 17)
    assert rows["layers.2.shortcut.0"].receptive_field == (11, 11)
    assert rows["layers.2.shortcut.0"].jump == (2, 2)
    # The sum's field is its widest term's: the next block grows from 17.
    assert rows["layers.3.conv1"].receptive_field == (21, 21)
    assert rows["pool"].receptive_field == "all"


def test_vgg11_names_are_pytorch_style(training_summaries):
    _, s = training_summaries["vgg11"]
    assert [(r.name, r.type) for r in s.rows[:5]] == [
        ("features.0", "Conv2d"),
        ("features.1", "BatchNorm2d"),
        ("features.2", "relu"),  # nnx.relu, a function in the Sequential
        ("features.3", "MaxPool2d"),
        ("features.4", "Conv2d"),
    ]


def _numpy(a):
    if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
        a = jax.random.key_data(a)
    return np.asarray(a)


def test_summary_does_not_change_the_model():
    # Real (not abstract) state: running statistics and an RNG counter that a
    # training-mode call would move.
    model = nnx.Sequential(BatchNorm2d(3), nnx.Dropout(0.5, rngs=nnx.Rngs(0)))
    before = jax.tree.map(_numpy, nnx.state(model))
    for _ in range(2):
        js.summary(model, (2, 3, 8, 8), print_table=False)
    after = jax.tree.map(_numpy, nnx.state(model))
    assert jax.tree.structure(before) == jax.tree.structure(after)
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, before, after)))
    assert model.layers[0].use_running_average is False  # still in training mode
    # Whereas a real training-mode call of the BatchNorm does move its statistics.
    model.layers[0](jnp.ones((2, 3, 8, 8)) + jnp.arange(8.0))
    moved = jax.tree.map(_numpy, nnx.state(model))
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, before, moved)))


def test_eval_mode_model():
    model = _abstract(lambda: nnx.Sequential(Conv2d(3, 4, 3, rngs=nnx.Rngs(0)), BatchNorm2d(4)))
    model.eval()
    s = js.summary(model, (1, 3, 5, 5), print_table=False)  # N * H * W = 9: fine either way
    assert [r.output_shape for r in s.rows] == [(1, 4, 3, 3)] * 2
    assert model.layers[1].use_running_average is True


# -------------------------------------------------------------------- call structure


class _Twice(nnx.Module):
    """One conv applied twice (shared weights), a pool applied twice, an unused head."""

    def __init__(self, rngs):
        self.conv = Conv2d(4, 4, 3, padding=1, rngs=rngs)
        self.pool = MaxPool2d(2)
        self.unused = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        return self.pool(self.conv(self.pool(nnx.relu(self.conv(x)))))


def test_layers_called_twice_and_never():
    model = _abstract(lambda: _Twice(nnx.Rngs(0)))
    s = js.summary(model, (2, 4, 16, 16), print_table=False)
    assert [(r.name, r.call, r.output_shape) for r in s.rows] == [
        ("conv", 1, (2, 4, 16, 16)),
        ("pool", 1, (2, 4, 8, 8)),
        ("conv", 2, (2, 4, 8, 8)),
        ("pool", 2, (2, 4, 4, 4)),
    ]
    conv_params = 4 * 4 * 9 + 4
    assert [r.params for r in s.rows] == [conv_params, 0, 0, 0]
    assert s.uncalled == {"unused": 4 * 2 + 2}
    assert s.total_params == conv_params + 10 == _param_count(model)
    assert s.rows[2].macs == js.conv2d_macs((2, 4, 8, 8), 4, 3, padding=1)
    assert s.total_macs == s.rows[0].macs + s.rows[2].macs
    assert [r.receptive_field for r in s.rows] == [(3, 3), (4, 4), (8, 8), (10, 10)]
    table = s.table()
    assert "conv #2" in table and "pool #2" in table
    assert "never called (in the total): unused (10)" in table


class _MyConv(Conv2d):
    pass


class _MyPool(MaxPool2d):
    def __call__(self, x):
        return super().__call__(x) * 2  # one row, not two


def test_classes_are_restored_and_subclasses_recorded_once():
    model = _abstract(
        lambda: nnx.Sequential(
            _MyConv(1, 2, 3, rngs=nnx.Rngs(0)), _MyPool(2), Conv2d(2, 2, 1, rngs=nnx.Rngs(1))
        )
    )
    originals = {c: c.__dict__.get("__call__") for c in (_MyConv, _MyPool, Conv2d, MaxPool2d)}
    s = js.summary(model, (1, 1, 6, 6), print_table=False)
    assert [r.type for r in s.rows] == ["_MyConv", "_MyPool", "Conv2d"]
    assert {c: c.__dict__.get("__call__") for c in originals} == originals
    assert "__call__" not in _MyConv.__dict__
    # Restored when the forward raises too (wrong channel count).
    with pytest.raises(ValueError, match="channel"):
        js.summary(model, (1, 3, 6, 6), print_table=False)
    assert {c: c.__dict__.get("__call__") for c in originals} == originals


def test_the_model_itself_a_single_layer():
    conv = _abstract(lambda: Conv2d(3, 8, 3, rngs=nnx.Rngs(0)))
    s = js.summary(conv, (1, 3, 8, 8), print_table=False)
    (row,) = s.rows
    assert row.name == "" and row.output_shape == (1, 8, 6, 6) and row.params == 8 * 27 + 8


def test_printing(capsys):
    model = _abstract(lambda: nnx.Sequential(Conv2d(3, 8, 3, rngs=nnx.Rngs(0)), GlobalAvgPool2d()))
    s = js.summary(model, (1, 3, 8, 8))
    printed = capsys.readouterr().out
    assert printed == s.table() + "\n" == str(s) + "\n"
    lines = printed.splitlines()
    assert lines[0].split() == ["Layer", "Type", "Output", "shape", "Params", "MACs", "Memory",
                                "RF", "Jump"]  # fmt: skip
    assert lines[2].split()[:2] == ["0", "Conv2d"] and lines[3].split()[-2:] == ["all", "-"]
    assert lines[5].split()[:2] == ["Total", "224"]
    assert len({len(line) for line in lines[:2]}) == 1  # header and rule line up
    js.summary(model, (1, 3, 8, 8), print_table=False)
    assert capsys.readouterr().out == ""
    assert isinstance(s, Summary) and isinstance(s.rows[0], SummaryRow)


def test_bfloat16_activation_bytes():
    model = nnx.eval_shape(lambda: models.build_model("simple_cnn", dtype=jnp.bfloat16))
    s = js.summary(model, BATCH, print_table=False)
    conv = s.rows[0]
    assert conv.activation_bytes == math.prod(conv.output_shape) * 2
    s32 = js.summary(model, BATCH, dtype=jnp.float32, print_table=False)
    assert s32.total_params == s.total_params == 25_578


def test_bad_arguments():
    with pytest.raises(TypeError, match="summary model must be an nnx.Module"):
        js.summary(lambda x: x, (1, 3, 8, 8))
    with pytest.raises(TypeError, match="summary input_shape must be a sequence of ints"):
        js.summary(MaxPool2d(2), 8)


# ------------------------------------------------------------------ receptive fields


def test_fields_of_a_plain_stack_equal_receptive_field():
    stack = [
        _abstract(lambda: Conv2d(1, 2, (3, 5), stride=(1, 2), padding=1, rngs=nnx.Rngs(0))),
        MaxPool2d(3, stride=2, dilation=(2, 1)),
        AvgPool2d(2),
        _abstract(lambda: Conv2d(2, 2, 3, dilation=(1, 3), padding=(1, 3), rngs=nnx.Rngs(0))),
    ]
    s = js.summary(nnx.Sequential(*stack), (1, 1, 64, 64), print_table=False)
    for i, row in enumerate(s.rows, 1):
        for axis in (0, 1):
            taps = []
            for layer in stack[:i]:
                d = getattr(layer, "dilation", (1, 1))[axis]
                taps.append((d * (layer.kernel_size[axis] - 1) + 1, layer.stride[axis]))
            assert row.receptive_field[axis] == js.receptive_field(taps)
            assert row.jump[axis] == math.prod(s for _, s in taps)
        assert row.exact


def test_fields_equal_the_input_gradient_support():
    # Positive weights: the input gradient of one output cell is non-zero exactly on the
    # input pixels it depends on.
    rngs = nnx.Rngs(0)
    model = nnx.Sequential(
        Conv2d(1, 1, 3, stride=2, kernel_init=_ones, rngs=rngs),
        AvgPool2d(2),
        Conv2d(1, 1, (3, 2), dilation=(2, 1), kernel_init=_ones, rngs=rngs),
    )
    s = js.summary(model, (1, 1, 40, 40), print_table=False)
    grad = jax.grad(lambda x: model(x)[0, 0, 1, 1])(jnp.ones((1, 1, 40, 40)))
    rows, cols = np.nonzero(np.asarray(grad[0, 0]))
    extent = (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
    assert s.rows[-1].receptive_field == extent == (21, 9)


def _transposed_extent(k, s, d, length=None):
    """Largest span of input cells feeding one output cell of a 1-D transposed conv."""
    length = length or 2 * d * k + 4  # long enough for an interior output cell
    widest = 0
    for o in range(length * s + d * k):
        inputs = [i for i in range(length) for t in range(k) if i * s + t * d == o]
        if inputs:
            widest = max(widest, max(inputs) - min(inputs) + 1)
    return widest


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 7])
@pytest.mark.parametrize("s", [1, 2, 3, 4])
@pytest.mark.parametrize("d", [1, 2, 3])
def test_transposed_field_is_the_widest_set_of_inputs(k, s, d):
    out = _Field.identity().transposed((k, 1), (s, 1), (d, 1))
    assert out.field[0] == _transposed_extent(k, s, d)
    assert out.jump == (Fraction(1, s), Fraction(1))
    assert out.exact
    # Downstream of the fractional jump, fields are approximate.
    assert out.window((3, 3), (1, 1)).exact == (s == 1)


@pytest.mark.parametrize("k, s, d", [(3, 2, 1), (4, 2, 2), (5, 3, 2)])
def test_transposed_brute_force_matches_the_op(k, s, d):
    # The index rule of ``_transposed_extent`` is the op's: its Jacobian support agrees.
    length = 6
    w = jnp.ones((1, 1, 1, k))
    jac = jax.jacobian(lambda x: js.conv_transpose2d(x, w, None, (1, s), 0, 0, 1, (1, d)))(
        jnp.ones((1, 1, 1, length))
    )[0, 0, 0, :, 0, 0, 0, :]
    widest = max(
        (np.flatnonzero(r).max() - np.flatnonzero(r).min() + 1) for r in np.asarray(jac) if r.any()
    )
    assert widest == _transposed_extent(k, s, d, length)


def test_unpool_and_adaptive_pool_fields():
    class Net(nnx.Module):
        def __init__(self):
            self.pool = MaxPool2d(2, return_indices=True)
            self.unpool = MaxUnpool2d(2)
            self.adaptive = AdaptiveAvgPool2d(3)
            self.even = AdaptiveMaxPool2d((2, None))

        def __call__(self, x):
            y, indices = self.pool(x)
            z = self.unpool(y, indices)
            return self.even(self.adaptive(z[:, :, :7, :7])), z

    s = js.summary(Net(), (1, 2, 8, 8), print_table=False)
    pool, unpool, adaptive, even = s.rows
    assert pool.output_shapes == ((1, 2, 4, 4), (1, 2, 4, 4)) and pool.output_shape == (1, 2, 4, 4)
    index_bytes = (
        1
        * 2
        * 4
        * 4
        * jnp.dtype(jax.eval_shape(Net().pool, jnp.ones((1, 2, 8, 8)))[1].dtype).itemsize
    )
    assert pool.activation_bytes == 1 * 2 * 4 * 4 * 4 + index_bytes
    assert (pool.receptive_field, pool.jump) == ((2, 2), (2, 2))
    # Each unpooled cell comes from one pooled cell: field 2, jump back to 1.
    assert (unpool.output_shape, unpool.receptive_field, unpool.jump) == (
        (1, 2, 8, 8),
        (2, 2),
        (1, 1),
    )
    assert unpool.exact
    # The slice z[:, :, :7, :7] is matched by nothing: an unknown field, not a guess.
    assert adaptive.receptive_field is None and even.receptive_field is None
    assert " +1 " in s.table()


def test_adaptive_pool_fields():
    model = _abstract(
        lambda: nnx.Sequential(Conv2d(1, 1, 3, rngs=nnx.Rngs(0)), AdaptiveAvgPool2d(3))
    )
    (_, uneven) = js.summary(model, (1, 1, 9, 9), print_table=False).rows
    # 7 -> 3 bins [0, 3), [2, 5), [4, 7): 3 cells wide, 7/3 apart: approximate.
    assert uneven.receptive_field == (5, 5) and uneven.jump == (Fraction(7, 3),) * 2
    assert not uneven.exact
    model = _abstract(
        lambda: nnx.Sequential(Conv2d(1, 1, 3, rngs=nnx.Rngs(0)), AdaptiveMaxPool2d((4, None)))
    )
    (_, even) = js.summary(model, (1, 1, 10, 10), print_table=False).rows
    assert (even.receptive_field, even.jump, even.exact) == ((4, 3), (2, 1), True)
    assert even.output_shape == (1, 1, 4, 8)


def test_conv_transpose2d_layer_row():
    ConvTranspose2d = getattr(layers, "ConvTranspose2d", None)
    if ConvTranspose2d is None:
        pytest.skip("jspatial.layers has no ConvTranspose2d")

    def build():
        rngs = nnx.Rngs(0)
        return nnx.Sequential(
            Conv2d(2, 4, 3, stride=2, padding=1, rngs=rngs),
            ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, rngs=rngs),
        )

    model = _abstract(build)
    conv, up = js.summary(model, (2, 2, 8, 8), print_table=False).rows
    assert up.output_shape == js.conv_transpose2d_output_shape((2, 4, 4, 4), 6, 3, 2, 1, 1)
    assert up.output_shape == (2, 6, 8, 8)
    assert up.macs == js.conv_transpose2d_macs((2, 4, 4, 4), 6, 3, 2, 1, 1, 2) == 2 * 4 * 16 * 3 * 9
    assert up.params == _param_count(model.layers[1]) == 4 * 3 * 9 + 6
    # Field 3 with jump 2, then every output cell sees up to 2 inputs: 3 + 1 * 2.
    assert (up.receptive_field, up.jump, up.exact) == ((5, 5), (1, 1), True)


def test_layer_types_not_known_here():
    def build():
        rngs = nnx.Rngs(0)
        return nnx.Sequential(
            nnx.Conv(3, 4, (3, 3), padding="VALID", rngs=rngs),  # NHWC: no MAC rule here
            nnx.LayerNorm(4, rngs=rngs),
        )

    s = js.summary(_abstract(build), (1, 8, 8, 3), print_table=False)
    conv, norm = s.rows
    assert conv.output_shape == (1, 6, 6, 4) and conv.params == 3 * 3 * 3 * 4 + 4
    assert conv.macs is None and norm.macs == 0 and s.total_macs == 0
    assert conv.receptive_field is None  # the shape changed in a way not understood
    assert "?: MACs not known for this layer type" in s.table()


def test_functions_of_a_sequential_are_rows():
    # torchinfo lists nn.ReLU and friends; here they are functions, and each call is a row
    # with no parameters, and no MACs unless the function multiplies arrays.
    rngs = nnx.Rngs(0)
    project = jnp.ones((10, 4))
    parts = (
        Conv2d(3, 4, 3, padding=1, rngs=rngs),
        nnx.relu,
        MaxPool2d(2),
        functools.partial(jax.nn.leaky_relu, negative_slope=0.2),
        nnx.relu,  # the same function again: a row of its own
        lambda y: y.reshape(y.shape[0], -1),  # a reshape: 0 MACs
        nnx.Linear(4 * 4 * 4, 10, rngs=rngs),
        lambda y: y @ project,  # a matrix product: MACs not known here
        nnx.Sequential(jnp.tanh),  # nested: named by its path
    )
    model = nnx.Sequential(*parts)
    s = js.summary(model, (2, 3, 8, 8), print_table=False)
    assert [(r.name, r.type) for r in s.rows] == [
        ("0", "Conv2d"), ("1", "relu"), ("2", "MaxPool2d"), ("3", "leaky_relu"),
        ("4", "relu"), ("5", "<lambda>"), ("6", "Linear"), ("7", "<lambda>"), ("8.0", "tanh"),
    ]  # fmt: skip
    x, shapes = jnp.ones((2, 3, 8, 8)), []
    for part in parts:  # the real forward, step by step
        x = part(x)
        shapes.append(x.shape)
    assert [r.output_shape for r in s.rows] == shapes
    assert [r.activation_bytes for r in s.rows] == [math.prod(sh) * 4 for sh in shapes]
    assert [r.macs for r in s.rows] == [
        js.conv2d_macs((2, 3, 8, 8), 4, 3, padding=1), 0, 0, 0, 0, 0, 2 * 64 * 10, None, 0,
    ]  # fmt: skip
    assert [r.params for r in s.rows] == [3 * 4 * 9 + 4, 0, 0, 0, 0, 0, 64 * 10 + 10, 0, 0]
    # An element-wise function keeps the receptive field of its input.
    assert [r.receptive_field for r in s.rows[:5]] == [(3, 3), (3, 3), (4, 4), (4, 4), (4, 4)]
    assert s.total_macs == sum(r.macs for r in s.rows if r.macs is not None)
    assert "?: MACs not known for this layer type or function" in s.table()
    # The model keeps its own functions: only the traced copy was wrapped.
    assert model.layers[1] is nnx.relu and model.layers[3] is parts[3]
    assert s.total_params == models.count_params(model)


# --------------------------------------------------------------------- channels last


def _every_layer_model(data_format):
    """One of each spatial layer, built in ``data_format`` (weights are not drawn)."""
    fmt = {"data_format": data_format}

    def build():
        r = nnx.Rngs(0)
        return nnx.Sequential(
            Conv2d(3, 8, (3, 2), stride=2, padding=1, rngs=r, **fmt),
            BatchNorm2d(8, **fmt),
            nnx.relu,
            MaxPool2d(3, 1, 1, **fmt),
            AvgPool2d(2, **fmt),
            layers.ConvTranspose2d(8, 4, 3, stride=2, groups=2, rngs=r, **fmt),
            AdaptiveMaxPool2d((5, 3), **fmt),
            AdaptiveAvgPool2d(2, **fmt),
            GlobalAvgPool2d(**fmt),
        )

    return _abstract(build)


def test_nhwc_model_summary_equals_the_nchw_one_channels_last():
    """The same model in NHWC: shapes channels last (as printed), and the same parameters,
    MACs, memory and receptive fields as in NCHW."""
    nchw = js.summary(_every_layer_model("NCHW"), (2, 3, 17, 12), print_table=False)
    nhwc = js.summary(
        _every_layer_model("NHWC"), (2, 17, 12, 3), print_table=False, data_format="NHWC"
    )
    last = lambda s: (s[0], *s[2:], s[1]) if len(s) == 4 else s  # noqa: E731
    assert len(nhwc.rows) == len(nchw.rows)
    for a, b in zip(nhwc.rows, nchw.rows):
        assert a.output_shape == last(b.output_shape), a.name
        assert a.input_shape == last(b.input_shape), a.name
        assert (a.params, a.macs, a.activation_bytes) == (b.params, b.macs, b.activation_bytes)
        assert (a.receptive_field, a.jump, a.exact) == (b.receptive_field, b.jump, b.exact)
    assert nhwc.rows[0].macs > 0 and nhwc.rows[5].macs > 0
    assert (nhwc.total_params, nhwc.total_macs) == (nchw.total_params, nchw.total_macs)
    assert nhwc.data_format == "NHWC"
    assert "Input (2, 17, 12, 3) (NHWC) float32" in nhwc.table()


def test_summary_data_format_must_match_the_layers():
    model = nnx.Sequential(BatchNorm2d(3, data_format="NHWC"), Flatten())
    s = js.summary(model, (2, 4, 4, 3), print_table=False, data_format="NHWC")
    assert [r.output_shape for r in s.rows] == [(2, 4, 4, 3), (2, 48)]
    with pytest.raises(
        ValueError, match=r"^summary data_format='NCHW', but layer 0 \(BatchNorm2d\)"
    ):
        js.summary(model, (2, 3, 4, 4), print_table=False)
    with pytest.raises(ValueError, match=r"^summary data_format must be 'NCHW' or 'NHWC'"):
        js.summary(model, (2, 4, 4, 3), print_table=False, data_format="channels_last")
