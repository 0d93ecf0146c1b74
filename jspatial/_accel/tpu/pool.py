"""Max pooling with non-overlapping windows as a Pallas tap loop, batch on the lanes.

A TPU stores an activation ``(N, C, H, W)`` whose batch is a multiple of 128 with the
batch as its fastest axis and the channels next (physically ``(H, W, C, N)``: a
``(C, 128)`` tile per pixel, the order of ``jspatial._accel.tpu.conv`` too). Pooling
needs no matrix product, so the kernel works in exactly that order, and the
``NCHW -> HWCN`` transposes around it cost nothing (an input in ``data_format='NHWC'``
takes the ``NHWC -> HWCN`` transposes instead). For every tap of the window the
kernel loads the strided block of rows and columns that the tap sees, on-chip::

    best = -inf
    for t, (i, j) in enumerate(taps):                   # kh * kw strided loads
        window = x[i::sh, j::sw]                        # (H_out, W_out, C, N)
        take = window > best  (or NaN, or first tap)    # PyTorch's rule
        best = where(take, window, best)

The input is read once and the output written once. The backward kernel reruns the
comparison on the saved input to find each window's winner (as XLA's
``select_and_scatter`` does) and stores the gradient through the same strided
windows, so it reads ``x`` and ``g`` once and writes ``dx`` once. Supported: stride
equal to the kernel, no padding, no dilation, floor mode (the 2x2 pool of most CNNs).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jspatial import _windows as win
from jspatial._linear import Fn, linear_call

# Bytes of one grid step's input and output blocks together. Channels go in blocks of 8
# (the sublanes), so a 64-channel 31x31 layer needs about 8 MB a step, twice that with
# Pallas' double buffering: more than the default 16 MiB of scoped VMEM, well inside the
# 128 MiB of a v5e core.
BLOCK_BYTES = 8 * 2**20
VMEM_LIMIT = 64 * 2**20
# Both kernels: every (channel block, image block) step independent of the others.
_PARAMS = pltpu.CompilerParams(
    dimension_semantics=("parallel", "parallel"), vmem_limit_bytes=VMEM_LIMIT
)


def supports(geom: win.Geometry, return_indices: bool = False) -> bool:
    """Whether the kernel runs this ``max_pool2d``: no indices, and windows that do not
    overlap (stride equal to the kernel, no padding, no dilation, floor mode)."""
    kh, kw = geom.kernel
    return (
        not return_indices
        and geom.stride == geom.kernel
        and geom.dilation == (1, 1)
        and geom.padding == ((0, 0), (0, 0))
        and geom.out_hw == (geom.in_hw[0] // kh, geom.in_hw[1] // kw)
    )


def _blocks(x_shape, itemsize):
    """``(channels, images)`` per grid step: 128 images (or all), channels to fit (a
    multiple of 8, the sublanes, or all of them)."""
    h, w, c, n = x_shape
    nb = 128 if n % 128 == 0 else n
    per_channel = h * w * nb * itemsize * 2  # input and input gradient / output
    fits = [d for d in range(8, c + 1, 8) if c % d == 0 and d * per_channel <= BLOCK_BYTES]
    return (max(fits) if fits else c), nb


def _window(ref, t, geom):
    (kh, kw), (ho, wo) = geom.kernel, geom.out_hw
    i, j = divmod(t, kw)
    return pl.ds(i, ho, stride=kh), pl.ds(j, wo, stride=kw)


def _winners(x_ref, geom):
    """``(best, arg)`` over the taps, PyTorch's rule (``win.takes_max``)."""
    rows, cols = _window(x_ref, 0, geom)
    best = x_ref[rows, cols]
    arg = jnp.zeros(best.shape, jnp.int32)
    for t in range(1, geom.taps):  # a handful of taps: unrolled
        rows, cols = _window(x_ref, t, geom)
        window = x_ref[rows, cols]
        take = win.takes_max(window, best)
        best, arg = jnp.where(take, window, best), jnp.where(take, t, arg)
    return best, arg


def _specs(x_shape, y_shape, itemsize):
    cb, nb = _blocks(x_shape, itemsize)
    grid = (x_shape[2] // cb, x_shape[3] // nb)
    spec = lambda s: pl.BlockSpec((s[0], s[1], cb, nb), lambda c, n: (0, 0, c, n))  # noqa: E731
    return grid, spec(x_shape), spec(y_shape)


def _pool_hwcn(x, geom, interpret):
    h, w, c, n = x.shape
    y_shape = (*geom.out_hw, c, n)
    grid, x_spec, y_spec = _specs(x.shape, y_shape, x.dtype.itemsize)

    def kernel(x_ref, y_ref):
        y_ref[...] = _winners(x_ref, geom)[0]

    size = x.dtype.itemsize
    return pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=[x_spec],
        out_specs=y_spec,
        out_shape=jax.ShapeDtypeStruct(y_shape, x.dtype),
        # Each grid step reads its input block once and writes its output block once.
        cost_estimate=pl.CostEstimate(
            flops=(geom.taps - 1) * c * n * geom.out_hw[0] * geom.out_hw[1],
            transcendentals=0,
            bytes_accessed=size * (x.size + c * n * geom.out_hw[0] * geom.out_hw[1]),
        ),
        compiler_params=_PARAMS,
        interpret=interpret,
    )(x)


def _pool_hwcn_grad(x, g, geom, interpret):
    grid, x_spec, y_spec = _specs(x.shape, g.shape, x.dtype.itemsize)
    (kh, kw), (ho, wo) = geom.kernel, geom.out_hw

    def kernel(x_ref, g_ref, dx_ref):
        if (ho * kh, wo * kw) != geom.in_hw:  # floor mode: rows no window reads get zero
            dx_ref[...] = jnp.zeros(dx_ref.shape, dx_ref.dtype)
        _, arg = _winners(x_ref, geom)
        gv = g_ref[...]
        for t in range(geom.taps):
            rows, cols = _window(x_ref, t, geom)
            dx_ref[rows, cols] = jnp.where(arg == t, gv, jnp.zeros((), gv.dtype))

    size = x.dtype.itemsize
    return pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=[x_spec, y_spec],
        out_specs=x_spec,
        out_shape=jax.ShapeDtypeStruct(x.shape, g.dtype),
        # Reads x and g once, writes dx once.
        cost_estimate=pl.CostEstimate(
            flops=2 * geom.taps * g.size,
            transcendentals=0,
            bytes_accessed=size * (2 * x.size + g.size),
        ),
        compiler_params=_PARAMS,
        interpret=interpret,
    )(x, g)


@partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def max_pool2d(x, geom: win.Geometry, interpret=False):
    """``(N, C, H, W) -> (N, C, H_out, W_out)`` (``geom.layout`` ``'NHWC'``:
    ``(N, H, W, C) -> (N, H_out, W_out, C)``), PyTorch's tie and NaN rules."""
    hwcn = _pool_hwcn(win.to_hwcn(x, geom.layout), geom, interpret)
    return win.from_hwcn(hwcn, geom.layout)


def _tangent(geom, res, tangents):
    # Forward mode: the tangent of each window's winner, the winner found by the kernel's
    # comparison, in plain JAX over the same handful of taps (no padding: fill 0 is unread).
    x, dx = (win.to_phases(win.to_nhwc(a, geom.layout), geom, 0) for a in (res[0], tangents[0]))
    best, dy = win.window(x, 0, geom), win.window(dx, 0, geom)
    for t in range(1, geom.taps):
        xw = win.window(x, t, geom)
        take = win.takes_max(xw, best)
        best, dy = jnp.where(take, xw, best), jnp.where(take, win.window(dx, t, geom), dy)
    return [win.from_nhwc(dy, geom.layout)]


def _bwd(geom, interpret, res, cotangents):
    (x,), (g,) = res, cotangents
    layout = geom.layout
    dx = _pool_hwcn_grad(
        win.to_hwcn(x, layout), win.to_hwcn(g.astype(x.dtype), layout), geom, interpret
    )
    return [win.from_hwcn(dx, layout)]


@max_pool2d.defjvp
def _jvp(geom, interpret, primals, tangents):
    y = max_pool2d(primals[0], geom, interpret)
    fun, transpose = Fn(_tangent, geom), Fn(_bwd, geom, interpret)
    return y, linear_call(fun, transpose, list(primals), list(tangents))[0]
