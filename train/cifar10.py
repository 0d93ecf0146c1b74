"""Train a CIFAR-10 classifier with jspatial layers; the default is airbench94.

    python -m train.cifar10                                   # airbench94 recipe, 9.9 epochs
    python -m train.cifar10 --model resnet18 --epochs 20
    python -m train.cifar10 --train-limit 2000 --test-limit 1000 --epochs 1 --no-tta  # smoke run
    python -m train.cifar10 --resume                          # continue the run in --out-dir
    python -m train.cifar10 --devices 8 --batch-size 1024     # data parallel over 8 GPUs
    python -m train.cifar10 --dtype bfloat16                  # bfloat16 compute, float32 weights

The default recipe is Keller Jordan's airbench94 (github.com/KellerJordan/cifar10-airbench)
translated to JAX: a frozen data-whitening first layer, Nesterov SGD with airbench's
decoupled hyper-parameters, label smoothing, a triangular learning-rate schedule, flip +
translate augmentation with alternating flips, a lookahead-style weight average and
6-view test-time augmentation. The whole dataset lives on the device as uint8; batches
are gathered, augmented and normalised inside the jitted train step.

Everything written goes to ``--out-dir`` (default ``runs/<model>-seed<seed>``):
``metrics.jsonl`` (one record per epoch), ``checkpoints/`` (orbax, the last 2 epochs),
``summary.json`` and, unless ``--no-plots``, ``curves.png``, ``filters.png`` and
``confusion.png``. Runs are deterministic for a given ``--seed``, including across a
``--resume`` from any checkpoint.

Scaling out (``train/distributed.py``): each global batch is split over a 1-D device mesh
(``--devices``, default all local devices) and ``jit`` compiles the SPMD program; BatchNorm
statistics are those of the global batch, so N devices train as one device would. Several
hosts join with ``--coordinator HOST:PORT --num-processes N --process-id I`` (or
``--distributed auto`` on SLURM / Cloud TPU); process 0 writes the logs, metrics, plots and
summary, and all processes write the checkpoints together (orbax).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from train import augment, data, distributed, models
from train.checkpoint import Checkpointer

# ---------------------------------------------------------------------------- Hyper-parameters
#
# SGD hyper-parameters are in airbench's decoupled units (converted in make_optimizer):
# ``lr`` is the step size per 1024 examples, independent of the momentum, and
# ``weight_decay`` the decay per 1024 examples, independent of the lr. The loss is the *sum*
# of the label-smoothed cross entropy over the batch.

AIRBENCH94 = {
    "epochs": 9.9,  # fractional is fine: steps = ceil(steps_per_epoch * epochs)
    "batch_size": 1024,
    "optimizer": "sgd",  # Nesterov SGD with torch-style (coupled) weight decay
    "lr": 11.5,  # per 1024 examples
    "momentum": 0.85,
    "weight_decay": 0.0153,  # per 1024 examples
    "adamw_lr": 2e-3,  # used instead with --optimizer adamw (plain AdamW units)
    "adamw_weight_decay": 5e-4,
    "bias_scaler": 64.0,  # lr multiplier of the BatchNorm shifts (their decay is not scaled)
    "label_smoothing": 0.2,
    "whiten_bias_epochs": 3,  # train the whitening layer's bias for this many epochs only
    "ema": 0.95,  # base decay of the lookahead weight average (LOOKAHEAD below); 0 = off
}
# The other models start from the same recipe with these changes (sensible, not tuned).
_OTHERS = dict(
    AIRBENCH94, batch_size=512, momentum=0.9, weight_decay=1e-3, adamw_lr=1e-3,
    adamw_weight_decay=5e-2, bias_scaler=1.0, label_smoothing=0.1, whiten_bias_epochs=0, ema=0.0,
)  # fmt: skip
RECIPES = {
    "airbench94": AIRBENCH94,
    "resnet18": dict(_OTHERS, epochs=20, lr=2.0),  # lr 2.0 = torch lr 0.09 on a mean loss
    "vgg11": dict(_OTHERS, epochs=20, lr=2.0),
    "vgg13": dict(_OTHERS, epochs=20, lr=2.0),
    "simple_cnn": dict(_OTHERS, epochs=10, batch_size=128, lr=4.0, weight_decay=2e-3,
                       adamw_lr=2e-3, adamw_weight_decay=5e-4, label_smoothing=0.0),
}  # fmt: skip

LR_SCHEDULE = dict(start=0.2, peak=1.0, end=0.07, peak_at=0.23)  # multiplier, piecewise linear
LOOKAHEAD = dict(start_epochs=3, every_n_steps=5, decay_pow=3.0)
AUGMENT = dict(translate=2, flip=True)
WHITEN_IMAGES = 5000  # training images used to initialise the whitening layer
EVAL_BATCH = 2000
NAN_EXIT_CODE = 3
KEY_IMPL = "rbg"  # XLA's RngBitGenerator: compiles much faster on CPU than threefry
# --dtype: the compute dtype of the layers. Parameters, optimiser state, BatchNorm statistics
# and the loss (from the logits) stay float32 either way.
DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


# ---------------------------------------------------------------------------- Command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m train.cifar10",
        description="Train a CIFAR-10 classifier built from jspatial layers "
        "(default: the airbench94 recipe).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help=f"folder holding cifar-10-batches-bin/ (default: ${data.DATA_DIR_ENV} "
        "or ~/.cache/jspatial/data; downloaded when missing)",
    )
    p.add_argument("--model", default="airbench94", choices=list(models.MODELS))
    p.add_argument(
        "--epochs",
        type=float,
        default=None,
        help="training epochs, may be fractional (default: the model's recipe)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="default: the model's recipe")
    p.add_argument(
        "--optimizer",
        choices=("sgd", "adamw"),
        default=None,
        help="default: the model's recipe (sgd)",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate; for sgd in airbench units (per 1024 examples), "
        "for adamw the usual one (default: the model's recipe)",
    )
    p.add_argument("--weight-decay", type=float, default=None, help="default: the model's recipe")
    p.add_argument(
        "--ema",
        type=float,
        default=None,
        help="base decay of airbench's lookahead weight average, 0 = off "
        "(default: 0.95 for airbench94, else off)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default=None, help="default: runs/<model>-seed<seed>")
    p.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in --out-dir"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the checkpoints of an earlier run in --out-dir and start afresh",
    )
    p.add_argument("--train-limit", type=int, default=None, help="use the first N train images")
    p.add_argument("--test-limit", type=int, default=None, help="use the first N test images")
    p.add_argument("--no-tta", action="store_true", help="no test-time augmentation")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    scale = p.add_argument_group("scaling out (see README, 'Scaling out')")
    scale.add_argument(
        "--devices",
        type=int,
        default=None,
        help="devices per process to split each batch over (default: all local devices); "
        "the batch size must divide by the total number of devices",
    )
    scale.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default="float32",
        help="compute dtype; bfloat16 keeps float32 parameters, optimiser state, BatchNorm "
        "statistics and loss",
    )
    scale.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        default=None,
        help="multi-host: address of process 0 (with --num-processes and --process-id)",
    )
    scale.add_argument("--num-processes", type=int, default=None, help="multi-host: process count")
    scale.add_argument("--process-id", type=int, default=None, help="multi-host: this process")
    scale.add_argument(
        "--distributed",
        choices=("auto",),
        default=None,
        help="'auto': jax.distributed.initialize() with the settings JAX detects on SLURM, "
        "Open MPI or Cloud TPU (off by default: one process)",
    )
    args = p.parse_args(argv)
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
    return args


def make_config(args) -> dict:
    """The run's settings: the model's recipe overridden by the command line."""
    recipe = RECIPES[args.model]
    cfg = dict(recipe, model=args.model, seed=args.seed, tta=not args.no_tta)
    cfg["optimizer"] = args.optimizer or recipe["optimizer"]
    adamw = cfg["optimizer"] == "adamw"
    cfg["lr"] = recipe["adamw_lr" if adamw else "lr"]
    cfg["weight_decay"] = recipe["adamw_weight_decay" if adamw else "weight_decay"]
    for name in ("epochs", "batch_size", "lr", "weight_decay", "ema"):
        if getattr(args, name) is not None:
            cfg[name] = getattr(args, name)
    del cfg["adamw_lr"], cfg["adamw_weight_decay"]
    cfg["train_limit"], cfg["test_limit"] = args.train_limit, args.test_limit
    cfg["dtype"] = args.dtype
    return cfg


# ---------------------------------------------------------------------------- Model and optimiser


def lr_multiplier(total_steps):
    """airbench's triangle: 0.2 at step 0, 1.0 at 23% of training, 0.07 at the end."""
    s = LR_SCHEDULE
    xp = jnp.array([0.0, int(s["peak_at"] * total_steps), total_steps], jnp.float32)
    fp = jnp.array([s["start"], s["peak"], s["end"]], jnp.float32)
    return lambda step: jnp.interp(step, xp, fp)


def make_optimizer(model, cfg, total_steps, batch_size):
    """Returns ``(nnx.Optimizer, lr_at(step))``.

    SGD follows airbench94 exactly: torch-style coupled weight decay (``g + wd * p``) and
    Nesterov momentum, with its decoupled hyper-parameters converted as
    ``kilostep_scale = 1024 * (1 + 1 / (1 - momentum))``, ``lr = lr / kilostep_scale`` and
    ``wd = weight_decay * batch_size / kilostep_scale``. The BatchNorm shifts train with
    ``lr * bias_scaler`` and decay ``wd / (lr * bias_scaler)``; by linearity that is the same
    as scaling their gradient by ``bias_scaler`` before one shared SGD (done here).
    AdamW uses ``lr`` and ``weight_decay`` as given, decaying only the >=2-D weights.
    """
    multiplier = lr_multiplier(total_steps)
    if cfg["optimizer"] == "sgd":
        kilostep_scale = 1024 * (1 + 1 / (1 - cfg["momentum"]))
        lr = cfg["lr"] / kilostep_scale
        wd = cfg["weight_decay"] * batch_size / kilostep_scale
        schedule = lambda step: lr * multiplier(step)
        # As in airbench94 only the BatchNorm shifts get bias_scaler; the whitening bias and
        # all weights share the plain lr.
        tx = optax.chain(
            optax.masked(
                optax.scale(cfg["bias_scaler"]), models.path_mask(models.bn_bias_paths(model))
            ),
            optax.add_decayed_weights(wd / lr),
            optax.sgd(schedule, momentum=cfg["momentum"], nesterov=True),
        )
    else:
        schedule = lambda step: cfg["lr"] * multiplier(step)
        decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
        tx = optax.adamw(schedule, weight_decay=cfg["weight_decay"], mask=decay_mask)
    return nnx.Optimizer(model, tx, wrt=nnx.Param), schedule


# ---------------------------------------------------------------------------- Train and eval steps

LOOKAHEAD_VARS = (nnx.Param, nnx.BatchStat)  # what the lookahead average covers


def make_train_step(cfg, batch_size):
    translate = AUGMENT["translate"]

    @nnx.jit(donate_argnames=("model", "optimizer", "metrics"))
    def train_step(model, optimizer, metrics, train, perm, key, epoch, step, train_whiten_bias):
        """One SGD step on batch ``step`` of the epoch's permutation ``perm``.

        ``train`` is ``(uint8 images, labels, base_flips)`` for the whole training set.
        ``perm`` holds the epoch's image indices, ``(steps, batch_size)`` (or flat); with
        several devices its batch axis is split over them, and so, by jit's sharding
        propagation, is everything computed per image: each device gathers and augments
        its own rows, and the sums over the batch (loss, gradients, BatchNorm statistics)
        become all-reduces. Returns the updated running ``metrics`` and this batch's
        summed loss.
        """
        images, labels, base_flips = train
        idx = jax.lax.dynamic_index_in_dim(perm.reshape(-1, batch_size), step, keepdims=False)
        y = labels[idx]
        flips = augment.epoch_flips(base_flips[idx], epoch)
        if not AUGMENT["flip"]:
            flips = jnp.zeros_like(flips)
        x = augment.augment(images[idx], jax.random.fold_in(key, step), flips, translate)
        targets = optax.smooth_labels(jax.nn.one_hot(y, 10), cfg["label_smoothing"])

        def loss_fn(model):
            logits = model(x).astype(jnp.float32)  # the loss in float32 whatever --dtype
            return optax.softmax_cross_entropy(logits, targets).sum(), logits

        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        whiten = getattr(model, "whiten", None)
        old_bias = None if whiten is None else whiten.bias[...]
        optimizer.update(model, grads)
        if whiten is not None:  # airbench trains the whitening bias for the first epochs only
            whiten.bias[...] = jnp.where(train_whiten_bias, whiten.bias[...], old_bias)
        metrics = {
            "loss": metrics["loss"] + loss,
            "correct": metrics["correct"] + jnp.sum(jnp.argmax(logits, -1) == y),
        }
        return metrics, loss

    return train_step


@nnx.jit(donate_argnames=("ema",))
def lookahead_step(model, ema, decay):
    """``ema <- decay * ema + (1 - decay) * params``, then ``params <- ema`` (airbench)."""
    params = nnx.to_pure_dict(nnx.state(model, LOOKAHEAD_VARS))
    ema = jax.tree.map(lambda e, p: e + (1 - decay) * (p - e), ema, params)
    state = nnx.state(model, LOOKAHEAD_VARS)
    nnx.replace_by_pure_dict(state, ema)
    nnx.update(model, state)
    return ema


@nnx.jit(static_argnames=("tta",))
def eval_predictions(model, images, tta):
    """Predicted classes of uint8 test images: ``(plain, tta)``; with ``tta`` the 6 views
    are run one after another by ``lax.map`` (one traced forward pass) and weighted."""
    x = augment.normalize(images)
    if not tta:
        logits = model(x)
        return logits.argmax(-1), logits.argmax(-1)
    weights, views = zip(*augment.tta_views(x))
    graphdef, state = nnx.split(model)
    outs = jax.lax.map(lambda v: nnx.merge(graphdef, state)(v), jnp.stack(views))
    weighted = jnp.tensordot(jnp.asarray(weights), outs.astype(jnp.float32), axes=1)
    return outs[0].argmax(-1), weighted.argmax(-1)


def evaluate(model, images, labels, tta, mesh=None):
    """Test accuracy ``(plain, tta)`` and the predictions used for the confusion matrix.

    ``images`` are host uint8 arrays; with a ``mesh`` each batch is split over its devices.
    """
    model.eval()
    n = len(images)
    n_devices = 1 if mesh is None else mesh.size
    batch = -(-min(EVAL_BATCH, n) // n_devices) * n_devices  # divisible by the devices
    plain, augmented = [], []
    for start in range(0, n, batch):
        chunk = np.asarray(images[start : start + batch])
        if len(chunk) < batch:  # pad the last batch: one compiled shape for all batches
            chunk = np.concatenate([chunk, np.take(images, np.arange(batch - len(chunk)) % n, 0)])
        if mesh is not None:
            chunk = distributed.put(chunk, distributed.batch_sharding(mesh, chunk.ndim))
        p, t = eval_predictions(model, chunk, tta=tta)
        plain.append(distributed.to_host(p))
        augmented.append(distributed.to_host(t))
    model.train()
    plain, augmented = np.concatenate(plain)[:n], np.concatenate(augmented)[:n]
    labels = np.asarray(labels)
    return float(np.mean(plain == labels)), float(np.mean(augmented == labels)), augmented


# ---------------------------------------------------------------------------- Logging

COLUMNS = ["epoch", "train_loss", "train_acc", "test_acc", "lr", "epoch_s", "total_s"]
WIDTH = 10


def print_row(cells, head=False):
    if not distributed.is_main():  # one log for a run of several processes
        return
    line = "|" + "|".join(f" {str(c).rjust(WIDTH)} " for c in cells) + "|"
    rule = "-" * len(line)
    print("\n".join([rule, line, rule] if head else [line]), flush=True)


def log_epoch(r):
    print_row([
        r["epoch"], f"{r['train_loss']:.4f}", f"{r['train_acc']:.4f}", f"{r['test_acc']:.4f}",
        f"{r['lr']:.2e}", f"{r['epoch_s']:.1f}", f"{r['total_s']:.1f}",
    ])  # fmt: skip


def note(message):
    """A note or error on stderr, from process 0 only."""
    if distributed.is_main():
        print(message, file=sys.stderr, flush=True)


class NonFiniteLoss(RuntimeError):
    pass


# ---------------------------------------------------------------------------- Main


def main(argv=None) -> int:
    start_time = time.perf_counter()
    args = parse_args(argv)
    # Before anything touches a device: join the other processes of a multi-host run.
    distributed.initialize(
        args.coordinator, args.num_processes, args.process_id, auto=args.distributed == "auto"
    )
    if args.coordinator is None and not args.distributed and (hint := distributed.cluster_hint()):
        note(hint)
    cfg = make_config(args)
    out_dir = Path(args.out_dir or f"runs/{cfg['model']}-seed{cfg['seed']}")
    ckpt_dir = out_dir / "checkpoints"
    earlier = ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir())
    if earlier and not args.resume and not args.overwrite:
        note(
            f"error: {ckpt_dir} holds checkpoints of an earlier run; pass --resume to "
            "continue it, --overwrite to start afresh, or another --out-dir"
        )
        return 2

    # ---- Devices ----
    # One "data" axis over the devices of every process: batches are split along it,
    # everything else (data set, parameters, optimiser state) is replicated on it.
    try:
        mesh = distributed.make_mesh(args.devices)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n_devices, replicated = mesh.size, distributed.replicated(mesh)

    # ---- Data ----
    # Every process reads the whole data set; each device gathers its own rows of a batch.
    # Process 0 goes first, so that a download happens once (on a shared file system).
    cifar = data.load_cifar10(args.data_dir) if distributed.is_main() else None
    distributed.barrier("data")
    cifar = cifar or data.load_cifar10(args.data_dir)
    train_np = (cifar.train_images[: args.train_limit], cifar.train_labels[: args.train_limit])
    test_images = cifar.test_images[: args.test_limit]  # stays on the host: fed per batch
    test_labels = cifar.test_labels[: args.test_limit]
    n_train = len(train_np[0])
    batch_size = min(cfg["batch_size"], n_train)
    if batch_size < cfg["batch_size"]:
        note(
            f"note: batch size {cfg['batch_size']} > {n_train} training images; using {batch_size}"
        )
    if batch_size % n_devices:
        note(
            f"error: the batch size ({batch_size}) must divide by the number of devices "
            f"({n_devices}); pass a --batch-size that is a multiple of {n_devices} or other "
            "--devices"
        )
        return 2
    steps_per_epoch = n_train // batch_size  # the last partial batch is dropped
    total_steps = math.ceil(steps_per_epoch * cfg["epochs"])
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    if earlier and not args.resume and distributed.is_main():  # --overwrite, once all is checked
        shutil.rmtree(ckpt_dir)
    distributed.barrier("out_dir")
    out_dir.mkdir(parents=True, exist_ok=True)

    key = jax.random.key(cfg["seed"], impl=KEY_IMPL)
    aug_key, flip_key = jax.random.fold_in(key, 1), jax.random.fold_in(key, 2)
    train = (
        distributed.put(train_np[0], replicated),  # uint8 NCHW, on the devices for the whole run
        distributed.put(train_np[1], replicated),
        distributed.put(augment.base_flips(flip_key, n_train), replicated),
    )

    # ---- Model and optimiser ----
    model = models.build_model(cfg["model"], seed=cfg["seed"], dtype=DTYPES[cfg["dtype"]])
    models.init_whitening(model, augment.normalize(jnp.asarray(train_np[0][:WHITEN_IMAGES])))
    distributed.replicate(model, mesh, from_process_0=True)  # identical on every process
    optimizer, schedule = make_optimizer(model, cfg, total_steps, batch_size)
    distributed.replicate(optimizer, mesh)
    train_step = make_train_step(cfg, batch_size)
    n_params = models.count_params(model)

    # ---- Resume ----
    checkpointer = Checkpointer(ckpt_dir)
    history, ema, epoch0, elapsed_before = [], None, 0, 0.0
    if args.resume:
        latest = checkpointer.latest_step()
        if latest is None:
            note(f"note: no checkpoint in {ckpt_dir}; starting from scratch")
        else:
            saved = checkpointer.read_meta(latest)
            saved_cfg = {"dtype": "float32", **saved["config"]}  # runs from before --dtype
            if diff := {k: (saved_cfg.get(k), v) for k, v in cfg.items() if saved_cfg.get(k) != v}:
                changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
                note(
                    f"error: --resume with settings that differ from the checkpoint's "
                    f"({changes}); rerun with the original flags"
                )
                return 2
            template = nnx.to_pure_dict(nnx.state(model, LOOKAHEAD_VARS))
            ema, meta = checkpointer.restore(
                latest,
                model=model,
                optimizer=optimizer,
                ema=template if saved["ema_started"] else None,
            )
            history, epoch0, elapsed_before = meta["history"], meta["epoch"], meta["elapsed_s"]
            aug_key = jax.random.wrap_key_data(
                jnp.asarray(meta["aug_key"], jnp.uint32), impl=KEY_IMPL
            )
            note(
                f"resumed from {ckpt_dir / str(latest)} (epoch {epoch0}, step "
                f"{meta['global_step']})"
            )
    if distributed.is_main():
        with open(out_dir / "metrics.jsonl", "w") as f:  # rewritten: drops epochs past the ckpt
            f.writelines(json.dumps(h) + "\n" for h in history)
        processes = jax.process_count()
        on = f"{n_devices} {mesh.devices.flat[0].platform} device(s)"
        on += f" in {processes} processes" if processes > 1 else ""
        print(
            f"{cfg['model']}: {n_params:,} parameters; {n_train} train / {len(test_labels)} test "
            f"images; {total_steps} steps of {batch_size} ({cfg['epochs']} epochs); "
            f"{cfg['optimizer']} lr {cfg['lr']}; {cfg['dtype']} on {on}; seed {cfg['seed']}; "
            f"out {out_dir}",
            flush=True,
        )
    print_row(COLUMNS, head=True)
    for record in history:
        log_epoch(record)

    # ---- Training ----
    global_step = epoch0 * steps_per_epoch
    first_step_s, run_steps, run_train_s = None, 0, 0.0  # this process only
    for epoch in range(epoch0, n_epochs):
        steps = min(steps_per_epoch, total_steps - global_step)
        rng = np.random.default_rng([cfg["seed"], epoch])  # the data order of this epoch
        order = rng.permutation(n_train)[: steps * batch_size].astype(np.int32)
        # (steps, batch): the batch axis split over the devices, each device its own rows.
        split_batches = distributed.batch_sharding(mesh, ndim=2, axis=1)
        perm = distributed.put(order.reshape(steps, batch_size), split_batches)
        epoch_key = distributed.put(jax.random.fold_in(aug_key, epoch), replicated)
        metrics = {
            "loss": distributed.put(np.zeros((), np.float32), replicated),
            "correct": distributed.put(np.zeros((), np.int32), replicated),
        }
        train_whiten_bias = epoch < cfg["whiten_bias_epochs"]
        bar = tqdm(
            total=steps * batch_size,
            unit="img",
            unit_scale=True,
            leave=False,
            desc=f"epoch {epoch + 1}/{n_epochs}",
            file=sys.stderr,
            disable=args.no_progress or not distributed.is_main(),
            mininterval=1.0,
        )
        t0 = time.perf_counter()
        pending = None  # the previous step's loss, read after the next step is queued
        try:
            for step in range(steps):
                t_step = time.perf_counter()
                batch = (train, perm, epoch_key, epoch, step, train_whiten_bias)
                metrics, loss = train_step(model, optimizer, metrics, *batch)
                if first_step_s is None:  # the first call compiles: time it on its own
                    loss.block_until_ready()
                    first_step_s = time.perf_counter() - t_step
                global_step += 1
                run_steps += 1
                ema = maybe_lookahead(model, ema, cfg, epoch, global_step, total_steps)
                if pending is not None:
                    show_progress(bar, check_loss(pending, epoch, global_step - 1, cfg), batch_size)
                pending = loss
            show_progress(bar, check_loss(pending, epoch, global_step, cfg), batch_size)
        except NonFiniteLoss as exc:  # the loss is replicated: every process stops here
            bar.close()
            note(f"error: {exc}")
            last = checkpointer.latest_step()
            kept = f"epoch {last} in {ckpt_dir}" if last is not None else "none written yet"
            note(f"last good checkpoint: {kept}")
            return NAN_EXIT_CODE
        if ema is not None:  # airbench copies the average into the model after every epoch
            ema = lookahead_step(model, ema, 1.0)
        bar.close()
        epoch_s = time.perf_counter() - t0
        run_train_s += epoch_s
        if not all_finite(model):
            note(
                f"error: the parameters became NaN/inf in epoch {epoch + 1}; lower --lr "
                f"(now {cfg['lr']})"
            )
            return NAN_EXIT_CODE

        # ---- Evaluation ----
        last_epoch = epoch == n_epochs - 1
        test_acc, tta_acc, predictions = evaluate(
            model, test_images, test_labels, cfg["tta"] and last_epoch, mesh
        )
        n_seen = steps * batch_size
        record = {
            "epoch": epoch + 1,
            "step": global_step,
            "train_loss": float(metrics["loss"]) / n_seen,
            "train_acc": float(metrics["correct"]) / n_seen,
            "test_acc": test_acc,
            "lr": float(schedule(global_step - 1)),
            "epoch_s": epoch_s,
            "total_s": elapsed_before + time.perf_counter() - start_time,
        }
        if last_epoch:
            record["test_acc_tta"] = tta_acc
        history.append(record)
        log_epoch(record)

        # ---- Checkpoint ----
        # Every process calls save; orbax coordinates them and the primary (process 0)
        # writes the replicated arrays and the JSON record.
        meta = {
            "epoch": epoch + 1,
            "global_step": global_step,
            "data_order": {"epoch": epoch + 1, "permutation_seed": [cfg["seed"], epoch + 1]},
            "aug_key": np.asarray(jax.random.key_data(aug_key)).tolist(),
            "ema_started": ema is not None,
            "history": history,
            "elapsed_s": record["total_s"],
            "config": cfg,
        }
        checkpointer.save(epoch + 1, model=model, optimizer=optimizer, ema=ema, meta=meta)
        if distributed.is_main():
            with open(out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
    checkpointer.close()
    if jax.process_count() > 1:  # the replicas must agree: every process shows its copy's hash
        print(
            f"process {jax.process_index()}/{jax.process_count()}: parameter checksum "
            f"{distributed.checksum(model)}",
            file=sys.stderr,
            flush=True,
        )

    # ---- Summary ----
    if epoch0 == n_epochs:  # resumed a finished run: evaluate again for the summary
        _, tta_acc, predictions = evaluate(model, test_images, test_labels, cfg["tta"], mesh)
    if not distributed.is_main():
        return 0
    if not args.no_plots:
        from train import plots

        plots.plot_curves(history, out_dir / "curves.png")
        plots.plot_filters(models.first_conv(model).weight[...], out_dir / "filters.png")
        cm = plots.confusion_matrix(test_labels, predictions, len(cifar.class_names))
        plots.plot_confusion(cm, cifar.class_names, out_dir / "confusion.png")
    # Throughput after compilation: the first step of this process (compile) is left out.
    if run_steps > 1:
        images_per_second = (run_steps - 1) * batch_size / (run_train_s - first_step_s)
    else:
        images_per_second = run_steps * batch_size / run_train_s if run_train_s else None
    final = history[-1]
    summary = {
        "model": cfg["model"],
        "seed": cfg["seed"],
        "test_accuracy": tta_acc if cfg["tta"] else final["test_acc"],
        "test_accuracy_no_tta": final["test_acc"],
        "tta": cfg["tta"],
        "wall_time_s": elapsed_before + time.perf_counter() - start_time,
        "train_time_s": sum(h["epoch_s"] for h in history),
        "first_step_s": first_step_s,  # compile + one step, in this process
        "images_per_second": images_per_second,  # training only, after compilation, all devices
        "epochs": cfg["epochs"],
        "steps": total_steps,
        "batch_size": batch_size,
        "train_images": n_train,
        "test_images": len(test_labels),
        "parameters": n_params,
        "optimizer": cfg["optimizer"],
        "lr": cfg["lr"],
        "dtype": cfg["dtype"],
        "devices": n_devices,
        "processes": jax.process_count(),
        "config": cfg,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"test accuracy {100 * summary['test_accuracy']:.2f}% in {summary['wall_time_s']:.1f} s "
        f"(model {cfg['model']}, seed {cfg['seed']}, {n_train} train images, "
        f"{images_per_second or 0:.1f} train images/s)",
        flush=True,
    )
    return 0


def maybe_lookahead(model, ema, cfg, epoch, global_step, total_steps):
    """airbench's lookahead: from epoch 3, every 5 steps average the weights and copy back.

    The decay warms up as ``(ema ** 5) * (step / total_steps) ** 3``: fast moves early,
    strong averaging at the end. The first qualifying step only starts the average.
    """
    la = LOOKAHEAD
    if not cfg["ema"] or epoch < la["start_epochs"] or global_step % la["every_n_steps"]:
        return ema
    if ema is None:
        return nnx.to_pure_dict(jax.tree.map(jnp.copy, nnx.state(model, LOOKAHEAD_VARS)))
    base = cfg["ema"] ** la["every_n_steps"]
    decay = base * (global_step / total_steps) ** la["decay_pow"]
    return lookahead_step(model, ema, decay)


def check_loss(loss, epoch, global_step, cfg):
    """Fetches a step's summed loss (waits for that step) and stops on NaN/inf."""
    value = float(loss)
    if not math.isfinite(value):
        raise NonFiniteLoss(
            f"non-finite loss ({value}) at epoch {epoch + 1}, step {global_step}; training "
            f"diverged, try a lower --lr (now {cfg['lr']})"
        )
    return value


def show_progress(bar, loss_sum, batch_size):
    bar.set_postfix(loss=f"{loss_sum / batch_size:.3f}", refresh=False)
    bar.update(batch_size)


def all_finite(model):
    leaves = jax.tree.leaves(nnx.state(model))
    return bool(
        all(jnp.all(jnp.isfinite(x)) for x in leaves if jnp.issubdtype(x.dtype, jnp.floating))
    )


if __name__ == "__main__":
    sys.exit(main())
