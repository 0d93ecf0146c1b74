"""The shared window helpers: batch chunking used by the convolutions' loops."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jspatial import _windows as win


@pytest.mark.parametrize(
    "n, rows_per_image, expected",
    [
        (512, 1024, 8),  # large batch: the most chunks allowed
        (512, 49, 4),  # 7x7 images: 8 chunks of 64 would give 3136 rows < 4096
        (128, 64, 2),
        (7, 4096, 7),  # a prime batch divides only by itself and 1
        (13, 4096, 1),  # ... and 13 > CONV_MAX_CHUNKS, so it stays whole
        (2, 100, 1),  # too few rows to split at all
        (1, 10**6, 1),
    ],
)
def test_batch_chunks(n, rows_per_image, expected):
    k = win.batch_chunks(n, rows_per_image)
    assert k == expected
    assert n % k == 0


def test_chunk_loop_visits_every_row_once_with_strided_chunks():
    x = jnp.arange(12.0).reshape(6, 2)
    seen = []

    def loop(i, carry, *, chunks):
        (times10, sums), count = carry
        xc = win.batch_chunk(x, i, chunks)
        seen.append(xc.shape)
        times10 = win.set_batch_chunk(times10, i, xc * 10, chunks)
        sums = win.set_batch_chunk(sums, i, xc.sum(axis=1), chunks)
        return (times10, sums), count + xc.shape[0]

    outs = (jnp.zeros((6, 2)), jnp.zeros((6,)))
    (times10, sums), count = win.chunk_loop_fn(3, loop)((outs, jnp.zeros((), jnp.int32)))
    assert seen == [(2, 2)]  # traced once: one loop body, each chunk 6 / 3 rows
    np.testing.assert_array_equal(times10, x * 10)
    np.testing.assert_array_equal(sums, x.sum(axis=1))
    assert int(count) == 6
    # Chunk i is rows i, i + 3: strided, so a sharded batch stays evenly spread.
    np.testing.assert_array_equal(win.batch_chunk(x, 1, 3), x[1::3])
