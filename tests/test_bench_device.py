"""The GPU benchmark's arguments, budget and report on fake results (it is never run here)."""

from __future__ import annotations

import json

import pytest

from bench.device import Budget, Report, measure, parse_args
from bench.ops import Case


def test_smoke_and_full_defaults_and_explicit_values():
    smoke, full = parse_args(["--smoke"]), parse_args([])
    assert (smoke.batch, smoke.train_batch, smoke.repeats, smoke.sample_s) == (2, 4, 2, 0.0)
    assert (full.batch, full.model_batch, full.train_batch) == (128, 512, 512)
    assert full.budget_s == 300 and parse_args(["--recipe"]).budget_s == smoke.budget_s == 0
    assert parse_args(["--smoke", "--budget-s", "30"]).budget_s == 30
    given = parse_args(["--smoke", "--batch", "8", "--sections", "core, train"])
    assert given.batch == 8 and given.sections == ["core", "train"]


@pytest.mark.parametrize(
    "argv, message",
    [(["--sections", "core,ops"], "--sections: unknown ops"), (["--budget-s", "-1"], "--budget-s")],
)
def test_bad_arguments_stop_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_budget_judges_a_section_by_its_longest_item():
    budget = Budget(10.0)
    budget.start -= 6.0  # 6 s used
    assert budget.allows("core")  # nothing measured yet
    budget.record("core", 3.0)
    assert budget.allows("core")  # 6 + 3 <= 10
    budget.record("core", 5.0)
    assert not budget.allows("core")  # 6 + 5 > 10
    assert budget.allows("model") and not budget.allows("model", like="core")
    budget.record("model", 1.0)
    assert budget.allows("model", like="core")  # now by its own
    assert Budget(None).allows("core")


def test_measure_keeps_per_call_minimum_of_each_runner():
    calls = {"a": [], "b": []}
    runners = {name: (lambda k, name=name: calls[name].append(k)) for name in calls}
    ms = measure(runners, repeats=3, sample_s=0.0)
    assert set(ms) == {"a", "b"} and all(v >= 0 for v in ms.values())
    assert calls["a"] == [1, 1, 1, 1]  # one calibrating call, then the 3 samples


def _fake_results():
    case = Case("conv 4->4 @8", "conv", (2, 4, 8, 8), 4)
    op = {"case": case, "mem": {"ours": 2.0**20, "xla": 2.0**21}}
    op["first_s"] = {(impl, mode): 1.5 for impl in ("ours", "xla", "torch") for mode in (0, 1)}
    op.update({("ours", 0): 0.5, ("xla", 0): 0.25, ("torch", 0): 1.0})
    op.update({("ours", 1): 1.0, ("xla", 1): 2.0, ("torch", 1): 4.0})
    train = {"ms": {"ours": 20.0, "flax": 10.0, "torch": 40.0},
             "first_s": {"ours": 30.0, "flax": 20.0, "torch": 2.0}}  # fmt: skip
    return op, train


def test_report_writes_markdown_and_json_with_every_result(tmp_path):
    meta = dict(date="2026-01-01 00:00", platform="gpu", device_kind="Fake GPU",
                backend="cuda 13000", versions={"jax": "0.11.2"}, torch="PyTorch 2.11",
                precision="JAX's default", mode="benchmark", budget_s=300, repeats=10,
                sample_s=0.02, batch=2, model_batch=2, train_batch=512)  # fmt: skip
    report = Report(tmp_path, meta)
    op, train = _fake_results()
    report.train, report.ops["core"] = train, [op]
    report.skipped.append("model: conv 24->64 @31")
    report.recipe["ours"] = dict(test_accuracy=0.9412, test_accuracy_no_tta=0.93,
                                 images_per_second=5e4, wall_time_s=60.0,
                                 process_s=70.0)  # fmt: skip
    report.recipe["torch"] = {"error": "exit status 1, see recipe-torch.log"}
    report.write(12.0, {"train": 4.0, "core": 8.0})

    md = (tmp_path / "device.md").read_text()
    assert "Fake GPU" in md and "still running (partial results)" in md
    assert "| jspatial | 20.00 | 25600 | 0.50x | 2.00x | 30.0 |" in md
    assert "| conv 4->4 @8 | 0.500 | 0.250 | 2.00 | 0.50 | 1.000 | 2.000 | **0.50** |" in md
    assert "| jspatial | 94.12% | 93.00% |" in md and "exit status 1" in md
    assert "Skipped for the 300 s budget: model: conv 24->64 @31" in md
    assert "forward+backward summed: jspatial 3.0, XLA 3.0, PyTorch 3.0." in md
    assert "Wall time 12 s (train 4 s, core 8 s), still running" in md

    data = json.loads((tmp_path / "device.json").read_text())
    row = data["ops"]["core"][0]
    assert row["ms"] == {"ours fwd": 0.5, "ours fwd+bwd": 1.0, "xla fwd": 0.25,
                         "xla fwd+bwd": 2.0, "torch fwd": 1.0, "torch fwd+bwd": 4.0}  # fmt: skip
    assert row["shape"] == [2, 4, 8, 8] and row["first_s"]["torch fwd"] == 1.5
    assert data["train_step"]["ms"]["flax"] == 10.0 and data["finished"] is False
    assert data["skipped"] == ["model: conv 24->64 @31"] and data["wall_s"] == 12.0
    assert data["section_s"] == {"train": 4.0, "core": 8.0}


def test_device_check_passes_the_op_and_flags_a_wrong_one_or_nan(capsys):
    # bench.device_check's comparison on the CPU: jspatial's conv2d against XLA's passes;
    # an op off by 1% (far beyond TF32 rounding) and one that returns NaN are flagged.
    import jax
    import jax.numpy as jnp

    from bench import device_check as dc

    x = jax.random.normal(jax.random.key(0), (2, 3, 6, 5))
    w = jax.random.normal(jax.random.key(1), (4, 3, 3, 2))
    b = jnp.arange(4.0)
    ref = lambda x, w, b: dc._conv_ref(x, w, b, (2, 1), (1, 0), (1, 2), 1, "NCHW")  # noqa: E731
    ours = lambda x, w, b: dc._conv_ours(x, w, b, ((2, 1), (1, 0), (1, 2), 1), "NCHW")  # noqa: E731
    errors = []
    dc.check("conv", ours, ref, (x, w, b), errors)
    dc.check("off", lambda x, w, b: 1.01 * ref(x, w, b), ref, (x, w, b), errors)
    dc.check("nan", lambda x, w, b: ref(x, w, b) * jnp.nan, ref, (x, w, b), errors)
    assert errors == ["off", "nan"]
    out = capsys.readouterr().out
    assert "ok  conv" in out and "BAD off" in out and "BAD nan" in out
