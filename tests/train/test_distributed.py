"""Scaling out: data parallelism over simulated CPU devices, two processes, bfloat16.

The multi-device runs are subprocesses with ``--xla_force_host_platform_device_count``
(the pytest process has already fixed its own device count). They are all started at
once by the module fixture, so that they compile concurrently, and each test waits for
the ones it reads.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from tests.train.conftest import REPO, write_tiny_cifar
from train import cifar10, models
from train.data import DATA_DIR_ENV

STEPS, BATCH = 3, 32


def gloo_available() -> bool:
    try:
        from jax._src.lib import _jax
    except ImportError:
        return False
    return hasattr(_jax, "make_gloo_tcp_collectives")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def env_with_devices(jax_cache: Path, devices: int) -> dict:
    env = dict(os.environ)
    flags = f"--xla_backend_optimization_level=1 --xla_force_host_platform_device_count={devices}"
    env.update(
        JAX_COMPILATION_CACHE_DIR=str(jax_cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=(env.get("XLA_FLAGS", "") + " " + flags).strip(),
        PYTHONPATH=str(REPO),
    )
    env.pop(DATA_DIR_ENV, None)
    return env


def start(command: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


class Process:
    """A started subprocess; ``result()`` waits once and returns ``(code, out, err)``."""

    def __init__(self, proc: subprocess.Popen, out_dir: Path | None = None):
        self.proc, self.out_dir, self._result = proc, out_dir, None

    def result(self, timeout: float = 240):
        if self._result is None:
            try:
                out, err = self.proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, err = self.proc.communicate()
            self._result = (self.proc.returncode, out, err)
        return self._result

    def ok(self):
        code, out, err = self.result()
        assert code == 0, f"exit {code}\n{out}\n{err[-3000:]}"
        return out, err


# A tiny BatchNorm network trained by the CLI's own train step, on 1 and on 4 devices; and
# one BatchNorm forward pass on a batch whose quarters differ, checked against the global
# statistics and the per-device ("ghost") ones.
BN_SCRIPT = r"""
import json, jax, jax.numpy as jnp, numpy as np, optax
from flax import nnx
from jspatial.layers import BatchNorm2d, Conv2d, Flatten
from train import config, distributed, loop

B = 16
class Tiny(nnx.Module):
    def __init__(self, rngs):
        self.conv = Conv2d(3, 4, 3, padding=1, rngs=rngs)
        self.norm = BatchNorm2d(4)
        self.flatten = Flatten()
        self.head = nnx.Linear(4 * 32 * 32, 10, rngs=rngs)
    def __call__(self, x):
        return self.head(self.flatten(nnx.relu(self.norm(self.conv(x)))))

rng = np.random.default_rng(0)
brighter = 12 * np.arange(B)[:, None, None, None]  # each quarter of the batch brighter
images = (rng.integers(0, 64, (B, 3, 32, 32)) + brighter).astype(np.uint8)
labels = rng.integers(0, 10, B).astype(np.int32)
flips = rng.integers(0, 2, B).astype(bool)
out = {}
for n in (1, 4):
    mesh = distributed.make_mesh(n)
    rep = distributed.replicated(mesh)
    model = Tiny(nnx.Rngs(0))
    distributed.replicate(model, mesh)
    optimizer = nnx.Optimizer(model, optax.sgd(1e-3, momentum=0.9), wrt=nnx.Param)
    distributed.replicate(optimizer, mesh)
    step = loop.make_train_step(config.make_config(label_smoothing=0.1, data_format="NCHW"), B)
    train = loop.TrainSet(*(distributed.put(a, rep) for a in (images, labels, flips)))
    order = np.arange(B, dtype=np.int32)[None]
    perm = distributed.put(order, distributed.batch_sharding(mesh, 2, 1))
    key = distributed.put(jax.random.key(1, impl="rbg"), rep)
    losses = []
    for s in range(3):
        metrics = {"loss": distributed.put(np.zeros((), np.float32), rep),
                   "correct": distributed.put(np.zeros((), np.int32), rep)}
        _, loss = step(model, optimizer, metrics, loop.StepInputs(train, perm, key, s, 0, True))
        losses.append(float(loss))
    state = nnx.to_pure_dict(nnx.state(model))
    out[n] = {"losses": losses, "state": jax.tree.map(lambda x: np.asarray(x).tolist(), state)}

# One forward pass in training mode on a batch split over 4 devices.
mesh = distributed.make_mesh(4)
norm = BatchNorm2d(3, momentum=1.0)  # running stats := this batch's statistics
distributed.replicate(norm, mesh)
x = images.astype(np.float32) / 255
forward = nnx.jit(lambda m, x: m(x))
forward(norm, distributed.put(x, distributed.batch_sharding(mesh, 4)))
out["bn_running_mean"] = np.asarray(norm.running_mean[...]).tolist()
out["global_mean"] = x.mean(axis=(0, 2, 3)).tolist()
out["device0_mean"] = x[: B // 4].mean(axis=(0, 2, 3)).tolist()
out["sharding"] = str(distributed.batch_sharding(mesh, 4))
print("RESULT " + json.dumps(out))
"""


def cli(data_dir: Path, out_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "train.cifar10", "--data-dir", str(data_dir),
        "--out-dir", str(out_dir), "--model", "simple_cnn", "--batch-size", str(BATCH),
        "--train-limit", str(STEPS * BATCH), "--epochs", "1", "--test-limit", "40",
        "--seed", "3", "--no-tta", "--no-plots", "--no-progress", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory, jax_cache):
    """Every subprocess of this module, started together."""
    root = tmp_path_factory.mktemp("distributed")
    data_dir = write_tiny_cifar(root / "data", n_train=STEPS * BATCH + 4, n_test=40)
    four = env_with_devices(jax_cache, 4)
    started = {
        "one": Process(start(cli(data_dir, root / "one", "--devices", "1"), four), root / "one"),
        "four": Process(start(cli(data_dir, root / "four"), four), root / "four"),
        "four_2ep": Process(
            start(cli(data_dir, root / "four_2ep", "--epochs", "2"), four), root / "four_2ep"
        ),  # fmt: skip
        "bf16": Process(
            start(cli(data_dir, root / "bf16", "--dtype", "bfloat16"), four), root / "bf16"
        ),
        "indivisible": Process(start(cli(data_dir, root / "bad", "--batch-size", "30"), four)),
        "bn": Process(start([sys.executable, "-c", BN_SCRIPT], four)),
    }
    if gloo_available():
        port, two = free_port(), env_with_devices(jax_cache, 2)
        for i in range(2):
            multi = ["--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id"]
            command = cli(data_dir, root / "two", *multi, str(i))
            started[f"process{i}"] = Process(start(command, two), root / "two")
    yield started
    for run in started.values():
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.communicate()


def load_checkpoint(out_dir: Path, step: int = 1) -> dict:
    """The arrays of checkpoint ``step`` as NumPy arrays, whatever devices wrote them."""
    path = (out_dir / "checkpoints" / str(step) / "state").absolute()
    with warnings.catch_warnings(), ocp.PyTreeCheckpointer() as checkpointer:
        warnings.filterwarnings("ignore", "Sharding info not provided")
        tree = checkpointer.metadata(path).item_metadata.tree
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        state = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
    return {
        jax.tree_util.keystr(p): np.asarray(x)
        for p, x in jax.tree_util.tree_leaves_with_path(state)
    }


def assert_same_params(state, reference, steps=STEPS, atol=1e-5):
    names = [k for k in reference if k.startswith("['model']")]
    assert names and state.keys() == reference.keys()
    for name in names:
        np.testing.assert_allclose(state[name], reference[name], atol=atol, rtol=0, err_msg=name)
    assert state["['optimizer']['step']"] == steps


def summary(run: Process) -> dict:
    return json.loads((run.out_dir / "summary.json").read_text())


def train_loss(run: Process) -> float:
    return json.loads((run.out_dir / "metrics.jsonl").read_text().splitlines()[-1])["train_loss"]


# ---------------------------------------------------------------------------- one host


def test_four_devices_train_as_one(runs):
    runs["one"].ok()
    out, _ = runs["four"].ok()
    assert "on 4 cpu device(s)" in out
    assert summary(runs["four"])["devices"] == 4 and summary(runs["one"])["devices"] == 1
    one, four = load_checkpoint(runs["one"].out_dir), load_checkpoint(runs["four"].out_dir)
    assert_same_params(four, one)
    diff = max(float(np.max(np.abs(four[k] - one[k]))) for k in one if k.startswith("['model']"))
    print(f"4 devices vs 1: largest parameter difference {diff:.2e}")
    assert train_loss(runs["four"]) == pytest.approx(train_loss(runs["one"]), rel=1e-5)


def test_checkpoint_from_four_devices_resumes_on_one(runs, tmp_path, jax_cache):
    """Epoch 1 saved on 4 devices, epoch 2 trained on 1: the run ends as the uninterrupted
    4-device one, up to the order of float summation."""
    runs["four_2ep"].ok()
    reference = runs["four_2ep"].out_dir
    resumed = tmp_path / "resumed"
    shutil.copytree(reference, resumed)
    shutil.rmtree(resumed / "checkpoints" / "2")  # as if stopped after epoch 1
    (resumed / "summary.json").unlink()
    command = cli(reference.parent / "data", resumed, "--epochs", "2", "--resume", "--devices", "1")
    run = Process(start(command, env_with_devices(jax_cache, 4)), resumed)
    out, err = run.ok()
    assert f"resumed from {resumed / 'checkpoints' / '1'}" in err and "1 cpu device(s)" in out
    assert summary(run)["devices"] == 1 and summary(runs["four_2ep"])["devices"] == 4
    assert_same_params(load_checkpoint(resumed, 2), load_checkpoint(reference, 2), 2 * STEPS)
    ends = [json.loads((d / "metrics.jsonl").read_text().splitlines()[-1]) for d in
            (resumed, reference)]  # fmt: skip
    assert ends[0]["train_loss"] == pytest.approx(ends[1]["train_loss"], rel=1e-5)
    assert ends[0]["test_acc"] == pytest.approx(ends[1]["test_acc"], abs=1 / 40)  # 1 image


def test_batch_norm_uses_the_global_batch(runs):
    code, out, err = runs["bn"].result()
    assert code == 0, err[-3000:]
    result = json.loads(out.split("RESULT ", 1)[1])
    # The CLI's train step on a BatchNorm network: 4 devices = 1 device.
    np.testing.assert_allclose(result["4"]["losses"], result["1"]["losses"], rtol=1e-6)
    one, four = (jax.tree_util.tree_leaves_with_path(result[n]["state"]) for n in ("1", "4"))
    for (path, a), (_, b) in zip(one, four, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-5, err_msg=jax.tree_util.keystr(path))
    # The statistics are the whole batch's, not each device's slice's.
    assert "'data'" in result["sharding"]
    np.testing.assert_allclose(result["bn_running_mean"], result["global_mean"], rtol=1e-5)
    assert not np.allclose(result["bn_running_mean"], result["device0_mean"], rtol=1e-2)


def test_batch_size_must_divide_by_devices(runs, tmp_path, capsys):
    code, _, err = runs["indivisible"].result()
    assert code == 2 and "must divide by the number of devices (4)" in err
    # More devices than this process has (the pytest process: its own device count).
    too_many = str(jax.local_device_count() + 1)
    args = ["--out-dir", str(tmp_path / "run"), "--devices", too_many]
    assert cifar10.main(args) == 2
    assert f"--devices {too_many}" in capsys.readouterr().err


def test_multi_host_flags_are_checked():
    for bad in (
        ["--coordinator", "localhost:1234"],
        ["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"],
        ["--distributed", "auto", "--coordinator", "h:1", "--num-processes", "2",
         "--process-id", "0"],
    ):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            cifar10.parse_args(bad)
        assert exc.value.code == 2


# ---------------------------------------------------------------------------- two hosts


@pytest.mark.skipif(not gloo_available(), reason="this jaxlib has no gloo CPU collectives")
def test_two_processes_train_as_one(runs):
    (out0, err0), (out1, err1) = runs["process0"].ok(), runs["process1"].ok()
    checksums = [re.search(r"process (\d)/2: parameter checksum (\w+)", e) for e in (err0, err1)]
    assert all(checksums), (err0[-2000:], err1[-2000:])
    assert [m.group(1) for m in checksums] == ["0", "1"]
    assert checksums[0].group(2) == checksums[1].group(2)  # bit-identical replicas
    # Only process 0 logs and writes; process 1 trains silently.
    assert "train_loss" in out0 and "on 4 cpu device(s) in 2 processes" in out0
    assert "train_loss" not in out1 and "test accuracy" not in out1
    assert summary(runs["process0"])["processes"] == 2
    assert len((runs["process0"].out_dir / "metrics.jsonl").read_text().splitlines()) == 1
    # The checkpoint orbax wrote from both processes: the single-device run's parameters.
    runs["one"].ok()
    assert_same_params(
        load_checkpoint(runs["process0"].out_dir), load_checkpoint(runs["one"].out_dir)
    )


# ---------------------------------------------------------------------------- bfloat16


def test_bfloat16_loss_is_close_to_float32(runs):
    runs["one"].ok()
    out, _ = runs["bf16"].ok()
    assert "bfloat16 on 4 cpu device(s)" in out
    f32, bf16 = train_loss(runs["one"]), train_loss(runs["bf16"])
    print(f"train loss over {STEPS} steps: float32 {f32:.5f}, bfloat16 {bf16:.5f}")
    assert bf16 == pytest.approx(f32, rel=2e-2)
    state = load_checkpoint(runs["bf16"].out_dir)
    floats = {k: v.dtype for k, v in state.items() if np.issubdtype(v.dtype, np.floating)}
    assert floats and all(dtype == np.float32 for dtype in floats.values()), floats
    assert summary(runs["bf16"])["dtype"] == "bfloat16"


def test_bfloat16_layers_compute_in_bfloat16_and_keep_float32_state():
    rngs = nnx.Rngs(jax.random.key(0, impl="rbg"))
    group = models.ConvGroup(3, 8, bn_momentum=0.4, bn_eps=1e-12, rngs=rngs, dtype=jnp.bfloat16)
    x = jnp.linspace(-1, 1, 4 * 3 * 8 * 8).reshape(4, 3, 8, 8)
    y = nnx.jit(lambda group, x: group(x))(group, x)
    assert y.dtype == jnp.bfloat16
    state = nnx.state(group)
    floats = {v.dtype for v in jax.tree.leaves(state) if jnp.issubdtype(v.dtype, jnp.floating)}
    assert floats == {jnp.dtype(jnp.float32)}
    assert float(jnp.abs(group.norm1.running_mean[...]).sum()) > 0  # updated, in float32
    for name in models.MODELS:  # every model threads the dtype to every layer
        model = nnx.eval_shape(functools.partial(models.build_model, name, dtype=jnp.bfloat16))
        layers = [m for _, m in nnx.iter_modules(model) if hasattr(m, "dtype")]
        assert layers and all(m.dtype == jnp.bfloat16 for m in layers), name
