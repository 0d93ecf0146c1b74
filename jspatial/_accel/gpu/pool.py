"""Max pooling beside the NCHW convolution kernels: the portable loop, run on planes.

Pooling works on each channel of each image alone, so an ``(N, C, H, W)`` array is, as it
lies in memory, ``N * C`` single-channel images: ``(N * C, H, W, 1)`` in the channels-last
layout the portable loops of ``jspatial.pool`` run on. Reshaping instead of transposing
keeps a network whose convolutions run in NCHW (``jspatial._accel.gpu.conv``) free of
layout changes around its pools; with the transposes, XLA splits the pool's backward
fusion in two (airbench94 train step on an H100 compile, NCHW: 4.83 GB with the pool's
transposes, 4.4 without; ``bench/RESULTS.md``).

Example (on a CPU):

>>> import jax.numpy as jnp
>>> from jspatial import _windows as win
>>> geom = win.Geometry((4, 4), (2, 2), (2, 2), (2, 2), (1, 1), ((0, 0), (0, 0)))
>>> max_pool2d_planes(jnp.arange(16.0).reshape(1, 1, 4, 4), geom)[0, 0].tolist()
[[5.0, 7.0], [13.0, 15.0]]
"""

from __future__ import annotations

from jspatial import _windows as win


def max_pool2d_planes(x, geom: win.Geometry):
    """``jspatial.pool``'s max pooling of an NCHW ``x``, on its ``N * C`` planes.

    Args:
        x: ``(N, C, H, W)``.
        geom: the pooling geometry (``geom.layout == 'NCHW'``).

    Returns:
        ``(N, C, H_out, W_out)``, with the portable loop's values and gradients.
    """
    from jspatial import pool  # the op's loop; imported here, as dispatch imports this

    n, c, h, w = x.shape
    y = pool._max_pool_nhwc(x.reshape(n * c, h, w, 1), geom._replace(layout="NHWC"))[0]
    return y.reshape(n, c, *geom.out_hw)
