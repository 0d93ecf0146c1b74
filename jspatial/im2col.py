"""im2col: the taps of a convolution copied into one matrix, and one matrix product.

For a layer with few input channels (the first layer: ``C_in = 3``) each per-tap product
of the direct loop (``jspatial.conv``) has a depth of 3, which no matrix unit likes. The
same loop over taps can instead copy each tap's window into its own column block of one
matrix, the classic im2col::

    cols = zeros(N * H_out * W_out, kh * kw, C_in)
    for t in range(kh * kw):                      # lax.fori_loop
        cols[:, t] = window(x, t)                 # im2col_tap
    y = cols.reshape(-1, kh * kw * C_in) @ w      # one product of depth C_in * kh * kw

The columns hold every input pixel ``kh * kw`` times, so they are built one batch chunk
at a time. The backward pass runs the same windows in reverse: ``dw = cols.T @ g`` and
``dcols = g @ w.T``, each column block added back through its window.

Internal: ``jspatial.conv2d(..., algorithm='im2col')`` (ungrouped convolutions) is the
way in; ``algorithm='auto'`` takes it for layers with a small ``C_in * kh * kw``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jspatial import _args
from jspatial import _windows as win
from jspatial._linear import defbilinear


def im2col_tap(t, cols, xph, geom):
    """Kernel tap ``t`` of im2col: ``cols[:, t] = window(x, t)``, a row per output pixel."""
    m, _, c = cols.shape
    block = win.window(xph, t, geom).reshape(m, 1, c)
    return lax.dynamic_update_slice_in_dim(cols, block, t, axis=1)


def col2im_tap(t, dxph, dcols, geom):
    """Kernel tap ``t`` of the input gradient: column block ``t`` back through its window."""
    block = lax.dynamic_index_in_dim(dcols, t, axis=3, keepdims=False)
    return win.add_to_window(dxph, t, block, geom)


def _forward_loop(i, y, *, x, w, geom, chunks):
    """Batch chunk ``i``: its columns, times ``w``, into rows ``i::chunks`` of ``y``."""
    xc = win.to_nhwc(win.batch_chunk(x, i, chunks), geom.layout)
    n, c = xc.shape[0], xc.shape[-1]
    m = n * geom.out_hw[0] * geom.out_hw[1]
    xph = win.to_phases(xc, geom, 0)
    tap = partial(im2col_tap, xph=xph, geom=geom)
    cols = win.loop_over_taps(geom.taps, 1)(tap, jnp.zeros((m, geom.taps, c), xc.dtype))
    out = jnp.dot(cols.reshape(-1, geom.taps * c), w, preferred_element_type=y.dtype)
    out = win.from_nhwc(out.reshape(-1, *geom.out_hw, w.shape[1]), geom.layout)
    return win.set_batch_chunk(y, i, out, chunks)


def _backward_loop(i, carry, *, x, g, w, geom, chunks):
    """Batch chunk ``i`` of both gradients: ``dw += cols.T @ g``, ``dx += col2im(g @ w.T)``."""
    dx, dw = carry
    xc, gc = win.batch_chunk(x, i, chunks), win.batch_chunk(g, i, chunks)
    xc, gc = win.to_nhwc(xc, geom.layout), win.to_nhwc(gc, geom.layout)
    n, c = xc.shape[0], xc.shape[-1]
    m = n * geom.out_hw[0] * geom.out_hw[1]
    xph = win.to_phases(xc, geom, 0)
    tap = partial(im2col_tap, xph=xph, geom=geom)
    cols = win.loop_over_taps(geom.taps, 1)(tap, jnp.zeros((m, geom.taps, c), xc.dtype))
    cols = cols.reshape(-1, geom.taps * c)
    gm = gc.reshape(cols.shape[0], gc.shape[-1]).astype(x.dtype)
    dw = dw + jnp.dot(cols.T, gm, preferred_element_type=dw.dtype)
    dcols = jnp.dot(gm, w.T, preferred_element_type=dw.dtype)
    dcols = dcols.reshape(n, *geom.out_hw, geom.taps, c)
    dxph = win.to_phases(jnp.zeros(xc.shape, dw.dtype), geom, 0)
    dxph = win.loop_over_taps(geom.taps, 1)(partial(col2im_tap, dcols=dcols, geom=geom), dxph)
    out = win.from_nhwc(win.from_phases(dxph, geom), geom.layout)
    return win.set_batch_chunk(dx, i, out, chunks), dw


@partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv_im2col(x, weight, geom, groups=1):
    """``conv2d`` by im2col (``groups`` must be 1): ``x`` in ``geom.layout``, OIHW
    ``weight`` -> the output in ``geom.layout``, in the accumulation dtype."""
    n, c = x.shape[0], x.shape[_args.channel_axis(geom.layout)]
    w = win.weight_taps(weight, 1).reshape(geom.taps * c, -1)
    acc = win.accum_dtype(x.dtype)
    y = jnp.zeros(win.image_shape(n, w.shape[1], geom.out_hw, geom.layout), acc)
    loop = partial(_forward_loop, x=x, w=w, geom=geom)
    return win.chunk_loop_fn(win.conv_chunks(n, geom.out_hw), loop)(y)


def _im2col_bwd(geom, groups, residuals, g):
    x, weight = residuals
    n, c = x.shape[0], x.shape[_args.channel_axis(geom.layout)]
    acc = win.accum_dtype(x.dtype)
    w = win.weight_taps(weight, 1).reshape(geom.taps * c, -1)
    dw = jnp.zeros(w.shape, acc)
    loop = partial(_backward_loop, x=x, g=g, w=w, geom=geom)
    chunks = win.conv_chunks(n, geom.out_hw)
    dx, dw = win.chunk_loop_fn(chunks, loop)((win.overwritten(x.shape, x.dtype, g), dw))
    dw = win.weight_from_taps(dw.reshape(geom.taps, 1, c, -1), geom.kernel)
    return dx, dw.astype(weight.dtype)


defbilinear(_conv_im2col, _im2col_bwd)
