"""``jspatial.reference``: a NumPy loop for every public op, with its arguments and results.

The convolutions and the two window pools are checked in their ops' own test files
(``test_conv.py``, ``test_conv_transpose.py``, ``test_pool.py``); here the others, and
the pools' indices, against the jspatial ops (themselves checked against PyTorch).
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jspatial as js
from jspatial import reference
from tests.tolerances import assert_close

OP_MODULES = ("jspatial.conv", "jspatial.conv_transpose", "jspatial.pool", "jspatial.adaptive",
              "jspatial.unpool", "jspatial.pad", "jspatial.norm")  # fmt: skip
OPS = [n for n in js.__all__ if getattr(getattr(js, n), "__module__", "") in OP_MODULES]


def _data(shape, seed=0, *, ties=False):
    x = jax.random.normal(jax.random.key(seed), shape)
    return np.array(jnp.round(x) if ties else x)  # rounded: many equal values


def _positional(fn):
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = inspect.signature(fn).parameters.values()
    return [(p.name, p.default) for p in params if p.kind in kinds]


def test_every_public_op_has_a_reference():
    assert len(OPS) == 10, OPS
    for name in OPS:
        assert hasattr(reference, name), f"jspatial.reference has no {name}"


@pytest.mark.parametrize("name", OPS)
def test_reference_takes_the_ops_arguments(name):
    # Names, order and defaults: a call to one is a call to the other.
    assert _positional(getattr(reference, name)) == _positional(getattr(js, name))


MAX_POOL_CASES = {  # shape, kernel_size, stride, padding, dilation, ceil_mode
    "k3_s2_p1": ((2, 3, 7, 6), 3, 2, 1, 1, False),
    "rect_stride_over_kernel": ((1, 2, 9, 8), (2, 3), (3, 1), (1, 0), 1, False),
    "ceil": ((1, 2, 6, 7), 2, 2, 0, 1, True),
    "dilated": ((1, 2, 8, 9), 3, 1, 1, (2, 1), False),
    "windows_of_padding_only": ((1, 2, 2, 5), 2, 1, 1, 3, False),
}


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("name", MAX_POOL_CASES)
def test_max_pool2d_values_and_indices(name, ties):
    shape, *args = MAX_POOL_CASES[name]
    x = _data(shape, ties=ties)
    y, idx = js.max_pool2d(x, *args, return_indices=True)
    y_ref, idx_ref = reference.max_pool2d(x, *args, return_indices=True)
    assert idx_ref.dtype == np.int64
    assert_close(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    assert_close(reference.max_pool2d(x, *args), y_ref)  # the values alone by default


def test_max_pool2d_nan_wins_its_window():
    x = _data((1, 1, 4, 4))
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = np.nan  # two NaNs in the first window: the last wins
    y, idx = js.max_pool2d(x, 2, return_indices=True)
    y_ref, idx_ref = reference.max_pool2d(x, 2, return_indices=True)
    assert np.isnan(y_ref[0, 0, 0, 0]) and idx_ref[0, 0, 0, 0] == 4
    np.testing.assert_array_equal(idx, idx_ref)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y_ref))


ADAPTIVE_CASES = {  # input shape, output_size
    "uneven": ((2, 3, 7, 5), (3, 2)),
    "larger_than_input": ((1, 2, 3, 4), (5, 7)),
    "keep_height": ((1, 2, 5, 9), (None, 4)),
    "one": ((2, 2, 6, 5), 1),
    "divides": ((1, 2, 8, 6), (4, 3)),
}


@pytest.mark.parametrize("name", ADAPTIVE_CASES)
def test_adaptive_avg_pool2d(name):
    shape, size = ADAPTIVE_CASES[name]
    x = _data(shape)
    expected = js.adaptive_avg_pool2d(x, size)
    assert_close(expected, reference.adaptive_avg_pool2d(x, size))


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("name", ADAPTIVE_CASES)
def test_adaptive_max_pool2d_values_and_indices(name, ties):
    shape, size = ADAPTIVE_CASES[name]
    x = _data(shape, seed=1, ties=ties)
    y, idx = js.adaptive_max_pool2d(x, size, return_indices=True)
    y_ref, idx_ref = reference.adaptive_max_pool2d(x, size, return_indices=True)
    assert_close(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    assert_close(reference.adaptive_max_pool2d(x, size), y_ref)


@pytest.mark.parametrize(
    "shape, kernel_size, stride, padding, output_size",
    [
        ((2, 3, 6, 8), 2, None, 0, None),
        ((1, 2, 7, 9), 3, 2, 1, None),
        ((1, 2, 7, 9), (2, 3), (2, 3), 0, (7, 9)),  # the pooled input's odd size, given back
    ],
)
def test_max_unpool2d_undoes_max_pool2d(shape, kernel_size, stride, padding, output_size):
    x = _data(shape, seed=2)
    y, idx = js.max_pool2d(x, kernel_size, stride, padding, return_indices=True)
    args = (kernel_size, stride, padding, output_size)
    expected = js.max_unpool2d(y, idx, *args)
    got = reference.max_unpool2d(np.asarray(y), np.asarray(idx), *args)
    assert got.shape == expected.shape
    assert_close(expected, got)


def test_max_unpool2d_checks_as_the_op_does():
    with pytest.raises(ValueError, match=r"reference.max_unpool2d found an invalid index 99"):
        reference.max_unpool2d(np.ones((1, 1, 2, 2)), np.full((1, 1, 2, 2), 99), 2)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm(training, affine):
    x = 3.0 + 2.0 * _data((4, 3, 5, 6), seed=3)
    mean, var = np.array([0.5, -1.0, 2.0]), np.array([1.0, 4.0, 0.25])
    weight, bias = (
        (np.array([1.5, -0.5, 2.0]), np.array([0.1, 0.2, -0.3])) if affine else (None,) * 2
    )
    args = (mean, var, weight, bias, training, 0.3, 1e-3)
    y, new_mean, new_var = js.batch_norm(x, *args)
    y_ref, mean_ref, var_ref = reference.batch_norm(x, *args)
    assert_close(y, y_ref)
    assert_close(new_mean, mean_ref)
    assert_close(new_var, var_ref)
    if not training:
        np.testing.assert_array_equal(mean_ref, mean)


def test_batch_norm_without_running_statistics():
    x = _data((3, 2, 4, 4), seed=4)
    y, _, _ = js.batch_norm(x, None, None, training=True)
    y_ref, mean_ref, var_ref = reference.batch_norm(x, None, None, training=True)
    assert mean_ref is None and var_ref is None
    assert_close(y, y_ref)


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("amounts", [(2, 1, 1, 3), (-1, 2, 2, -1), (1, 2), (0, 0, -2, 1)], ids=str)
def test_pad(mode, amounts):
    x = _data((2, 2, 4, 5), seed=5)
    if len(amounts) == 2 and mode != "constant":  # torch's rule: 2-D or 3-D input only
        for fn in (js.pad, reference.pad):
            with pytest.raises(ValueError, match="pad"):
                fn(x, amounts, mode)
        return
    expected = js.pad(x, amounts, mode)
    got = reference.pad(x, amounts, mode)
    assert got.shape == expected.shape
    assert_close(expected, got)


def test_pad_constant_value_and_its_errors():
    x = _data((1, 2, 3, 3), seed=6)
    assert_close(js.pad(x, (1, 2, 0, 1), value=-4.0), reference.pad(x, (1, 2, 0, 1), value=-4.0))
    with pytest.raises(ValueError, match="reference.pad reflect padding must be smaller"):
        reference.pad(x, (3, 0, 0, 0), "reflect")


def test_global_avg_pool2d():
    x = _data((3, 4, 5, 7), seed=7)
    got = reference.global_avg_pool2d(x)
    assert got.shape == (3, 4)
    assert_close(js.global_avg_pool2d(x), got)
