"""The tap loop as implicit-GEMM Pallas kernels for NVIDIA GPUs (Triton backend, sm_80 and up).

The portable ``jspatial.conv`` copies one window of the input per tap and multiplies it,
``y += window(x, t) @ w[t]``; on a GPU every copy is a round trip to HBM. These kernels
run the same loop inside one program, in the caller's layout (``kernel_layout``), on the
images flattened to a matrix: channels last (``NHWC``) rows of pixels ``(N * H * W, C)``,
channels first (``NCHW``, torch's) rows of channels ``(N * C, H * W)``. A program owns a
tile of ``BM`` output pixels x ``BO`` output channels, held in registers::

    acc = 0                                      # (BM, BO) NHWC, (BO, BM) NCHW; float32
    for k in channel chunks of BK:               # a loop in the kernel
        for t in range(kh * kw):                 # the taps, unrolled
            src = source pixel of every output pixel for tap t     # zeros off the image
            acc += x[src, k] @ w[t, k, cols]     # NHWC: (BM, BK) @ (BK, BO)
            acc += w[t, cols, k] @ x[k, src]     # NCHW: (BO, BK) @ (BK, BM)
    y[pixels, cols] = acc                        # (NCHW: y[cols, pixels])

In NCHW this is the transposed product, ``y[n, :, pixels] = W_t @ x_shifted``, whose
tiles run along the pixels, the contiguous axis there: no layer transposes its
activations in either layout. Each tap's tile is a masked gather load of the shifted
pixels; the nine taps of a 3x3 read overlapping pixels, which the L1/L2 caches serve, so
the input crosses HBM about once per pass and the output is written once, in place (no
padded copy, no window copy, no spare row cut off afterwards). The weight is read as it
lies, ``(C_out, C_in * kh * kw)``: each tap's ``(BK, BO)`` tile is a masked gather from
it (the taps of one chunk share its cache lines), so no relayout precedes a kernel, and
the weight gradient comes out in that same order. Forward and backward are then one and
two kernels (three where the weight gradient's partial sums need adding).

The backward pass is the same loop transposed:

- input gradient: output pixel ``oy`` read input row ``oy * s + i * d - top``, so input
  row ``iy`` receives ``g[(iy + top - i * d) / s] @ w[t].T`` from every tap for which that
  division is exact. This is the forward kernel run on the output gradient with the
  offsets negated and each tap's weights transposed (like ``jspatial._accel.conv``). With
  a stride, the input pixels split into ``s_h * s_w`` phases (``iy % s``); each phase has
  its own static set of taps, so a program works on the pixels of one phase and runs only
  the taps that reach them (no multiply by zeros);
- weight gradient: ``dw[t] += g.T @ window(x, t)`` (``conv_weight_grad_tap``), a program
  per ``(BO, BC)`` tile of ``(C_out, C_in)`` and group of taps, every tap of the group
  accumulated in registers while the program walks its share of the output pixels in
  chunks of ``BP`` (split-K over ``splits`` programs, whose float32 partials XLA sums);
  the result is laid out ``(C_out, C_in, taps)``, the weight's own order.

Supported (``supports``): ungrouped; any stride, kernel size and dilation; any zero
padding (none, 'same', or more). Other convolutions (groups) take the portable loop.

The kernels themselves, their tiles, grids and arithmetic intensity are in
``jspatial._accel.gpu.taps``.

Example (interpret mode, on a CPU):

>>> import jax.numpy as jnp
>>> from jspatial import _windows as win
>>> geom = win.Geometry((1, 5), (1, 5), (1, 3), (1, 1), (1, 1), ((0, 0), (1, 1)))
>>> y = conv2d(jnp.ones((1, 2, 1, 5)), jnp.ones((4, 2, 1, 3)), geom, interpret=True)
>>> y.shape, float(y[0, 0, 0, 2]), float(y[0, 0, 0, 0])
((1, 4, 1, 5), 6.0, 4.0)
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jspatial import _tuning
from jspatial import _windows as win
from jspatial._accel.gpu.taps import _Phase, taps_forward, taps_weight_grad
from jspatial._linear import defbilinear


def supports(geom: win.Geometry, groups: int) -> bool:
    """Whether these kernels compute the convolution (else the portable loop does).

    Covered: ``groups == 1`` with any stride, kernel size, dilation and zero padding
    (asymmetric, none, 'same' or more), for compute capability 8.0 and up (Triton).
    The kernels index with int32: each of ``x``, ``y`` and their gradients must hold
    fewer than ``2**31`` elements (a shape check for the caller; 512 x 256 x 32 x 32 is
    134M).
    """
    return groups == 1 and all(p >= 0 for pad in geom.padding for p in pad)


# ----------------------------------------------------------------------------- the passes


def _forward_phases(geom: win.Geometry) -> tuple[_Phase]:
    """One phase: output pixel ``(oy, ox)``, tap ``(i, j)`` reads ``(oy*s + i*d - top, ...)``."""
    (kh, kw), (dh, dw) = geom.kernel, geom.dilation
    top, left = geom.padding[0][0], geom.padding[1][0]
    taps = tuple((i * kw + j, i * dh - top, j * dw - left) for i in range(kh) for j in range(kw))
    return (_Phase((0, 0), taps),)


def _input_grad_phases(geom: win.Geometry) -> tuple[_Phase, ...]:
    """Input pixel ``iy = q * s + p`` got ``g[(iy + top - i*d) / s]`` from tap ``i`` when that
    division is exact: per phase ``p``, the taps with ``(p + top - i*d) % s == 0``, reading
    output row ``q + (p + top - i*d) // s``."""
    (kh, kw), (sh, sw), (dh, dw) = geom.kernel, geom.stride, geom.dilation
    top, left = geom.padding[0][0], geom.padding[1][0]
    phases = []
    for py in range(sh):
        for px in range(sw):
            taps = tuple(
                (i * kw + j, (py + top - i * dh) // sh, (px + left - j * dw) // sw)
                for i in range(kh)
                for j in range(kw)
                if (py + top - i * dh) % sh == 0 and (px + left - j * dw) % sw == 0
            )
            phases.append(_Phase((py, px), taps))
    return tuple(phases)


def kernel_layout(layout: str) -> str:
    """The layout the kernels run in for a caller's ``layout`` (``_tuning.GPU_CONV_LAYOUT``):
    its own, or channels last with the activations transposed in and out."""
    return _tuning.GPU_CONV_LAYOUT.get(layout, "NHWC")


def _to_kernel(x, geom):
    return win.to_nhwc(x, geom.layout) if kernel_layout(geom.layout) != geom.layout else x


def _from_kernel(y, geom):
    return win.from_nhwc(y, geom.layout) if kernel_layout(geom.layout) != geom.layout else y


def conv2d(x, weight, geom: win.Geometry, *, interpret: bool = False):
    """Ungrouped convolution, in and out in ``geom.layout``, through the GPU kernels
    (``supports``), which run in ``kernel_layout(geom.layout)``: the caller's own layout,
    or NHWC with NCHW arrays transposed in and out.

    Args:
        x: ``(N, C_in, H, W)``, or ``(N, H, W, C_in)`` where ``geom.layout`` is NHWC.
        weight: ``(C_out, C_in, kh, kw)``.
        geom: the window geometry (``geom.in_hw == (H, W)``).
        interpret: run the kernels in Pallas' interpret mode (any backend, slowly).

    Returns:
        ``(N, C_out, H_out, W_out)`` (NHWC: ``(N, H_out, W_out, C_out)``) in ``x``'s
        dtype; differentiable in both modes
        (``jspatial._linear.defbilinear``: the backward pass runs the input-gradient and
        weight-gradient kernels).
    """
    return _conv2d(x, weight, geom, interpret)


@partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv2d(x, weight, geom, interpret):
    return _fwd(x, weight, geom, interpret)[0]


def _fwd(x, weight, geom, interpret):
    o = weight.shape[0]
    if x.shape[0] == 0:
        return jnp.zeros(win.image_shape(0, o, geom.out_hw, geom.layout), x.dtype), (x, weight)
    kl = kernel_layout(geom.layout)
    y = taps_forward(
        _to_kernel(x, geom), weight, geom.out_hw, _forward_phases(geom),
        step=geom.stride, layout=kl, interpret=interpret,
    )  # fmt: skip
    return _from_kernel(y, geom), (x, weight)


def _bwd(geom, interpret, residuals, g):
    x, weight = residuals
    o, c = weight.shape[:2]
    if x.shape[0] == 0:
        return jnp.zeros_like(x), jnp.zeros_like(weight)
    kl = kernel_layout(geom.layout)
    xt, gt = _to_kernel(x, geom), _to_kernel(g.astype(x.dtype), geom)
    dx = taps_forward(
        gt, weight, geom.in_hw, _input_grad_phases(geom), out_step=geom.stride,
        transposed=True, layout=kl, interpret=interpret,
    )  # fmt: skip
    dw = taps_weight_grad(xt, gt, geom, layout=kl, interpret=interpret).reshape(weight.shape)
    return _from_kernel(dx, geom), dw.astype(weight.dtype)


defbilinear(_conv2d, _bwd)  # forward mode: conv2d(dx, w) + conv2d(x, dw); reverse: _bwd
