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
