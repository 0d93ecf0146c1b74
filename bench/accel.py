"""Accelerator benchmark without an accelerator: FLOPs and HBM bytes of a v5e compile.

JAX compiles ahead of time for a TPU topology described by libtpu (``jax[tpu]``, kept
in ``.venv-tpu``: ``make bench-accel``), and XLA's cost analysis of the compiled
program counts FLOPs and bytes accessed. Pallas kernels are opaque to that analysis;
each carries a ``pl.CostEstimate`` computed from its block specs and grid
(``jspatial/_accel/conv.py``). The portable code's ``lax.fori_loop``s are unrolled for
the count (a rolled ``while`` loop's body is invisible to the analysis).

For every op of the core suite (float32, batch 128) and for the airbench94 train step
(batch 512, forward, backward, Nesterov SGD): ours (the accelerator path that
``jspatial._accel.dispatch`` selects when lowering for a TPU) against XLA's own
primitives (the same network on Flax's built-in layers for the train step). Forward
is ``x, w -> y``; backward is ``x, w, g -> (dx, dw)`` with ``g`` an input, so neither
side can fold a constant cotangent away. Roofline time: ``max(FLOPs / 197 TFLOP/s,
bytes / 819 GB/s)``, the published v5e bf16 peak and HBM bandwidth.

    .venv-tpu/bin/python -m bench.accel            # writes bench/out/accel.md and RESULTS.md
    .venv-tpu/bin/python -m bench.accel --ops-only
"""

from __future__ import annotations

import argparse
import contextlib
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax import lax

import jspatial as js
import jspatial.conv
import jspatial.norm
import jspatial.pool

PEAK_FLOPS = 197e12  # v5e, bf16, per chip
HBM_BYTES_PER_S = 819e9
MARK_BEGIN, MARK_END = "<!-- bench-accel:begin -->", "<!-- bench-accel:end -->"


# ----------------------------------------------------------------------------- compile + count


def topology_mesh(name="v5e:2x2"):
    from jax.experimental import topologies
    from jax.sharding import Mesh

    topo = topologies.get_topology_desc(topology_name=name, platform="tpu")
    return Mesh(np.array(topo.devices[:1]), ("d",))


def counts(mesh, fn, *args) -> tuple[float, float]:
    """(FLOPs, bytes accessed) of ``fn`` compiled for one device of ``mesh``."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    rep = NamedSharding(mesh, P())
    structs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), args)
    with jax.set_mesh(mesh):
        compiled = jax.jit(fn).trace(*structs).lower().compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))


class _UnrolledLax:
    """``jax.lax`` with every ``fori_loop`` fully unrolled, so that the count sees every tap.

    Unrolled at lowering (``unroll=True``): the portable branches that
    ``platform_dependent`` discards for a TPU are traced once and never expanded.
    """

    def __getattr__(self, name):
        return getattr(lax, name)

    @staticmethod
    def fori_loop(lower, upper, body, init, **_):
        return lax.fori_loop(lower, upper, body, init, unroll=True)


@contextlib.contextmanager
def unrolled_portable_loops():
    import jspatial._windows
    import jspatial.adaptive
    import jspatial.conv_transpose
    import jspatial.im2col
    import jspatial.unpool
    import jspatial.winograd

    # Every module whose loops call ``lax.fori_loop`` (most through ``_windows``' drivers).
    mods = [
        jspatial.conv, jspatial.conv_transpose, jspatial.im2col, jspatial.winograd,
        jspatial.pool, jspatial.adaptive, jspatial.unpool, jspatial.norm, jspatial._windows,
    ]  # fmt: skip
    saved = {m: m.lax for m in mods if hasattr(m, "lax")}
    for m in saved:
        m.lax = _UnrolledLax()
    try:
        yield
    finally:
        for m, value in saved.items():
            m.lax = value


# ----------------------------------------------------------------------------- the ops


def _xla_bn(x, w, b):
    mean = jnp.mean(x, axis=(0, 2, 3), keepdims=True)
    var = jnp.var(x, axis=(0, 2, 3), keepdims=True)
    return (x - mean) * lax.rsqrt(var + 1e-5) * w[:, None, None] + b[:, None, None]


def op_suite(batch=128):
    """``(name, ours(x, w), xla(x, w), x shape, w shape)`` for the core suite."""
    conv_xla = lambda x, w: lax.conv_general_dilated(  # noqa: E731
        x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW")
    )
    conv_ours = lambda x, w: js.conv2d(x, w, padding=1)  # noqa: E731
    cases = [
        (f"conv {c}->{o} @{s}", conv_ours, conv_xla, (batch, c, s, s), (o, c, 3, 3))
        for c, o, s in [(3, 64, 32), (64, 64, 32), (64, 128, 16), (128, 128, 16),
                        (128, 256, 8), (256, 256, 8)]
    ]  # fmt: skip
    cases.append(
        (
            "maxpool 2x2 64ch @32",
            lambda x, w: js.max_pool2d(x, 2),
            lambda x, w: lax.reduce_window(
                x, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID"
            ),  # noqa: E501
            (batch, 64, 32, 32),
            (64,),
        )
    )
    stats = lambda c: (jnp.zeros(c), jnp.ones(c))  # noqa: E731
    cases.append(
        (
            "batchnorm 256ch @8",
            lambda x, w: js.batch_norm(x, w, w, *stats(256), training=True)[0],
            lambda x, w: _xla_bn(x, w, w),
            (batch, 256, 8, 8),
            (256,),
        )
    )
    return cases


def measure_op(mesh, f, x_shape, w_shape):
    x, w = jnp.zeros(x_shape), jnp.zeros(w_shape)
    y_shape = jax.eval_shape(f, x, w).shape
    g = jnp.zeros(y_shape)
    fwd = counts(mesh, f, x, w)
    bwd = counts(mesh, lambda x, w, g: jax.vjp(f, x, w)[1](g), x, w, g)
    return fwd, bwd


# ----------------------------------------------------------------------------- the train step


def train_step_fn(kind: str, batch: int, data_format: str = "NCHW"):
    """``(step, args)``: one airbench94 step (forward, backward, Nesterov SGD, BN stats).

    ``data_format`` is jspatial's layout (its model then takes images in it); the Flax
    model is NHWC inside and takes NCHW images either way, as in ``bench.train_step``.
    """
    if kind == "ours":
        from train.models import Airbench94

        model = Airbench94(rngs=nnx.Rngs(0), data_format=data_format)
    else:
        from bench.train_step import FlaxAirbench

        model = FlaxAirbench(nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.sgd(1e-3, momentum=0.85, nesterov=True)
    opt_state = tx.init(params)

    def step(params, rest, opt_state, x, y):
        model = nnx.merge(graphdef, params, rest)

        def loss_fn(m):
            targets = optax.smooth_labels(jax.nn.one_hot(y, 10), 0.2)
            return optax.softmax_cross_entropy(m(x), targets).sum()

        loss, grads = nnx.value_and_grad(loss_fn)(model)  # w.r.t. nnx.Param
        updates, opt_state = tx.update(grads, opt_state, params)
        rest = nnx.state(model, nnx.Not(nnx.Param))  # the new BatchNorm statistics
        return optax.apply_updates(params, updates), rest, opt_state, loss

    shape = (batch, 32, 32, 3) if kind == "ours" and data_format == "NHWC" else (batch, 3, 32, 32)
    x, y = jnp.zeros(shape), jnp.zeros((batch,), jnp.int32)
    return step, (params, rest, opt_state, x, y)


# ----------------------------------------------------------------------------- report


def roofline_us(flops, nbytes):
    return max(flops / PEAK_FLOPS, nbytes / HBM_BYTES_PER_S) * 1e6


def row(name, ours, xla):
    """ours/xla: (flops, bytes) of forward+backward (or of the step)."""
    (fo, bo), (fx, bx) = ours, xla
    return (
        f"| {name} | {fo / 1e9:.2f} / {fx / 1e9:.2f} | {fo / fx:.2f} | "
        f"{bo / 1e6:.0f} / {bx / 1e6:.0f} | **{bo / bx:.2f}** | "
        f"{roofline_us(fo, bo):.0f} / {roofline_us(fx, bx):.0f} |"
    )


HEAD = [
    "| op | GFLOP ours / XLA | FLOPs ratio | MB accessed ours / XLA | bytes ratio | "
    "roofline us ours / XLA |",
    "|---|---|---|---|---|---|",
]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--train-batch", type=int, default=512)
    parser.add_argument("--ops-only", action="store_true")
    parser.add_argument("--only", default="", help="ops whose name contains this")
    parser.add_argument("--out", default="bench/out/accel.md")
    parser.add_argument("--results", default="bench/RESULTS.md")
    args = parser.parse_args(argv)

    mesh = topology_mesh()
    lines = [
        f"### Accelerator path: FLOPs and HBM bytes on a v5e compile, {time.strftime('%Y-%m-%d')}",
        "",
        f"`make bench-accel` (JAX {jax.__version__}, libtpu topology `v5e:2x2`, one chip; "
        "nothing runs). Forward + backward (`x, w, g -> dx, dw`), float32, core suite at "
        f"batch {args.batch}; roofline = max(FLOPs / 197 TFLOP/s, bytes / 819 GB/s).",
        "",
        *HEAD,
    ]
    detail = ["", "Forward / backward separately, MB accessed ours / XLA:", ""]
    with unrolled_portable_loops():
        for name, ours, xla, xs, ws in op_suite(args.batch):
            if args.only not in name:
                continue
            (of, ob), (xf, xb) = measure_op(mesh, ours, xs, ws), measure_op(mesh, xla, xs, ws)
            total = lambda a, b: (a[0] + b[0], a[1] + b[1])  # noqa: E731
            lines.append(row(name, total(of, ob), total(xf, xb)))
            detail.append(
                f"- {name}: forward {of[1] / 1e6:.0f} / {xf[1] / 1e6:.0f}, "
                f"backward {ob[1] / 1e6:.0f} / {xb[1] / 1e6:.0f}"
            )
            print(lines[-1], flush=True)
        if not args.ops_only:
            step_counts = {}
            for kind in ("ours", "flax"):
                step, step_args = train_step_fn(kind, args.train_batch)
                step_counts[kind] = counts(mesh, step, *step_args)
            lines.append(
                row(
                    f"airbench94 train step, batch {args.train_batch} (XLA: Flax built-ins)",
                    step_counts["ours"],
                    step_counts["flax"],
                )
            )
            print(lines[-1], flush=True)
    text = "\n".join(lines + detail)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    if args.results:
        _write_section(Path(args.results), text)


def _write_section(path: Path, text: str) -> None:
    """Replace (or append) this benchmark's section of ``RESULTS.md``."""
    block = f"{MARK_BEGIN}\n{text}\n{MARK_END}"
    old = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(MARK_BEGIN) + ".*?" + re.escape(MARK_END), re.S)
    if pattern.search(old):
        new = pattern.sub(lambda _: block, old)
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new)


if __name__ == "__main__":
    main()
