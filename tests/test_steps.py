"""``jspatial.steps``: the tap-by-tap run ends at the op's output, bit for bit; every step
shows what its tap read and multiplied; ``loop_jaxpr`` finds one tap of the compiled loop;
and the compiled ops really call the named loop bodies."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jspatial as js
from jspatial import _pool_args, conv, norm, pool
from tests.tolerances import assert_close

KEY = jax.random.key(0)


def _normal(i, shape):
    return jax.random.normal(jax.random.fold_in(KEY, i), shape)


CONV_CONFIGS = [  # (x shape, weight shape, kwargs)
    ((2, 3, 6, 7), (4, 3, 3, 3), dict(padding=1)),
    ((1, 2, 7, 9), (3, 2, 2, 3), dict(stride=(3, 2), bias=True)),  # stride > kernel
    ((2, 2, 9, 8), (2, 2, 3, 2), dict(stride=(1, 3), dilation=(2, 1), padding=(2, 0))),
    ((1, 4, 6, 6), (6, 2, 3, 3), dict(groups=2, padding=1, stride=2)),
    ((2, 4, 5, 6), (4, 1, 3, 3), dict(groups=4, padding="same", bias=True)),  # depthwise
]


def _with_bias(kwargs, c_out, i):
    kwargs = dict(kwargs)
    if kwargs.pop("bias", False):
        kwargs["bias"] = _normal(100 + i, (c_out,))
    return kwargs


@pytest.mark.parametrize("i", range(len(CONV_CONFIGS)))
def test_conv2d_steps_end_at_the_output(i):
    x_shape, w_shape, kwargs = CONV_CONFIGS[i]
    x, w = _normal(2 * i, x_shape), _normal(2 * i + 1, w_shape)
    kwargs = _with_bias(kwargs, w_shape[0], i)
    run = list(js.steps(js.conv2d, x, w, **kwargs))
    kh, kw = w_shape[2:]
    assert [s.t for s in run] == list(range(kh * kw))
    assert [s.tap for s in run] == [(t // kw, t % kw) for t in range(kh * kw)]
    expected = js.conv2d(x, w, algorithm="direct", **kwargs)
    assert run[-1].out.dtype == expected.dtype
    np.testing.assert_array_equal(run[-1].out, expected)
    for s in run:
        np.testing.assert_array_equal(s.weight, np.asarray(w)[:, :, s.tap[0], s.tap[1]])
        assert s.block.shape == (x_shape[0], x_shape[1], *expected.shape[2:])


def test_conv2d_steps_show_the_block_each_tap_reads_and_the_partial_sums():
    # y_t = sum over taps s <= t of block_s (grouped) times weight_s, checked in NumPy.
    x, w = _normal(20, (2, 4, 7, 6)), _normal(21, (6, 2, 3, 2))
    stride, dilation, padding, groups = (2, 1), (1, 2), (1, 2), 2
    run = list(
        js.steps(js.conv2d, x, w, stride=stride, padding=padding, dilation=dilation, groups=groups)
    )
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (1, 1), (2, 2)))
    ho, wo = run[0].out.shape[2:]
    total = np.zeros(run[0].out.shape)
    for s in run:
        i, j = s.tap
        rows = i * dilation[0] + stride[0] * np.arange(ho)
        cols = j * dilation[1] + stride[1] * np.arange(wo)
        block = xp[:, :, rows][:, :, :, cols]
        np.testing.assert_array_equal(s.block, block)
        for g in range(groups):
            xg = block[:, 2 * g : 2 * g + 2]
            total[:, 3 * g : 3 * g + 3] += np.einsum(
                "nchw,oc->nohw", xg, s.weight[3 * g : 3 * g + 3]
            )
        assert_close(s.out, total)


POOL_CONFIGS = [
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1), ceil_mode=True),
    dict(kernel_size=(3, 2), stride=1, dilation=(2, 1)),
    dict(kernel_size=2, stride=3),  # stride > kernel
]


@pytest.mark.parametrize("kwargs", POOL_CONFIGS)
def test_max_pool2d_steps_end_at_the_output_and_its_indices(kwargs):
    x = _normal(30, (2, 3, 7, 8))
    run = list(js.steps(js.max_pool2d, x, **kwargs))
    y, indices = js.max_pool2d(x, **kwargs, return_indices=True)
    np.testing.assert_array_equal(run[-1].out, y)
    assert all(s.weight is None for s in run)
    # The record of winning taps, turned into flat input positions, is the op's indices.
    args = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, **kwargs}
    k = _pool_args._pool_geometry(x, **args, op="max_pool2d")[1]
    arg = np.asarray(run[-1].argmax, np.int64)
    oy, ox = np.arange(y.shape[2])[:, None], np.arange(y.shape[3])[None, :]
    rows = oy * k.stride[0] - k.padding[0][0] + arg // k.kernel[1] * k.dilation[0]
    cols = ox * k.stride[1] - k.padding[1][0] + arg % k.kernel[1] * k.dilation[1]
    assert (arg >= 0).all()
    np.testing.assert_array_equal(rows * x.shape[3] + cols, indices)


def test_max_pool2d_steps_record_the_winner_so_far():
    x = jnp.array([[[[1.0, 5.0], [3.0, 2.0]]]])
    run = list(js.steps(js.max_pool2d, x, 2))
    assert [int(s.out[0, 0, 0, 0]) for s in run] == [1, 5, 5, 5]
    assert [int(s.argmax[0, 0, 0, 0]) for s in run] == [0, 1, 1, 1]
    assert [float(s.block[0, 0, 0, 0]) for s in run] == [1.0, 5.0, 3.0, 2.0]


def test_max_pool2d_steps_padding_reads_minus_infinity_and_never_wins():
    x = -1.0 - jnp.arange(4.0).reshape(1, 1, 2, 2)
    first = next(iter(js.steps(js.max_pool2d, x, 3, stride=1, padding=1)))
    assert first.block[0, 0, 0, 0] == -jnp.inf  # tap (0, 0) of window (0, 0): padding
    assert first.argmax[0, 0, 0, 0] == -1 and first.out[0, 0, 0, 0] == -jnp.inf


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3, stride=2, padding=1),
        dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
        dict(kernel_size=(2, 3), stride=(2, 1), divisor_override=5),
    ],
)
def test_avg_pool2d_steps_end_at_the_output(kwargs):
    x = _normal(40, (2, 3, 7, 8))
    run = list(js.steps(js.avg_pool2d, x, **kwargs))
    np.testing.assert_array_equal(run[-1].out, js.avg_pool2d(x, **kwargs))
    # Each partial output is the sum of the blocks read so far, scaled as at the end.
    scale = run[-1].out / sum(s.block for s in run)
    half = len(run) // 2
    assert_close(run[half - 1].out, sum(s.block for s in run[:half]) * scale)


TRANSPOSE_CONFIGS = [  # (x shape, weight shape, kwargs)
    ((2, 4, 4, 3), (4, 3, 3, 3), dict(stride=2, padding=1, output_padding=1, bias=True)),
    ((1, 4, 3, 4), (4, 1, 3, 2), dict(stride=(2, 1), groups=2, dilation=(1, 2))),
]


@pytest.mark.parametrize("i", range(len(TRANSPOSE_CONFIGS)))
def test_conv_transpose2d_steps_end_at_the_output(i):
    x_shape, w_shape, kwargs = TRANSPOSE_CONFIGS[i]
    x, w = _normal(50 + 2 * i, x_shape), _normal(51 + 2 * i, w_shape)
    groups = kwargs.get("groups", 1)
    kwargs = _with_bias(kwargs, w_shape[1] * groups, i)
    run = list(js.steps(js.conv_transpose2d, x, w, **kwargs))
    assert len(run) == w_shape[2] * w_shape[3]
    expected = js.conv_transpose2d(x, w, **kwargs)
    np.testing.assert_array_equal(run[-1].out, expected)
    for s in run:
        np.testing.assert_array_equal(s.block, x)
        np.testing.assert_array_equal(s.weight, np.asarray(w)[:, :, s.tap[0], s.tap[1]])


def test_steps_stamps_of_a_transposed_convolution():
    # One input pixel, a 2x2 kernel of ones, stride 2: each tap writes one output cell.
    run = list(js.steps(js.conv_transpose2d, jnp.ones((1, 1, 1, 1)), jnp.ones((1, 1, 2, 2))))
    assert [s.out[0, 0].tolist() for s in run][1] == [[1.0, 1.0], [0.0, 0.0]]


def test_steps_checks_its_arguments_when_called():
    x = jnp.ones((1, 2, 5, 5))
    with pytest.raises(ValueError, match="steps supports"):
        js.steps(js.global_avg_pool2d, x)
    with pytest.raises(ValueError, match="conv2d expected 3 input channels, got 2"):
        js.steps(js.conv2d, x, jnp.ones((1, 3, 3, 3)))  # no iteration needed to raise
    with pytest.raises(ValueError, match="tap loop"):
        js.steps(js.conv2d, jnp.ones((1, 2, 6, 6)), jnp.ones((2, 2, 3, 3)), algorithm="im2col")
    with pytest.raises(TypeError):
        js.steps(js.max_pool2d, x, 2, bogus=1)


# ------------------------------------------------------------------------ loop_jaxpr


def _names(jaxpr):
    return [eqn.primitive.name for eqn in jaxpr.eqns]


def test_loop_jaxpr_of_conv2d_is_one_tap():
    x, w = jnp.ones((1, 3, 8, 8)), jnp.ones((4, 3, 3, 3))
    body = js.loop_jaxpr(js.conv2d, x, w, padding=1)  # algorithm='direct' by default here
    names = _names(body)
    assert names.count("dot_general") == 1
    assert names.count("dynamic_slice") == 2  # the input block and the tap's weights
    assert "add" in names and len(names) <= 12, str(body)
    assert body.debug_info.func_src_info.startswith("conv_tap ")  # traced from conv.conv_tap
    full = js.loop_jaxpr(js.conv2d, x, w, padding=1, index_math=True)
    assert _names(full).count("dot_general") == 1 and len(full.eqns) > len(names)
    # The im2col algorithm's loop copies windows: no product inside it.
    assert "dot_general" not in _names(js.loop_jaxpr(js.conv2d, x, w, algorithm="im2col"))


@pytest.mark.parametrize(
    "op, accumulate",
    [(js.max_pool2d, "gt"), (js.avg_pool2d, "add")],
)
def test_loop_jaxpr_of_pooling(op, accumulate):
    body = js.loop_jaxpr(op, jnp.ones((1, 2, 6, 6)), 3, stride=2, padding=1)
    names = _names(body)
    assert "dynamic_slice" in names and accumulate in names and len(names) <= 15, str(body)


def test_loop_jaxpr_without_a_loop():
    with pytest.raises(ValueError, match="no loop"):
        js.loop_jaxpr(js.global_avg_pool2d, jnp.ones((1, 2, 3, 3)))


# ---------------------------------------------- the compiled ops call the named bodies


def _count_calls(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


@pytest.mark.parametrize(
    "module, name, run",
    [
        (conv, "conv_tap", lambda x: js.conv2d(x, jnp.ones((2, 3, 3, 3)), algorithm="direct")),
        (conv, "conv_transpose_tap", lambda x: js.conv_transpose2d(x, jnp.ones((3, 2, 2, 2)))),
        (
            conv,
            "conv_backward_tap",
            lambda x: jax.grad(
                lambda x: conv.conv2d(x, jnp.ones((2, 3, 3, 3)), algorithm="direct").sum()
            )(x),
        ),
        (pool, "max_pool_tap", lambda x: js.max_pool2d(x, 2)),
        (pool, "avg_pool_tap", lambda x: js.avg_pool2d(x, 2)),
        (norm, "merge_stats", lambda x: js.batch_norm(x, None, None, training=True)[0]),
    ],
)
def test_compiled_ops_call_the_named_loop_bodies(monkeypatch, module, name, run):
    calls = _count_calls(monkeypatch, module, name)
    jax.make_jaxpr(run)(jnp.ones((1, 3, 11, 13)))  # a shape no other test traces
    assert calls, f"{module.__name__}.{name} was not traced"


# ------------------------------------------------------------------ channels last (NHWC)


def _last(a):
    return jnp.transpose(a, (0, 2, 3, 1))


def _steps_nhwc(op, x, *args, **kwargs):
    """The NHWC run next to the NCHW one: every step's arrays are the NCHW step's moved to
    channels last (the weights are OIHW in both), and the last ``out`` is the NHWC op's
    output, bit for bit."""
    run = list(js.steps(op, x, *args, **kwargs))
    run_last = list(js.steps(op, _last(x), *args, **kwargs, data_format="NHWC"))
    assert len(run_last) == len(run)
    for a, b in zip(run_last, run):
        assert (a.t, a.tap) == (b.t, b.tap)
        # conv_transpose2d's block is the whole input; the others' are window blocks.
        np.testing.assert_array_equal(a.block, _last(b.block))
        np.testing.assert_array_equal(a.out, _last(b.out))
        if b.weight is not None:
            np.testing.assert_array_equal(a.weight, b.weight)
        if b.argmax is not None:
            np.testing.assert_array_equal(a.argmax, _last(b.argmax))
    return run_last


@pytest.mark.parametrize("i", [1, 3, 4])
def test_conv2d_steps_nhwc(i):
    x_shape, w_shape, kwargs = CONV_CONFIGS[i]
    x, w = _normal(2 * i, x_shape), _normal(2 * i + 1, w_shape)
    kwargs = _with_bias(kwargs, w_shape[0], i)
    run = _steps_nhwc(js.conv2d, x, w, **kwargs)
    expected = js.conv2d(_last(x), w, algorithm="direct", data_format="NHWC", **kwargs)
    np.testing.assert_array_equal(run[-1].out, expected)


@pytest.mark.parametrize("kwargs", POOL_CONFIGS[1:])
def test_pool_steps_nhwc(kwargs):
    x = _normal(31, (2, 3, 7, 8))
    run = _steps_nhwc(js.max_pool2d, x, **kwargs)
    np.testing.assert_array_equal(
        run[-1].out, js.max_pool2d(_last(x), **kwargs, data_format="NHWC")
    )
    avg = {k: v for k, v in kwargs.items() if k != "dilation"}
    run = _steps_nhwc(js.avg_pool2d, x, **avg)
    np.testing.assert_array_equal(run[-1].out, js.avg_pool2d(_last(x), **avg, data_format="NHWC"))


@pytest.mark.parametrize("i", range(len(TRANSPOSE_CONFIGS)))
def test_conv_transpose2d_steps_nhwc(i):
    x_shape, w_shape, kwargs = TRANSPOSE_CONFIGS[i]
    x, w = _normal(50 + 2 * i, x_shape), _normal(51 + 2 * i, w_shape)
    kwargs = _with_bias(kwargs, w_shape[1] * kwargs.get("groups", 1), i)
    run = _steps_nhwc(js.conv_transpose2d, x, w, **kwargs)
    expected = js.conv_transpose2d(_last(x), w, **kwargs, data_format="NHWC")
    np.testing.assert_array_equal(run[-1].out, expected)
    np.testing.assert_array_equal(run[0].block, _last(x))


def test_steps_nhwc_checks_data_format():
    with pytest.raises(ValueError, match=r"^max_pool2d data_format must be 'NCHW' or 'NHWC'"):
        js.steps(js.max_pool2d, jnp.ones((1, 4, 4, 2)), 2, data_format="HWC")
