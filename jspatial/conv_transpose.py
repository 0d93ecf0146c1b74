"""2-D transposed convolution: ``conv2d``'s backward loops, run as an op.

A transposed convolution is the input gradient of a convolution. Its forward pass is
``conv2d``'s input-gradient loop (``jspatial.conv._input_grad_loop``, whose tap body is
``conv_transpose_tap``: ``out[window t] += x @ w[t].T``), its input gradient is
``conv2d``'s forward loop on the output gradient, and its weight gradient is
``conv2d``'s weight-gradient tap with the two roles swapped. From ``conv_transpose2d`` to
its tap body is three calls: the checks (``jspatial._conv_args``), the
custom-derivative function ``_conv_transpose``, the loop over batch chunks whose
``lax.fori_loop`` over taps runs ``conv_transpose_tap``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jspatial import _windows as win
from jspatial._accel import dispatch
from jspatial._args import IntOrPair
from jspatial._conv_args import ConvArgs, conv_transpose2d_args
from jspatial._linear import defbilinear
from jspatial.conv import _forward_loop, _input_grad_loop


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
        dtype of ``x`` (accumulated in float32, or float64 for float64 inputs).

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
    a = conv_transpose2d_args(
        x, weight, bias, stride, padding, output_padding, groups, dilation,
        op="conv_transpose2d", data_format=data_format,
    )  # fmt: skip
    return a.finish(conv_transpose2d_program(a)(a.x, a.weight))


def conv_transpose2d_program(a: ConvArgs):
    """The function of ``(x, weight)`` that runs the checked transposed convolution ``a``:
    ``_conv_transpose``, compiled once per shape and geometry."""
    return dispatch.program("conv_transpose2d", _PORTABLE, geom=a.geom, groups=a.groups)


@partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv_transpose(x, weight, geom, groups):
    """``x`` (in ``geom.layout``) -> the output, in the accumulation dtype: ``conv2d``'s
    input-gradient loop, with ``x`` as the output gradient."""
    n = x.shape[0]
    c_out = weight.shape[1] * groups
    w_taps = win.weight_taps(weight, groups)
    y = jnp.zeros(win.image_shape(n, c_out, geom.in_hw, geom.layout), win.accum_dtype(x.dtype))
    loop = partial(_input_grad_loop, g=x, w_taps=w_taps, geom=geom)
    # The large buffers (the output and, backward, the phased output gradient) have the
    # size of geom.in_hw, so its pixels set the chunks.
    return win.chunk_loop_fn(win.conv_chunks(n, geom.in_hw), loop)(y)


def _conv_transpose_bwd(geom, groups, residuals, g):
    # conv2d's forward loop on the output gradient gives the input gradient; its
    # windows, against x, give the weight gradient.
    x, weight = residuals
    w_taps = win.weight_taps(weight, groups)
    dw = jnp.zeros(w_taps.shape, win.accum_dtype(x.dtype))
    loop = partial(_forward_loop, x=g, w_taps=w_taps, geom=geom, g=x)
    chunks = win.conv_chunks(x.shape[0], geom.in_hw)
    dx, dw = win.chunk_loop_fn(chunks, loop)((win.overwritten(x.shape, x.dtype, g), dw))
    return dx, win.weight_from_taps(dw, geom.kernel).astype(weight.dtype)


defbilinear(_conv_transpose, _conv_transpose_bwd)

_PORTABLE = jax.jit(_conv_transpose, static_argnames=("geom", "groups"))
