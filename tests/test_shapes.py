"""The shape, parameter, cost and receptive-field calculators of ``jspatial.shapes``."""

from __future__ import annotations

import ast
import inspect
import itertools
import math
import operator
import random
import re
from fractions import Fraction

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


# -------------------------------------------------------------- transposed convolution

TRANSPOSE_GRID = [
    # input, out_channels, kernel, stride, padding, output_padding, groups, dilation
    ((1, 4, 5, 5), 6, 3, 1, 0, 0, 1, 1),
    ((2, 4, 5, 7), 6, 3, 2, 1, 1, 2, 1),
    ((1, 4, 4, 4), 2, 4, 2, 1, 0, 1, 1),
    ((1, 2, 3, 6), 4, (2, 3), (3, 1), (1, 0), (2, 0), 2, 1),
    ((1, 2, 5, 5), 3, 3, 1, 2, 1, 1, 2),
    ((1, 2, 5, 4), 2, (3, 2), 2, (0, 1), (1, 0), 1, (2, 3)),
    ((1, 3, 1, 1), 5, 5, 3, 0, 2, 1, 1),
]


@pytest.mark.parametrize("shape, c_out, k, s, p, op, g, d", TRANSPOSE_GRID)
def test_conv_transpose2d_calculators_match_torch(shape, c_out, k, s, p, op, g, d):
    torch = pytest.importorskip("torch")
    layer = torch.nn.ConvTranspose2d(shape[1], c_out, k, s, p, op, groups=g, dilation=d)
    expected = tuple(layer(torch.zeros(shape)).shape)
    assert js.conv_transpose2d_output_shape(shape, c_out, k, s, p, op, d) == expected
    assert js.conv_transpose2d_params(shape[1], c_out, k, groups=g) == sum(
        t.numel() for t in layer.parameters()
    )
    assert js.conv_transpose2d_params(shape[1], c_out, k, False, g) == layer.weight.numel()
    kh, kw = (k, k) if isinstance(k, int) else k
    macs = js.conv_transpose2d_macs(shape, c_out, k, s, p, op, g, d)
    assert macs == shape[0] * shape[1] * shape[2] * shape[3] * (c_out // g) * kh * kw
    # The same count seen from the convolution this one transposes: its MACs, with the
    # roles of input and output swapped, are ours.
    if p == 0 and op == 0:
        conv = js.conv2d_macs(expected, shape[1], k, s, 0, d, g)
        assert conv == macs


@pytest.mark.parametrize("shape, c_out, k, s, p, op, g, d", TRANSPOSE_GRID)
def test_conv_transpose2d_output_shape_matches_the_op(shape, c_out, k, s, p, op, g, d):
    kernel = (k, k) if isinstance(k, int) else k
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    w = jax.ShapeDtypeStruct((shape[1], c_out // g, *kernel), jnp.float32)
    out = jax.eval_shape(lambda x, w: js.conv_transpose2d(x, w, None, s, p, op, g, d), x, w)
    assert js.conv_transpose2d_output_shape(shape, c_out, k, s, p, op, d) == out.shape


def test_conv_transpose2d_output_padding_rule_matches_torch():
    torch = pytest.importorskip("torch")
    x = torch.zeros(1, 1, 4, 4)
    checked = 0
    for s, d, op in itertools.product((1, 2, 3), (1, 2), (0, 1, 2, 3)):
        w = torch.zeros(1, 1, 3, 3)
        try:
            expected = tuple(torch.nn.functional.conv_transpose2d(x, w, None, s, 0, op, 1, d).shape)
        except RuntimeError:
            with pytest.raises(ValueError, match="output_padding must be smaller than either"):
                js.conv_transpose2d_output_shape(x.shape, 1, 3, s, 0, op, d)
        else:
            assert js.conv_transpose2d_output_shape(x.shape, 1, 3, s, 0, op, d) == expected
        checked += 1
    assert checked == 24


def test_conv_transpose2d_worked_values():
    # The DCGAN/U-Net upsampler: k4 s2 p1 doubles the size.
    assert js.conv_transpose2d_output_shape((8, 128, 16, 16), 64, 4, 2, 1) == (8, 64, 32, 32)
    assert js.conv_transpose2d_macs((1, 64, 16, 16), 32, 4, stride=2, padding=1) == 8_388_608
    assert js.conv_transpose2d_params(64, 32, 4) == 64 * 32 * 16 + 32
    # output_padding picks the odd size of the two a stride-2 convolution maps to 4.
    assert js.conv_transpose2d_output_shape((1, 1, 4, 4), 1, 3, 2, 1, 1)[2:] == (8, 8)
    assert js.conv_transpose2d_output_shape((1, 1, 4, 4), 1, 3, 2, 1, 0)[2:] == (7, 7)


# ----------------------------------------------------------------------- adaptive pools


@pytest.mark.parametrize(
    "shape, size",
    [((1, 2, 7, 9), 3), ((1, 2, 7, 9), (3, None)), ((2, 1, 5, 4), (None, 1)),
     ((1, 2, 4, 4), (None, None)), ((1, 2, 3, 5), (7, 2)), ((1, 2, 4, 5), 0)],
)  # fmt: skip
def test_adaptive_pool2d_output_shape_matches_torch_and_the_ops(shape, size):
    torch = pytest.importorskip("torch")
    expected = tuple(torch.nn.functional.adaptive_avg_pool2d(torch.zeros(shape), size).shape)
    assert js.adaptive_pool2d_output_shape(shape, size) == expected
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    if 0 not in expected:
        assert jax.eval_shape(lambda x: js.adaptive_avg_pool2d(x, size), x).shape == expected
        assert jax.eval_shape(lambda x: js.adaptive_max_pool2d(x, size), x).shape == expected


# ------------------------------------------------------------ explain: formula = result


def _evaluate(expr, names=None):
    """A printed formula, evaluated exactly (``Fraction``), with ``floor``/``ceil``."""
    names = names or {}

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return Fraction(node.value)
        if isinstance(node, ast.Name) and node.id in names:
            return Fraction(names[node.id])
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("floor", "ceil", "prod")
            and len(node.args) == 1
        ):
            if node.func.id == "prod":
                return Fraction(math.prod(names["shape"]))
            return Fraction(getattr(math, node.func.id)(ev(node.args[0])))
        raise AssertionError(f"unexpected term in {expr!r}: {ast.dump(node)}")

    return ev(ast.parse(expr, mode="eval"))


_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def _explained(capsys, calculator, *args):
    """Runs ``calculator(*args)`` with and without explain; the printed lines as [parts]."""
    quiet = calculator(*args)
    assert capsys.readouterr().out == ""
    loud = calculator(*args, explain=True)
    assert loud == quiet
    lines = capsys.readouterr().out.splitlines()
    assert lines
    # ``label = [symbols =] numbers = value``, with an optional ``  (note)``.
    return quiet, [re.sub(r"  \(.*\)$", "", line).split(" = ") for line in lines]


def _random_window(rng):
    """Random (size, kernel, stride, padding, dilation) of one axis; padding an int or pair."""
    k, s, d = rng.randint(1, 5), rng.randint(1, 4), rng.randint(1, 3)
    p = rng.randint(0, 3) if rng.random() < 0.7 else (rng.randint(0, 3), rng.randint(0, 3))
    return rng.randint(1, 40), k, s, p, d


def test_explain_conv_output_size(capsys):
    rng = random.Random(0)
    checked = 0
    while checked < 300:
        size, k, s, p, d = _random_window(rng)
        ceil = rng.random() < 0.5
        try:
            js.conv_output_size(size, k, s, p, d, ceil)
        except ValueError:
            continue
        out, (parts,) = _explained(capsys, js.conv_output_size, size, k, s, p, d, ceil)
        assert len(parts) == 2 and int(parts[1]) == out
        assert _evaluate(parts[0]) == out, parts
        checked += 1


def test_explain_the_brief_example(capsys):
    assert js.conv_output_size(224, 3, stride=2, padding=1, explain=True) == 112
    assert capsys.readouterr().out == "floor((224 + 2*1 - 1*(3-1) - 1) / 2) + 1 = 112\n"


def _check_hw_lines(lines, shape):
    for (label, expr, value), axis, expected in zip(lines, "HW", shape[2:]):
        assert label == f"{axis}_out" and int(value) == expected
        assert _evaluate(expr) == expected, expr


def test_explain_conv2d_shape_and_macs(capsys):
    rng = random.Random(1)
    checked = 0
    while checked < 150:
        (h, kh, sh, ph, dh), (w, kw, sw, pw, dw) = _random_window(rng), _random_window(rng)
        ph, pw = (ph, ph) if isinstance(ph, int) else ph, (pw, pw) if isinstance(pw, int) else pw
        g = rng.choice((1, 2, 3))
        c_in, c_out, n = g * rng.randint(1, 4), g * rng.randint(1, 4), rng.randint(1, 3)
        args = ((n, c_in, h, w), c_out, (kh, kw), (sh, sw), (ph, pw), (dh, dw))
        try:
            shape = js.conv2d_output_shape(*args)
        except ValueError:
            continue
        out, lines = _explained(capsys, js.conv2d_output_shape, *args)
        assert out == shape and len(lines) == 3
        _check_hw_lines(lines[:2], shape)
        assert lines[2] == ["shape", "(N, C_out, H_out, W_out)", str(shape)]

        macs, lines = _explained(capsys, js.conv2d_macs, *args, g)
        _check_hw_lines(lines[:2], shape)
        label, symbols, numbers, value = lines[2]
        assert label == "MACs" and int(value) == macs
        assert _evaluate(numbers) == macs
        names = dict(N=n, C_out=c_out, H_out=shape[2], W_out=shape[3], C_in=c_in, groups=g,
                     kh=kh, kw=kw)  # fmt: skip
        assert _evaluate(symbols, names) == macs
        checked += 1


def test_explain_pool2d_output_shape(capsys):
    rng = random.Random(2)
    checked = 0
    while checked < 150:
        size, k, s, p, d = _random_window(rng)
        p = p if isinstance(p, int) else p[0]
        stride = None if rng.random() < 0.3 else s
        ceil = rng.random() < 0.5
        args = ((1, 2, size, size + 1), k, stride, p, d, ceil)
        try:
            shape = js.pool2d_output_shape(*args)
        except ValueError:
            continue
        out, lines = _explained(capsys, js.pool2d_output_shape, *args)
        assert out == shape and len(lines) == 3
        _check_hw_lines(lines[:2], shape)
        assert lines[2][-1] == str(shape)
        checked += 1


def test_explain_conv_transpose2d(capsys):
    rng = random.Random(3)
    checked = 0
    while checked < 150:
        g = rng.choice((1, 2))
        n, c_in, c_out = rng.randint(1, 3), g * rng.randint(1, 3), g * rng.randint(1, 3)
        h, w = rng.randint(1, 12), rng.randint(1, 12)
        k = (rng.randint(1, 5), rng.randint(1, 5))
        s, d = (rng.randint(1, 3), rng.randint(1, 3)), (rng.randint(1, 2), rng.randint(1, 2))
        p, op = (rng.randint(0, 2), rng.randint(0, 2)), (rng.randint(0, 2), rng.randint(0, 2))
        args = ((n, c_in, h, w), c_out, k, s, p, op)
        try:
            shape = js.conv_transpose2d_output_shape(*args, d)
        except ValueError:
            continue
        out, lines = _explained(capsys, js.conv_transpose2d_output_shape, *args, d)
        assert out == shape and len(lines) == 3
        _check_hw_lines(lines[:2], shape)

        macs, ((label, symbols, numbers, value),) = _explained(
            capsys, js.conv_transpose2d_macs, *args, g, d
        )
        assert label == "MACs" and int(value) == macs == _evaluate(numbers)
        names = dict(N=n, C_in=c_in, H_in=h, W_in=w, C_out=c_out, groups=g, kh=k[0], kw=k[1])
        assert _evaluate(symbols, names) == macs

        bias = rng.random() < 0.5
        params, ((label, symbols, numbers, value),) = _explained(
            capsys, js.conv_transpose2d_params, c_in, c_out, k, bias, g
        )
        assert label == "params" and int(value) == params == _evaluate(numbers)
        assert _evaluate(symbols, names) == params
        checked += 1


def test_explain_conv2d_params(capsys):
    rng = random.Random(4)
    for _ in range(100):
        g = rng.choice((1, 2, 4))
        c_in, c_out = g * rng.randint(1, 8), g * rng.randint(1, 8)
        k, bias = (rng.randint(1, 7), rng.randint(1, 7)), rng.random() < 0.5
        params, ((label, symbols, numbers, value),) = _explained(
            capsys, js.conv2d_params, c_in, c_out, k, bias, g
        )
        assert label == "params" and int(value) == params == _evaluate(numbers)
        names = dict(C_out=c_out, C_in=c_in, groups=g, kh=k[0], kw=k[1])
        assert _evaluate(symbols, names) == params


def test_explain_activation_bytes(capsys):
    rng = random.Random(5)
    for _ in range(50):
        shape = tuple(rng.randint(1, 64) for _ in range(rng.randint(1, 4)))
        dtype = rng.choice(("float32", "bfloat16", np.float16, jnp.int8))
        count, ((label, symbols, numbers, value),) = _explained(
            capsys, js.activation_bytes, shape, dtype
        )
        assert label == "bytes" and int(value) == count == _evaluate(numbers)
        names = dict(shape=shape, itemsize=jnp.dtype(dtype).itemsize)
        assert _evaluate(symbols, names) == count


def test_explain_receptive_field(capsys):
    rng = random.Random(6)
    for _ in range(50):
        layers = [(rng.randint(1, 7), rng.randint(1, 3)) for _ in range(rng.randint(1, 8))]
        field, lines = _explained(capsys, js.receptive_field, layers)
        assert len(lines) == len(layers)
        for i, (label, numbers, value) in enumerate(lines, 1):
            assert label == f"r_{i}"
            assert int(value) == _evaluate(numbers) == js.receptive_field(layers[:i])
        assert int(lines[-1][-1]) == field
    assert js.receptive_field([], explain=True) == 1
    assert capsys.readouterr().out == "r = 1  (no layers)\n"


def test_explain_adaptive_pool2d_output_shape(capsys):
    out, lines = _explained(capsys, js.adaptive_pool2d_output_shape, (2, 3, 7, 9), (4, None))
    assert out == (2, 3, 4, 9)
    assert lines == [["H_out", "4"], ["W_out", "9"], ["shape", "(N, C, H_out, W_out)", str(out)]]


# ------------------------------------------------------------------ errors (new calculators)


@pytest.mark.parametrize(
    "call, err, match",
    [
        (
            lambda: js.conv_transpose2d_output_shape(
                (1, 3, 4, 4), 8, 3, stride=2, output_padding=2
            ),
            ValueError,
            r"conv_transpose2d_output_shape output_padding must be smaller than either stride "
            r"or dilation, got output_padding=\(2, 2\), stride=\(2, 2\), dilation=\(1, 1\)",
        ),
        (
            lambda: js.conv_transpose2d_output_shape((1, 3, 2, 2), 8, 3, padding=2),
            ValueError,
            r"conv_transpose2d_output_shape output size 0x0 is too small",
        ),
        (
            lambda: js.conv_transpose2d_output_shape((3, 4, 4), 8, 3),
            ValueError,
            r"conv_transpose2d_output_shape expected a 4D input shape",
        ),
        (
            lambda: js.conv_transpose2d_macs((1, 4, 4, 4), 6, 3, groups=4),
            ValueError,
            r"conv_transpose2d_macs groups=4 must divide both in_channels=4 and out_channels=6",
        ),
        (
            lambda: js.conv_transpose2d_macs((1, 4, 4, 4), 6, 3, stride=1, output_padding=1),
            ValueError,
            r"conv_transpose2d_macs output_padding must be smaller",
        ),
        (
            lambda: js.conv_transpose2d_params(4, 6, 0),
            ValueError,
            r"conv_transpose2d_params kernel_size must be positive",
        ),
        (
            lambda: js.conv_transpose2d_output_shape((1, 3, 4, 4), 8, 3, padding=-1),
            ValueError,
            r"padding must be >= 0",
        ),
        (
            lambda: js.adaptive_pool2d_output_shape((1, 3, 4, 4), -1),
            ValueError,
            r"adaptive_pool2d_output_shape output_size",
        ),
        (
            lambda: js.adaptive_pool2d_output_shape((1, 3, 4, 4), (1, 2, 3)),
            ValueError,
            r"adaptive_pool2d_output_shape output_size must be an int or a pair",
        ),
        (
            lambda: js.adaptive_pool2d_output_shape((1, 3, 4, 4), None),
            TypeError,
            r"adaptive_pool2d_output_shape output_size must be an int or a pair",
        ),
        (
            lambda: js.adaptive_pool2d_output_shape((1, 3, 4, 4), 2.5),
            TypeError,
            r"adaptive_pool2d_output_shape output_size must hold ints or None",
        ),
    ],
)
def test_new_calculator_errors(call, err, match):
    with pytest.raises(err, match=match):
        call()


# ------------------------------------------------------------ channels last (NHWC)


def _last(shape):
    """An NCHW shape in NHWC order."""
    n, c, h, w = shape
    return (n, h, w, c)


def _takes_data_format(op):
    return "data_format" in inspect.signature(op).parameters


@pytest.mark.parametrize("shape, c_out, k, s, p, d", CONV_SHAPE_GRID)
def test_conv2d_calculators_nhwc(shape, c_out, k, s, p, d):
    """The same numbers read and written channels last: the NHWC shape is the NCHW one
    reordered, the MACs are equal, and (where ``conv2d`` takes ``data_format``) it is the
    shape ``conv2d`` gives in NHWC."""
    expected = js.conv2d_output_shape(shape, c_out, k, s, p, d)
    got = js.conv2d_output_shape(_last(shape), c_out, k, s, p, d, data_format="NHWC")
    assert got == _last(expected)
    macs = js.conv2d_macs(shape, c_out, k, s, p, d)
    assert js.conv2d_macs(_last(shape), c_out, k, s, p, d, data_format="NHWC") == macs
    if _takes_data_format(js.conv2d):
        kernel = (k, k) if isinstance(k, int) else k
        x = jax.ShapeDtypeStruct(_last(shape), jnp.float32)
        w = jax.ShapeDtypeStruct((c_out, shape[1], *kernel), jnp.float32)
        conv = lambda x, w: js.conv2d(x, w, stride=s, padding=p, dilation=d, data_format="NHWC")  # noqa: E731
        assert jax.eval_shape(conv, x, w).shape == got


@pytest.mark.parametrize("shape, k, s, p, d, ceil", POOL_SHAPE_GRID)
def test_pool2d_output_shape_nhwc(shape, k, s, p, d, ceil):
    expected = _last(js.pool2d_output_shape(shape, k, s, p, d, ceil))
    assert js.pool2d_output_shape(_last(shape), k, s, p, d, ceil, data_format="NHWC") == expected
    if _takes_data_format(js.max_pool2d):
        x = jax.ShapeDtypeStruct(_last(shape), jnp.float32)
        pool = lambda x: js.max_pool2d(x, k, s, p, d, ceil, data_format="NHWC")  # noqa: E731
        assert jax.eval_shape(pool, x).shape == expected


@pytest.mark.parametrize("shape, c_out, k, s, p, op, g, d", TRANSPOSE_GRID)
def test_conv_transpose2d_calculators_nhwc(shape, c_out, k, s, p, op, g, d):
    expected = js.conv_transpose2d_output_shape(shape, c_out, k, s, p, op, d)
    got = js.conv_transpose2d_output_shape(_last(shape), c_out, k, s, p, op, d, data_format="NHWC")
    assert got == _last(expected)
    macs = js.conv_transpose2d_macs(shape, c_out, k, s, p, op, g, d)
    nhwc = js.conv_transpose2d_macs(_last(shape), c_out, k, s, p, op, g, d, data_format="NHWC")
    assert nhwc == macs


@pytest.mark.parametrize("size", [3, (3, None), (None, 1), (7, 2), 0])
def test_adaptive_pool2d_output_shape_nhwc(size):
    shape = (2, 3, 5, 4)
    expected = _last(js.adaptive_pool2d_output_shape(shape, size))
    assert js.adaptive_pool2d_output_shape(_last(shape), size, data_format="NHWC") == expected


def test_explain_prints_the_caller_layout(capsys):
    js.conv2d_output_shape((1, 32, 24, 3), 8, (3, 1), stride=2, explain=True, data_format="NHWC")
    js.pool2d_output_shape((1, 7, 7, 64), 2, ceil_mode=True, explain=True, data_format="NHWC")
    js.conv_transpose2d_output_shape((1, 7, 7, 8), 4, 3, 2, 1, 1, explain=True, data_format="NHWC")
    js.adaptive_pool2d_output_shape((8, 7, 9, 512), (3, None), explain=True, data_format="NHWC")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("shape")]
    assert lines == [
        "shape = (N, H_out, W_out, C_out) = (1, 15, 12, 8)",
        "shape = (N, H_out, W_out, C) = (1, 4, 4, 64)",
        "shape = (N, H_out, W_out, C_out) = (1, 14, 14, 4)",
        "shape = (N, H_out, W_out, C) = (8, 3, 9, 512)",
    ]


@pytest.mark.parametrize(
    "call, err, match",
    [
        (
            lambda: js.conv2d_output_shape((1, 8, 8, 3), 4, 3, data_format="nhwc"),
            ValueError,
            r"^conv2d_output_shape data_format must be 'NCHW' or 'NHWC', got 'nhwc'$",
        ),
        (
            lambda: js.pool2d_output_shape((1, 8, 8, 3), 2, data_format=1),
            TypeError,
            r"^pool2d_output_shape data_format must be 'NCHW' or 'NHWC', got 1 \(int\)$",
        ),
        (
            lambda: js.adaptive_pool2d_output_shape((8, 8, 3), 2, data_format="NHWC"),
            ValueError,
            r"^adaptive_pool2d_output_shape expected a 4D input shape "
            r"\(batch, height, width, channels\), got 3D",
        ),
        (
            lambda: js.conv2d_macs((1, 8, 8, 3), 4, 3, groups=2, data_format="NHWC"),
            ValueError,
            r"conv2d_macs groups=2 must divide both in_channels=3",
        ),
    ],
)
def test_data_format_errors(call, err, match):
    with pytest.raises(err, match=match):
        call()
