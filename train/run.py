"""One training run of ``python -m train.cifar10``, in four phases.

:func:`setup` (devices, data, model, optimiser), :func:`restore_or_start` (the latest good
checkpoint with ``--resume``), :func:`train_epoch` (steps, evaluation, checkpoint, log)
once per epoch, and :func:`finish` (summary and plots). A phase that cannot go on raises
:class:`Stop` with a one-line reason and the exit status. A run is one :class:`Run`: what
:func:`setup` builds, fixed from then on, plus its :class:`State`, the little that changes
as it trains (its position, log, lookahead average and timings).

Ctrl-C or SIGTERM during training (:class:`Interrupt`) lets the current step finish (or
abandons the current evaluation), saves the state under ``checkpoints/interrupted/<global
step>/`` (parameters, optimiser, lookahead average, the epoch's position in its data order and
its running loss sums) and raises :class:`Interrupted`; ``--resume`` continues from there
exactly as if the run had not stopped. A second signal quits at once, without saving. That
checkpoint is deleted once the next epoch's checkpoint is written.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from train import augment, data, distributed, loop, models, report
from train.checkpoint import Checkpointer, step_dir
from train.config import DTYPES, Config, diff

NAN_EXIT_CODE = 3
KEY_IMPL = "rbg"  # XLA's RngBitGenerator: compiles much faster on CPU than threefry
LR_UNIT = "--lr"  # the unit of the lr in the saved metrics: --lr's (see Run.lr_at)
INTERRUPTED = "interrupted"  # checkpoints/<this>/: the checkpoint of a run stopped mid-epoch
LOOKAHEAD_STARTED = "ema_started"  # the record's key: whether a lookahead average is saved


class Stop(Exception):
    """Ends the run early: ``str(stop)`` says why, ``stop.code`` is the exit status."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


class Interrupted(Stop):
    """The run stopped on a signal after saving its state; ``str()`` says how to resume."""


class Interrupt:
    """SIGINT/SIGTERM while training: the first sets :attr:`signum` (the run stops at the
    next step boundary and saves), the second quits the process at once.

    Python runs a signal handler only between bytecodes of the main thread, which may sit
    for minutes inside XLA (compiling, running a step). So the signals are counted by a
    thread woken through ``signal.set_wakeup_fd``, which C writes to as a signal arrives;
    the Python handler only keeps the default ``KeyboardInterrupt`` away.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self.previous = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> None:
        if jax.process_count() > 1:  # the processes would stop at different steps: not here
            return
        read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self.previous = {sig: signal.signal(sig, lambda *_: None) for sig in self.SIGNALS}
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(read_fd,), daemon=True).start()

    def uninstall(self) -> None:
        if self.previous is None:
            return
        signal.set_wakeup_fd(self._previous_fd)
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        os.close(self._write_fd)  # the watcher reads end-of-file and ends
        self.previous = None

    def _watch(self, read_fd: int) -> None:
        with os.fdopen(read_fd, "rb", buffering=0) as pipe:
            while byte := pipe.read(1):
                if self.signum is not None:
                    os.write(2, b"\nsecond interrupt: quitting now, without saving\n")
                    os._exit(128 + byte[0])
                self.signum = byte[0]
                os.write(2, b"\ninterrupt: saving a checkpoint after the current step (press "
                            b"Ctrl-C again to quit at once, without saving)\n")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Options:
    """Where and how a run happens; none of it changes the numbers (not saved)."""

    out_dir: Path
    data_dir: str | None = None
    devices: int | None = None  # per process; None: all local devices
    resume: bool = False
    overwrite: bool = False
    plots: bool = True
    progress: bool = True
    resume_command: str = "python -m train.cifar10 --resume"  # shown when interrupted

    @property
    def ckpt_dir(self) -> Path:
        """``<out_dir>/checkpoints/``: the epoch checkpoints."""
        return self.out_dir / "checkpoints"

    @property
    def interrupted_dir(self) -> Path:
        """``<out_dir>/checkpoints/interrupted/``: the checkpoint of a run stopped mid-epoch."""
        return self.ckpt_dir / INTERRUPTED

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.out_dir / "summary.json"


@dataclasses.dataclass
class State:
    """What a run changes as it goes: its position, its log and its timings.

    Everything here but the predictions, the progress bars and the timings of this process
    is saved with every checkpoint and restored by ``--resume``.
    """

    aug_key: Any  # the run's augmentation key (fold_in(key, 1)), restored as saved
    history: list[dict] = dataclasses.field(default_factory=list)  # one record per epoch
    lookahead: Any = None  # the lookahead average, once started
    epoch0: int = 0  # epochs done before this process started
    # Restored from an interrupted checkpoint: where in epoch ``epoch0`` the run stopped
    # ({"steps_done", "loss", "correct", "epoch_s", "averaged"}); None: at an epoch's start.
    partial: dict | None = None
    elapsed_before: float = 0.0  # seconds spent by the earlier processes of a resumed run
    predictions: np.ndarray | None = None  # of the last full evaluation, for the plots
    bar: report.Progress | None = None  # the progress bars, once the run has started
    first_step_s: float | None = None  # compile + one step, in this process
    steps: int = 0  # steps trained in this process
    train_s: float = 0.0  # seconds of training in this process


@dataclasses.dataclass(frozen=True)
class Run:
    """One run: what :func:`setup` builds, fixed from then on, and its :class:`State`.

    ``model`` and ``optimizer`` are updated in place by the steps (and by a restore).
    """

    cfg: Config
    opts: Options
    start_time: float
    mesh: Any
    data: loop.TrainSet  # on the devices, replicated
    test_images: np.ndarray  # on the host, fed per batch
    test_labels: np.ndarray
    subset: np.ndarray  # indices of the test images scored after every epoch but the last
    class_names: list[str]
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    model: Any
    optimizer: Any
    train_step: Any  # loop.make_train_step's
    checkpointer: Checkpointer
    state: State
    interrupt: Interrupt = dataclasses.field(default_factory=Interrupt)

    @property
    def n_train(self) -> int:
        return len(self.data.labels)

    @property
    def n_epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    @property
    def replicated(self):
        return distributed.replicated(self.mesh)

    @property
    def lr_scale(self) -> float:
        """Optimiser step size -> the recipe's lr units."""
        return loop.kilostep_scale(self.cfg.momentum) if self.cfg.optimizer == "sgd" else 1.0

    def lr_at(self, step: int) -> float:
        """The learning rate of ``step`` in ``--lr``'s units (sgd: per 1024 examples), as
        logged: ``cfg.lr`` times the schedule's multiplier."""
        return self.cfg.lr * float(loop.lr_multiplier(self.cfg, self.total_steps)(step))

    @property
    def steps_before(self) -> int:
        """The steps trained before this process started (restored by ``--resume``)."""
        partial = self.state.partial
        return self.state.epoch0 * self.steps_per_epoch + (partial["steps_done"] if partial else 0)

    def elapsed_s(self) -> float:
        """Seconds since the run started, over all its processes (resumed or not)."""
        return self.state.elapsed_before + time.perf_counter() - self.start_time

    def epoch_steps(self, epoch: int) -> int:
        """The steps of ``epoch``: all of an epoch's but in a fractional last one."""
        return min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch)


# ---------------------------------------------------------------------------- Set up


def check_out_dir(opts: Options) -> bool:
    """Whether ``out_dir`` holds checkpoints of an earlier run; stops if it does and
    neither ``resume`` nor ``overwrite`` says what to do with them."""
    earlier = any(_step_dirs(opts.ckpt_dir)) or any(_step_dirs(opts.interrupted_dir))
    if earlier and not opts.resume and not opts.overwrite:
        raise Stop(
            f"{opts.ckpt_dir} holds checkpoints of an earlier run; pass --resume to continue it, "
            "--overwrite to start afresh, or another --out-dir"
        )
    return earlier


def _step_dirs(folder: Path) -> list[Path]:
    """The checkpoint directories in ``folder`` (complete or not), if it exists."""
    return [p for p in folder.iterdir() if p.name[:1].isdigit()] if folder.is_dir() else []


def saved_config(opts: Options) -> Config | None:
    """The settings saved with the newest readable checkpoint in ``opts.out_dir`` (the
    interrupted one first), or ``None`` if there is none; nothing is changed on disk."""
    for folder in (opts.interrupted_dir, opts.ckpt_dir):
        if not any(_step_dirs(folder)):
            continue
        ckpt = Checkpointer(folder, read_only=True)
        try:
            for step in ckpt.steps_on_disk():
                try:
                    if not ckpt.problem(step):
                        return _config_of(ckpt.read_meta(step))
                except Exception:  # a damaged record: _resume reports it
                    continue
        finally:
            ckpt.close()
    return None


def _config_of(meta: dict) -> Config:
    return Config.from_dict({"dtype": "float32", **meta["config"]})  # saved before --dtype


def load_data(opts: Options):
    """CIFAR-10 from ``opts.data_dir``; every process reads all of it. Process 0 goes first,
    so that a download happens once (on a shared file system)."""
    try:
        cifar = data.load_cifar10(opts.data_dir) if distributed.is_main() else None
        distributed.barrier("data")
        return cifar or data.load_cifar10(opts.data_dir)
    except (data.DatasetNotFoundError, ValueError) as exc:
        raise Stop(str(exc)) from None


def setup(cfg: Config, opts: Options, start_time: float) -> Run:
    """Devices, data, model and optimiser of a run starting from scratch."""
    earlier = check_out_dir(opts)
    try:  # one "data" axis over the devices of every process
        mesh = distributed.make_mesh(opts.devices)
    except ValueError as exc:
        raise Stop(str(exc)) from None
    cifar = load_data(opts)
    train_np = (cifar.train_images[: cfg.train_limit], cifar.train_labels[: cfg.train_limit])
    n_train = len(train_np[0])
    batch_size = min(cfg.batch_size, n_train)
    if batch_size < cfg.batch_size:
        report.note(f"note: batch size {cfg.batch_size} > {n_train} training images; using "
                    f"{batch_size}")  # fmt: skip
    if batch_size % mesh.size:
        raise Stop(
            f"the batch size ({batch_size}) must divide by the number of devices ({mesh.size}); "
            f"pass a --batch-size that is a multiple of {mesh.size} or other --devices"
        )
    steps_per_epoch = n_train // batch_size  # the last partial batch is dropped
    total_steps = math.ceil(steps_per_epoch * cfg.epochs)
    if earlier and not opts.resume and distributed.is_main():  # --overwrite, all checked
        shutil.rmtree(opts.ckpt_dir)
    distributed.barrier("out_dir")
    opts.out_dir.mkdir(parents=True, exist_ok=True)

    key = jax.random.key(cfg.seed, impl=KEY_IMPL)
    aug_key, flip_key = jax.random.fold_in(key, 1), jax.random.fold_in(key, 2)
    replicated = distributed.replicated(mesh)
    train_set = loop.TrainSet(  # on the devices for the whole run
        images=distributed.put(train_np[0], replicated),
        labels=distributed.put(train_np[1], replicated),
        base_flips=distributed.put(augment.base_flips(flip_key, n_train), replicated),
    )
    model = models.build_model(cfg.model, cfg.seed, DTYPES[cfg.dtype], cfg.data_format)
    models.init_whitening(model, augment.normalize(jnp.asarray(train_np[0][: cfg.whiten_images])))
    distributed.replicate(model, mesh, from_process_0=True)  # identical on every process
    optimizer, _ = loop.make_optimizer(model, cfg, total_steps, batch_size)
    distributed.replicate(optimizer, mesh)
    return Run(
        cfg=cfg, opts=opts, start_time=start_time, mesh=mesh, data=train_set,
        test_images=cifar.test_images[: cfg.test_limit],
        test_labels=cifar.test_labels[: cfg.test_limit], class_names=cifar.class_names,
        subset=eval_subset(cfg.eval_subset, len(cifar.test_labels[: cfg.test_limit])),
        batch_size=batch_size, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
        model=model, optimizer=optimizer, train_step=loop.make_train_step(cfg, batch_size),
        checkpointer=Checkpointer(opts.ckpt_dir), state=State(aug_key=aug_key),
    )  # fmt: skip


# ---------------------------------------------------------------------------- Restore or start


def restore_or_start(run: Run) -> None:
    """With ``--resume``, loads the newest good checkpoint; then prints the run's header
    and the epochs done so far. From here on a signal stops the run with a checkpoint."""
    run.interrupt.install()
    if run.opts.resume:
        _resume(run)
    if distributed.is_main():  # rewritten: drops epochs past the checkpoint
        report.write_metrics(run.opts.metrics_path, run.state.history)
    _print_header(run)
    for record in run.state.history:
        report.log_epoch(record)
    eval_left = sum(_eval_cost(run, e) for e in range(run.state.epoch0, run.n_epochs))
    train_left = (run.total_steps - run.steps_before) * run.batch_size
    run.state.bar = report.Progress(run.opts.progress, max(train_left, 0), eval_left)


def is_complete(run: Run) -> bool:
    """Whether the run was finished before (all epochs and its summary)."""
    return run.state.epoch0 == run.n_epochs and run.opts.summary_path.is_file()


def _resume(run: Run) -> None:
    interrupted = _interrupted_checkpointer(run)
    for ckpt in filter(None, (interrupted, run.checkpointer)):
        for name in ckpt.unfinished:
            report.note(f"note: discarded {ckpt.directory / name}, a checkpoint whose write "
                        "was interrupted")  # fmt: skip
    epochs = run.checkpointer.steps_on_disk()
    # A checkpoint taken mid-epoch is newer than every epoch checkpoint up to its epoch.
    newest = epochs[0] * run.steps_per_epoch if epochs else 0
    candidates = [(run.checkpointer, step) for step in epochs]
    if interrupted is not None:
        for step in interrupted.steps_on_disk():
            if step > newest:
                candidates.insert(0, (interrupted, step))
            else:
                interrupted.discard(step)  # superseded by the epoch checkpoints
    if not candidates:
        report.note(f"note: no checkpoint in {run.opts.ckpt_dir}; starting from scratch")
        return
    damaged = []
    for ckpt, step in candidates:
        if (problem := _try_restore(run, ckpt, step)) is None:
            break
        report.note(f"warning: checkpoint {step} in {ckpt.directory} is damaged ({problem})")
        damaged.append((ckpt, step))
    else:
        tried = ", ".join(str(step) for _, step in candidates)
        raise Stop(
            f"no readable checkpoint in {run.opts.ckpt_dir} (tried {tried}); "
            "pass --overwrite to start afresh, or another --out-dir"
        )
    for bad, bad_step in damaged:  # so that these epochs can be written again
        bad.discard(bad_step)
    if interrupted is not None:
        interrupted.close()
    report.note(f"resumed from {ckpt.step_dir(step)} (epoch {run.state.epoch0}, step "
                f"{run.steps_before})")  # fmt: skip


def _interrupted_checkpointer(run: Run) -> Checkpointer | None:
    """The checkpoints of interrupted epochs (one at most), if any were written."""
    if not run.opts.interrupted_dir.is_dir():
        return None
    return Checkpointer(run.opts.interrupted_dir, max_to_keep=1)


def _try_restore(run: Run, ckpt: Checkpointer, step: int) -> str | None:
    """Loads checkpoint ``step`` of ``ckpt`` into ``run``; returns what is wrong with it, or
    ``None``. Stops if it was written with other settings."""
    if problem := ckpt.problem(step):
        return problem
    try:
        saved = ckpt.read_meta(step)
    except Exception as exc:  # whatever orbax raises on a damaged record
        return f"its record is unreadable: {_first_line(exc)}"
    if changes := diff(_config_of(saved), run.cfg):
        listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
        raise Stop(f"--resume with settings that differ from the checkpoint's ({listed}); "
                   "rerun with the original flags")  # fmt: skip
    template = nnx.to_pure_dict(nnx.state(run.model, loop.LOOKAHEAD_VARS))
    try:
        lookahead, meta = ckpt.restore(
            step,
            model=run.model,
            optimizer=run.optimizer,
            lookahead=template if saved[LOOKAHEAD_STARTED] else None,
        )
    except Exception as exc:  # whatever orbax raises on damaged arrays
        return f"its arrays are unreadable: {_first_line(exc)}"
    history = meta["history"]
    if meta.get("lr_unit") != LR_UNIT:  # written before the log's lr was in --lr's units
        history = [dict(r, lr=r["lr"] * run.lr_scale) for r in history]
    aug_key = jax.random.wrap_key_data(jnp.asarray(meta["aug_key"], jnp.uint32), impl=KEY_IMPL)
    state = run.state
    state.aug_key, state.history, state.lookahead = aug_key, history, lookahead
    state.epoch0, state.partial, state.elapsed_before = (
        meta["epoch"], meta.get("partial"), meta["elapsed_s"]
    )  # fmt: skip
    return None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _print_header(run: Run) -> None:
    cfg, mesh = run.cfg, run.mesh
    processes = jax.process_count()
    on = f"{mesh.size} {mesh.devices.flat[0].platform} device(s)"
    on += f" in {processes} processes" if processes > 1 else ""
    if cfg.optimizer == "sgd":
        lr = f"sgd lr {cfg.lr} per 1024 examples (step size lr / {run.lr_scale:.1f})"
    else:
        lr = f"adamw lr {cfg.lr}"
    report.say(
        f"{cfg.model}: {models.count_params(run.model):,} parameters; {run.n_train} train / "
        f"{len(run.test_labels)} test images; {run.total_steps} steps of {run.batch_size} "
        f"({cfg.epochs} epochs); {lr}; {cfg.dtype} on {on}; seed {cfg.seed}; "
        f"out {run.opts.out_dir}"
    )
    report.say(cfg.describe())
    unit = "(per 1024 examples)" if cfg.optimizer == "sgd" else "(AdamW's step size)"
    n_test, n_sub = len(run.test_labels), len(run.subset)
    scored = f"all {n_test}"
    if n_sub < n_test:
        scored = f"{n_sub} fixed ones, after the last all {n_test}"
    report.say(
        f"columns: train_loss per image; accuracies in %; lr: the scheduled {cfg.optimizer} "
        f"--lr {unit} at the epoch's last step,\n         as in metrics.jsonl; test_acc% on "
        f"test_imgs test images after each epoch: "
        f"{scored}"
    )
    report.print_row(report.COLUMNS, head=True)


# ---------------------------------------------------------------------------- Train


def train_epoch(run: Run, epoch: int) -> None:
    """Trains epoch ``epoch`` (from 0), evaluates, logs it and saves a checkpoint.

    Raises :class:`Interrupted` once a signal asked the run to stop (after saving)."""
    metrics, steps, epoch_s = _train_steps(run, epoch)
    if not loop.all_finite(run.model):
        raise Stop(
            f"the parameters became NaN/inf in epoch {epoch + 1}; lower --lr (now {run.cfg.lr})",
            NAN_EXIT_CODE,
        )
    last = epoch == run.n_epochs - 1
    try:
        test_acc, tta_acc, n_test = _evaluate(run, epoch, last)
    except _Abandoned:  # the steps are done; the evaluation is repeated on resume
        _save_interrupted(run, epoch, steps, metrics, epoch_s)
    n_seen, global_step = steps * run.batch_size, epoch * run.steps_per_epoch + steps
    record = {
        "epoch": epoch + 1,
        "step": global_step,
        "train_loss": float(metrics["loss"]) / n_seen,
        "train_acc": float(metrics["correct"]) / n_seen,
        "test_acc": test_acc,
        "test_images": n_test,
        "lr": run.lr_at(global_step - 1),
        "epoch_s": epoch_s,
        "total_s": run.elapsed_s(),
    }
    if last and run.cfg.tta:
        record["test_acc_tta"] = tta_acc
    run.state.history.append(record)
    report.log_epoch(record)
    _save(run, epoch, record)
    if run.interrupt.requested:  # it came during the save: the epoch's checkpoint is written
        where, path = f"after epoch {epoch + 1}", step_dir(run.opts.ckpt_dir, epoch + 1)
        raise Interrupted(_resume_line(run, where, path), 128 + run.interrupt.signum)


class _Abandoned(Exception):
    """An evaluation given up on an interrupt."""


def _train_steps(run: Run, epoch: int):
    """The steps of one epoch (those left of it, resumed mid-epoch); returns the summed
    ``metrics``, the step count and seconds. Saves and raises :class:`Interrupted` if a
    signal came during a step."""
    cfg, bs, state = run.cfg, run.batch_size, run.state
    steps = run.epoch_steps(epoch)
    partial = state.partial if state.partial is not None and epoch == state.epoch0 else {}
    state.partial = None
    first, before_s = partial.get("steps_done", 0), partial.get("epoch_s", 0.0)
    global_step = epoch * run.steps_per_epoch + first
    order = np.random.default_rng([cfg.seed, epoch]).permutation(run.n_train)  # data order
    order = order[: steps * bs].astype(np.int32).reshape(steps, bs)
    # (steps, batch): the batch axis split over the devices, each device its own rows.
    perm = distributed.put(order, distributed.batch_sharding(run.mesh, ndim=2, axis=1))
    key = distributed.put(jax.random.fold_in(run.state.aug_key, epoch), run.replicated)
    metrics = {  # the sums so far (exact: float32 and int32 values saved as JSON numbers)
        "loss": distributed.put(np.float32(partial.get("loss", 0)), run.replicated),
        "correct": distributed.put(np.int32(partial.get("correct", 0)), run.replicated),
    }
    state.bar.start("train", f"epoch {epoch + 1}/{run.n_epochs}", (steps - first) * bs)
    t0 = time.perf_counter()
    pending = None  # the previous step's loss, read after the next step is queued
    try:
        for step in range(first, steps):
            t_step = time.perf_counter()
            inputs = loop.StepInputs(run.data, perm, key, epoch, step,
                                     train_whiten_bias=epoch < cfg.whiten_bias_epochs)  # fmt: skip
            metrics, loss = run.train_step(run.model, run.optimizer, metrics, inputs)
            if state.first_step_s is None:  # the first call compiles: time it on its own
                loss.block_until_ready()
                state.first_step_s = time.perf_counter() - t_step
            global_step += 1
            state.steps += 1
            state.lookahead = loop.maybe_lookahead(run.model, state.lookahead, cfg, epoch,
                                                   global_step, run.total_steps)  # fmt: skip
            if pending is not None:
                _show_loss(run, loop.check_loss(pending, epoch, global_step - 1, cfg))
            pending = loss
            if run.interrupt.requested and step + 1 < steps:
                _show_loss(run, loop.check_loss(pending, epoch, global_step, cfg))
                epoch_s = before_s + time.perf_counter() - t0
                _save_interrupted(run, epoch, step + 1, metrics, epoch_s, averaged=False)
        if pending is not None:
            _show_loss(run, loop.check_loss(pending, epoch, global_step, cfg))
    except loop.NonFiniteLoss as exc:  # the loss is replicated: every process stops here
        run.state.bar.close()
        last = run.checkpointer.latest_step()
        kept = f"epoch {last} in {run.opts.ckpt_dir}" if last is not None else "none written yet"
        raise Stop(f"{exc}\nlast good checkpoint: {kept}", NAN_EXIT_CODE) from None
    # airbench copies the average into the model after every epoch (done before an
    # interrupted evaluation was saved: not again)
    if state.lookahead is not None and not partial.get("averaged", False):
        state.lookahead = loop.lookahead_step(run.model, state.lookahead, 1.0)
    state.bar.close()
    epoch_s = time.perf_counter() - t0
    state.train_s += epoch_s
    return metrics, steps, before_s + epoch_s


def _show_loss(run: Run, loss_sum: float) -> None:
    run.state.bar.update(run.batch_size, loss=f"{loss_sum / run.batch_size:.3f}")


def eval_subset(size: int, n: int) -> np.ndarray:
    """``size`` evenly spaced indices of ``n`` test images (all of them if ``size`` is 0 or
    at least ``n``): the same images in every run and every epoch."""
    if not size or size >= n:
        return np.arange(n)
    return np.arange(size) * n // size


def _eval_cost(run: Run, epoch: int) -> int:
    """Test images scored after ``epoch``, in plain forward passes (a TTA image costs
    ``augment.TTA_VIEWS``)."""
    if epoch < run.n_epochs - 1:
        return len(run.subset)
    return len(run.test_labels) * augment.views_per_image(run.cfg.tta)


def _evaluate(run: Run, epoch: int, last: bool):
    """Accuracy ``(plain, tta, images scored)`` after ``epoch``, with a progress bar: on
    the fixed subset, or for the ``last`` epoch on every test image (with TTA if set)."""
    images, labels = run.test_images, run.test_labels
    if not last:
        images, labels = images[run.subset], labels[run.subset]
    tta = last and run.cfg.tta

    def progress(n: int) -> None:  # after each batch: an interrupt gives the evaluation up
        if n:
            run.state.bar.update(n)
        if run.interrupt.requested:
            run.state.bar.close()
            run.model.train()
            raise _Abandoned

    progress(0)
    run.state.bar.start("eval", f"test {epoch + 1}/{run.n_epochs}", len(labels),
                        augment.views_per_image(tta))  # fmt: skip
    test_acc, tta_acc, predictions = loop.evaluate(
        run.model, images, labels, tta, run.mesh, run.cfg.eval_batch, progress,
        run.cfg.data_format,
    )  # fmt: skip
    run.state.bar.close()
    if last:
        run.state.predictions = predictions  # of the whole test set: the confusion matrix
    return test_acc, tta_acc, len(labels)


def _save(run: Run, epoch: int, record: dict) -> None:
    """Checkpoint ``epoch + 1``: every process calls save; orbax coordinates them and the
    primary (process 0) writes the replicated arrays and the JSON record."""
    meta = _meta(run, epoch + 1, record["step"], 0, record["total_s"])
    run.checkpointer.save(epoch + 1, model=run.model, optimizer=run.optimizer,
                          lookahead=run.state.lookahead, meta=meta)  # fmt: skip
    if distributed.is_main():
        report.write_metrics(run.opts.metrics_path, run.state.history)
        if run.opts.interrupted_dir.is_dir():  # an interrupted epoch's checkpoint: superseded
            shutil.rmtree(run.opts.interrupted_dir)


def _meta(run: Run, epochs_done: int, global_step: int, steps_done: int, elapsed_s: float):
    """The JSON record of a checkpoint after ``steps_done`` steps of epoch ``epochs_done``
    (from 0; 0 steps: at its start)."""
    data_order = {"epoch": epochs_done, "permutation_seed": [run.cfg.seed, epochs_done]}
    return {
        "epoch": epochs_done,
        "global_step": global_step,
        "data_order": dict(data_order, next_step=steps_done),
        "aug_key": np.asarray(jax.random.key_data(run.state.aug_key)).tolist(),
        LOOKAHEAD_STARTED: run.state.lookahead is not None,
        "history": run.state.history,
        "lr_unit": LR_UNIT,
        "elapsed_s": elapsed_s,
        "config": run.cfg.to_dict(),
    }


def _save_interrupted(run: Run, epoch: int, steps_done: int, metrics, epoch_s: float,
                      averaged: bool = True) -> None:  # fmt: skip
    """Saves the run stopped after ``steps_done`` steps of ``epoch`` (with ``averaged``:
    and after the epoch's lookahead copy), then raises :class:`Interrupted`."""
    run.state.bar.close()
    global_step = epoch * run.steps_per_epoch + steps_done
    meta = _meta(run, epoch, global_step, steps_done, run.elapsed_s())
    meta["partial"] = {
        "steps_done": steps_done,
        "loss": float(metrics["loss"]),  # a float32 value: exact in JSON
        "correct": int(metrics["correct"]),
        "epoch_s": epoch_s,
        "averaged": averaged,
    }
    ckpt = Checkpointer(run.opts.interrupted_dir, max_to_keep=1)
    ckpt.save(global_step, model=run.model, optimizer=run.optimizer,
              lookahead=run.state.lookahead, meta=meta)  # fmt: skip
    ckpt.close()
    where = f"in epoch {epoch + 1} after step {steps_done} of {run.steps_per_epoch}"
    if steps_done == run.epoch_steps(epoch):
        where = f"after the steps of epoch {epoch + 1}, before its evaluation"
    raise Interrupted(_resume_line(run, where, ckpt.step_dir(global_step)),
                      128 + run.interrupt.signum)  # fmt: skip


def _resume_line(run: Run, where: str, path: Path) -> str:
    return f"interrupted {where}; saved {path}; continue with: {run.opts.resume_command}"


# ---------------------------------------------------------------------------- Finish


def finish(run: Run) -> None:
    """Writes ``summary.json`` and the plots, and prints the final line."""
    run.interrupt.uninstall()  # nothing left to save: Ctrl-C quits
    run.checkpointer.close()
    if jax.process_count() > 1:  # the replicas must agree: every process shows its hash
        print(f"process {jax.process_index()}/{jax.process_count()}: parameter checksum "
              f"{distributed.checksum(run.model)}", file=sys.stderr, flush=True)  # fmt: skip
    if run.state.predictions is None and run.opts.plots:  # resumed after the last epoch
        cfg = run.cfg
        run.state.predictions = loop.evaluate(
            run.model, run.test_images, run.test_labels, cfg.tta, run.mesh, cfg.eval_batch,
            data_format=cfg.data_format,
        )[2]  # fmt: skip
    if not distributed.is_main():
        return
    if run.opts.plots:
        _plot(run)
    summary = _summary(run)
    report.write_json(run.opts.summary_path, summary)
    without = f", {100 * summary['test_accuracy_no_tta']:.2f}% without TTA" if run.cfg.tta else ""
    report.say(
        f"test accuracy {100 * summary['test_accuracy']:.2f}%{without} in "
        f"{summary['wall_time_s']:.1f} s (model {run.cfg.model}, seed {run.cfg.seed}, "
        f"{run.n_train} train images, {summary['images_per_second'] or 0:.1f} train images/s)"
    )


def _plot(run: Run) -> None:
    from train import plots

    out_dir = run.opts.out_dir
    plots.plot_curves(
        run.state.history, out_dir / "curves.png", run.cfg.label_smoothing, run.cfg.tta
    )
    plots.plot_filters(models.first_conv(run.model).weight[...], out_dir / "filters.png")
    cm = plots.confusion_matrix(run.test_labels, run.state.predictions, len(run.class_names))
    plots.plot_confusion(cm, run.class_names, out_dir / "confusion.png")


def _summary(run: Run) -> dict:
    cfg, state, final = run.cfg, run.state, run.state.history[-1]
    # Throughput after compilation: the first step of this process (compile) is left out.
    if state.steps > 1:
        per_s = (state.steps - 1) * run.batch_size / (state.train_s - state.first_step_s)
    else:
        per_s = state.steps * run.batch_size / state.train_s if state.train_s else None
    return {
        "model": cfg.model,
        "seed": cfg.seed,
        "test_accuracy": final["test_acc_tta"] if cfg.tta else final["test_acc"],
        "test_accuracy_no_tta": final["test_acc"],
        "tta": cfg.tta,
        "wall_time_s": run.elapsed_s(),
        "train_time_s": sum(h["epoch_s"] for h in run.state.history),
        "first_step_s": state.first_step_s,  # compile + one step, in this process
        "images_per_second": per_s,  # training only, after compilation, all devices
        "epochs": cfg.epochs,
        "steps": run.total_steps,
        "batch_size": run.batch_size,
        "train_images": run.n_train,
        "test_images": len(run.test_labels),
        "parameters": models.count_params(run.model),
        "optimizer": cfg.optimizer,
        "lr": cfg.lr,
        "dtype": cfg.dtype,
        "devices": run.mesh.size,
        "processes": jax.process_count(),
        "config": cfg.to_dict(),
    }
