"""2-D convolution (cross-correlation) as a loop over kernel taps, and its backward loop.

A 3x3 convolution is nine matrix products. For tap ``(i, j)`` take the block of
the (padded) input that this tap sees for every output pixel, flatten it to a
matrix ``(N * H_out * W_out, C_in)`` and multiply by the tap's weights
``(C_in, C_out)``; the output is the sum over taps::

    y = 0
    for t in range(kh * kw):                       # lax.fori_loop
        y += window(x, t) @ w[t]                   # (N*Ho*Wo, C_in) @ (C_in, C_out)

Cost: ``N * C_out * H_out * W_out * C_in/groups * kh * kw`` multiply-accumulates
(``jspatial.conv2d_macs``). The backward pass is the same loop run in reverse:
each tap's window gives that tap's weight gradient, ``window(x, t).T @ g``, and
the input gradient is scattered back through the same window, ``g @ w[t].T``.
Only ``x`` and ``w`` are kept for it; autodiff of the loop would instead save
one window copy per tap (``kh * kw`` copies of the input).

Two loops therefore do all the work, and both ops are written with them
(``conv_transpose2d`` in ``jspatial.conv_transpose``):

============================  =========================  ==========================
loop                          ``conv2d``                 ``conv_transpose2d``
============================  =========================  ==========================
``_forward_loop``             forward                    input gradient
``_input_grad_loop``          input gradient             forward
weight gradient (fused into   ``window(x).T @ g``        ``window(g).T @ x``
whichever loop runs last)
============================  =========================  ==========================

A transposed convolution *is* the input gradient of a convolution, run as an op.

The body of each loop, the code that runs once per tap, is a named function of a few
lines: ``conv_tap`` (``y += window(x, t) @ w[t]``), ``conv_transpose_tap``
(``dx[window t] += g @ w[t].T``) and ``conv_weight_grad_tap``
(``dw[t] += window(x, t).T @ g``); ``conv_backward_tap`` is ``conv2d``'s backward
body, the last two together. ``jspatial.steps`` runs them one tap at a time, to watch.
From ``conv2d`` to a tap body is three calls: ``conv2d`` checks its arguments
(``jspatial._conv_args``) and calls the custom-derivative function of the algorithm
(``_conv_direct``), which runs ``_forward_loop`` over batch chunks, whose
``lax.fori_loop`` over taps runs ``conv_tap``. The other algorithms are
``jspatial.im2col`` and ``jspatial.winograd``.
The loop bodies are public for reading (the notebook prints them); the API is
``jspatial.__all__``, and the names with a leading underscore are internal.

Memory: both passes run the tap loop once per batch chunk (up to 8 chunks of at
least 4096 output pixels, ``jspatial._tuning``), converting each NCHW chunk to
channels-last on the way in and back on the way out (``data_format='NHWC'`` skips
both). The padded windows, the float32 gradient buffer and the channels-last copies
then exist for one chunk at a time, and the saved input is the caller's own array: the
backward pass needs about as much memory as XLA's convolution gradient, or less
(``bench/RESULTS.md``).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from jspatial import _tuning, im2col, winograd
from jspatial import _windows as win
from jspatial._accel import dispatch
from jspatial._args import IntOrPair, Padding
from jspatial._conv_args import ConvArgs, conv2d_args
from jspatial._linear import defbilinear

# The speed settings (unroll, chunk sizes, algorithm='auto''s thresholds) are in
# jspatial/_tuning.py, with where and for which backend they were measured.


def conv2d(
    x: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    stride: IntOrPair = 1,
    padding: Padding = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
    *,
    algorithm: str = "auto",
    data_format: str = "NCHW",
) -> jax.Array:
    """2-D cross-correlation with PyTorch's ``torch.nn.functional.conv2d`` semantics.

    The arguments are torch's, in torch's order: ``conv2d(x, w, b, 2)`` is stride 2
    with bias ``b``. ``conv2d(x, w, 2)`` is an error naming ``bias``, as the third
    positional argument is the bias.

    See also: the loop body, ``jspatial.conv.conv_tap`` (its backward pass:
    ``jspatial.conv.conv_backward_tap``); ``jspatial.steps`` runs it tap by tap
    and ``jspatial.loop_jaxpr`` prints it as compiled; ``jspatial.reference.conv2d``.

    Args:
        x: input ``(N, C_in, H, W)`` (``(N, H, W, C_in)`` in ``'NHWC'``), a floating
            dtype; ``N`` may be 0. Unbatched ``(C_in, H, W)`` (``(H, W, C_in)``) too.
        weight: ``(C_out, C_in // groups, kh, kw)`` (OIHW) in both layouts.
        bias: optional ``(C_out,)``.
        stride: int or ``(sh, sw)``.
        padding: int, ``(ph, pw)``, ``((top, bottom), (left, right))``, ``'valid'``
            or ``'same'`` (stride 1 only). The nested form goes beyond torch.
        dilation: int or ``(dh, dw)``.
        groups: split channels into this many independent convolutions
            (``groups == C_in`` is a depthwise convolution).
        algorithm: keyword only, not in torch. ``'direct'`` (the tap loop),
            ``'winograd'`` (F(2x2, 3x3), for ungrouped 3x3 stride-1 convolutions; see
            ``jspatial.winograd``), ``'im2col'`` (the taps copied into one matrix, one
            product; ungrouped) or ``'auto'``, which picks by layer shape and backend
            (``jspatial._tuning``). All four give the same result within rounding.
        data_format: keyword only, not in torch. ``'NCHW'`` (torch's) or ``'NHWC'``
            (channels last): the layout of ``x`` and of the result. The loops run
            channels-last, so ``'NHWC'`` skips the transposes in and out.

    Returns:
        ``(N, C_out, H_out, W_out)`` (``(N, H_out, W_out, C_out)`` in ``'NHWC'``) in the
        dtype of ``x`` (accumulated in float32, or float64 for float64 inputs), with
        ``H_out = floor((H + pads - dilation * (kh - 1) - 1) / stride) + 1``.

    Example:
        >>> import jax.numpy as jnp, jspatial as js
        >>> x = jnp.ones((2, 3, 32, 32)); w = jnp.ones((64, 3, 3, 3))
        >>> js.conv2d(x, w, None, 1, 1).shape
        (2, 64, 32, 32)
        >>> js.conv2d(x, w, padding=1, stride=2).shape
        (2, 64, 16, 16)
        >>> js.conv2d(jnp.ones((2, 32, 32, 3)), w, padding=1, data_format="NHWC").shape
        (2, 32, 32, 64)
    """
    a = conv2d_args(
        x, weight, bias, stride, padding, dilation, groups, op="conv2d", algorithm=algorithm,
        data_format=data_format,
    )  # fmt: skip
    return a.finish(conv2d_program(a)(a.x, a.weight))


def conv2d_program(a: ConvArgs):
    """The function of ``(x, weight)`` that runs the checked convolution ``a``.

    The algorithm's custom-derivative function, compiled once per shape and geometry
    (so eager calls do not re-trace the loops). Lowered for a TPU or a recent GPU, the
    same tap loop runs on-chip as a Pallas kernel where one covers the layer
    (``jspatial._accel.dispatch``); integer convolutions keep the portable loops.
    """
    cuda = None if a.gpu_method in (None, a.method) else PORTABLE[a.gpu_method]
    on_chip = jnp.issubdtype(a.x.dtype, jnp.floating)
    return dispatch.program(
        "conv2d", PORTABLE[a.method], on_chip=on_chip, cuda_portable=cuda, geom=a.geom,
        groups=a.groups,
    )  # fmt: skip


def _tap_product(xw, wt):
    """``(M, G, Cg) x (G, Cg, Og) -> (M, G, Og)`` summed over ``Cg``, in float32."""
    acc = win.accum_dtype(xw.dtype)
    if wt.shape[0] == 1:  # ordinary convolution: one plain matrix product
        return jnp.dot(xw[:, 0], wt[0], preferred_element_type=acc)[:, None]
    if wt.shape[1] == 1:  # depthwise: a broadcast multiply, no contraction needed
        return xw.astype(acc) * wt[:, 0].astype(acc)
    return jnp.einsum("mgc,gco->mgo", xw, wt, preferred_element_type=acc)


def _tap_weight_grad(xw, g):
    """``(M, G, Cg), (M, G, Og) -> (G, Cg, Og)``: window transposed times output gradient."""
    acc = win.accum_dtype(xw.dtype)
    if xw.shape[1] == 1:
        return jnp.dot(xw[:, 0].T, g[:, 0], preferred_element_type=acc)[None]
    return jnp.einsum("mgc,mgo->gco", xw, g, preferred_element_type=acc)


def _tap_input_grad(g, wt):
    """``(M, G, Og), (G, Cg, Og) -> (M, G, Cg)``: output gradient times the tap's weights."""
    acc = win.accum_dtype(g.dtype)
    if wt.shape[0] == 1:
        return jnp.dot(g[:, 0], wt[0].T, preferred_element_type=acc)[:, None]
    if wt.shape[1] == 1:  # depthwise
        return jnp.sum(g.astype(acc) * wt[:, 0].astype(acc), axis=-1, keepdims=True)
    return jnp.einsum("mgo,gco->mgc", g, wt, preferred_element_type=acc)


# ------------------------------------------------------------------ the loop bodies
#
# One kernel tap each, on one batch chunk, channels-last. "Input side": the (padded,
# phase-split) array the windows read, ``xph`` of ``win.to_phases``. "Output side": a
# matrix ``(N * H_out * W_out, G, C/G)`` whose rows are output pixels. ``G`` is ``groups``.


def conv_tap(t, y, xph, w_taps, geom):
    """Kernel tap ``t`` of the direct convolution: ``y += window(x, t) @ w[t]``.

    Tap ``t = i * kw + j`` reads, for every output pixel, the input cell at offset
    ``(i * dilation, j * dilation)`` of its window: one block of the padded input, a
    matrix with a row per output pixel, ``(N * H_out * W_out, C_in)``. Times the tap's
    weights ``(C_in, C_out)`` that is the tap's share of every output at once:
    ``N * H_out * W_out * C_in * C_out / G`` MACs in one matrix product.

    Args:
        t: the tap number.
        y: ``(N * H_out * W_out, G, C_out / G)``, the sum so far (float32 or float64).
        xph: the padded input split into stride phases (``win.to_phases``).
        w_taps: ``(kh * kw, G, C_in / G, C_out / G)``: a weight matrix per tap and group.
        geom: the window geometry.
    """
    groups, cg = w_taps.shape[1], w_taps.shape[2]
    xw = win.window(xph, t, geom).reshape(y.shape[0], groups, cg)
    return y + _tap_product(xw, w_taps[t])


def conv_transpose_tap(t, out, g, w_taps, geom):
    """Kernel tap ``t`` of the transposed convolution: ``out[window t] += g @ w[t].T``.

    ``conv_tap`` run backwards, so it is also ``conv2d``'s input gradient: each row of
    ``g`` (an output pixel's ``C_out`` values) goes back through the tap's weights to the
    input cell that the tap read for that pixel; where windows overlap, the products
    add up. ``N * H_out * W_out * C_in * C_out / G`` MACs, one matrix product.

    Args:
        t: the tap number.
        out: the input-side buffer the products are added into, padded and
            phase-split like ``xph`` (float32 or float64).
        g: ``(N * H_out * W_out, G, C_out / G)``: a row per output pixel.
        w_taps: as for ``conv_tap``.
        geom: the geometry of the convolution (``out`` is its input side).
    """
    ho, wo = geom.out_hw
    groups, cg = w_taps.shape[1], w_taps.shape[2]
    dx_t = _tap_input_grad(g, w_taps[t]).reshape(out.shape[0], ho, wo, groups * cg)
    return win.add_to_window(out, t, dx_t, geom)


def conv_weight_grad_tap(t, dw, xph, g, geom):
    """Kernel tap ``t`` of the weight gradient: ``dw[t] += window(x, t).T @ g``.

    The block that tap ``t`` read, transposed, times the output gradient (a row per
    output pixel): ``N * H_out * W_out * C_in * C_out / G`` MACs, one matrix product.
    ``dw`` is ``(kh * kw, G, C_in / G, C_out / G)``, like ``w_taps``.
    """
    groups, cg = dw.shape[1], dw.shape[2]
    xw = win.window(xph, t, geom).reshape(g.shape[0], groups, cg)
    dw_t = _tap_weight_grad(xw, g) + lax.dynamic_index_in_dim(dw, t, keepdims=False)
    return lax.dynamic_update_index_in_dim(dw, dw_t, t, 0)


def conv_backward_tap(t, carry, xph, g, w_taps, geom):
    """Kernel tap ``t`` of ``conv2d``'s backward pass: both gradients from one window::

        dw[t]         += window(x, t).T @ g         # conv_weight_grad_tap
        dx[window t]  += g @ w[t].T                 # conv_transpose_tap

    ``carry = (dxph, dw)``; twice the forward tap's MACs.
    """
    dxph, dw = carry
    dw = conv_weight_grad_tap(t, dw, xph, g, geom)
    return conv_transpose_tap(t, dxph, g, w_taps, geom), dw


# ------------------------------------------------------------------ the two tap loops
#
# Each runs one batch chunk (rows ``i::chunks``, ``win.batch_chunk``) through all the
# taps, and writes its result into rows ``i::chunks`` of the carry: the body of the
# ``lax.fori_loop`` over chunks (``win.chunk_loop_fn``).


def _forward_loop(i, carry, *, x, w_taps, geom, chunks, g=None):
    """``y = sum_t window(x, t) @ w[t]`` on chunk ``i``: input side -> output side.

    The forward pass of ``conv2d`` (``carry = y``), and the input gradient of
    ``conv_transpose2d``: given its input ``g`` (an output side, in ``geom.layout``), the
    same windows also accumulate the weight gradient ``dw[t] += window(x, t).T @ g``
    (``conv_transpose2d``'s, with ``x`` its output gradient), ``carry = (dx, dw)``.
    """
    n, c = x.shape[0] // chunks, w_taps.shape[1] * w_taps.shape[-1]
    m = n * geom.out_hw[0] * geom.out_hw[1]
    if g is None:
        xph = win.to_phases(win.to_nhwc(win.batch_chunk(x, i, chunks), geom.layout), geom, 0)
        out = jnp.zeros((m, w_taps.shape[1], w_taps.shape[-1]), win.accum_dtype(xph.dtype))
        tap = partial(conv_tap, xph=xph, w_taps=w_taps, geom=geom)
        out = win.loop_over_taps(geom.taps, _tuning.CONV_UNROLL)(tap, out)
        out = win.from_nhwc(out.reshape(n, *geom.out_hw, c), geom.layout)
        return win.set_batch_chunk(carry, i, out, chunks)
    y, dw = carry
    gc, xc = win.batch_chunk(g, i, chunks), win.batch_chunk(x, i, chunks)
    xph = win.to_phases(win.to_nhwc(xc.astype(g.dtype), geom.layout), geom, 0)
    gm = _output_side(gc, w_taps.shape[1], geom.layout)
    out = jnp.zeros((m, w_taps.shape[1], w_taps.shape[-1]), win.accum_dtype(xph.dtype))
    tap = partial(_tap_and_weight_grad, xph=xph, g=gm, w_taps=w_taps, geom=geom)
    out, dw = win.loop_over_taps(geom.taps, _tuning.CONV_UNROLL)(tap, (out, dw))
    out = win.from_nhwc(out.reshape(n, *geom.out_hw, c), geom.layout)
    return win.set_batch_chunk(y, i, out, chunks), dw


def _tap_and_weight_grad(t, carry, xph, g, w_taps, geom):
    """``conv_tap`` and ``conv_weight_grad_tap`` from one window (``conv_transpose2d``'s
    backward pass: its input gradient and its weight gradient)."""
    out, dw = carry
    dw = conv_weight_grad_tap(t, dw, xph, g, geom)
    return conv_tap(t, out, xph, w_taps, geom), dw


def _input_grad_loop(i, carry, *, g, w_taps, geom, chunks, x=None):
    """``dx[window t] += g @ w[t].T`` for every tap, on chunk ``i``: output side -> input side.

    The input gradient of ``conv2d``, and the forward pass of ``conv_transpose2d``
    (``carry = y``, ``g`` its input): each output pixel's vector goes back through the
    weights to every input cell its window touched, where overlapping windows add up.
    Given ``conv2d``'s input ``x``, the loop also accumulates its weight gradient
    ``window(x, t).T @ g``: ``carry = (dx, dw)``.
    """
    groups = w_taps.shape[1]
    c = groups * w_taps.shape[2]
    n = g.shape[0] // chunks
    if x is None:
        gm = _output_side(win.batch_chunk(g, i, chunks), groups, geom.layout)
        dxph = jnp.zeros(win.phased_shape(n, c, geom), win.accum_dtype(gm.dtype))
        tap = partial(conv_transpose_tap, g=gm, w_taps=w_taps, geom=geom)
        unroll = (_tuning.CONV_UNROLL, _tuning.GPU_UNROLL_SCATTER)
        dxph = win.loop_over_taps(geom.taps, *unroll)(tap, dxph)
        out = win.from_nhwc(win.from_phases(dxph, geom), geom.layout)
        return win.set_batch_chunk(carry, i, out, chunks)
    dx, dw = carry
    xc, gc = win.batch_chunk(x, i, chunks), win.batch_chunk(g, i, chunks)
    xph = win.to_phases(win.to_nhwc(xc, geom.layout), geom, 0)
    gm = _output_side(gc.astype(x.dtype), groups, geom.layout)
    dxph = jnp.zeros(win.phased_shape(n, c, geom), win.accum_dtype(gm.dtype))
    tap = partial(conv_backward_tap, xph=xph, g=gm, w_taps=w_taps, geom=geom)
    unroll = (_tuning.CONV_UNROLL, _tuning.GPU_UNROLL_SCATTER)
    dxph, dw = win.loop_over_taps(geom.taps, *unroll)(tap, (dxph, dw))
    out = win.from_nhwc(win.from_phases(dxph, geom), geom.layout)
    return win.set_batch_chunk(dx, i, out, chunks), dw


def _output_side(a, groups, layout="NCHW"):
    """``(N, C, H, W)`` in ``layout`` -> the output-side matrix ``(N * H * W, groups,
    C / groups)``."""
    a = win.to_nhwc(a, layout)
    n, h, w, c = a.shape
    return a.reshape(n * h * w, groups, c // groups)


# ---------------------------------------------------------------------------- direct


@partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv_direct(x, weight, geom, groups):
    """``conv2d`` by the tap loop: ``x`` in ``geom.layout``, OIHW ``weight`` -> the output in
    ``geom.layout``, in the accumulation dtype. Its derivatives: ``_conv_bwd``."""
    n, c_out = x.shape[0], weight.shape[0]
    w_taps = win.weight_taps(weight, groups)
    y = jnp.zeros(win.image_shape(n, c_out, geom.out_hw, geom.layout), win.accum_dtype(x.dtype))
    loop = partial(_forward_loop, x=x, w_taps=w_taps, geom=geom)
    return win.chunk_loop_fn(win.conv_chunks(n, geom.out_hw), loop)(y)


def _conv_bwd(geom, groups, residuals, g):
    x, weight = residuals
    w_taps = win.weight_taps(weight, groups)
    dw = jnp.zeros(w_taps.shape, win.accum_dtype(x.dtype))
    loop = partial(_input_grad_loop, g=g, w_taps=w_taps, geom=geom, x=x)
    chunks = win.conv_chunks(x.shape[0], geom.out_hw)
    dx, dw = win.chunk_loop_fn(chunks, loop)((win.overwritten(x.shape, x.dtype, g), dw))
    return dx, win.weight_from_taps(dw, geom.kernel).astype(weight.dtype)


defbilinear(_conv_direct, _conv_bwd)

# Each algorithm's custom-derivative function, compiled once per shape and geometry.
PORTABLE = {
    "direct": jax.jit(_conv_direct, static_argnames=("geom", "groups")),
    "im2col": jax.jit(im2col._conv_im2col, static_argnames=("geom", "groups")),
    "winograd": jax.jit(winograd._conv3x3, static_argnames=("geom", "groups")),
}
