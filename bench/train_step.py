"""Train-step benchmark: the default CIFAR-10 model (airbench94) built three ways.

(a) jspatial layers (``train.models.Airbench94``), (b) the same architecture on Flax
NNX built-ins (``nnx.Conv``, ``nnx.max_pool``, ``nnx.BatchNorm``, NHWC; the recipe's own
``train.models.gelu``, so that the two differ in their layers alone), (c) PyTorch
CPU (eager, channels_last; ``bench.train_torch``). One step = forward, backward,
Nesterov SGD update and BatchNorm statistics on a random batch. The three are timed
interleaved in one process (min of the repeats); the first jitted step is timed on its
own, and its excess over a steady step is the compile time. Peak RSS is measured for
each in a fresh subprocess, and for the JAX ones the compiled step's scratch memory
(XLA's temporaries, most of that peak).

    python -m bench.train_step                  # batch 512, writes bench/out/train_step.md
    python -m bench.train_step --batch 256 --repeats 3
    python -m bench.train_step --data-format NHWC   # the jspatial model's layers channels last

``--data-format`` is the layout of the jspatial model's layers (and so of its input batch,
made NHWC once, outside the timed step); the default is the recipe's
(``train.config.Config.data_format``, NCHW). The Flax model is NHWC and the PyTorch one
channels_last whatever it says.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from bench.ops import interleaved, machine, write_report
from train.config import Config
from train.models import gelu

WIDTHS = (64, 256, 256)


# ----------------------------------------------------------------------------- (b) Flax built-ins


class FlaxGroup(nnx.Module):
    def __init__(self, c_in, c_out, rngs):
        conv = lambda a, b: nnx.Conv(a, b, (3, 3), padding="SAME", use_bias=False, rngs=rngs)  # noqa: E731
        # Flax's momentum is the weight of the old statistic: PyTorch's 0.4 is Flax's 0.6.
        norm = lambda c: nnx.BatchNorm(c, momentum=0.6, epsilon=1e-12, rngs=rngs)  # noqa: E731
        self.conv1, self.norm1 = conv(c_in, c_out), norm(c_out)
        self.conv2, self.norm2 = conv(c_out, c_out), norm(c_out)

    def __call__(self, x):
        x = nnx.max_pool(self.conv1(x), (2, 2), (2, 2))
        x = gelu(self.norm1(x))
        return gelu(self.norm2(self.conv2(x)))


class FlaxAirbench(nnx.Module):
    """airbench94 on Flax built-ins, NHWC."""

    def __init__(self, rngs):
        self.whiten = nnx.Conv(3, 24, (2, 2), padding="VALID", rngs=rngs)
        chans = (24, *WIDTHS)
        self.groups = nnx.List([FlaxGroup(a, b, rngs) for a, b in zip(chans[:-1], chans[1:])])
        self.head = nnx.Linear(WIDTHS[-1], 10, use_bias=False, rngs=rngs)

    def __call__(self, x):  # x: NCHW like the others; the transpose is part of the model
        x = gelu(self.whiten(jnp.transpose(x, (0, 2, 3, 1))))
        for group in self.groups:
            x = group(x)
        x = nnx.max_pool(x, (3, 3), (3, 3))
        return self.head(x.reshape(x.shape[0], -1)) / 9


# ----------------------------------------------------------------------------- JAX steps


def build(kind: str, data_format: str = "NCHW"):
    # Each model is initialised by one jitted function, one compile, where eager
    # initialisers compile a program per parameter shape (airbench94 on jspatial: 2.7 s
    # and 86 MB more peak memory than 0.7 s jitted, here); the parameters are the same.
    if kind == "jspatial":
        from train.models import Airbench94

        model = nnx.jit(lambda: Airbench94(rngs=nnx.Rngs(0), data_format=data_format))()
    else:
        model = nnx.jit(lambda: FlaxAirbench(nnx.Rngs(0)))()
    tx = optax.sgd(1e-3, momentum=0.85, nesterov=True)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        def loss_fn(model):
            logits = model(x)
            targets = optax.smooth_labels(jax.nn.one_hot(y, 10), 0.2)
            return optax.softmax_cross_entropy(logits, targets).sum()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    return model, optimizer, step


def batch(n: int, data_format: str = "NCHW"):
    """A random NCHW batch of ``n`` images and labels, the images in ``data_format``."""
    from train.models import model_input

    kx, ky = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (n, 3, 32, 32))
    return model_input(x, data_format), jax.random.randint(ky, (n,), 0, 10)


def jax_runner(kind: str, n: int, data_format: str = "NCHW"):
    model, optimizer, step = build(kind, data_format)
    x, y = batch(n, data_format if kind == "jspatial" else "NCHW")
    start = time.perf_counter()
    jax.block_until_ready(step(model, optimizer, x, y))
    compile_s = time.perf_counter() - start
    return (lambda: jax.block_until_ready(step(model, optimizer, x, y))), compile_s


def torch_runner(n: int, device: str = "cpu"):
    """``(step, first step s)``: PyTorch's airbench94 step on ``device``; ``step()``
    returns when the device is done (``torch.cuda.synchronize`` on a GPU)."""
    import torch

    from bench.train_torch import make_net, torch_sync

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    net = make_net().to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.85, nesterov=True)
    x = torch.randn(n, 3, 32, 32).to(device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (n,)).to(device)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.2, reduction="sum")
    sync = torch_sync(device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        sync()

    start = time.perf_counter()
    step()
    return step, time.perf_counter() - start


def xla_temp_mb(kind: str, n: int, data_format: str = "NCHW") -> float:
    """The compiled step's scratch memory (XLA's ``memory_analysis``, its temporaries: the
    activations kept for the backward pass and every buffer in flight), compiled, not run."""
    model, optimizer, step = build(kind, data_format)
    x, y = batch(n, data_format if kind == "jspatial" else "NCHW")
    compiled = step.lower(model, optimizer, x, y).compile()
    return compiled.memory_analysis().temp_size_in_bytes / 2**20


def runner(kind: str, n: int, data_format: str = "NCHW"):
    return torch_runner(n) if kind == "torch" else jax_runner(kind, n, data_format)


def _peak_rss_mb() -> float:
    """This process's peak resident memory.

    ``VmHWM`` belongs to the process image and starts afresh at ``exec``; ``ru_maxrss``
    does not (Linux carries it over from the forking parent), so it would report the
    benchmark's own peak for every child.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mb(kind: str, n: int, data_format: str = "NCHW") -> float:
    """Peak resident memory of a fresh process that builds ``kind`` and runs 2 steps."""
    command = [sys.executable, "-m", "bench.train_step", "--rss-child", kind, "--batch", str(n),
               "--data-format", data_format]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--kinds", default="jspatial,flax,torch")
    parser.add_argument("--no-rss", action="store_true")
    parser.add_argument("--data-format", choices=("NCHW", "NHWC"), default=Config.data_format,
                        help="layout of the jspatial model's layers and input")  # fmt: skip
    parser.add_argument("--rss-child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="bench/out/train_step.md")
    args = parser.parse_args(argv)

    if args.rss_child:
        step, _ = runner(args.rss_child, args.batch, args.data_format)
        step()
        print(json.dumps({"peak_rss_mb": _peak_rss_mb()}))
        return

    kinds = args.kinds.split(",")
    steps, compile_s = {}, {}
    for kind in kinds:
        steps[kind], compile_s[kind] = runner(kind, args.batch, args.data_format)
        print(f"  {kind}: first step (compile + run) {compile_s[kind]:.1f} s", flush=True)
    times = {k: [] for k in kinds}
    for order in interleaved(kinds, args.repeats):
        for kind in order:
            start = time.perf_counter()
            steps[kind]()
            times[kind].append(time.perf_counter() - start)
    rss = {
        k: (None if args.no_rss else peak_rss_mb(k, args.batch, args.data_format)) for k in kinds
    }
    temp = {
        k: (None if args.no_rss or k == "torch" else xla_temp_mb(k, args.batch, args.data_format))
        for k in kinds
    }

    best = {k: min(v) for k, v in times.items()}
    lines = [
        f"# Train-step benchmark, {time.strftime('%Y-%m-%d')}",
        "",
        f"Machine: {machine()}",
        "",
        f"airbench94 (widths {WIDTHS}), float32, batch {args.batch}, min of {args.repeats} "
        f"interleaved steps; jspatial layers in {args.data_format}.",
        "",
        "| implementation | step s | images/s | vs Flax built-ins | vs PyTorch | "
        "first step s | compile s (first - steady) | peak RSS MB | XLA temp MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in kinds:

        def vs(other, kind=kind):
            return f"{best[other] / best[kind]:.2f}x" if other in best else "-"

        mb = "-" if rss[kind] is None else f"{rss[kind]:.0f}"
        tmp = "-" if temp[kind] is None else f"{temp[kind]:.0f}"
        lines.append(
            f"| {kind} | {best[kind]:.3f} | {args.batch / best[kind]:.0f} | {vs('flax')} | "
            f"{vs('torch')} | {compile_s[kind]:.1f} | {compile_s[kind] - best[kind]:.1f} | "
            f"{mb} | {tmp} |"
        )
    write_report("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
