"""The op benchmark's memory report on tiny shapes (timings are never tested)."""

from __future__ import annotations

from bench.ops import Case, memory_table


def test_memory_table_has_a_row_per_case_with_positive_sizes():
    cases = [
        Case("conv 16->16 @32", "conv", (8, 16, 32, 32), 16),
        Case("maxpool 2x2 16ch @32", "maxpool", (8, 16, 32, 32), kernel=2, padding=0),
    ]
    rows = memory_table(cases).splitlines()[2:]
    assert len(rows) == 2
    conv = [cell.strip(" *") for cell in rows[0].strip("|").split("|")]
    pool = [cell.strip(" *") for cell in rows[1].strip("|").split("|")]
    assert conv[0] == "conv 16->16 @32, b8" and pool[0] == "maxpool 2x2 16ch @32, b8"
    assert all(float(v) >= 0 for v in conv[1:5])  # XLA, ours, ratio, direct loop
    assert float(conv[1]) > 0 and float(pool[1]) > 0
    assert pool[4] == ""  # pooling has no direct-loop variant


def test_conv_transpose_case_runs_ours_xla_and_torch_on_the_same_shapes():
    import jax
    import numpy as np
    import pytest

    from bench.ops import _inputs, _jax_fns, _torch_fns

    pytest.importorskip("torch")

    case = Case("conv_transpose 8->4 s2 @4->8", "conv_transpose", (2, 8, 4, 4), 4, stride=2,
                output_padding=1)  # fmt: skip
    x, w = _inputs(case)
    (ours, ours_grad), (xla, xla_grad) = _jax_fns(case, "ours"), _jax_fns(case, "xla")
    y = ours(x, w)
    assert y.shape == (2, 4, 8, 8)
    np.testing.assert_allclose(y, xla(x, w), rtol=1e-4, atol=1e-5)  # the same op
    for got, want in zip(ours_grad(x, w), xla_grad(x, w)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    forward, forward_backward = _torch_fns(case)
    forward(), forward_backward()  # torch's shapes agree, or this raises
    rows = memory_table([case]).splitlines()[2:]
    assert rows[0].startswith("| conv_transpose 8->4 s2 @4->8, b2 |")
    assert jax.numpy.isfinite(float(rows[0].split("|")[2]))
