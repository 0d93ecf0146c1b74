"""Train a CIFAR-10 classifier with jspatial layers; the default is airbench94.

    python -m train.cifar10                                   # airbench94 recipe, 9.9 epochs
    python -m train.cifar10 --model resnet18 --epochs 20
    python -m train.cifar10 --quick        # small model, 10000 images, 3 epochs: ~1 min on a CPU
    python -m train.cifar10 --resume --out-dir runs/quick-seed0   # continue a run, its settings
    python -m train.cifar10 --devices 8 --batch-size 1024     # data parallel over 8 GPUs
    python -m train.cifar10 --dtype bfloat16                  # bfloat16 compute, float32 weights
    python -m train.cifar10 --set translate=0 --set flip=0    # any setting of train/config.py

The default recipe is Keller Jordan's airbench94 (github.com/KellerJordan/cifar10-airbench)
translated to JAX: a frozen data-whitening first layer, Nesterov SGD with airbench's
decoupled hyper-parameters, label smoothing, a triangular learning-rate schedule, flip +
translate augmentation with alternating flips, a lookahead-style weight average and
test-time augmentation over mirrored and shifted views. The whole dataset lives on the
device as uint8; batches are gathered, augmented and normalised inside the jitted train
step.

Every setting of a run is one frozen ``train.config.Config``: the model's recipe, then the
flags below. Everything written goes to ``--out-dir`` (default ``runs/<model>-seed<seed>``):
``metrics.jsonl`` (one record per epoch), ``checkpoints/`` (orbax, the last 2 epochs, and
``checkpoints/interrupted/`` after a Ctrl-C mid-epoch),
``summary.json`` and, unless ``--no-plots``, ``curves.png``, ``filters.png`` and
``confusion.png``. Runs are deterministic for a given ``--seed``, including across a
``--resume`` from any checkpoint. ``--resume`` takes the settings saved with the checkpoint;
a flag given with it must agree with them. Ctrl-C (or SIGTERM) stops after the current step
and saves a checkpoint that ``--resume`` continues exactly; a second Ctrl-C quits at once.

The pieces live in ``train/config.py`` (settings), ``train/loop.py`` (optimiser, train
step, lookahead, evaluation), ``train/run.py`` (the phases of a run), ``train/report.py``
(log and progress) and ``train/distributed.py`` (scaling out: each global batch is split
over a 1-D device mesh; several hosts join with ``--coordinator HOST:PORT --num-processes
N --process-id I`` or ``--distributed auto``; process 0 writes the logs, metrics, plots and
summary, and all processes write the checkpoints together).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import signal
import sys
import textwrap
import time
from pathlib import Path

from train import config, data, distributed, models, report
from train.run import (
    Interrupted,
    Options,
    Stop,
    finish,
    is_complete,
    restore_or_start,
    saved_config,
    setup,
    train_epoch,
)

# ---------------------------------------------------------------------------- Command line


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows a default only when the help does not already say it and there is one."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def _recipes_epilog() -> str:
    lines = ["recipes (--model; flags override them):"]
    for name in config.RECIPES:
        c = config.make_config(name)
        lines.append(f"  {name:<11} {c.epochs} epochs, batch {c.batch_size}, sgd lr {c.lr}, "
                     f"weight decay {c.weight_decay}, lookahead {c.lookahead_decay}")  # fmt: skip
    names = ", ".join(f.name for f in dataclasses.fields(config.Config))
    lines += ["", "settings for --set NAME=VALUE (their units: train/config.py):"]
    lines += textwrap.wrap(names, 78, initial_indent="  ", subsequent_indent="  ")
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """Reports a bad command line in one line, like the run's other errors (exit 2)."""

    def error(self, message):
        self.exit(2, f"error: {message} (see python -m train.cifar10 --help)\n")


def parse_args(argv=None):
    p = _Parser(
        prog="python -m train.cifar10",
        description="Train a CIFAR-10 classifier built from jspatial layers "
        "(default: the airbench94 recipe).",
        formatter_class=_HelpFormatter,
        epilog=_recipes_epilog(),
    )
    add = p.add_argument
    add("--data-dir", help=f"folder holding cifar-10-batches-bin/ (default: "
        f"${data.DATA_DIR_ENV} or ~/.cache/jspatial/data; downloaded when missing)")  # fmt: skip
    add("--model", choices=list(models.MODELS),
        help="the network and its recipe (default: airbench94)")  # fmt: skip
    add("--quick", action="store_true",
        help=f"a short run that visibly learns in about a minute on a CPU: "
        f"{_quick_text()}; other flags override it; out-dir runs/quick-seed<seed>")  # fmt: skip
    add("--epochs", type=float, help="training epochs, may be fractional (default: the recipe's)")
    add("--batch-size", type=int, help="images per step over all devices (default: the recipe's)")
    add("--optimizer", choices=("sgd", "adamw"), help="default: the recipe's (sgd)")
    add("--lr", type=float, help="peak learning rate; for sgd in airbench units (per 1024 "
        "examples), for adamw the usual one (default: the recipe's)")  # fmt: skip
    add("--weight-decay", type=float, help="sgd: per 1024 examples (default: the recipe's)")
    add("--lookahead-decay", type=float, help="base decay of airbench's lookahead weight "
        "average, 0 = off (default: 0.95 for airbench94, else off)")  # fmt: skip
    add("--seed", type=int, help="initialisation, data order and augmentation (default: 0)")
    add("--set", action="append", default=[], metavar="NAME=VALUE",
        help="override any other setting (listed below); repeatable")  # fmt: skip
    add("--out-dir", help="default: runs/<model>-seed<seed>")
    add("--resume", action="store_true", help="continue from the latest checkpoint in --out-dir "
        "with the settings saved in it (flags given too must agree with them)")  # fmt: skip
    add("--overwrite", action="store_true",
        help="delete the checkpoints of an earlier run in --out-dir and start afresh")  # fmt: skip
    add("--train-limit", type=int, help="use the first N train images")
    add("--test-limit", type=int, help="use the first N test images")
    add("--no-tta", action="store_true", help="no test-time augmentation")
    add("--no-plots", action="store_true", help="skip the PNG figures")
    add("--no-progress", action="store_true", help="no progress bars on stderr")
    _add_scaling_args(p.add_argument_group("scaling out (see README, 'Scaling out')"))
    args = p.parse_args(argv)
    _check_args(p, args)
    return args


def _add_scaling_args(group) -> None:
    add = group.add_argument
    add("--devices", type=int, help="devices per process to split each batch over "
        "(default: all local devices); the batch size must divide by the total number of "
        "devices")  # fmt: skip
    add("--dtype", choices=list(config.DTYPES),
        help="compute dtype (default: float32); bfloat16 keeps float32 parameters, "
        "optimiser state, BatchNorm statistics and loss")  # fmt: skip
    add(
        "--coordinator",
        metavar="HOST:PORT",
        help="multi-host: address of process 0 (with --num-processes and --process-id)",
    )
    add("--num-processes", type=int, help="multi-host: process count")
    add("--process-id", type=int, help="multi-host: this process")
    add("--distributed", choices=("auto",),
        help="'auto': jax.distributed.initialize() with the settings JAX detects on SLURM, "
        "Open MPI or Cloud TPU (off by default: one process)")  # fmt: skip


def _check_args(p: argparse.ArgumentParser, args) -> None:
    for name in ("devices", "num_processes"):  # the settings' rules: train/config.py
        value = getattr(args, name)
        if value is not None and not value > 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.resume and args.overwrite:
        p.error("--resume and --overwrite exclude each other")
    explicit = (args.coordinator, args.num_processes, args.process_id)
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            p.error("--coordinator, --num-processes and --process-id go together")
        if args.distributed:
            p.error("--distributed auto excludes --coordinator/--num-processes/--process-id")
        if not 0 <= args.process_id < args.num_processes:
            p.error(f"--process-id must be in [0, {args.num_processes}), got {args.process_id}")
    try:
        args.config = make_config(args)
    except ValueError as exc:
        p.error(str(exc))


def _quick_text() -> str:
    q = config.QUICK
    return (f"model {q['model']}, {q['epochs']} epochs on the first {q['train_limit']} train "
            f"images, {q['test_limit']} test images, no TTA")  # fmt: skip


def explicit_settings(args) -> dict:
    """The settings the command line gives: ``--quick``'s, then ``--set``, then the named
    flags (``--model`` included); what it leaves out is not in the dict."""
    overrides = dict(config.QUICK) if args.quick else {}
    for item in args.set:
        name, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set takes NAME=VALUE, got {item!r}")
        overrides[name.strip()] = config.parse_value(name.strip(), text.strip())
    named = ("model", "epochs", "batch_size", "optimizer", "lr", "weight_decay", "lookahead_decay",
             "seed", "train_limit", "test_limit", "dtype")  # fmt: skip
    overrides.update({k: getattr(args, k) for k in named if getattr(args, k) is not None})
    if args.no_tta:
        overrides["tta"] = False
    return overrides


def make_config(args) -> config.Config:
    """The run's settings: the model's recipe, then ``--quick``, ``--set`` and the flags."""
    overrides = explicit_settings(args)
    return config.make_config(overrides.pop("model", "airbench94"), **overrides)


def resume_config(args, saved: config.Config) -> config.Config:
    """The settings of a resumed run: those saved with its checkpoint. A flag given with
    ``--resume`` must agree with them, since every setting decides the run's numbers."""
    given = explicit_settings(args)
    changes = {k: (getattr(saved, k), v) for k, v in given.items() if getattr(saved, k) != v}
    if "epochs" in changes:
        raise Stop(
            f"--resume with --epochs {changes['epochs'][1]}, but the run was started with "
            f"{saved.epochs}: its learning-rate schedule and weight average are laid out over "
            "all of its steps from the first one, so a run cannot be extended or shortened; "
            "start a new run (another --out-dir, or --overwrite) to train for longer"
        )
    if changes:
        listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
        raise Stop(
            f"--resume with settings that differ from the checkpoint's ({listed}); they would "
            "change the run's numbers: drop them to continue with the saved settings, or start "
            "a new run (another --out-dir, or --overwrite)"
        )
    return saved


# ---------------------------------------------------------------------------- Main


def main(argv=None) -> int:
    start_time = time.perf_counter()
    args = parse_args(argv)
    # Before anything touches a device: join the other processes of a multi-host run.
    distributed.initialize(
        args.coordinator, args.num_processes, args.process_id, auto=args.distributed == "auto"
    )
    if args.coordinator is None and not args.distributed and (hint := distributed.cluster_hint()):
        report.note(hint)
    cfg = args.config
    name = "quick" if args.quick else cfg.model
    out_dir = Path(args.out_dir or f"runs/{name}-seed{cfg.seed}")
    opts = Options(
        out_dir=out_dir,
        data_dir=args.data_dir,
        devices=args.devices,
        resume=args.resume,
        overwrite=args.overwrite,
        plots=not args.no_plots,
        progress=not args.no_progress,
        resume_command=resume_command(args, out_dir),
    )
    run = None
    try:
        if args.resume and (saved := saved_config(opts)) is not None:
            cfg = resume_config(args, saved)
        run = setup(cfg, opts, start_time)
        restore_or_start(run)
        if is_complete(run):
            run.checkpointer.close()
            report.note(f"the run in {opts.out_dir} is complete ({run.n_epochs} epochs); "
                        f"its results are in {opts.summary_path}")  # fmt: skip
            return 0
        for epoch in range(run.state.epoch0, run.n_epochs):
            train_epoch(run, epoch)
        finish(run)
    except Interrupted as stop:
        report.note(str(stop))
        return stop.code
    except Stop as stop:
        report.note(f"error: {stop}")
        return stop.code
    except KeyboardInterrupt:  # before training started or after it ended: nothing to save
        report.note(f"interrupted; the checkpoints in {opts.ckpt_dir} (if any) are "
                    f"kept; continue with: {opts.resume_command}")  # fmt: skip
        return 128 + signal.SIGINT
    finally:
        if run is not None:
            run.interrupt.uninstall()
    return 0


def resume_command(args, out_dir: Path) -> str:
    """The command that continues this run: its folder, and where its data is."""
    words = ["python", "-m", "train.cifar10", "--resume", "--out-dir", str(out_dir)]
    if args.data_dir:
        words += ["--data-dir", args.data_dir]
    return shlex.join(words)


if __name__ == "__main__":
    sys.exit(main())
