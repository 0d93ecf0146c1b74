"""On a machine with a GPU: where a convolution's forward+backward time goes, pass by pass.

For the airbench94 layers at batch 512, times ``conv2d``'s forward, its input gradient
alone, its weight gradient alone (``jax.grad`` with respect to one argument: XLA drops
the other pass) and forward+backward, for jspatial's GPU path as dispatched (the Pallas
Triton tap kernels where ``jspatial._accel.gpu.conv.supports``), for the portable loops
with the GPU settings (``supports`` made to answer no), and for XLA's own convolution
(cuDNN). Each variant runs in its own process, so no cached program is shared. Times:
``bench.device.measure`` after a compiling call, the four passes of a layer interleaved,
the minimum over 20 samples of back-to-back calls lasting about 20 ms each.

    PYTHONPATH=. python3 -m bench.device_conv_passes          # all variants, ~3 minutes
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from functools import partial

LAYERS = [  # (name, x NCHW shape, weight shape)
    ("conv 24->64 @31", (512, 24, 31, 31), (64, 24, 3, 3)),
    ("conv 64->256 @15", (512, 64, 15, 15), (256, 64, 3, 3)),
    ("conv 256->256 @7", (512, 256, 7, 7), (256, 256, 3, 3)),
]
VARIANTS = ("triton", "portable", "xla")


def child(variant: str, fmt: str) -> list[dict]:
    import jax
    import jax.numpy as jnp
    from jax import lax

    import jspatial as js
    from bench.device import jax_loop, measure

    if variant == "portable":
        from jspatial._accel.gpu import conv as gconv

        gconv.supports = lambda geom, groups: False
    rows = []
    for name, xs, ws in LAYERS:
        kx, kw, kg = jax.random.split(jax.random.key(0), 3)
        shape = xs if fmt == "NCHW" else (xs[0], xs[2], xs[3], xs[1])
        x, w = jax.random.normal(kx, shape), jax.random.normal(kw, ws) * 0.1
        if variant == "xla":
            conv = partial(
                lax.conv_general_dilated,
                window_strides=(1, 1),
                padding=((1, 1), (1, 1)),
                dimension_numbers=(fmt, "OIHW", fmt),
            )
        else:
            conv = partial(js.conv2d, padding=1, data_format=fmt)
        g = jax.random.normal(kg, jax.eval_shape(conv, x, w).shape)

        def loss(x, w, conv=conv, g=g):
            return jnp.vdot(conv(x, w), g)

        fns = {
            "fwd": jax.jit(conv),
            "dx": jax.jit(jax.grad(loss, argnums=0)),
            "dw": jax.jit(jax.grad(loss, argnums=1)),
            "f+b": jax.jit(jax.value_and_grad(loss, argnums=(0, 1))),
        }
        for f in fns.values():
            jax.block_until_ready(f(x, w))  # compile
        ms = measure({k: jax_loop(f, x, w) for k, f in fns.items()}, repeats=20, sample_s=0.02)
        row = {"layer": name, "variant": variant, "layout": fmt}
        row.update({k: round(v, 3) for k, v in ms.items()})
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", nargs=2, metavar=("VARIANT", "LAYOUT"), help=argparse.SUPPRESS)
    p.add_argument("--layouts", default="NCHW,NHWC")
    args = p.parse_args(argv)
    if args.child:
        child(*args.child)
        return
    rows = []
    for fmt in args.layouts.split(","):
        for variant in VARIANTS:
            cmd = [sys.executable, "-m", "bench.device_conv_passes", "--child", variant, fmt]
            out = subprocess.run(cmd, capture_output=True, text=True)
            new = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
            for r in new:
                print(f"  {r}", flush=True)
            rows += new
            if out.returncode:
                print(f"{variant} {fmt} failed: {out.stderr[-600:]}", flush=True)
    print("| layer | layout | variant | fwd ms | dx ms | dw ms | f+b ms |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layer']} | {r['layout']} | {r['variant']} | {r['fwd']} | {r['dx']} | "
              f"{r['dw']} | {r['f+b']} |")  # fmt: skip


if __name__ == "__main__":
    main()
