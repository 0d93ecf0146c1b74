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
>>> from jspatial import _windows as win, pool
>>> geom = win.Geometry((4, 4), (2, 2), (2, 2), (2, 2), (1, 1), ((0, 0), (0, 0)))
>>> x = jnp.arange(16.0).reshape(1, 1, 4, 4)
>>> max_pool2d_planes(pool._max_pool_jit, geom, x)[0, 0].tolist()
[[5.0, 7.0], [13.0, 15.0]]
"""

from __future__ import annotations

from jspatial import _windows as win


def max_pool2d_planes(portable, geom: win.Geometry, x):
    """``jspatial.pool``'s max pooling of an NCHW ``x``, on its ``N * C`` planes.

    Args:
        portable: the op's portable version, ``portable(x, geom=, return_indices=)``
            (``jspatial._accel.dispatch`` hands it in, so this module imports no op).
        geom: the pooling geometry (``geom.layout == 'NCHW'``).
        x: ``(N, C, H, W)``.

    Returns:
        ``(N, C, H_out, W_out)``, with the portable loop's values and gradients.
    """
    n, c, h, w = x.shape
    planes = x.reshape(n * c, h, w, 1)
    y = portable(planes, geom=geom._replace(layout="NHWC"), return_indices=False)
    return y.reshape(n, c, *geom.out_hw)
