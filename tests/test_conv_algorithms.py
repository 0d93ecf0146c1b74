"""The alternative convolution algorithms (Winograd F(2x2, 3x3), im2col) against the
direct tap loop and XLA's convolution."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from jax import lax

import jspatial as js
from jspatial import _conv_args, _tuning
from tests.tolerances import assert_close


def _xla(x, w, padding):
    return lax.conv_general_dilated(
        x, w, (1, 1), padding, dimension_numbers=("NCHW", "OIHW", "NCHW"), precision="highest"
    )


@pytest.mark.parametrize(
    "shape, out_channels, padding",
    [
        ((2, 3, 7, 9), 4, ((1, 1), (1, 1))),  # odd sizes: the last 2x2 tile is half outside
        ((2, 5, 8, 8), 6, ((0, 0), (0, 0))),
        ((1, 4, 5, 6), 4, ((1, 0), (2, 1))),  # asymmetric padding
        ((3, 8, 4, 4), 8, ((1, 1), (1, 1))),
        ((1, 2, 3, 3), 3, ((0, 0), (0, 0))),  # a single output pixel
    ],
)
def test_winograd_matches_direct_and_xla(shape, out_channels, padding):
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, shape)
    w = jax.random.normal(kw, (out_channels, shape[1], 3, 3))

    def wino(x, w):
        return js.conv2d(x, w, padding=padding, algorithm="winograd")

    def direct(x, w):
        return js.conv2d(x, w, padding=padding, algorithm="direct")

    y, vjp = jax.vjp(wino, x, w)
    y_direct, vjp_direct = jax.vjp(direct, x, w)
    g = jax.random.normal(kg, y.shape)
    # The transforms add up to 4 terms of each sign: a few ulps more than the direct loop.
    assert_close(y, _xla(x, w, padding), scale=5)
    assert_close(y, y_direct, scale=5)
    for got, want in zip(vjp(g), vjp_direct(g)):
        assert_close(got, want, scale=5)


@pytest.mark.parametrize(
    "algorithm, shape, out_channels, kernel, kwargs",
    [
        ("winograd", (2, 3, 7, 9), 4, (3, 3), dict(padding=1)),  # a half-outside last tile
        ("winograd", (1, 4, 5, 6), 3, (3, 3), dict(padding=((1, 0), (2, 1)))),
        ("im2col", (2, 3, 11, 10), 5, (3, 2), dict(stride=(2, 3), padding=(1, 0), dilation=2)),
        ("im2col", (2, 3, 8, 8), 4, (2, 2), dict(stride=4, padding=1)),  # stride > kernel
    ],
)
def test_nhwc_matches_torch(algorithm, shape, out_channels, kernel, kwargs):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((out_channels, shape[1], *kernel)).astype(np.float32)
    b = rng.standard_normal(out_channels).astype(np.float32)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    pads = kwargs.get("padding", 0)
    if not isinstance(pads, int) and not isinstance(pads[0], int):
        (top, bottom), (left, right) = pads
        ty = F.conv2d(F.pad(tx, (left, right, top, bottom)), tw, tb)
    else:
        ty = F.conv2d(tx, tw, tb, **kwargs)
    cot = rng.standard_normal(tuple(ty.shape)).astype(np.float32)
    ty.backward(torch.tensor(cot))
    nhwc = lambda a: np.moveaxis(np.asarray(a), 1, -1)  # noqa: E731

    def ours(x, w, b):
        return js.conv2d(x, w, b, algorithm=algorithm, data_format="NHWC", **kwargs)

    y, vjp = jax.vjp(ours, nhwc(x), w, b)
    dx, dw, db = vjp(nhwc(cot))
    scale = 5 if algorithm == "winograd" else 1  # the transforms' extra rounding
    assert_close(y, nhwc(ty.detach()), scale=scale)
    assert_close(dx, nhwc(tx.grad), scale=scale)
    assert_close(dw, tw.grad.numpy(), scale=scale)
    assert_close(db, tb.grad.numpy(), scale=scale)


def test_winograd_check_grads_float64(x64):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 5, 6)))
    w = jnp.asarray(np.random.default_rng(1).standard_normal((4, 3, 3, 3)))
    assert x.dtype == jnp.float64
    jax.test_util.check_grads(
        lambda x, w: jnp.sin(js.conv2d(x, w, padding=1, algorithm="winograd")),
        (x, w),
        order=1,
        modes=("rev",),
    )


def test_winograd_bfloat16_keeps_dtype():
    x = jax.random.normal(jax.random.key(0), (2, 4, 6, 6))
    w = jax.random.normal(jax.random.key(1), (4, 4, 3, 3)) * 0.3
    y = js.conv2d(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), padding=1, algorithm="winograd")
    assert y.dtype == jnp.bfloat16
    ref = js.conv2d(x, w, padding=1)
    np.testing.assert_allclose(np.asarray(y, np.float32), ref, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize(
    "kwargs",
    [{"stride": 2}, {"dilation": 2}, {"groups": 2}],
)
def test_winograd_rejects_unsupported_configurations(kwargs):
    x = jnp.ones((1, 4, 8, 8))
    w = jnp.ones((4, 4 // kwargs.get("groups", 1), 3, 3))
    with pytest.raises(ValueError, match="algorithm='winograd' needs"):
        js.conv2d(x, w, padding=1, algorithm="winograd", **kwargs)


def test_unknown_algorithm_is_rejected():
    with pytest.raises(ValueError, match="algorithm must be one of"):
        js.conv2d(jnp.ones((1, 1, 4, 4)), jnp.ones((1, 1, 3, 3)), algorithm="fft")


def test_auto_picks_winograd_only_for_wide_layers():
    wide = _tuning.WINOGRAD_MIN_CHANNELS
    size = _tuning.WINOGRAD_MIN_SIZE

    def picks(c_in, c_out, hw, **kwargs):
        x, w = jnp.ones((1, c_in, hw, hw)), jnp.ones((c_out, c_in, 3, 3))
        geom, groups = _conv_args._conv_geometry(
            x, w, None, kwargs.get("stride", 1), 1, 1, 1, "conv2d"
        )
        method = _conv_args.choose_method("auto", geom, groups, c_in, c_out, "conv2d")
        return method == "winograd"

    assert picks(wide, wide, size)
    assert not picks(3, wide, size)  # narrow input: the transforms cost more than they save
    assert not picks(wide, wide, size - 1)  # small maps waste too much on edge tiles
    assert not picks(wide, wide, 2 * size, stride=2)


def test_winograd_uses_a_loop_and_no_convolution_primitive():
    x, w = jnp.ones((1, 4, 6, 6)), jnp.ones((4, 4, 3, 3))
    text = str(
        jax.make_jaxpr(jax.grad(lambda x, w: js.conv2d(x, w, algorithm="winograd").sum()))(x, w)
    )
    assert "scan" in text or "while" in text  # fori_loop with static bounds traces to a scan
    assert "conv_general_dilated" not in text


@pytest.mark.parametrize(
    "shape, kernel, stride, padding, dilation",
    [
        ((2, 3, 7, 9), (3, 2), (1, 1), ((1, 1), (0, 2)), (1, 1)),
        ((2, 3, 11, 10), (3, 3), (2, 3), ((1, 0), (2, 1)), (2, 1)),
        ((2, 3, 8, 8), (2, 2), (4, 4), ((1, 1), (1, 1)), (1, 1)),  # stride > kernel
    ],
)
def test_im2col_matches_xla(shape, kernel, stride, padding, dilation):
    kx, kw, kg = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(kx, shape)
    w = jax.random.normal(kw, (5, shape[1], *kernel))

    def ours(x, w):
        return js.conv2d(
            x, w, stride=stride, padding=padding, dilation=dilation, algorithm="im2col"
        )

    def xla(x, w):
        return lax.conv_general_dilated(
            x, w, stride, padding, rhs_dilation=dilation,
            dimension_numbers=("NCHW", "OIHW", "NCHW"), precision="highest",
        )  # fmt: skip

    y, vjp = jax.vjp(ours, x, w)
    y_ref, vjp_ref = jax.vjp(xla, x, w)
    g = jax.random.normal(kg, y.shape)
    assert_close(y, y_ref)
    for got, want in zip(vjp(g), vjp_ref(g)):
        assert_close(got, want)


def test_auto_picks_im2col_for_the_first_layer():
    x, w = jnp.ones((1, 3, 8, 8)), jnp.ones((16, 3, 3, 3))
    geom, groups = _conv_args._conv_geometry(x, w, None, 1, 1, 1, 1, "conv2d")
    assert _conv_args.choose_method("auto", geom, groups, 3, 16, "conv2d") == "im2col"
    with pytest.raises(ValueError, match="algorithm='im2col' needs groups=1"):
        js.conv2d(jnp.ones((1, 4, 8, 8)), jnp.ones((4, 2, 3, 3)), groups=2, algorithm="im2col")


@pytest.mark.parametrize(
    "algorithm, shape, out_channels, kwargs",
    [
        ("direct", (6, 4, 7, 9), 5, dict(padding=1)),
        ("direct", (4, 4, 9, 8), 6, dict(stride=2, padding=(0, 1), groups=2)),
        ("winograd", (6, 4, 7, 9), 5, dict(padding=1)),
        ("winograd", (5, 3, 6, 6), 4, dict(padding=0)),
        ("im2col", (6, 3, 7, 9), 5, dict(padding=1)),
        ("im2col", (4, 2, 9, 8), 6, dict(stride=(2, 1), padding=(0, 1), dilation=2)),
        # Channels last: the chunks are the same strided rows of the caller's array.
        ("direct", (4, 9, 8, 4), 6, dict(stride=2, padding=(0, 1), groups=2, data_format="NHWC")),
        ("winograd", (6, 7, 9, 4), 5, dict(padding=1, data_format="NHWC")),
    ],
)
def test_batch_chunks_give_the_unchunked_result(
    monkeypatch, algorithm, shape, out_channels, kwargs
):
    """With tiny chunks allowed, the batch loop runs several chunks; values and gradients
    must not change (chunks are strided rows, so a mix-up would show)."""
    from jspatial import _windows as win

    kx, kw, kg = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(kx, shape)
    groups = kwargs.get("groups", 1)
    c_in = shape[-1] if kwargs.get("data_format") == "NHWC" else shape[1]
    w = jax.random.normal(kw, (out_channels, c_in // groups, 3, 3))

    def f(x, w):
        return js.conv2d(x, w, algorithm=algorithm, **kwargs)

    y, vjp = jax.vjp(f, x, w)  # default chunking: one chunk at these sizes

    def chunks():  # what each algorithm's batch loop uses (4 rows per image here or more)
        t = _tuning
        wino = win.batch_chunks(shape[0], 4, t.WINOGRAD_MIN_CHUNK_TILES, t.WINOGRAD_MAX_CHUNKS)
        return win.batch_chunks(shape[0], 4), wino

    assert chunks() == (1, 1)
    g = jax.random.normal(kg, y.shape)
    want = (y, *vjp(g))

    jax.clear_caches()  # the jitted op must be traced again with the new setting
    monkeypatch.setattr(_tuning, "CONV_MIN_CHUNK_ROWS", 1)
    monkeypatch.setattr(_tuning, "WINOGRAD_MIN_CHUNK_TILES", 1)
    assert chunks() == (shape[0], shape[0])  # one image per chunk
    y, vjp = jax.vjp(f, x, w)
    got = (y, *vjp(g))
    jax.clear_caches()
    for a, b in zip(got, want, strict=True):
        assert_close(a, b, scale=2)
