"""2-D convolution (cross-correlation) as a loop over kernel taps.

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

Memory: both passes run the tap loop once per batch chunk (up to 8 chunks of at
least 4096 output pixels, ``jspatial._windows.batch_chunks``), converting each
chunk to channels-last on the way in and back on the way out. The padded
windows, the float32 gradient buffer and the channels-last copies then exist for
one chunk at a time, and the saved input is the caller's own NCHW array: the
backward pass needs about as much memory as XLA's convolution gradient, or less
(``bench/RESULTS.md``).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jspatial import _args, winograd
from jspatial import _windows as win
from jspatial.shapes import output_hw

# Taps per loop iteration: lets XLA overlap consecutive matrix products.
UNROLL = 1
# algorithm='auto' uses Winograd where it measured faster (bench/RESULTS.md): wide layers
# whose output is large enough that the 2x2 output tiles waste little on the edges.
WINOGRAD_MIN_CHANNELS = 64
WINOGRAD_MIN_SIZE = 6
# ... and im2col (all taps in one product) when C_in * kh * kw is at most this: a layer with
# few input channels makes thin per-tap products, and its im2col matrix stays small.
IM2COL_MAX_DEPTH = 32


def conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1, algorithm="auto"):
    """2-D cross-correlation with PyTorch's ``torch.nn.functional.conv2d`` semantics.

    Args:
        x: input ``(N, C_in, H, W)``, a floating dtype.
        weight: ``(C_out, C_in // groups, kh, kw)`` (OIHW).
        bias: optional ``(C_out,)``.
        stride: int or ``(sh, sw)``.
        padding: int, ``(ph, pw)``, ``((top, bottom), (left, right))``, ``'valid'``
            or ``'same'`` (stride 1 only).
        dilation: int or ``(dh, dw)``.
        groups: split channels into this many independent convolutions
            (``groups == C_in`` is a depthwise convolution).
        algorithm: ``'direct'`` (the tap loop), ``'winograd'`` (F(2x2, 3x3), for
            ungrouped 3x3 stride-1 convolutions; see ``jspatial.winograd``),
            ``'im2col'`` (the taps copied into one matrix, one product; ungrouped) or
            ``'auto'``, which picks by layer shape where each measured fastest.

    Returns:
        ``(N, C_out, H_out, W_out)`` in the dtype of ``x`` (accumulated in float32),
        with ``H_out = floor((H + pads - dilation * (kh - 1) - 1) / stride) + 1``.

    Example:
        >>> import jax.numpy as jnp, jspatial as js
        >>> x = jnp.ones((2, 3, 32, 32)); w = jnp.ones((64, 3, 3, 3))
        >>> js.conv2d(x, w, padding=1).shape
        (2, 64, 32, 32)
    """
    return conv2d_checked(
        x, weight, bias, stride, padding, dilation, groups, op="conv2d", algorithm=algorithm
    )


def conv2d_checked(x, weight, bias, stride, padding, dilation, groups, *, op, algorithm="auto"):
    """``conv2d`` with errors attributed to ``op`` (the layer uses ``"Conv2d"``)."""
    geom, groups = conv_geometry(x, weight, bias, stride, padding, dilation, groups, op)
    method = choose_method(algorithm, geom, groups, x.shape[1], weight.shape[0], op)
    return _conv2d(x, weight, bias, geom, groups, method)


# Compiled once per shape and configuration, so eager calls do not re-trace the loops.
@partial(jax.jit, static_argnums=(3, 4, 5))
def _conv2d(x, weight, bias, geom, groups, method):
    w = weight.astype(x.dtype)
    if method == "winograd":
        y = winograd.conv3x3(x, w, geom)
    elif method == "im2col":
        y = _conv_im2col(x, w, geom)
    else:
        y = _conv_direct(x, w, geom, groups)
    if bias is not None:
        y = y + bias.astype(y.dtype)[:, None, None]
    return y.astype(x.dtype)


def conv_geometry(x, weight, bias, stride, padding, dilation, groups, op):
    """Validate ``conv2d`` arguments and return the window geometry and ``groups``."""
    _args.check_input(x, op)
    w_shape = tuple(getattr(weight, "shape", ()))
    if len(w_shape) != 4:
        raise ValueError(
            f"{op} expected 4D weight (out_channels, in_channels // groups, kh, kw), "
            f"got {len(w_shape)}D: {w_shape}"
        )
    if not jnp.issubdtype(jnp.result_type(weight), jnp.floating):
        raise TypeError(f"{op} expected a floating-point weight, got {jnp.result_type(weight)}")
    n, c_in, h, w = x.shape
    c_out, c_per_group, kh, kw = w_shape
    groups = _args.check_groups(c_in, c_out, groups, op)
    if c_per_group * groups != c_in:
        raise ValueError(
            f"{op} expected {c_per_group * groups} input channels, got {c_in} "
            f"(weight {w_shape}, groups={groups}, input {tuple(x.shape)})"
        )
    if bias is not None and tuple(bias.shape) != (c_out,):
        raise ValueError(f"{op} expected bias of shape ({c_out},), got {tuple(bias.shape)}")
    kernel = (kh, kw)
    strides = _args.pair(stride, op, "stride")
    dil = _args.pair(dilation, op, "dilation")
    pads = _args.conv_padding(padding, kernel, strides, dil, op)
    padded = (h + sum(pads[0]), w + sum(pads[1]))
    _args.check_fits((h, w), padded, kernel, dil, op)
    out_hw = output_hw((h, w), kernel, strides, pads, dil)
    return win.Geometry((h, w), out_hw, kernel, strides, dil, pads), groups


ALGORITHMS = ("auto", "direct", "winograd", "im2col")


def choose_method(algorithm, geom, groups, c_in, c_out, op) -> str:
    """Resolve ``algorithm`` for one convolution; rejects a method that does not apply."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"{op} algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if algorithm == "winograd" and not winograd.supports(geom, groups):
        raise ValueError(
            f"{op} algorithm='winograd' needs an ungrouped 3x3 kernel with stride 1 and "
            f"dilation 1, got kernel {geom.kernel}, stride {geom.stride}, "
            f"dilation {geom.dilation}, groups {groups}"
        )
    if algorithm == "im2col" and groups != 1:
        raise ValueError(f"{op} algorithm='im2col' needs groups=1, got groups={groups}")
    if algorithm != "auto":
        return algorithm
    if (
        winograd.supports(geom, groups)
        and min(c_in, c_out) >= WINOGRAD_MIN_CHANNELS
        and min(geom.out_hw) >= WINOGRAD_MIN_SIZE
    ):
        return "winograd"
    if groups == 1 and c_in * geom.taps <= IM2COL_MAX_DEPTH:
        return "im2col"
    return "direct"


def _weight_taps(weight, groups):
    """OIHW -> ``(taps, groups, C_in/groups, C_out/groups)``: one matrix per tap and group."""
    c_out, cg, kh, kw = weight.shape
    w = weight.reshape(groups, c_out // groups, cg, kh, kw)
    return jnp.transpose(w, (3, 4, 0, 2, 1)).reshape(kh * kw, groups, cg, c_out // groups)


def _weight_from_taps(w_taps, kernel):
    t, groups, cg, og = w_taps.shape
    w = w_taps.reshape(kernel[0], kernel[1], groups, cg, og)
    return jnp.transpose(w, (2, 4, 3, 0, 1)).reshape(groups * og, cg, *kernel)


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


def _chunks(n, geom):
    """Batch chunks of the direct and im2col loops (rows: the chunk's output pixels)."""
    return win.batch_chunks(n, geom.out_hw[0] * geom.out_hw[1])


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_direct(x, weight, geom, groups):
    return _conv_fwd(x, weight, geom, groups)[0]


def _conv_fwd(x, weight, geom, groups):
    n, c = x.shape[:2]
    ho, wo = geom.out_hw
    w_taps = _weight_taps(weight, groups)
    acc = win.accum_dtype(x.dtype)

    def chunk(inputs, carry):
        xph = win.to_phases(win.nchw_to_nhwc(inputs[0]), geom, 0)
        m = xph.shape[0] * ho * wo

        def tap(t, out):
            xw = win.window(xph, t, geom).reshape(m, groups, c // groups)
            return out + _tap_product(xw, w_taps[t])

        out = jnp.zeros((m, groups, w_taps.shape[-1]), acc)
        out = lax.fori_loop(0, geom.taps, tap, out, unroll=UNROLL)
        return (win.nhwc_to_nchw(out.reshape(-1, ho, wo, weight.shape[0])),), carry

    y = jnp.zeros((n, weight.shape[0], ho, wo), acc)
    (y,), _ = win.over_batch_chunks(chunk, _chunks(n, geom), [x], [y])
    return y, (x, weight)


def _conv_bwd(geom, groups, residuals, g):
    x, weight = residuals
    n, c = x.shape[:2]
    ho, wo = geom.out_hw
    w_taps = _weight_taps(weight, groups)
    acc = win.accum_dtype(x.dtype)

    def chunk(inputs, dw):
        xc, gc = inputs
        xph = win.to_phases(win.nchw_to_nhwc(xc), geom, 0)
        m = xc.shape[0] * ho * wo
        gm = win.nchw_to_nhwc(gc).reshape(m, groups, -1).astype(x.dtype)

        def tap(t, carry):
            dxph, dw = carry
            xw = win.window(xph, t, geom).reshape(m, groups, c // groups)
            # Weight gradient of this tap: its window transposed times the output gradient.
            dw_t = _tap_weight_grad(xw, gm) + lax.dynamic_index_in_dim(dw, t, keepdims=False)
            # Input gradient: the output gradient sent back through the same window.
            dx_t = _tap_input_grad(gm, w_taps[t])
            dxph = win.add_to_window(dxph, t, dx_t.reshape(-1, ho, wo, c), geom)
            return dxph, lax.dynamic_update_index_in_dim(dw, dw_t, t, 0)

        dxph, dw = lax.fori_loop(0, geom.taps, tap, (jnp.zeros(xph.shape, acc), dw), unroll=UNROLL)
        return (win.nhwc_to_nchw(win.from_phases(dxph, geom)),), dw

    dw = jnp.zeros(w_taps.shape, acc)
    (dx,), dw = win.over_batch_chunks(chunk, _chunks(n, geom), [x, g], [jnp.zeros_like(x)], dw)
    return dx, _weight_from_taps(dw, geom.kernel).astype(weight.dtype)


_conv_direct.defvjp(_conv_fwd, _conv_bwd)


# ---------------------------------------------------------------------------- im2col
#
# For a layer with few input channels (the first layer: C_in = 3) each per-tap product
# has a depth of 3, which no matrix unit likes. The same loop over taps can instead copy
# each window into its own column block of one matrix (the classic im2col), and a single
# product of depth C_in * kh * kw does the whole convolution.


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_im2col(x, weight, geom):
    return _im2col_fwd(x, weight, geom)[0]


def _im2col(x, geom):
    """``(N, H, W, C)`` -> ``(N * H_out * W_out, taps, C)``, one window per tap."""
    n, c = x.shape[0], x.shape[-1]
    m = n * geom.out_hw[0] * geom.out_hw[1]
    xph = win.to_phases(x, geom, 0)

    def tap(t, cols):
        block = win.window(xph, t, geom).reshape(m, 1, c)
        return lax.dynamic_update_slice_in_dim(cols, block, t, axis=1)

    return lax.fori_loop(0, geom.taps, tap, jnp.zeros((m, geom.taps, c), x.dtype))


def _im2col_fwd(x, weight, geom):
    # The columns hold every pixel kh * kw times: built one batch chunk at a time.
    n, c = x.shape[:2]
    w = _weight_taps(weight, 1).reshape(geom.taps * c, -1)
    acc = win.accum_dtype(x.dtype)

    def chunk(inputs, carry):
        cols = _im2col(win.nchw_to_nhwc(inputs[0]), geom).reshape(-1, geom.taps * c)
        y = jnp.dot(cols, w, preferred_element_type=acc)
        return (win.nhwc_to_nchw(y.reshape(-1, *geom.out_hw, w.shape[1])),), carry

    y = jnp.zeros((n, w.shape[1], *geom.out_hw), acc)
    (y,), _ = win.over_batch_chunks(chunk, _chunks(n, geom), [x], [y])
    return y, (x, weight)


def _im2col_bwd(geom, residuals, g):
    x, weight = residuals
    n, c = x.shape[:2]
    acc = win.accum_dtype(x.dtype)
    w = _weight_taps(weight, 1).reshape(geom.taps * c, -1)

    def chunk(inputs, dw):
        xc, gc = (win.nchw_to_nhwc(a) for a in inputs)
        cols = _im2col(xc, geom).reshape(-1, geom.taps * c)
        gm = gc.reshape(cols.shape[0], -1).astype(x.dtype)
        dw = dw + jnp.dot(cols.T, gm, preferred_element_type=acc)
        dcols = jnp.dot(gm, w.T, preferred_element_type=acc)
        dcols = dcols.reshape(xc.shape[0], *geom.out_hw, geom.taps, c)

        def tap(t, dxph):  # each column block goes back through its window
            block = lax.dynamic_index_in_dim(dcols, t, axis=3, keepdims=False)
            return win.add_to_window(dxph, t, block, geom)

        dxph = win.to_phases(jnp.zeros(xc.shape, acc), geom, 0)
        dxph = lax.fori_loop(0, geom.taps, tap, dxph)
        return (win.nhwc_to_nchw(win.from_phases(dxph, geom)),), dw

    dw = jnp.zeros(w.shape, acc)
    (dx,), dw = win.over_batch_chunks(chunk, _chunks(n, geom), [x, g], [jnp.zeros_like(x)], dw)
    dw = _weight_from_taps(dw.reshape(geom.taps, 1, c, -1), geom.kernel)
    return dx, dw.astype(weight.dtype)


_conv_im2col.defvjp(_im2col_fwd, _im2col_bwd)
