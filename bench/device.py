"""On a machine with a GPU: the op suite and the train step, ours vs XLA (cuDNN) vs PyTorch CUDA.

One prepared script, sized to finish in a few minutes (compiles included) so that it
fits a short loan of an accelerator: ``make bench-device``. Every implementation is
timed interleaved with the others (min of the repeats, after a warm-up call that
compiles), forward and forward+backward for the ops, one full step (forward, backward,
Nesterov SGD) for airbench94. Writes ``bench/out/device.md``.

    python -m bench.device                 # on the GPU machine
    python -m bench.device --dry-run       # tiny shapes, any backend: checks the script
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import lax

import jspatial as js

CONVS = [(3, 64, 32), (64, 64, 32), (64, 128, 16), (128, 128, 16), (128, 256, 8), (256, 256, 8)]


def cases(batch: int, scale: int = 1):
    """``(name, x shape, w shape, ours, xla, torch_fn)``; ``scale`` divides the channels."""
    out = []
    for c, o, s in CONVS:
        c, o = max(1, c // scale), max(1, o // scale)
        out.append(
            (
                f"conv {c}->{o} @{s}",
                (batch, c, s, s),
                (o, c, 3, 3),
                lambda x, w: js.conv2d(x, w, padding=1),
                lambda x, w: lax.conv_general_dilated(
                    x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW")
                ),
                lambda F, x, w: F.conv2d(x, w, padding=1),
            )
        )
    c = max(1, 64 // scale)
    out.append(
        (
            f"maxpool 2x2 {c}ch @32",
            (batch, c, 32, 32),
            (c,),
            lambda x, w: js.max_pool2d(x, 2),
            lambda x, w: lax.reduce_window(
                x, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID"
            ),  # noqa: E501
            lambda F, x, w: F.max_pool2d(x, 2),
        )
    )
    c = max(1, 256 // scale)
    out.append(
        (
            f"batchnorm {c}ch @8",
            (batch, c, 8, 8),
            (c,),
            lambda x, w: js.batch_norm(x, w, w, None, None, training=True)[0],
            lambda x, w: (
                (x - x.mean((0, 2, 3), keepdims=True))
                * lax.rsqrt(x.var((0, 2, 3), keepdims=True) + 1e-5)
                * w[:, None, None]
                + w[:, None, None]
            ),
            lambda F, x, w: F.batch_norm(x, None, None, w, w, training=True),
        )
    )
    return out


def _best_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def jax_pair(f, x, w):
    fwd = jax.jit(f)
    grad = jax.jit(jax.grad(lambda x, w: jnp.sum(f(x, w) * 0.001), argnums=(0, 1)))
    jax.block_until_ready((fwd(x, w), grad(x, w)))  # compile
    return (
        lambda: jax.block_until_ready(fwd(x, w)),
        lambda: jax.block_until_ready(grad(x, w)),
    )


def torch_pair(torch, fn, x_shape, w_shape, device):
    F = torch.nn.functional
    x = torch.randn(x_shape, device=device, requires_grad=True)
    w = torch.randn(w_shape, device=device, requires_grad=True)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def fwd():
        with torch.no_grad():
            fn(F, x, w)
        sync()

    def fwd_bwd():
        (fn(F, x, w) * 0.001).sum().backward()
        x.grad = w.grad = None
        sync()

    fwd(), fwd_bwd()
    return fwd, fwd_bwd


def op_table(batch, scale, repeats, torch, device) -> list[str]:
    lines = [
        "| op | fwd ms ours / XLA / torch | f+b ms ours / XLA / torch | f+b ours/XLA | "
        "f+b ours/torch |",
        "|---|---|---|---|---|",
    ]
    key = jax.random.key(0)
    for name, xs, ws, ours, xla, tfn in cases(batch, scale):
        x = jax.random.normal(key, xs)
        w = jax.random.normal(key, ws) * 0.05 + (1.0 if len(ws) == 1 else 0.0)
        runners = {"ours": jax_pair(ours, x, w), "xla": jax_pair(xla, x, w)}
        if torch is not None:
            runners["torch"] = torch_pair(torch, tfn, xs, ws, device)
        ms = {k: [_best_ms(r[0], repeats), _best_ms(r[1], repeats)] for k, r in runners.items()}
        t = ms.get("torch", [float("nan")] * 2)
        lines.append(
            f"| {name} | {ms['ours'][0]:.2f} / {ms['xla'][0]:.2f} / {t[0]:.2f} | "
            f"{ms['ours'][1]:.2f} / {ms['xla'][1]:.2f} / {t[1]:.2f} | "
            f"**{ms['ours'][1] / ms['xla'][1]:.2f}** | {ms['ours'][1] / t[1]:.2f} |"
        )
        print(lines[-1], flush=True)
    return lines


def train_table(batch, repeats, torch, device) -> list[str]:
    from bench.accel import train_step_fn

    lines = ["| airbench94 step | ms | images/s |", "|---|---|---|"]
    kx, ky = jax.random.split(jax.random.key(0))
    for kind, label in (("ours", "jspatial"), ("flax", "Flax built-ins (XLA)")):
        step, (params, rest, opt_state, _, _) = train_step_fn(kind, batch)
        step = jax.jit(step)
        x = jax.random.normal(kx, (batch, 3, 32, 32))
        y = jax.random.randint(ky, (batch,), 0, 10)
        jax.block_until_ready(step(params, rest, opt_state, x, y))
        args = (params, rest, opt_state, x, y)
        ms = _best_ms(lambda step=step, args=args: jax.block_until_ready(step(*args)), repeats)
        lines.append(f"| {label} | {ms:.1f} | {batch / ms * 1e3:.0f} |")
        print(lines[-1], flush=True)
    if torch is not None:
        from bench.train_torch import make_net

        net = make_net().to(device)
        opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.85, nesterov=True)
        xt = torch.randn(batch, 3, 32, 32, device=device)
        yt = torch.randint(0, 10, (batch,), device=device)
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.2, reduction="sum")
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

        def tstep():
            opt.zero_grad(set_to_none=True)
            loss_fn(net(xt), yt).backward()
            opt.step()
            sync()

        tstep()
        ms = _best_ms(tstep, repeats)
        lines.append(f"| PyTorch ({device}) | {ms:.1f} | {batch / ms * 1e3:.0f} |")
        print(lines[-1], flush=True)
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on any backend")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--train-batch", type=int, default=512)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--out", default="bench/out/device.md")
    args = parser.parse_args(argv)
    batch, train_batch, scale, repeats = args.batch, args.train_batch, 1, args.repeats
    if args.dry_run:
        batch, train_batch, scale, repeats = 2, 4, 16, 1
    dev = jax.devices()[0]
    if not args.dry_run and dev.platform == "cpu":
        raise SystemExit("bench.device needs a GPU or TPU; use --dry-run to check the script")
    torch, device = None, "cpu"
    if not args.no_torch:
        try:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            torch = None
    start = time.perf_counter()
    lines = [
        f"# Device benchmark, {time.strftime('%Y-%m-%d')}",
        "",
        f"{dev.platform} ({dev.device_kind}), JAX {jax.__version__}, Python "
        f"{platform.python_version()}"
        + (f", PyTorch {torch.__version__} on {device}" if torch is not None else ""),
        "",
        f"Ops: float32, batch {batch}, min of {repeats}; ms.",
        "",
        *op_table(batch, scale, repeats, torch, device),
        "",
        f"Train step: batch {train_batch}, min of {repeats}.",
        "",
        *train_table(train_batch, repeats, torch, device),
        "",
        f"Total wall time {time.perf_counter() - start:.0f} s.",
    ]
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
