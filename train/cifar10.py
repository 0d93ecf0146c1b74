"""Train a CIFAR-10 classifier with jspatial layers; the default is airbench94.

    python -m train.cifar10                                   # airbench94 recipe, 9.9 epochs
    python -m train.cifar10 --model resnet18 --epochs 20
    python -m train.cifar10 --train-limit 2000 --test-limit 1000 --epochs 1 --no-tta  # smoke run
    python -m train.cifar10 --resume                          # continue the run in --out-dir
    python -m train.cifar10 --devices 8 --batch-size 1024     # data parallel over 8 GPUs
    python -m train.cifar10 --dtype bfloat16                  # bfloat16 compute, float32 weights
    python -m train.cifar10 --set translate=0 --set ema=0     # any setting of train/config.py

The default recipe is Keller Jordan's airbench94 (github.com/KellerJordan/cifar10-airbench)
translated to JAX: a frozen data-whitening first layer, Nesterov SGD with airbench's
decoupled hyper-parameters, label smoothing, a triangular learning-rate schedule, flip +
translate augmentation with alternating flips, a lookahead-style weight average and
6-view test-time augmentation. The whole dataset lives on the device as uint8; batches
are gathered, augmented and normalised inside the jitted train step.

Every setting of a run is one frozen ``train.config.Config``: the model's recipe, then the
flags below. Everything written goes to ``--out-dir`` (default ``runs/<model>-seed<seed>``):
``metrics.jsonl`` (one record per epoch), ``checkpoints/`` (orbax, the last 2 epochs),
``summary.json`` and, unless ``--no-plots``, ``curves.png``, ``filters.png`` and
``confusion.png``. Runs are deterministic for a given ``--seed``, including across a
``--resume`` from any checkpoint.

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
import sys
import textwrap
import time
from pathlib import Path

from train import config, data, distributed, models, report, run

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
                     f"weight decay {c.weight_decay}, ema {c.ema}")  # fmt: skip
    names = ", ".join(f.name for f in dataclasses.fields(config.Config))
    lines += ["", "settings for --set NAME=VALUE (their units: train/config.py):"]
    lines += textwrap.wrap(names, 78, initial_indent="  ", subsequent_indent="  ")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m train.cifar10",
        description="Train a CIFAR-10 classifier built from jspatial layers "
        "(default: the airbench94 recipe).",
        formatter_class=_HelpFormatter,
        epilog=_recipes_epilog(),
    )
    add = p.add_argument
    add("--data-dir", help=f"folder holding cifar-10-batches-bin/ (default: "
        f"${data.DATA_DIR_ENV} or ~/.cache/jspatial/data; downloaded when missing)")  # fmt: skip
    add("--model", default="airbench94", choices=list(models.MODELS),
        help="the network and its recipe")  # fmt: skip
    add("--epochs", type=float, help="training epochs, may be fractional (default: the recipe's)")
    add("--batch-size", type=int, help="images per step over all devices (default: the recipe's)")
    add("--optimizer", choices=("sgd", "adamw"), help="default: the recipe's (sgd)")
    add("--lr", type=float, help="peak learning rate; for sgd in airbench units (per 1024 "
        "examples), for adamw the usual one (default: the recipe's)")  # fmt: skip
    add("--weight-decay", type=float, help="sgd: per 1024 examples (default: the recipe's)")
    add("--ema", type=float, help="base decay of airbench's lookahead weight average, 0 = off "
        "(default: 0.95 for airbench94, else off)")  # fmt: skip
    add("--seed", type=int, default=0, help="initialisation, data order and augmentation")
    add("--set", action="append", default=[], metavar="NAME=VALUE",
        help="override any other setting (listed below); repeatable")  # fmt: skip
    add("--out-dir", help="default: runs/<model>-seed<seed>")
    add("--resume", action="store_true", help="continue from the latest checkpoint in --out-dir")
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
    add("--dtype", choices=list(config.DTYPES), default="float32",
        help="compute dtype; bfloat16 keeps float32 parameters, optimiser state, BatchNorm "
        "statistics and loss")  # fmt: skip
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
    for name in ("epochs", "batch_size", "train_limit", "test_limit", "devices", "num_processes"):
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


def make_config(args) -> config.Config:
    """The run's settings: the model's recipe, then ``--set``, then the named flags."""
    overrides = {}
    for item in args.set:
        name, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set takes NAME=VALUE, got {item!r}")
        overrides[name.strip()] = config.parse_value(name.strip(), text.strip())
    named = ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "ema", "seed",
             "train_limit", "test_limit", "dtype")  # fmt: skip
    overrides.update({k: getattr(args, k) for k in named if getattr(args, k) is not None})
    overrides["tta"] = overrides.get("tta", True) and not args.no_tta
    return config.make_config(args.model, **overrides)


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
    opts = run.Options(
        out_dir=Path(args.out_dir or f"runs/{cfg.model}-seed{cfg.seed}"),
        data_dir=args.data_dir,
        devices=args.devices,
        resume=args.resume,
        overwrite=args.overwrite,
        plots=not args.no_plots,
        progress=not args.no_progress,
    )
    try:
        job = run.setup(cfg, opts, start_time)
        run.restore_or_start(job)
        if run.is_complete(job):
            job.checkpointer.close()
            report.note(f"the run in {opts.out_dir} is complete ({job.n_epochs} epochs); "
                        f"its results are in {opts.out_dir / 'summary.json'}")  # fmt: skip
            return 0
        for epoch in range(job.epoch0, job.n_epochs):
            run.train_epoch(job, epoch)
        run.finish(job)
    except run.Stop as stop:
        report.note(f"error: {stop}")
        return stop.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
