"""Tests for the training job: optimiser, train step, lookahead, and the CLI end to end."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
import urllib.error
import warnings
from dataclasses import replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from jspatial.layers import BatchNorm2d
from tests.train.conftest import make_cli_env, start_cli, write_tiny_cifar
from train import augment, cifar10, config, data, loop, models, report, run
from train.data import DATA_DIR_ENV, default_data_dir

# ---------------------------------------------------------------------------- optimiser


def test_lr_schedule_is_airbench_triangle():
    m = loop.lr_multiplier(config.Config(), 100)
    np.testing.assert_allclose([m(0), m(23), m(100)], [0.2, 1.0, 0.07], rtol=1e-6)
    np.testing.assert_allclose(m(11.5), 0.6, rtol=1e-6)
    assert float(m(60)) == pytest.approx(1.0 + (0.07 - 1.0) * (60 - 23) / 77, rel=1e-6)


def test_sgd_matches_airbench_torch_param_groups(torch):
    """Our single SGD with pre-scaled BN-bias gradients == airbench's two torch param groups."""
    cfg = config.make_config(lr=11.5, momentum=0.85, weight_decay=0.0153, bias_scaler=64.0)
    batch, steps = 1024, 5

    class Tiny(nnx.Module):
        def __init__(self):
            self.conv = nnx.Param(jnp.linspace(-1, 1, 12).reshape(3, 4))
            self.norm1 = BatchNorm2d(4)
            self.norm1.weight = models.Frozen(self.norm1.weight[...])
            self.norm1.bias[...] = jnp.linspace(0.5, -0.5, 4)

    model = Tiny()
    assert models.bn_bias_paths(model) == {("norm1", "bias")}
    optimizer, schedule = loop.make_optimizer(model, cfg, steps, batch)
    rng = np.random.default_rng(0)
    grads_seq = [(rng.normal(size=(3, 4)), rng.normal(size=4)) for _ in range(steps)]

    kilostep = 1024 * (1 + 1 / (1 - cfg.momentum))
    lr, wd = cfg.lr / kilostep, cfg.weight_decay * batch / kilostep
    lr_b = lr * cfg.bias_scaler
    w = torch.tensor(np.asarray(model.conv[...]), dtype=torch.float64, requires_grad=True)
    b = torch.tensor(np.asarray(model.norm1.bias[...]), dtype=torch.float64, requires_grad=True)
    torch_opt = torch.optim.SGD(
        [dict(params=[b], lr=lr_b, weight_decay=wd / lr_b),
         dict(params=[w], lr=lr, weight_decay=wd / lr)],
        momentum=cfg.momentum, nesterov=True,
    )  # fmt: skip
    mult = loop.lr_multiplier(cfg, steps)
    sched = torch.optim.lr_scheduler.LambdaLR(torch_opt, lambda i: float(mult(i)))
    for gw, gb in grads_seq:
        holder = nnx.clone(model)  # a separate module to carry the gradients
        holder.conv[...] = jnp.asarray(gw, jnp.float32)
        holder.norm1.bias[...] = jnp.asarray(gb, jnp.float32)
        optimizer.update(model, nnx.state(holder, nnx.Param))
        w.grad, b.grad = torch.tensor(gw), torch.tensor(gb)
        torch_opt.step()
        sched.step()
    np.testing.assert_allclose(model.conv[...], w.detach().numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(model.norm1.bias[...], b.detach().numpy(), rtol=1e-5, atol=1e-7)
    assert float(schedule(0)) == pytest.approx(0.2 * lr)


# ---------------------------------------------------------------------------- train step

BATCH = 32


@pytest.fixture(scope="module")
def airbench_setup():
    """A narrow airbench94 (same layers, fewer channels), a batch of data and a train step."""
    cfg = config.make_config(batch_size=BATCH)
    base = models.Airbench94(
        widths=(16, 32, 32), rngs=nnx.Rngs(jax.random.key(0, impl="rbg")),
        data_format=cfg.data_format,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (BATCH, 3, 32, 32), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, BATCH).astype(np.int32))
    models.init_whitening(base, augment.normalize(images))
    train = loop.TrainSet(images, labels, augment.base_flips(jax.random.key(1, impl="rbg"), BATCH))
    step_fn = loop.make_train_step(cfg, BATCH)

    tx = loop.make_optimizer(base, cfg, 20, BATCH)[0].tx  # one tx: one compiled step

    def fresh():
        graphdef, state = nnx.split(base)
        model = nnx.merge(graphdef, jax.tree.map(jnp.copy, state))  # own buffers: donated
        return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

    def step(model, optimizer, train_whiten_bias=True):
        metrics = {"loss": jnp.zeros(()), "correct": jnp.zeros((), jnp.int32)}
        perm = jnp.arange(BATCH, dtype=jnp.int32)
        key = jax.random.key(2, impl="rbg")
        inputs = loop.StepInputs(train, perm, key, epoch=0, step=0,
                                 train_whiten_bias=train_whiten_bias)  # fmt: skip
        _, loss = step_fn(model, optimizer, metrics, inputs)
        return float(loss)

    return fresh, step


def snapshot(model, variable_type):
    return {
        jax.tree_util.keystr(path): np.array(x)
        for path, x in jax.tree_util.tree_leaves_with_path(
            nnx.to_pure_dict(nnx.state(model, variable_type))
        )
    }


def test_one_step_moves_every_trainable_parameter_and_no_frozen_one(airbench_setup):
    fresh, step = airbench_setup
    model, optimizer = fresh()
    params, frozen, stats = (snapshot(model, t) for t in (nnx.Param, models.Frozen, nnx.BatchStat))
    assert len(frozen) == 7 and len(params) == 1 + 1 + 3 * (2 + 2)  # whiten bias, head, groups
    step(model, optimizer)
    for name, before in params.items():
        assert not np.array_equal(snapshot(model, nnx.Param)[name], before), f"{name} did not move"
    for name, before in frozen.items():
        np.testing.assert_array_equal(snapshot(model, models.Frozen)[name], before, err_msg=name)
    for name, before in stats.items():
        assert not np.array_equal(snapshot(model, nnx.BatchStat)[name], before), name

    # After whiten_bias_epochs the whitening bias is frozen too; everything else still moves.
    params = snapshot(model, nnx.Param)
    step(model, optimizer, train_whiten_bias=False)
    after = snapshot(model, nnx.Param)
    for name, before in params.items():
        moved = not np.array_equal(after[name], before)
        assert moved == (name != "['whiten']['bias']"), name


def test_steps_on_a_fixed_batch_lower_the_loss(airbench_setup):
    fresh, step = airbench_setup
    model, optimizer = fresh()
    losses = [step(model, optimizer) for _ in range(8)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.95 * losses[0], losses


def test_lookahead_averages_and_copies_back():
    model = models.build_model("simple_cnn")
    cfg = config.make_config("simple_cnn", lookahead_decay=0.9)
    start = snapshot(model, nnx.Param)
    # Before start_epochs, or off the every-5-steps grid: nothing happens.
    assert loop.maybe_lookahead(model, None, cfg, 2, 5, 10) is None
    assert loop.maybe_lookahead(model, None, cfg, 3, 6, 10) is None
    lookahead = loop.maybe_lookahead(model, None, cfg, 3, 5, 10)  # starts the average
    np.testing.assert_array_equal(lookahead["conv1"]["weight"], start["['conv1']['weight']"])
    model.conv1.weight[...] = model.conv1.weight[...] + 1.0
    lookahead = loop.maybe_lookahead(model, lookahead, cfg, 3, 10, 10)  # decay 0.9**5 * 1**3
    decay = 0.9**5
    expected = start["['conv1']['weight']"] + (1 - decay) * 1.0
    np.testing.assert_allclose(lookahead["conv1"]["weight"], expected, atol=1e-6)
    np.testing.assert_allclose(model.conv1.weight[...], expected, atol=1e-6)  # copied back
    assert (
        loop.maybe_lookahead(model, lookahead, replace(cfg, lookahead_decay=0.0), 3, 10, 10)
        is lookahead
    )


def test_lookahead_leaves_integer_statistics_alone():
    class Counted(nnx.Module):  # a parameter and a BatchNorm-style integer counter
        def __init__(self):
            self.w = nnx.Param(jnp.zeros(3))
            self.count = nnx.BatchStat(jnp.array(5, jnp.int32))

    model, cfg = Counted(), config.make_config("simple_cnn", lookahead_decay=0.9)
    lookahead = loop.maybe_lookahead(model, None, cfg, 3, 5, 10)
    model.w[...] = jnp.ones(3)
    model.count[...] = jnp.array(7, jnp.int32)
    loop.maybe_lookahead(model, lookahead, cfg, 3, 10, 10)
    np.testing.assert_allclose(model.w[...], 1 - 0.9**5, rtol=1e-6)  # averaged
    assert model.count[...].dtype == jnp.int32 and int(model.count[...]) == 7  # the model's


# ---------------------------------------------------------------------------- progress


def test_evaluate_reports_progress_per_batch():
    model = models.build_model("simple_cnn")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, 5)
    seen = []
    plain, tta, predictions = loop.evaluate(model, images, labels, False, batch_size=2,
                                            progress=seen.append)  # fmt: skip
    assert seen == [2, 2, 1]
    assert plain == tta == float(np.mean(predictions == labels))


def test_progress_eta_covers_the_rest_of_the_run(monkeypatch):
    clock = iter([0.0, 5.0, 6.0, 7.0, 100.0, 100.5, 101.0])  # start, updates, ...
    monkeypatch.setattr(report.time, "perf_counter", lambda: next(clock))
    progress = report.Progress(False, train_left=1000, eval_left=600)
    progress.start("train", "epoch 1/2", 1000)
    progress.update(100)  # includes compiling: no rate yet
    assert progress.eta() is None
    progress.update(100)  # 1 s for 100 images
    assert progress.eta() == pytest.approx(800 * 0.01 + 600 * 0.01 / 3)
    progress.update(100)
    progress.start("eval", "test 1/2", 300, weight=2)  # TTA-like: an image counts twice
    progress.update(100)  # compiles
    progress.update(100)  # 0.5 s for 200 plain images
    assert progress.eta() == pytest.approx(700 * 0.01 + 200 * 0.0025)
    progress.close()


# ---------------------------------------------------------------------------- command line


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cifar10.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ["--data-dir", "--model", "--epochs", "--batch-size", "--lr", "--seed",
                 "--out-dir", "--resume", "--train-limit", "--test-limit", "--no-tta",
                 "--optimizer", "--lookahead-decay", "--no-plots", "--set"]:  # fmt: skip
        assert flag in out
    assert "airbench94" in out and "resnet18" in out and "simple_cnn" in out
    text = " ".join(out.split())  # help lines are wrapped
    assert "(default: None)" not in text and "(default: [])" not in text
    assert "(default: the recipe's) (default" not in text
    assert "--model {airbench94,resnet18,vgg11,vgg13,simple_cnn} the network" in text
    assert "--seed SEED initialisation" in text
    assert "eval_subset" in text and "translate" in text  # the settings --set takes


def test_set_overrides_settings_and_rejects_unknown_ones(capsys):
    args = cifar10.parse_args(["--set", "translate=0", "--set", "flip=false", "--lr", "3"])
    cfg = args.config
    assert (cfg.translate, cfg.flip, cfg.lr, cfg.model) == (0, False, 3.0, "airbench94")
    assert cifar10.parse_args(["--no-tta"]).config.tta is False
    assert cifar10.parse_args(["--set", "data_format=NHWC"]).config.data_format == "NHWC"
    assert cifar10.parse_args([]).config.data_format == "NCHW"
    adamw = cifar10.parse_args(["--model", "simple_cnn", "--optimizer", "adamw"]).config
    assert (adamw.lr, adamw.weight_decay) == (2e-3, 5e-4)
    for bad, message in [("nonsense=1", "unknown setting 'nonsense'"),
                         ("translate=two", "translate takes a int"),
                         ("translate", "NAME=VALUE"),
                         ("ema=0", "'ema' is now called 'lookahead_decay'")]:  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            cifar10.parse_args(["--set", bad])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err


def test_settings_saved_under_an_earlier_name_are_read():
    """A checkpoint's config from before a rename (``ema``) resumes with the new name."""
    saved = config.make_config("simple_cnn").to_dict()
    del saved["lookahead_decay"]
    saved["ema"] = 0.5
    assert config.Config.from_dict(saved) == config.make_config("simple_cnn", lookahead_decay=0.5)


def test_runs_saved_before_the_layout_setting_resume_in_nchw():
    """Runs saved configs before the layout setting existed: those resume in the NCHW they
    ran in; a saved setting is kept as saved."""
    saved = config.make_config("airbench94").to_dict()
    assert saved.pop("data_format") == "NCHW"
    assert config.Config.from_dict(saved).data_format == "NCHW"
    assert config.Config.from_dict({**saved, "data_format": "NHWC"}).data_format == "NHWC"


def test_missing_data_without_network_is_one_line_and_creates_nothing(
    tmp_path, monkeypatch, capsys
):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    empty = tmp_path / "empty"
    empty.mkdir()
    for data_dir in (tmp_path / "missing" / "data", empty):
        out_dir = tmp_path / f"run-{data_dir.name}"
        code = cifar10.main(["--data-dir", str(data_dir), "--out-dir", str(out_dir)])
        err = capsys.readouterr().err
        assert code == 2
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith("error: CIFAR-10 data was not found at")
        assert str(data_dir) in err and data.URL in err and "no network" in err
        assert not out_dir.exists()
    assert not (tmp_path / "missing").exists()
    assert list(empty.iterdir()) == []


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_tiny_cifar(tmp_path_factory.mktemp("cifar"), n_train=640, n_test=100)


def tiny_args(data_dir, out_dir, *extra):
    return [
        "--data-dir", str(data_dir), "--out-dir", str(out_dir), "--model", "simple_cnn",
        "--batch-size", "32", "--epochs", "3", "--test-limit", "100", "--seed", "7",
        "--no-progress", "--set", "eval_subset=40", *extra,
    ]  # fmt: skip


def finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def load_checkpoint(out_dir: Path, step: int) -> dict:
    """The arrays of checkpoint ``step`` by path, read without a target structure."""
    path = (out_dir / "checkpoints" / str(step) / "state").absolute()
    with warnings.catch_warnings(), ocp.PyTreeCheckpointer() as checkpointer:
        warnings.filterwarnings("ignore", "Sharding info not provided")
        state = checkpointer.restore(path)
    return {
        jax.tree_util.keystr(p): np.asarray(x)
        for p, x in jax.tree_util.tree_leaves_with_path(state)
    }


def strip_times(path: Path) -> list[dict]:
    """The records of ``metrics.jsonl`` without their timings."""
    return [
        {k: v for k, v in json.loads(line).items() if not k.endswith("_s")}
        for line in path.read_text().splitlines()
    ]


def assert_same_run(run_dir: Path, ref_dir: Path, step: int = 3) -> None:
    """Same final arrays, bit for bit, and the same metrics history (timings aside)."""
    ref_state, state = load_checkpoint(ref_dir, step), load_checkpoint(run_dir, step)
    assert ref_state.keys() == state.keys() and len(state) > 10
    for name in ref_state:
        np.testing.assert_array_equal(state[name], ref_state[name], err_msg=name)
    assert strip_times(run_dir / "metrics.jsonl") == strip_times(ref_dir / "metrics.jsonl")


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory, jax_cache):
    """An uninterrupted 3-epoch run, started once for the tests below (in the background)."""
    ref_dir = tmp_path_factory.mktemp("reference") / "run"
    proc = start_cli(tiny_args(tiny_data, ref_dir), make_cli_env(jax_cache))
    done = {}

    def wait():
        if not done:
            done["result"] = finish(proc)
            code, _, err = done["result"]
            assert code == 0, err
        return ref_dir, done["result"][1]

    yield wait
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def test_resume_after_kill_matches_uninterrupted_run(reference, tiny_data, tmp_path, cli_env,
                                                     capsys):  # fmt: skip
    run_dir = tmp_path / "resumed"
    victim = start_cli(tiny_args(tiny_data, run_dir), cli_env)  # beside the reference: 2 cores
    first = run_dir / "checkpoints" / "1"
    deadline = time.monotonic() + 240
    while not first.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert first.exists(), finish(victim)
    os.kill(victim.pid, signal.SIGKILL)
    code, _, _ = finish(victim)
    assert code == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (run_dir / "summary.json").exists()

    resumed = start_cli(tiny_args(tiny_data, run_dir, "--resume"), cli_env)
    code, out, err = finish(resumed)
    assert code == 0, err
    assert "resumed from" in err
    ref_dir, ref_out = reference()

    # Same final parameters, optimiser state and lookahead state, bit for bit; same metrics.
    assert_same_run(run_dir, ref_dir)
    ref_summary = json.loads((ref_dir / "summary.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test_accuracy"] == ref_summary["test_accuracy"]

    # The reference run's outputs.
    assert sorted(p.name for p in (ref_dir / "checkpoints").iterdir() if p.is_dir()) == [
        "2", "3"
    ]  # max 2  # fmt: skip
    records = strip_times(ref_dir / "metrics.jsonl")
    # Each epoch but the last scores the fixed subset; the last, all test images.
    assert [r["test_images"] for r in records] == [40, 40, 100]
    for key in ["test_accuracy", "test_accuracy_no_tta", "wall_time_s", "epochs", "model",
                "seed", "batch_size", "train_images", "images_per_second"]:  # fmt: skip
        assert key in ref_summary, key
    assert ref_summary["model"] == "simple_cnn" and ref_summary["seed"] == 7
    assert ref_summary["train_images"] == 640 and ref_summary["batch_size"] == 32
    assert 0 <= ref_summary["test_accuracy"] <= 1 and ref_summary["tta"] is True
    assert ref_summary["test_accuracy"] == records[-1]["test_acc_tta"]
    assert ref_summary["test_accuracy_no_tta"] == records[-1]["test_acc"]
    assert ref_summary["test_accuracy"] > 0.2  # the synthetic classes are learnable
    assert ref_summary["config"]["eval_subset"] == 40 and ref_summary["config"]["translate"] == 2
    for png in ["curves.png", "filters.png", "confusion.png"]:
        assert (ref_dir / png).stat().st_size > 1000
    lines = ref_out.splitlines()
    assert lines[-1].startswith(f"test accuracy {100 * ref_summary['test_accuracy']:.2f}%")
    assert "config: model=simple_cnn" in ref_out and "eval_subset=40" in ref_out
    assert "train_acc%" in ref_out and "test_acc%" in ref_out and "test_imgs" in ref_out
    row = next(line for line in lines if line.startswith("|          3 |"))
    acc = float(row.split("|")[4])  # in percent, like the last line
    assert acc == pytest.approx(100 * ref_summary["test_accuracy_no_tta"], abs=0.006)
    lr = float(row.split("|")[6])  # the recipe's units: lr 4.0 per 1024 times the multiplier
    assert lr == pytest.approx(4.0 * float(loop.lr_multiplier(config.Config(), 60)(59)), 1e-3)
    assert float(f"{records[-1]['lr']:.4g}") == lr  # metrics.jsonl: the same lr, same unit

    # Resuming with different settings is refused, naming what changed.
    assert cifar10.main(tiny_args(tiny_data, run_dir, "--resume", "--lr", "1.0")) == 2
    assert "lr: 4.0 -> 1.0" in capsys.readouterr().err
    assert cifar10.main(tiny_args(tiny_data, run_dir, "--resume", "--set", "translate=0")) == 2
    assert "translate: 2 -> 0" in capsys.readouterr().err
    # Extending a run is refused, saying why.
    assert cifar10.main(tiny_args(tiny_data, run_dir, "--resume", "--epochs", "5")) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "--epochs 5.0, but the run was started with 3" in err and "schedule" in err

    # Resuming a finished run says so, and neither trains nor rewrites anything.
    before = {p: p.stat().st_mtime_ns for p in ref_dir.rglob("*") if p.is_file()}
    assert cifar10.main(tiny_args(tiny_data, ref_dir, "--resume")) == 0
    captured = capsys.readouterr()
    assert "is complete (3 epochs)" in captured.err and "summary.json" in captured.err
    after = {p: p.stat().st_mtime_ns for p in ref_dir.rglob("*") if p.is_file()}
    assert after.keys() == before.keys()
    assert {p for p in after if after[p] != before[p]} <= {ref_dir / "metrics.jsonl"}


def damage(path: Path, how: str) -> None:
    if how == "deleted":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_resume_from_a_damaged_checkpoint_falls_back_to_the_previous(
    reference, tiny_data, tmp_path, cli_env, capsys
):
    ref_dir, _ = reference()
    run_dir = tmp_path / "run"
    shutil.copytree(ref_dir, run_dir)
    (run_dir / "summary.json").unlink()
    biggest = max((run_dir / "checkpoints" / "3").rglob("*"), key=lambda p: p.stat().st_size)
    damage(biggest, "deleted")
    (run_dir / "checkpoints" / "4.orbax-checkpoint-tmp-1").mkdir()  # a killed write

    code, out, err = finish(start_cli(tiny_args(tiny_data, run_dir, "--resume"), cli_env))
    assert code == 0, err
    assert "Traceback" not in err
    assert "4.orbax-checkpoint-tmp-1, a checkpoint whose write was interrupted" in err
    assert f"checkpoint 3 in {run_dir / 'checkpoints'} is damaged" in err
    assert f"resumed from {run_dir / 'checkpoints' / '2'}" in err
    assert_same_run(run_dir, ref_dir)  # epoch 3 trained again, exactly as before

    # Every checkpoint damaged: a clear stop, nothing deleted, no restart from scratch.
    for step in (2, 3):
        damage((run_dir / "checkpoints" / str(step) / "meta" / "metadata"), "truncated")
    (run_dir / "summary.json").unlink()
    assert cifar10.main(tiny_args(tiny_data, run_dir, "--resume")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"error: no readable checkpoint in {run_dir / 'checkpoints'} (tried 3, 2)" in err
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir()) == ["2", "3"]
    # The same without the file records (checkpoints of older runs): orbax's errors, caught.
    for record in (run_dir / "checkpoints").glob("*.files.json"):
        record.unlink()
    assert cifar10.main(tiny_args(tiny_data, run_dir, "--resume")) == 2
    err = capsys.readouterr().err
    assert "its record is unreadable: JSONDecodeError" in err and "no readable checkpoint" in err


def test_refuses_to_overwrite_and_checks_resume_settings(tiny_data, tmp_path, capsys):
    out_dir = tmp_path / "run"
    (out_dir / "checkpoints" / "1").mkdir(parents=True)
    assert cifar10.main(tiny_args(tiny_data, out_dir)) == 2
    assert "--resume" in capsys.readouterr().err


def test_nan_loss_stops_with_message_and_keeps_the_last_good_checkpoint(
    tiny_data, tmp_path, cli_env
):
    # The schedule holds the lr at 0 through epoch 1, then a huge lr blows up epoch 2.
    out_dir = tmp_path / "nan"
    schedule = ["--set", "lr_start=0", "--set", "lr_peak=0", "--set", "lr_end=1",
                "--set", "lr_peak_at=0.5"]  # fmt: skip
    args = tiny_args(tiny_data, out_dir, "--lr", "1e30", "--epochs", "2", "--no-plots", *schedule)
    code, out, err = finish(start_cli(args, cli_env))
    assert code == run.NAN_EXIT_CODE, (out, err)
    assert "non-finite loss" in err and "epoch 2, step" in err and "--lr" in err
    assert f"last good checkpoint: epoch 1 in {out_dir / 'checkpoints'}" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in (out_dir / "checkpoints").iterdir() if p.is_dir()) == ["1"]
    assert len((out_dir / "metrics.jsonl").read_text().splitlines()) == 1
    assert not (out_dir / "summary.json").exists()


def interrupt_after_header(args, env, signals=1):
    """Starts the CLI, sends SIGINT ``signals`` times once its header is printed (it is then
    tracing and compiling its first step) and returns ``(exit status, stdout, stderr)``."""
    proc = start_cli(args, env)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("columns:"):
            for _ in range(signals):
                os.kill(proc.pid, signal.SIGINT)
                time.sleep(0.5)
            break
    code, out, err = finish(proc)
    return code, "".join(lines) + out, err


def test_sigint_saves_mid_epoch_and_bare_resume_matches_uninterrupted_run(
    reference, tiny_data, tmp_path, cli_env
):
    run_dir = tmp_path / "interrupted"
    code, _, err = interrupt_after_header(tiny_args(tiny_data, run_dir), cli_env)
    assert code == 128 + signal.SIGINT, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted in epoch 1 after step "), err  # mid-epoch
    resume = f"python -m train.cifar10 --resume --out-dir {run_dir} --data-dir {tiny_data}"
    assert last.endswith(f"continue with: {resume}")
    saved = [p.name for p in (run_dir / "checkpoints" / "interrupted").iterdir() if p.is_dir()]
    assert len(saved) == 1 and 0 < int(saved[0]) < 20, saved  # global step, inside epoch 1
    assert f"saved {run_dir / 'checkpoints' / 'interrupted' / saved[0]};" in last

    # --resume alone takes the settings saved with the checkpoint (3 epochs of simple_cnn,
    # batch 32, seed 7, ... : none of them repeated here).
    code, out, err = finish(start_cli(resume.split()[3:] + ["--no-progress"], cli_env))
    assert code == 0, err
    assert f"resumed from {run_dir / 'checkpoints' / 'interrupted' / saved[0]}" in err
    assert "config: model=simple_cnn seed=7 epochs=3.0 batch_size=32" in out
    ref_dir, _ = reference()
    assert_same_run(run_dir, ref_dir)  # bit for bit, the partial epoch's loss sums included
    assert not (run_dir / "checkpoints" / "interrupted").exists()  # superseded by epoch 1


def test_second_sigint_quits_at_once_without_saving(tiny_data, tmp_path, cli_env):
    run_dir = tmp_path / "quit"
    code, _, err = interrupt_after_header(tiny_args(tiny_data, run_dir), cli_env, signals=2)
    assert code == 128 + signal.SIGINT, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "second interrupt: quitting now, without saving"
    interrupted = run_dir / "checkpoints" / "interrupted"
    assert not interrupted.exists() or not any(p.name.isdigit() for p in interrupted.iterdir())


BAD_VALUES = [
    (["--lr", "-1"], "lr must be > 0, got -1.0"),
    (["--lr", "0"], "lr must be > 0, got 0.0"),
    (["--lr", "nan"], "lr must be > 0, got nan"),
    (["--set", "label_smoothing=1"], "label_smoothing must be in [0, 1), got 1.0"),
    (["--weight-decay", "-0.1"], "weight_decay must be >= 0, got -0.1"),
    (["--batch-size", "0"], "batch_size must be >= 1, got 0"),
    (["--epochs", "0"], "epochs must be > 0, got 0.0"),
    (["--epochs", "-2"], "epochs must be > 0, got -2.0"),
    (["--set", "momentum=1"], "momentum must be in [0, 1), got 1.0"),
    (["--lookahead-decay", "1"], "lookahead_decay must be in [0, 1), got 1.0"),
    (["--train-limit", "0"], "train_limit must be >= 1, got 0"),
    (["--set", "data_format=NCWH"], "data_format must be 'NCHW' or 'NHWC', got 'NCWH'"),
    (["--set", "lr_start=0", "--set", "lr_peak=0", "--set", "lr_end=0"], "all 0"),
]


@pytest.mark.parametrize("flags, message", BAD_VALUES, ids=[" ".join(f) for f, _ in BAD_VALUES])
def test_values_that_cannot_train_are_refused_in_one_line(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cifar10.main(["--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "run"), *flags])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_bad_value_from_the_shell_is_one_line_without_traceback(tmp_path, cli_env):
    args = ["--lr", "-1", "--out-dir", str(tmp_path / "run")]
    code, out, err = finish(start_cli(args, cli_env))
    assert code == 2
    assert err == "error: lr must be > 0, got -1.0 (see python -m train.cifar10 --help)\n"
    assert out == "" and not (tmp_path / "run").exists()


def real_data_dir():
    path = os.environ.get(DATA_DIR_ENV)
    if not path:
        return None
    root = Path(path)
    return root if (root / "cifar-10-batches-bin").is_dir() or root.name.endswith("bin") else None


@pytest.mark.skipif(
    real_data_dir() is None,
    reason=f"real CIFAR-10 not found: set {DATA_DIR_ENV} to the folder holding "
    f"cifar-10-batches-bin/ (default location {default_data_dir()} is not used by tests)",
)
def test_quick_run_learns(tmp_path, cli_env):
    """The README's quick run (``--quick``): about a minute on 2 CPU cores."""
    out_dir = tmp_path / "quick"
    args = ["--quick", "--data-dir", str(real_data_dir()), "--out-dir", str(out_dir),
            "--no-progress"]  # fmt: skip
    code, out, err = finish(start_cli(args, cli_env), timeout=600)
    assert code == 0, err
    summary = json.loads((out_dir / "summary.json").read_text())
    assert (summary["model"], summary["epochs"], summary["tta"]) == ("simple_cnn", 3, False)
    assert summary["train_images"] == 10000 and summary["test_images"] == 2000
    assert summary["test_accuracy"] > 0.25, summary  # chance: 0.10; it reaches about 0.6
    records = strip_times(out_dir / "metrics.jsonl")
    assert records[-1]["train_loss"] < records[0]["train_loss"] < 2.3  # log(10) = 2.303
    assert out.splitlines()[-1].startswith(f"test accuracy {100 * summary['test_accuracy']:.2f}%")
