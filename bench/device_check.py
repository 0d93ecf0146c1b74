"""On a machine with a GPU: jspatial's ops computed there against XLA's primitives on the CPU.

The GPU runs the Pallas Triton tap kernels (compute capability 8.0 and up) or the portable
loops with the GPU settings (``jspatial._tuning``); this checks what they compute, before
anything is timed. Each case draws fresh random inputs, runs the op forward and backward
(``jax.vjp``, a random cotangent) jitted on the default device, and the same function
built from XLA's own primitives (``lax.conv_general_dilated``, ``lax.reduce_window``),
jitted on the CPU at ``Precision.HIGHEST``. The error is ``|ours - ref| / |ref|`` (norms
over the whole array) for the output and every gradient. Float32 on a GPU may multiply in
TF32 (XLA's default there, and Triton's for a float32 dot), about 3e-4 relative, so a
case passes below ``TOL``; NaN never does. Inputs are random normal, never zeros. Then
the airbench94 train step (``bench.accel.train_step_fn``) runs three steps on each device
from the same parameters and batch, and the losses are compared.

    PYTHONPATH=. python3 -m bench.device_check     # or make bench-device-check; ~2 minutes
    PYTHONPATH=. python3 -m bench.device_check --quick    # fewer cases (any backend)

Exits 1 if any case fails, so a device script can stop on it.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jspatial as js
from bench.ops import _xla_batch_norm

TOL = 2e-3  # TF32 products: ~3e-4 relative; BatchNorm's and pooling's paths are float32
HIGHEST = lax.Precision.HIGHEST


def _conv_ref(x, w, b, stride, padding, dilation, groups, fmt):
    dims = (fmt, "OIHW", fmt)
    pads = [(p, p) for p in padding]
    y = lax.conv_general_dilated(x, w, stride, pads, rhs_dilation=dilation, dimension_numbers=dims,
                                 feature_group_count=groups, precision=HIGHEST)  # fmt: skip
    return y + (b[:, None, None] if fmt == "NCHW" else b)


def _conv_ours(x, w, b, geometry, fmt):
    stride, padding, dilation, groups = geometry
    return js.conv2d(x, w, b, stride, padding, dilation, groups, data_format=fmt)


def _bn_ours(x, w, b, fmt):
    return js.batch_norm(x, None, None, w, b, training=True, data_format=fmt)[0]


def _pool_ref(x, k, s, fmt, kind):
    win = (1, 1, k, k) if fmt == "NCHW" else (1, k, k, 1)
    st = (1, 1, s, s) if fmt == "NCHW" else (1, s, s, 1)
    if kind == "max":
        return lax.reduce_window(x, -jnp.inf, lax.max, win, st, "VALID")
    return lax.reduce_window(x, 0.0, lax.add, win, st, "VALID") / (k * k)


def conv_cases(quick: bool):
    """(name, x NCHW shape, weight shape, stride, padding, dilation, groups)."""
    cases = [
        ("conv 24->64 @31 (airbench)", (64, 24, 31, 31), (64, 24, 3, 3), 1, 1, 1, 1),
        ("conv 64->256 @15 (airbench)", (64, 64, 15, 15), (256, 64, 3, 3), 1, 1, 1, 1),
        ("conv 256->256 @3 (airbench)", (64, 256, 3, 3), (256, 256, 3, 3), 1, 1, 1, 1),
        ("conv 3->24 2x2 valid (whiten)", (64, 3, 32, 32), (24, 3, 2, 2), 1, 0, 1, 1),
        ("conv 5->7 5x3 odd", (3, 5, 13, 11), (7, 5, 5, 3), 1, 2, 1, 1),
        ("conv stride 2", (4, 16, 17, 17), (32, 16, 3, 3), 2, 1, 1, 1),
        ("conv stride 3 > kernel 2", (4, 8, 16, 16), (8, 8, 2, 2), 3, 0, 1, 1),
        ("conv dilation 2", (4, 16, 15, 15), (16, 16, 3, 3), 1, 2, 2, 1),
        ("conv groups 4", (4, 16, 12, 12), (32, 4, 3, 3), 1, 1, 1, 4),
        ("conv depthwise", (4, 16, 12, 12), (16, 1, 3, 3), 1, 1, 1, 16),
    ]
    return cases[:4] if quick else cases


def check(name, ours_fn, ref_fn, args, errors):
    """Forward and vjp of ``ours_fn`` on the default device against ``ref_fn`` on the CPU."""
    cpu = jax.devices("cpu")[0]

    def fwd_bwd(fn):
        def run(*a):
            y, vjp = jax.vjp(fn, *a)
            g = jax.random.normal(jax.random.key(7), y.shape, y.dtype)
            return (y, *vjp(g))

        return run

    ours = jax.jit(fwd_bwd(ours_fn))(*args)
    with jax.default_device(cpu):
        ref = jax.jit(fwd_bwd(ref_fn))(*[jax.device_put(a, cpu) for a in args])
    rels = []
    for o, r in zip(ours, ref):
        o, r = np.asarray(o, np.float64), np.asarray(r, np.float64)
        rels.append(float(np.linalg.norm(o - r) / max(np.linalg.norm(r), 1e-30)))
    ok = all(np.isfinite(rels)) and max(rels) < TOL
    print(f"  {'ok ' if ok else 'BAD'} {name}: rel err " + " / ".join(f"{e:.1e}" for e in rels),
          flush=True)  # fmt: skip
    if not ok:
        errors.append(name)


def train_step_losses(device, steps=3):
    """Losses of ``steps`` airbench94 steps on ``device`` from the same parameters and batch."""
    from bench.accel import train_step_fn

    step, (params, rest, opt_state, x, y) = train_step_fn("ours", 64)
    kx, ky = jax.random.split(jax.random.key(3))
    x, y = jax.random.normal(kx, x.shape), jax.random.randint(ky, y.shape, 0, 10)
    state = jax.device_put((params, rest, opt_state), device)
    x, y = jax.device_put((x, y), device)
    jstep, losses = jax.jit(step), []
    for _ in range(steps):
        *state, loss = jstep(*state, x, y)
        losses.append(float(loss))
    return losses


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-step", action="store_true", help="skip the train-step comparison")
    args = p.parse_args(argv)
    dev = jax.devices()[0]
    print(f"jspatial device check on {dev.device_kind} ({dev.platform}), JAX {jax.__version__}",
          flush=True)  # fmt: skip
    start, errors = time.perf_counter(), []
    keys = iter(jax.random.split(jax.random.key(0), 1000))
    normal = lambda shape: jax.random.normal(next(keys), shape, jnp.float32)  # noqa: E731
    for fmt in ("NCHW", "NHWC"):
        to = (lambda s: s) if fmt == "NCHW" else (lambda s: (s[0], s[2], s[3], s[1]))
        for name, xs, ws, s, pad, d, g in conv_cases(args.quick):
            x, w, b = normal(to(xs)), normal(ws) * 0.1, normal((ws[0],))
            ours = partial(_conv_ours, geometry=(s, pad, d, g), fmt=fmt)
            ref = partial(_conv_ref, stride=(s, s), padding=(pad, pad), dilation=(d, d),
                          groups=g, fmt=fmt)  # fmt: skip
            check(f"{name} {fmt}", ours, ref, (x, w, b), errors)
        for kind, k in (("max", 2), ("max", 3), ("avg", 2)):
            x = normal(to((64, 64, 31, 31)))
            op = js.max_pool2d if kind == "max" else js.avg_pool2d
            ours = partial(op, kernel_size=k, data_format=fmt)
            ref = partial(_pool_ref, k=k, s=k, fmt=fmt, kind=kind)
            check(f"{kind}_pool2d {k}x{k} @31 {fmt}", ours, ref, (x,), errors)
        x, w, b = normal(to((64, 256, 7, 7))), normal((256,)), normal((256,))
        ours, ref = partial(_bn_ours, fmt=fmt), partial(_xla_batch_norm, data_format=fmt)
        check(f"batch_norm train 256ch @7 {fmt}", ours, ref, (x, w, b), errors)
    if not args.no_step:
        gpu, cpu = train_step_losses(dev), train_step_losses(jax.devices("cpu")[0])
        rel = max(abs(a - b) / abs(b) for a, b in zip(gpu, cpu))
        ok = np.isfinite(rel) and rel < 1e-2
        print(f"  {'ok ' if ok else 'BAD'} airbench94 train step, batch 64, 3 steps: losses "
              f"{[round(v, 4) for v in gpu]} here, {[round(v, 4) for v in cpu]} on the CPU",
              flush=True)  # fmt: skip
        if not ok:
            errors.append("train step")
    elapsed = time.perf_counter() - start
    print(f"{len(errors)} failed ({', '.join(errors) or 'none'}) in {elapsed:.0f} s")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
