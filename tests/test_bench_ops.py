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


def test_nhwc_runs_each_op_on_the_transposed_numbers_or_leaves_it_out(tmp_path):
    """In NHWC the XLA baseline (and jspatial's op, where it takes ``data_format``) gives
    the NCHW result transposed; an op without the keyword is left out of the NHWC report."""
    import numpy as np

    from bench.ops import _inputs, _jax_fns, main, runs_in, takes_data_format

    cases = [
        Case("conv 4->3 @6", "conv", (2, 4, 6, 6), 3),
        Case("conv_transpose 4->3 s2 @3->6", "conv_transpose", (2, 4, 3, 3), 3, stride=2,
             output_padding=1),
        Case("maxpool 2x2 4ch @6", "maxpool", (2, 4, 6, 6), kernel=2, padding=0),
        Case("batchnorm 4ch @6", "bn", (2, 4, 6, 6)),
    ]  # fmt: skip
    to_nhwc = lambda a: np.transpose(np.asarray(a), (0, 2, 3, 1))  # noqa: E731
    for case in cases:
        assert runs_in(case, "NCHW")
        x, w = _inputs(case)
        x_nhwc, w_nhwc = _inputs(case, "NHWC")
        np.testing.assert_array_equal(x_nhwc, to_nhwc(x))
        np.testing.assert_array_equal(w_nhwc, w)  # weights keep their layout
        impls = ("xla", "ours") if takes_data_format(case.op) else ("xla",)
        for impl in impls:
            (fwd, fwd_bwd), (fwd_t, fwd_bwd_t) = (
                _jax_fns(case, impl),
                _jax_fns(case, impl, "NHWC"),
            )
            want = fwd(x, w)
            np.testing.assert_allclose(fwd_t(x_nhwc, w), to_nhwc(want), rtol=1e-5, atol=1e-5)
            (gx, gw), (gx_t, gw_t) = fwd_bwd(x, w), fwd_bwd_t(x_nhwc, w)
            np.testing.assert_allclose(gx_t, to_nhwc(gx), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(gw_t, gw, rtol=1e-4, atol=1e-5)
    out = tmp_path / "ops.md"
    main(["--suite", "core", "--only", "maxpool", "--batch", "2", "--memory-only",
          "--data-format", "both", "--out", str(out)])  # fmt: skip
    report = out.read_text()
    assert "## core suite, NCHW: backward peak memory, MiB" in report
    nhwc = "## core suite, NHWC: backward peak memory, MiB" in report
    left_out = "Left out in NHWC (no `data_format` keyword yet): max_pool2d." in report
    assert nhwc != left_out and nhwc == takes_data_format("maxpool")
