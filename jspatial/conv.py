"""2-D convolution (cross-correlation) and its transpose, as loops over kernel taps.

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

Two loops therefore do all the work, and both ops are written with them:

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

from jspatial import _args, _tuning, winograd
from jspatial import _windows as win
from jspatial._accel import dispatch
from jspatial._args import IntOrPair, Padding
from jspatial._linear import defbilinear
from jspatial.pad import _check_pad, _pad_axes, _pad_normalised
from jspatial.shapes import output_hw, transposed_size

# The speed settings (unroll, chunk sizes, algorithm='auto''s thresholds) are in
# jspatial/_tuning.py, with where and for which backend they were measured.

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_ALGORITHMS = ("auto", "direct", "winograd", "im2col")


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
    return _conv2d_checked(
        x, weight, bias, stride, padding, dilation, groups, op="conv2d", algorithm=algorithm,
        data_format=data_format,
    )  # fmt: skip


@_args.unbatched(0)
def _conv2d_checked(
    x, weight, bias, stride, padding, dilation, groups, *, op, algorithm="auto", dtype=None,
    padding_mode="zeros", data_format="NCHW",
):  # fmt: skip
    """``conv2d`` with errors attributed to ``op``: the one path that validates.

    ``Conv2d`` calls this too (``op="Conv2d"``), with its compute ``dtype``,
    ``padding_mode`` and ``data_format``. Everything is checked here, outside the jit,
    so that a bad argument raises the message below as is (raised while tracing, JAX
    would append a note about its frames), and before the cast to ``dtype``, which
    would hide an integer input. Non-zero padding modes pad with ``jspatial.pad`` (on
    the spatial axes of ``data_format``) and then convolve unpadded, as torch does.
    """
    x, weight, bias, geom, groups, method = _check_conv2d(
        x, weight, bias, stride, padding, dilation, groups, algorithm, op, data_format
    )
    if dtype is not None:
        x, weight = x.astype(dtype), weight.astype(dtype)
        bias = None if bias is None else bias.astype(dtype)
    if padding_mode != "zeros":
        (top, bottom), (left, right) = geom.padding
        pads = _check_pad(x.shape, (left, right, top, bottom), padding_mode, op, data_format)
        x = _pad_normalised(x, pads, padding_mode, 0.0, _pad_axes(4, 2, data_format))
        in_hw = _args.spatial_shape(x.shape, data_format)
        geom = geom._replace(in_hw=in_hw, padding=((0, 0), (0, 0)))
    c_in = x.shape[_args.channel_axis(data_format)]
    gpu = _gpu_plan(algorithm, geom, groups, c_in, weight.shape[0], op)
    return _conv2d(x, weight, bias, geom, groups, method, gpu)


def _check_conv2d(
    x, weight, bias, stride, padding, dilation, groups, algorithm, op, data_format="NCHW"
):
    """Every check of ``conv2d`` (``jspatial.steps`` runs them too): the arrays as
    arrays, the window geometry (its ``layout`` is ``data_format``), ``groups`` and the
    resolved algorithm."""
    data_format = _args.check_data_format(data_format, op)
    x = _args.check_input(x, op, integers=True, data_format=data_format)
    weight = _args.check_operand(weight, x, op, "weight")
    bias = _args.check_bias(bias, op, x)
    geom, groups = _conv_geometry(
        x, weight, bias, stride, padding, dilation, groups, op, data_format
    )
    integer = jnp.issubdtype(jnp.result_type(x), jnp.integer)
    c_in = x.shape[_args.channel_axis(data_format)]
    method = _choose_method(algorithm, geom, groups, c_in, weight.shape[0], op, integer)
    return x, weight, bias, geom, groups, method


# Compiled once per shape and configuration, so eager calls do not re-trace the loops.
@partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _conv2d(x, weight, bias, geom, groups, method, gpu=None):
    # ``gpu``: ``(compute capability, method)`` where a GPU version is staged (dispatch).
    # The on-chip kernels multiply floats: integer convolutions keep the portable loops.
    on_chip = jnp.issubdtype(x.dtype, jnp.floating)
    kernels = {"tpu": dispatch.kernel_for("conv2d", "tpu", geom, groups) if on_chip else None}
    if gpu is not None:
        capability, gpu_method = gpu
        if on_chip:
            kernels["cuda"] = dispatch.kernel_for("conv2d", "cuda", geom, groups, gpu=capability)
        if kernels.get("cuda") is None and gpu_method != method:
            kernels["cuda"] = partial(_conv_portable, geom=geom, groups=groups, method=gpu_method)
    # Lowered for a TPU or a recent GPU, the same tap loop runs on-chip as a Pallas kernel
    # where one covers the layer (jspatial/_accel); everywhere else the loops of this file.
    portable = partial(_conv_portable, geom=geom, groups=groups, method=method)
    y = dispatch.per_target(portable, kernels, x, weight.astype(x.dtype))
    return _add_bias(y, bias, geom.layout).astype(x.dtype)


def _add_bias(y, bias, layout):
    """``y + bias`` over the channel axis of ``layout`` (the last one in NHWC)."""
    if bias is None:
        return y
    bias = bias.astype(y.dtype)
    return y + (bias[:, None, None] if layout == "NCHW" else bias)


def _conv_portable(x, w, *, geom, groups, method):
    if method == "winograd":
        return winograd._conv3x3(x, w, geom)
    if method == "im2col":
        return _conv_im2col(x, w, geom)
    return _conv_direct(x, w, geom, groups)


def _gpu_plan(algorithm, geom, groups, c_in, c_out, op):
    """``(compute capability, method)`` for ``_conv2d``'s GPU branch, or ``None`` where no
    GPU version is staged (``jspatial._accel.dispatch``)."""
    if not _tuning.STAGE_GPU:
        return None
    method = _choose_method(algorithm, geom, groups, c_in, c_out, op, gpu=True)
    return dispatch.gpu_target(), method


def _check_weight_shape(weight, op, layout):
    w_shape = tuple(weight.shape)
    if len(w_shape) != 4:
        raise ValueError(f"{op} expected 4D weight {layout}, got {len(w_shape)}D: {w_shape}")
    return w_shape


def _conv_geometry(x, weight, bias, stride, padding, dilation, groups, op, data_format="NCHW"):
    """Validate ``conv2d``'s shapes and hyper-parameters; return the window geometry and
    ``groups``. ``x``, ``weight`` and ``bias`` are arrays already (``_conv2d_checked``)."""
    w_shape = _check_weight_shape(weight, op, "(out_channels, in_channels // groups, kh, kw)")
    c_in = x.shape[_args.channel_axis(data_format)]
    h, w = _args.spatial_shape(x.shape, data_format)
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
    return win.Geometry((h, w), out_hw, kernel, strides, dil, pads, data_format), groups


def _choose_method(algorithm, geom, groups, c_in, c_out, op, integer=False, gpu=False) -> str:
    """Resolve ``algorithm`` for one convolution; rejects a method that does not apply.

    ``'auto'`` uses the CPU's thresholds of ``jspatial._tuning``, or with ``gpu`` the
    GPU's (see there for the TPU). ``integer`` input never takes Winograd, whose
    transforms divide by 2.
    """
    _args.one_of(algorithm, _ALGORITHMS, op, "algorithm")
    if integer and algorithm == "winograd":
        raise ValueError(f"{op} algorithm='winograd' needs floating-point input, got integers")
    if algorithm == "winograd" and not winograd._supports(geom, groups):
        raise ValueError(
            f"{op} algorithm='winograd' needs an ungrouped 3x3 kernel with stride 1 and "
            f"dilation 1, got kernel {geom.kernel}, stride {geom.stride}, "
            f"dilation {geom.dilation}, groups {groups}"
        )
    if algorithm == "im2col" and groups != 1:
        raise ValueError(f"{op} algorithm='im2col' needs groups=1, got groups={groups}")
    if algorithm != "auto":
        return algorithm
    if gpu:
        return (
            "im2col"
            if groups == 1 and c_in * geom.taps <= _tuning.GPU_IM2COL_MAX_DEPTH
            else "direct"
        )
    if (
        not integer
        and winograd._supports(geom, groups)
        and min(c_in, c_out) >= _tuning.WINOGRAD_MIN_CHANNELS
        and min(geom.out_hw) >= _tuning.WINOGRAD_MIN_SIZE
    ):
        return "winograd"
    if groups == 1 and c_in * geom.taps <= _tuning.IM2COL_MAX_DEPTH:
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


def _forward_loop(xph, w_taps, geom, gm=None, dw=None):
    """``out = sum_t window(xph, t) @ w[t]``: input side -> output side.

    The forward pass of ``conv2d``, and the input gradient of ``conv_transpose2d``.
    Given an output-side ``gm``, the same windows also accumulate the weight gradient
    ``dw[t] += window(xph, t).T @ gm`` (``conv_transpose2d``'s, with ``xph`` its output
    gradient and ``gm`` its input); returns ``(out, dw)`` then.
    """
    m = xph.shape[0] * geom.out_hw[0] * geom.out_hw[1]
    out = jnp.zeros((m, w_taps.shape[1], w_taps.shape[-1]), win.accum_dtype(xph.dtype))
    if gm is None:
        tap = partial(conv_tap, xph=xph, w_taps=w_taps, geom=geom)
        return win.tap_loop(geom.taps, tap, out, _tuning.CONV_UNROLL)

    def tap_and_grad(t, carry):
        out, dw = carry
        dw = conv_weight_grad_tap(t, dw, xph, gm, geom)
        return conv_tap(t, out, xph, w_taps, geom), dw

    return win.tap_loop(geom.taps, tap_and_grad, (out, dw), _tuning.CONV_UNROLL)


def _input_grad_loop(gm, w_taps, geom, phased_shape, xph=None, dw=None):
    """``dxph[window t] += gm @ w[t].T`` for every tap: output side -> input side.

    The input gradient of ``conv2d``, and the forward pass of ``conv_transpose2d``:
    each output pixel's vector goes back through the weights to every input cell its
    window touched, where overlapping windows add up. Given the input side ``xph``,
    the loop also accumulates ``conv2d``'s weight gradient ``window(xph, t).T @ gm``
    and returns ``(dxph, dw)``.
    """
    dxph = jnp.zeros(phased_shape, win.accum_dtype(gm.dtype))
    if xph is None:
        tap = partial(conv_transpose_tap, g=gm, w_taps=w_taps, geom=geom)
        return win.tap_loop(geom.taps, tap, dxph, _tuning.CONV_UNROLL, _tuning.GPU_UNROLL_SCATTER)
    tap = partial(conv_backward_tap, xph=xph, g=gm, w_taps=w_taps, geom=geom)
    return win.tap_loop(geom.taps, tap, (dxph, dw), _tuning.CONV_UNROLL, _tuning.GPU_UNROLL_SCATTER)


def _phased_shape(n, c, geom):
    """Shape of ``win.to_phases`` of an ``(n, H, W, c)`` input of ``geom``."""
    return (n, geom._phased(0), geom.stride[0], geom._phased(1), geom.stride[1], c)


def _output_side(a, groups, layout="NCHW"):
    """``(N, C, H, W)`` in ``layout`` -> the output-side matrix ``(N * H * W, groups,
    C / groups)``."""
    a = win.to_nhwc(a, layout)
    n, h, w, c = a.shape
    return a.reshape(n * h * w, groups, c // groups)


def _chunks(n, geom):
    """Batch chunks of the direct and im2col loops (rows: the chunk's output pixels)."""
    rows = geom.out_hw[0] * geom.out_hw[1]
    return win.batch_chunks(n, rows, _tuning.CONV_MIN_CHUNK_ROWS, _tuning.CONV_MAX_CHUNKS)


def _transpose_chunks(n, geom):
    """Batch chunks of ``conv_transpose2d``: its large buffers (the output and, backward,
    the phased output gradient) have the size of ``geom.in_hw``, so its pixels set them."""
    rows = geom.in_hw[0] * geom.in_hw[1]
    return win.batch_chunks(n, rows, _tuning.CONV_MIN_CHUNK_ROWS, _tuning.CONV_MAX_CHUNKS)


# ---------------------------------------------------------------------------- direct


@partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv_direct(x, weight, geom, groups):
    return _conv_fwd(x, weight, geom, groups)[0]


def _conv_fwd(x, weight, geom, groups):
    n, c_out = x.shape[0], weight.shape[0]
    ho, wo = geom.out_hw
    w_taps = _weight_taps(weight, groups)

    def chunk(inputs, carry):
        xph = win.to_phases(win.to_nhwc(inputs[0], geom.layout), geom, 0)
        out = _forward_loop(xph, w_taps, geom)
        return (win.from_nhwc(out.reshape(xph.shape[0], ho, wo, c_out), geom.layout),), carry

    y = jnp.zeros(win.image_shape(n, c_out, (ho, wo), geom.layout), win.accum_dtype(x.dtype))
    (y,), _ = win.over_batch_chunks(chunk, _chunks(n, geom), [x], [y])
    return y, (x, weight)


def _conv_bwd(geom, groups, residuals, g):
    x, weight = residuals
    n, c = x.shape[0], x.shape[_args.channel_axis(geom.layout)]
    w_taps = _weight_taps(weight, groups)

    def chunk(inputs, dw):
        xc, gc = inputs
        xph = win.to_phases(win.to_nhwc(xc, geom.layout), geom, 0)
        gm = _output_side(gc.astype(x.dtype), groups, geom.layout)
        shape = _phased_shape(xc.shape[0], c, geom)
        dxph, dw = _input_grad_loop(gm, w_taps, geom, shape, xph, dw)
        return (win.from_nhwc(win.from_phases(dxph, geom), geom.layout),), dw

    dw = jnp.zeros(w_taps.shape, win.accum_dtype(x.dtype))
    (dx,), dw = win.over_batch_chunks(chunk, _chunks(n, geom), [x, g], [jnp.zeros_like(x)], dw)
    return dx, _weight_from_taps(dw, geom.kernel).astype(weight.dtype)


defbilinear(_conv_direct, _conv_bwd)


# ---------------------------------------------------------------------------- im2col
#
# For a layer with few input channels (the first layer: C_in = 3) each per-tap product
# has a depth of 3, which no matrix unit likes. The same loop over taps can instead copy
# each window into its own column block of one matrix (the classic im2col), and a single
# product of depth C_in * kh * kw does the whole convolution.


@partial(jax.custom_jvp, nondiff_argnums=(2,))
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

    return win.tap_loop(geom.taps, tap, jnp.zeros((m, geom.taps, c), x.dtype))


def _im2col_fwd(x, weight, geom):
    # The columns hold every pixel kh * kw times: built one batch chunk at a time.
    n, c = x.shape[0], x.shape[_args.channel_axis(geom.layout)]
    w = _weight_taps(weight, 1).reshape(geom.taps * c, -1)
    acc = win.accum_dtype(x.dtype)

    def chunk(inputs, carry):
        cols = _im2col(win.to_nhwc(inputs[0], geom.layout), geom).reshape(-1, geom.taps * c)
        y = jnp.dot(cols, w, preferred_element_type=acc)
        return (win.from_nhwc(y.reshape(-1, *geom.out_hw, w.shape[1]), geom.layout),), carry

    y = jnp.zeros(win.image_shape(n, w.shape[1], geom.out_hw, geom.layout), acc)
    (y,), _ = win.over_batch_chunks(chunk, _chunks(n, geom), [x], [y])
    return y, (x, weight)


def _im2col_bwd(geom, residuals, g):
    x, weight = residuals
    n, c = x.shape[0], x.shape[_args.channel_axis(geom.layout)]
    acc = win.accum_dtype(x.dtype)
    w = _weight_taps(weight, 1).reshape(geom.taps * c, -1)

    def chunk(inputs, dw):
        xc, gc = (win.to_nhwc(a, geom.layout) for a in inputs)
        cols = _im2col(xc, geom).reshape(-1, geom.taps * c)
        gm = gc.reshape(cols.shape[0], gc.shape[-1]).astype(x.dtype)
        dw = dw + jnp.dot(cols.T, gm, preferred_element_type=acc)
        dcols = jnp.dot(gm, w.T, preferred_element_type=acc)
        dcols = dcols.reshape(xc.shape[0], *geom.out_hw, geom.taps, c)

        def tap(t, dxph):  # each column block goes back through its window
            block = lax.dynamic_index_in_dim(dcols, t, axis=3, keepdims=False)
            return win.add_to_window(dxph, t, block, geom)

        dxph = win.to_phases(jnp.zeros(xc.shape, acc), geom, 0)
        dxph = win.tap_loop(geom.taps, tap, dxph)
        return (win.from_nhwc(win.from_phases(dxph, geom), geom.layout),), dw

    dw = jnp.zeros(w.shape, acc)
    (dx,), dw = win.over_batch_chunks(chunk, _chunks(n, geom), [x, g], [jnp.zeros_like(x)], dw)
    dw = _weight_from_taps(dw.reshape(geom.taps, 1, c, -1), geom.kernel)
    return dx, dw.astype(weight.dtype)


defbilinear(_conv_im2col, _im2col_bwd)


# -------------------------------------------------------------------- conv_transpose2d


def conv_transpose2d(
    x: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    output_padding: IntOrPair = 0,
    groups: int = 1,
    dilation: IntOrPair = 1,
    *,
    data_format: str = "NCHW",
) -> jax.Array:
    """2-D transposed convolution, ``torch.nn.functional.conv_transpose2d``.

    A transposed convolution is the input gradient of a convolution, run as an op.
    Take the ``conv2d`` with this ``weight`` read as OIHW (``C_in`` outputs,
    ``C_out // groups`` inputs per group), this stride, padding and dilation, whose
    *output* has ``x``'s shape: ``conv_transpose2d(x, w)`` is that convolution's
    backward pass with ``x`` as the output gradient. So its forward is ``conv2d``'s
    input-gradient loop (every input pixel's vector ``x[p] @ w[t].T`` is added into
    the output cells of tap ``t``'s window), its input gradient is ``conv2d``'s
    forward loop on the output gradient (``dx = conv2d(dy, w)``), and its weight
    gradient is ``conv2d``'s weight-gradient loop with the two roles swapped
    (``window(dy, t).T @ x``). Stride ``s`` spreads the input pixels ``s`` apart, which
    is why it upsamples: ``H_out = (H - 1) * s - 2 * padding + dilation * (kh - 1)
    + output_padding + 1``.

    See also: the loop body, ``jspatial.conv.conv_transpose_tap``; ``jspatial.steps``
    runs it tap by tap and ``jspatial.loop_jaxpr`` prints it as compiled;
    ``jspatial.reference.conv_transpose2d``.

    Args:
        x: input ``(N, C_in, H, W)`` (``(N, H, W, C_in)`` in ``'NHWC'``), a floating
            dtype; ``N`` may be 0. Unbatched ``(C_in, H, W)`` (``(H, W, C_in)``) too.
        weight: ``(C_in, C_out // groups, kh, kw)``, torch's layout for the transpose, in
            both layouts.
        bias: optional ``(C_out,)``.
        stride: int or ``(sh, sw)``.
        padding: int or ``(ph, pw)``: ``dilation * (k - 1) - padding`` zeros are
            implied on each side; equivalently, ``padding`` rows are cropped from each
            side of the full output.
        output_padding: int or ``(oh, ow)``, extra rows/columns at the bottom/right
            (each must be smaller than the stride or the dilation on its axis): picks
            among the input sizes that a strided ``conv2d`` maps to the same size.
        groups: independent channel groups, dividing ``C_in`` (and ``C_out``).
        dilation: int or ``(dh, dw)``.
        data_format: keyword only, not in torch. ``'NCHW'`` (torch's) or ``'NHWC'``
            (channels last): the layout of ``x`` and of the result.

    Returns:
        ``(N, C_out, H_out, W_out)`` (``(N, H_out, W_out, C_out)`` in ``'NHWC'``) in the
        dtype of ``x`` (accumulated in float32).

    Cost: ``N * C_in * H * W * C_out / groups * kh * kw`` multiply-accumulates, those
    of the ``conv2d`` it transposes.

    Example:
        >>> import jax.numpy as jnp, jspatial as js
        >>> x = jnp.ones((2, 256, 8, 8)); w = jnp.ones((256, 128, 3, 3))
        >>> js.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1).shape
        (2, 128, 16, 16)
        >>> y = js.conv_transpose2d(jnp.ones((1, 1, 2, 2)), jnp.ones((1, 1, 2, 2)))
        >>> y[0, 0]  # four 2x2 stamps, overlapping in the centre
        Array([[1., 2., 1.],
               [2., 4., 2.],
               [1., 2., 1.]], dtype=float32)
        >>> js.conv_transpose2d(jnp.ones((2, 8, 8, 256)), w, stride=2, padding=1,
        ...                     output_padding=1, data_format="NHWC").shape
        (2, 16, 16, 128)
    """
    return _conv_transpose2d_checked(
        x, weight, bias, stride, padding, output_padding, groups, dilation,
        op="conv_transpose2d", data_format=data_format,
    )  # fmt: skip


@_args.unbatched(0)
def _conv_transpose2d_checked(
    x, weight, bias, stride, padding, output_padding, groups, dilation, *, op, dtype=None,
    data_format="NCHW",
):  # fmt: skip
    """``conv_transpose2d`` with errors attributed to ``op`` (the layer's path too):
    validated here, outside the jit, before the cast to ``dtype``."""
    x, weight, bias, geom, groups = _check_conv_transpose2d(
        x, weight, bias, stride, padding, output_padding, groups, dilation, op, data_format
    )
    if dtype is not None:
        x, weight = x.astype(dtype), weight.astype(dtype)
        bias = None if bias is None else bias.astype(dtype)
    return _conv_transpose2d(x, weight, bias, geom, groups)


def _check_conv_transpose2d(
    x, weight, bias, stride, padding, output_padding, groups, dilation, op, data_format="NCHW"
):
    """Every check of ``conv_transpose2d`` (``jspatial.steps`` runs them too)."""
    data_format = _args.check_data_format(data_format, op)
    x = _args.check_input(x, op, integers=True, data_format=data_format)
    weight = _args.check_operand(weight, x, op, "weight")
    bias = _args.check_bias(bias, op, x)
    geom, groups = _conv_transpose_geometry(
        x, weight, bias, stride, padding, output_padding, groups, dilation, op, data_format
    )
    return x, weight, bias, geom, groups


def _conv_transpose_geometry(
    x, weight, bias, stride, padding, output_padding, groups, dilation, op, data_format="NCHW"
):
    """Validate ``conv_transpose2d``'s arguments; return the window geometry of the
    transposed ``conv2d`` (its input: our output, its output: our input) and ``groups``."""
    w_shape = _check_weight_shape(weight, op, "(in_channels, out_channels // groups, kh, kw)")
    c_in = x.shape[_args.channel_axis(data_format)]
    h, w = _args.spatial_shape(x.shape, data_format)
    w_in, c_per_group, kh, kw = w_shape
    if w_in != c_in:
        raise ValueError(
            f"{op} expected {w_in} input channels (weight {w_shape} is (in_channels, "
            f"out_channels // groups, kh, kw)), got {c_in} (input {tuple(x.shape)})"
        )
    groups = _args.positive_int(groups, op, "groups")
    if c_in % groups:  # C_out = (C_out // groups) * groups is always divisible
        raise ValueError(f"{op} groups={groups} must divide in_channels={c_in}")
    c_out = c_per_group * groups
    if bias is not None and tuple(bias.shape) != (c_out,):
        raise ValueError(f"{op} expected bias of shape ({c_out},), got {tuple(bias.shape)}")
    kernel = (kh, kw)
    strides = _args.pair(stride, op, "stride")
    dil = _args.pair(dilation, op, "dilation")
    pads = _args.pair(padding, op, "padding", minimum=0)
    out_pads = _args.output_padding(output_padding, strides, dil, op)
    out_hw = tuple(map(transposed_size, (h, w), kernel, strides, pads, out_pads, dil))
    if min(out_hw) < 1:
        raise ValueError(
            f"{op} output size {out_hw} is too small: input {(h, w)}, kernel {kernel}, "
            f"stride {strides}, padding {pads}, output_padding {out_pads}, dilation {dil}"
        )
    pads = tuple((p, p) for p in pads)
    return win.Geometry(out_hw, (h, w), kernel, strides, dil, pads, data_format), groups


@partial(jax.jit, static_argnums=(3, 4))
def _conv_transpose2d(x, weight, bias, geom, groups):
    y = _conv_transpose(x, weight.astype(x.dtype), geom, groups)
    return _add_bias(y, bias, geom.layout).astype(x.dtype)


@partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv_transpose(x, weight, geom, groups):
    return _conv_transpose_fwd(x, weight, geom, groups)[0]


def _conv_transpose_fwd(x, weight, geom, groups):
    # conv2d's input-gradient loop, with x as the output gradient.
    n = x.shape[0]
    c_out = weight.shape[1] * groups
    w_taps = _weight_taps(weight, groups)

    def chunk(inputs, carry):
        xm = _output_side(inputs[0], groups, geom.layout)
        shape = _phased_shape(inputs[0].shape[0], c_out, geom)
        yph = _input_grad_loop(xm, w_taps, geom, shape)
        return (win.from_nhwc(win.from_phases(yph, geom), geom.layout),), carry

    y = jnp.zeros(win.image_shape(n, c_out, geom.in_hw, geom.layout), win.accum_dtype(x.dtype))
    (y,), _ = win.over_batch_chunks(chunk, _transpose_chunks(n, geom), [x], [y])
    return y, (x, weight)


def _conv_transpose_bwd(geom, groups, residuals, g):
    # conv2d's forward loop on the output gradient gives the input gradient; its
    # windows, against x, give the weight gradient.
    x, weight = residuals
    n, c_in = x.shape[0], x.shape[_args.channel_axis(geom.layout)]
    h, w = geom.out_hw
    w_taps = _weight_taps(weight, groups)

    def chunk(inputs, dw):
        xc, gc = inputs
        gph = win.to_phases(win.to_nhwc(gc.astype(x.dtype), geom.layout), geom, 0)
        dx, dw = _forward_loop(gph, w_taps, geom, _output_side(xc, groups, geom.layout), dw)
        return (win.from_nhwc(dx.reshape(xc.shape[0], h, w, c_in), geom.layout),), dw

    dw = jnp.zeros(w_taps.shape, win.accum_dtype(x.dtype))
    (dx,), dw = win.over_batch_chunks(
        chunk, _transpose_chunks(n, geom), [x, g], [jnp.zeros_like(x)], dw
    )
    return dx, _weight_from_taps(dw, geom.kernel).astype(weight.dtype)


defbilinear(_conv_transpose, _conv_transpose_bwd)
