"""GPU benchmark without a GPU: FLOPs, HBM bytes and kernels of an H100, A100 and T4 compile.

XLA compiles for an NVIDIA GPU ahead of time on a CPU-only host (``jax[cuda12]``, kept in
``.venv-gpu``: ``make bench-gpu``; ``JAX_PLATFORMS=cpu`` so that the CUDA plugin does not
look for a driver). The whole GPU pipeline runs (fusion, cuDNN/cuBLAS/Triton rewrites,
buffer assignment, PTX to cubin); only autotuning is skipped. Nothing runs: the optimized
HLO is counted by ``bench.hlo_cost`` (loop bodies times their trip counts, library and
Triton calls charged their operands plus results) and ``memory_analysis()`` gives the
temporary memory.

Suites (float32; forward ``x, w -> y`` plus backward ``x, w, g -> (dx, dw)`` with ``g`` an
input, as in ``bench.accel``):

- ``core``: ``bench.accel.op_suite`` at batch 128, plus LeNet's first layer;
- ``airbench``: the airbench94 layers of ``bench.ops`` at batch 512, plus its 2x2
  whitening layer as a trainable op (its backward computes the weight and the input
  gradient);
- ``step``: the airbench94 train step of ``bench.accel.train_step_fn`` at batch 512, on
  jspatial's layers and on Flax's built-ins, and data parallel on 8 H100s;

ours (``algorithm='auto'``) against XLA's primitives (``lax.conv_general_dilated`` and
``lax.reduce_window``, which become cuDNN calls and XLA's own kernels). A layer that does
not compile is a row saying so. ``--compile-all`` compiles every public op, forward and
backward, on small shapes for sm_75, sm_80 and sm_90 and says which fail. Roofline time
is ``max(FLOPs / peak, bytes / HBM bandwidth)`` with the published figures in ``GPUS``
(TF32 dense peak for H100/A100, float32 for T4), kernel launches aside.

    python -m bench.gpu                                  # all suites, H100 A100 T4
    python -m bench.gpu --gpu h100_sxm --suite step
    python -m bench.gpu --compile-all
    python -m bench.gpu --quick                          # small batches: checks the script
    python -m bench.gpu --render bench/out/gpu.json      # the report again, from its JSON
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import lax

import jspatial as js
from bench import accel, hlo_cost
from bench import ops as bench_ops

# ----------------------------------------------------------------------------- the GPUs

# GpuTargetConfigProto text, the fields of XLA's own device descriptions
# (openxla/xla, xla/backends/gpu/target_config/specs/h100_sxm.txtpb and a100_sxm_80.txtpb)
# that matter for compilation; the per-unit rate tables and the field
# collective_memory_granularity (which this jaxlib rejects) are left out. XLA ships no T4
# description: its figures are NVIDIA's published T4 specification (Turing TU104, compute
# capability 7.5, 40 SMs of 64 FP32 lanes, 64 KiB shared memory and 1024 threads per SM,
# 4 MiB L2, 16 GB GDDR6 at 320 GB/s, 1.59 GHz boost), laid out like XLA's V100 entry.
_CONFIG = """gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {smem_core}
  threads_per_core_limit: {threads_core}
  core_count: {sms}
  fpus_per_core: {fpus}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {bandwidth}
  l2_cache_size: {l2}
  clock_rate_ghz: {clock}
  device_memory_size: {memory}
  shared_memory_per_block_optin: {smem_optin}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
  thread_dim_limit_x: 1024
  thread_dim_limit_y: 1024
  thread_dim_limit_z: 64
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 10 patch: 0 }}
device_description_str: "{name}"
"""


@dataclass(frozen=True)
class Gpu:
    key: str
    name: str
    sm: str
    peak_flops: float  # float32 inputs: TF32 tensor cores where there are, dense
    hbm_bytes_per_s: float
    config: str


def _gpu(key, name, sm, peak, **fields) -> Gpu:
    major, minor = int(sm[3]), int(sm[4])
    text = _CONFIG.format(name=name, major=major, minor=minor, **fields)
    return Gpu(key, name, sm, peak, fields["bandwidth"], text)


GPUS = {
    g.key: g
    for g in (
        _gpu("h100_sxm", "NVIDIA H100 80GB HBM3", "sm_90", 400e12, smem_core=233472,
             threads_core=2048, sms=132, fpus=128, bandwidth=3352320000000, l2=52428800,
             clock=1.98, memory=84942979072, smem_optin=232448),
        _gpu("a100_sxm_80", "NVIDIA A100-SXM4-80GB", "sm_80", 156e12, smem_core=167936,
             threads_core=2048, sms=108, fpus=64, bandwidth=2039040000000, l2=41943040,
             clock=1.41, memory=85100068864, smem_optin=166912),
        _gpu("t4", "Tesla T4", "sm_75", 8.1e12, smem_core=65536, threads_core=1024, sms=40,
             fpus=64, bandwidth=320000000000, l2=4194304, clock=1.59, memory=15843721216,
             smem_optin=65536),
    )
}  # fmt: skip


_TOPOLOGIES: dict = {}


def topology(gpu: str, devices: int = 1):
    """The (cached) topology of ``devices`` GPUs of one kind on one host."""
    from jax.experimental import topologies

    key = (gpu, devices)
    if key not in _TOPOLOGIES:
        _TOPOLOGIES[key] = topologies.get_topology_desc(
            platform="cuda", target_config=GPUS[gpu].config, topology=f"1x1x{devices}"
        )
    return _TOPOLOGIES[key]


def mesh_of(gpu: str, devices: int = 1, axis: str = "x"):
    from jax.experimental import topologies

    return topologies.make_mesh(topology(gpu, devices), (devices,), (axis,))


# ----------------------------------------------------------------------------- compile + count


def pallas_flops(jaxpr) -> dict[str, float]:
    """FLOPs of every Pallas kernel's ``pl.CostEstimate`` in a jaxpr, by kernel name.

    The Triton lowering does not carry the estimate into the HLO (its backend config holds
    the grid, the IR, the name and the warp/stage counts), so it is read here and matched
    to the custom call by the kernel's name.
    """
    found: dict[str, float] = {}

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "pallas_call":
                estimate = eqn.params.get("cost_estimate")
                kernel = eqn.params["jaxpr"]
                name = eqn.params.get("name") or kernel.debug_info.func_name
                if estimate is not None:
                    found[name] = float(estimate.flops)
            for value in eqn.params.values():
                for sub in value if isinstance(value, (list, tuple)) else [value]:
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        walk(inner)

    walk(getattr(jaxpr, "jaxpr", jaxpr))
    return found


def measure(fn, structs) -> dict:
    """Counts of ``fn`` compiled for the shardings in ``structs``; ``error`` if it fails."""
    # The target's mesh is set while tracing: that is where jspatial reads the GPU's compute
    # capability from (jspatial._accel.dispatch.gpu_target), to choose its Triton kernels.
    mesh = jax.tree.leaves(structs)[0].sharding.mesh
    try:
        with jax.set_mesh(mesh):
            traced = jax.jit(fn).trace(*structs)
            compiled = traced.lower().compile()
    except Exception as e:  # XLA's message: its first line names the failing pass
        return {"error": _first_line(e)}
    text = compiled.as_text()
    cost = hlo_cost.count(text, pallas_flops(traced.jaxpr))
    mem = compiled.memory_analysis()
    return {
        "flops": cost.flops,
        "transcendentals": cost.transcendentals,
        "bytes": cost.bytes,
        "kernels": cost.kernels,
        "unknown_flops": cost.unknown_flops,
        "unknown_trips": cost.unknown_trips,
        "collectives": cost.collectives,
        "custom_calls": cost.custom_calls,
        "temp_bytes": mem.temp_size_in_bytes,
        "argument_bytes": mem.argument_size_in_bytes,
        "output_bytes": mem.output_size_in_bytes,
    }


def _first_line(e: Exception) -> str:
    lines = [x for x in str(e).splitlines() if x.strip()] or [type(e).__name__]
    return lines[0][:300]


def _structs(mesh, shapes, spec=None):
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    sharding = NamedSharding(mesh, spec or P())
    return [
        jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding)
        if hasattr(s, "dtype")
        else jax.ShapeDtypeStruct(s, jnp.float32, sharding=sharding)
        for s in shapes
    ]


def measure_op(mesh, f, shapes, n_diff=None) -> dict:
    """Forward ``f(*args)`` and backward (the VJP of its first output with respect to the
    first ``n_diff`` arguments, cotangent an input) compiled separately."""
    structs = _structs(mesh, shapes)
    n_diff = len(structs) if n_diff is None else n_diff
    first = lambda out: out[0] if isinstance(out, (tuple, list)) else out  # noqa: E731
    try:
        out = first(jax.eval_shape(f, *structs))
    except Exception as e:  # a trace-time error: the op rejects these arguments
        return {"fwd": {"error": _first_line(e)}, "bwd": {"error": _first_line(e)}}

    def backward(*args):
        diff, rest = args[:n_diff], args[n_diff:-1]
        return jax.vjp(lambda *d: first(f(*d, *rest)), *diff)[1](args[-1])

    cot = _structs(mesh, [out])
    return {"fwd": measure(f, structs), "bwd": measure(backward, [*structs, *cot])}


def _total(m: dict) -> dict:
    """Forward + backward of ``measure_op``; ``error`` names the pass that failed."""
    for part in ("fwd", "bwd"):
        if "error" in m[part]:
            which = "" if part == "fwd" else "backward "
            return {"error": f"{which}fails to compile: {m[part]['error']}"}
    keys = ("flops", "bytes", "kernels", "unknown_flops", "temp_bytes")
    out = {k: m["fwd"][k] + m["bwd"][k] for k in keys}
    out["temp_bytes"] = max(m["fwd"]["temp_bytes"], m["bwd"]["temp_bytes"])
    return out


# ----------------------------------------------------------------------------- the suites


def _conv(padding, stride=1, data_format="NCHW"):
    layout = {} if data_format == "NCHW" else {"data_format": data_format}
    ours = lambda x, w: js.conv2d(x, w, stride=stride, padding=padding, **layout)  # noqa: E731
    pads = ((padding, padding),) * 2

    def xla(x, w):
        dims = (data_format, "OIHW", data_format)
        return lax.conv_general_dilated(x, w, (stride,) * 2, pads, dimension_numbers=dims)

    return ours, xla


def _image(n, c, hw, data_format):
    return (n, c, *hw) if data_format == "NCHW" else (n, *hw, c)


def first_layers(batch_whiten=512, batch_lenet=64, data_format="NCHW"):
    """The two first layers known to stress the GPU compiler, as op-suite cases."""
    whiten = _conv(0, data_format=data_format)
    lenet = _conv(2, data_format=data_format)
    return {
        "airbench": [(f"whiten conv 3->24 k2 valid @32 (trainable), batch {batch_whiten}",
                      *whiten, _image(batch_whiten, 3, (32, 32), data_format), (24, 3, 2, 2))],
        "core": [(f"LeNet conv 1->32 k5 p2 @28, batch {batch_lenet}", *lenet,
                  _image(batch_lenet, 1, (28, 28), data_format), (32, 1, 5, 5))],
    }  # fmt: skip


def airbench_suite(batch=512, data_format="NCHW"):
    """``bench.ops``' airbench94 layers as ``(name, ours, xla, x shape, w shape)``."""
    cases = []
    for case in bench_ops._suites(batch_model=batch)["model"]:
        x, w = jax.eval_shape(lambda case=case: bench_ops._inputs(case, data_format))
        ours, xla = (bench_ops._jax_fns(case, impl, data_format)[0] for impl in ("ours", "xla"))
        cases.append((f"{case.name}, batch {batch}", ours, xla, x.shape, w.shape))
    return cases


def suite_cases(suite: str, quick: bool, data_format: str = "NCHW"):
    if suite == "core":
        batch = 16 if quick else 128
        cases = [(f"{n}, batch {batch}", *rest) for n, *rest in accel.op_suite(batch)]
        if data_format == "NHWC":  # the convolutions, channels last on both sides
            cases = [
                (name, *_conv(1, data_format=data_format), _image(xs[0], xs[1], xs[2:], "NHWC"), ws)
                for name, _, _, xs, ws in cases
                if name.startswith("conv ")
            ]
        return (
            cases + first_layers(batch_lenet=16 if quick else 64, data_format=data_format)["core"]
        )
    batch = 32 if quick else 512
    return (
        airbench_suite(batch, data_format)
        + first_layers(batch_whiten=batch, data_format=data_format)["airbench"]
    )


def run_ops(gpu: str, suite: str, quick: bool, data_format: str = "NCHW") -> list[dict]:
    mesh = mesh_of(gpu)
    rows = []
    cases = suite_cases(suite, quick, data_format)
    for name, ours, xla, xs, ws in cases[: 3 if quick else None]:
        row = {"gpu": gpu, "suite": suite, "name": name}
        for impl, f in (("ours", ours), ("xla", xla)):
            row[impl] = measure_op(mesh, f, [xs, ws])
        rows.append(row)
        print(f"  {gpu} {name}: {_cell(_total(row['ours']), _total(row['xla']))}", flush=True)
    return rows


def _step_structs(mesh, step_args, batch_spec=None):
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    *state, x, y = step_args
    rep = NamedSharding(mesh, P())
    tree = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), state)
    data = [
        jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, batch_spec or P()))
        for a in (x, y)
    ]
    return [*tree, *data]


def run_steps(gpu: str, quick: bool, data_format: str = "NCHW") -> list[dict]:
    batch = 32 if quick else 512
    mesh = mesh_of(gpu)
    rows = []
    for kind in ("ours", "flax"):
        step, step_args = accel.train_step_fn(kind, batch, data_format)
        m = measure(step, _step_structs(mesh, step_args))
        rows.append({"gpu": gpu, "kind": kind, "batch": batch, **m})
        print(f"  {gpu} step {kind}: {_short(m)}", flush=True)
    return rows


def run_data_parallel(quick: bool, devices: int = 8, gpu: str = "h100_sxm") -> list[dict]:
    """The train step with the batch split over ``devices`` GPUs (``train.distributed``'s
    mesh axis and shardings), per device: the gradient all-reduce must be there."""
    from jax.sharding import PartitionSpec as P

    from train import distributed

    batch = 64 if quick else 512
    mesh = mesh_of(gpu, devices, distributed.AXIS)
    rows = []
    for kind in ("ours", "flax"):
        step, step_args = accel.train_step_fn(kind, batch)
        params_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(step_args[0]))
        m = measure(step, _step_structs(mesh, step_args, P(distributed.AXIS)))
        rows.append({"gpu": gpu, "devices": devices, "kind": kind, "batch": batch,
                     "param_bytes": params_bytes, **m})  # fmt: skip
        print(f"  {devices}x {gpu} step {kind}: {_short(m)} {m.get('collectives')}", flush=True)
    return rows


def compile_all_cases():
    """``(name, f, arg shapes, differentiable leading args)``: every public op, small."""
    x = (2, 4, 9, 9)
    w = (6, 4, 3, 3)
    stats = lambda c: (jnp.zeros(c), jnp.ones(c))  # noqa: E731
    cases = [
        (f"conv2d algorithm={a}", lambda x, w, a=a: js.conv2d(x, w, padding=1, algorithm=a),
         [x, (4, 4, 3, 3) if a == "winograd" else w], 2)
        for a in ("auto", "direct", "im2col", "winograd")
    ]  # fmt: skip
    cases += [
        ("conv2d groups=2 stride 2 dilation 2",
         lambda x, w: js.conv2d(x, w, stride=2, padding=1, dilation=2, groups=2),
         [x, (6, 2, 3, 3)], 2),
        ("conv_transpose2d 4->6 k3 s2 p1 op1",
         lambda x, w: js.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1),
         [x, (4, 6, 3, 3)], 2),
        ("max_pool2d k2", lambda x: js.max_pool2d(x, 2), [x], 1),
        ("max_pool2d k3 s2 p1 ceil_mode, return_indices",
         lambda x: js.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True), [x], 1),
        ("avg_pool2d k3 s2 p1 ceil_mode", lambda x: js.avg_pool2d(x, 3, 2, 1, ceil_mode=True),
         [x], 1),
        ("adaptive_avg_pool2d (5, 3)", lambda x: js.adaptive_avg_pool2d(x, (5, 3)), [x], 1),
        ("adaptive_max_pool2d (5, 3)", lambda x: js.adaptive_max_pool2d(x, (5, 3)), [x], 1),
        ("adaptive_max_pool2d (5, 3), return_indices",
         lambda x: js.adaptive_max_pool2d(x, (5, 3), return_indices=True), [x], 1),
        ("max_unpool2d k2",
         lambda y, i: js.max_unpool2d(y, i, 2, output_size=(9, 9)),
         [(2, 4, 4, 4), jax.ShapeDtypeStruct((2, 4, 4, 4), jnp.int32)], 1),
        ("batch_norm training",
         lambda x, g, b: js.batch_norm(x, *stats(4), g, b, training=True), [x, (4,), (4,)], 3),
        ("batch_norm eval",
         lambda x, g, b: js.batch_norm(x, *stats(4), g, b, training=False), [x, (4,), (4,)], 3),
        ("global_avg_pool2d", lambda x: js.global_avg_pool2d(x), [x], 1),
    ]  # fmt: skip
    cases += [
        (f"pad {mode}", lambda x, mode=mode: js.pad(x, (1, 2, 2, 1), mode=mode), [x], 1)
        for mode in ("constant", "reflect", "replicate", "circular")
    ]
    # First layers: im2col depth C_in * kh * kw from 2 to 147, batch 64.
    for c_in, c_out, k, s, p, hw in [(1, 32, 5, 1, 2, 28), (3, 24, 2, 1, 0, 32),
                                      (3, 64, 3, 1, 1, 32), (3, 16, 7, 2, 3, 32),
                                      (2, 8, 1, 1, 0, 16)]:  # fmt: skip
        cases.append((
            f"first layer conv {c_in}->{c_out} k{k} s{s} p{p} @{hw}, batch 64 "
            f"(depth {c_in * k * k})",
            lambda x, w, s=s, p=p: js.conv2d(x, w, stride=s, padding=p),
            [(64, c_in, hw, hw), (c_out, c_in, k, k)], 2,
        ))  # fmt: skip
    return cases


def run_compile_all(gpus: list[str], quick: bool) -> list[dict]:
    rows = []
    cases = compile_all_cases()[: 4 if quick else None]
    for name, f, shapes, n_diff in cases:
        row = {"name": name}
        for gpu in gpus:
            m = measure_op(mesh_of(gpu), f, shapes, n_diff)
            row[gpu] = {part: m[part].get("error") for part in ("fwd", "bwd")}
        rows.append(row)
        print(f"  {name}: {row}", flush=True)
    return rows


# ----------------------------------------------------------------------------- report


def roofline_us(gpu: str, flops: float, nbytes: float) -> float:
    g = GPUS[gpu]
    return max(flops / g.peak_flops, nbytes / g.hbm_bytes_per_s) * 1e6


def _gflop(m: dict) -> str:
    unknown = "+?" if m.get("unknown_flops") else ""
    return f"{m['flops'] / 1e9:.2f}{unknown}"


def _short(m: dict) -> str:
    if "error" in m:
        return f"fails to compile: {m['error']}"
    return (f"{_gflop(m)} GFLOP, {m['bytes'] / 1e9:.2f} GB, {m['kernels']:.0f} kernels, "
            f"temp {m['temp_bytes'] / 2**20:.0f} MiB")  # fmt: skip


def _cell(o: dict, x: dict) -> str:
    return f"ours {_short(o)} | XLA {_short(x)}"


OPS_HEAD = [
    "| op (fwd + bwd) | GFLOP ours / XLA | MB ours / XLA | bytes ratio | kernels ours / XLA | "
    "temp MiB ours / XLA | roofline us ours / XLA |",
    "|---|---|---|---|---|---|---|",
]


def _pair(o: dict, x: dict, fmt) -> str:
    """``ours / XLA`` of one column; a side that did not compile shows a dash."""
    side = lambda m: "-" if "error" in m else fmt(m)  # noqa: E731
    return f"{side(o)} / {side(x)}"


def ops_table(rows: list[dict]) -> list[str]:
    """One row per op; where a side fails to compile, the ratio column says so."""
    lines = list(OPS_HEAD)
    for r in rows:
        o, x = _total(r["ours"]), _total(r["xla"])
        g = r["gpu"]
        if "error" in o or "error" in x:
            who = "ours" if "error" in o else "XLA"
            ratio = f"**{who}: {_brief((o if 'error' in o else x)['error'])}**"
        else:
            ratio = f"**{o['bytes'] / x['bytes']:.2f}**"
        cells = [
            r["name"],
            _pair(o, x, _gflop),
            _pair(o, x, lambda m: f"{m['bytes'] / 1e6:.0f}"),
            ratio,
            _pair(o, x, lambda m: f"{m['kernels']:.0f}"),
            _pair(o, x, lambda m: f"{m['temp_bytes'] / 2**20:.0f}"),
            _pair(o, x, lambda m, g=g: f"{roofline_us(g, m['flops'], m['bytes']):.0f}"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


LABEL = {"ours": "jspatial", "flax": "Flax built-ins"}


def _brief(error: str) -> str:
    """A compile error's first line without the HLO metadata and backend config."""
    return re.sub(r", (metadata|backend_config)=.*", "", error).replace("|", "\\|")


def _failed(cells: list[str], says: str, width: int) -> str:
    """A table row, ``width`` columns wide, that says what did not compile."""
    rest = [_brief(says)] + [""] * (width - len(cells) - 1)
    return "| " + " | ".join(cells + rest) + " |"


def steps_table(rows: list[dict]) -> list[str]:
    lines = [
        "| GPU | implementation | GFLOP | GB moved | kernels | temp MiB | roofline ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = f"{GPUS[r['gpu']].name} ({GPUS[r['gpu']].sm})"
        if "error" in r:
            lines.append(_failed([name, LABEL[r["kind"]]], f"fails to compile: {r['error']}", 7))
            continue
        lines.append(
            f"| {name} | {LABEL[r['kind']]} | {_gflop(r)} | {r['bytes'] / 1e9:.2f} | "
            f"{r['kernels']:.0f} | {r['temp_bytes'] / 2**20:.0f} | "
            f"{roofline_us(r['gpu'], r['flops'], r['bytes']) / 1e3:.2f} |"
        )
    return lines


def data_parallel_table(rows: list[dict]) -> list[str]:
    lines = [
        "| implementation | per device: GB moved | kernels | all-reduces | all-reduce MB | "
        "other collectives | parameters MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        label = LABEL[r["kind"]]
        if "error" in r:
            lines.append(_failed([label], f"fails to compile: {r['error']}", 7))
            continue
        coll = dict(r["collectives"])
        n, b = coll.pop("all-reduce", [0, 0])
        other = ", ".join(f"{k}: {v[0]:.0f} ({v[1] / 1e6:.1f} MB)" for k, v in coll.items())
        lines.append(
            f"| {label} | {r['bytes'] / 1e9:.2f} | {r['kernels']:.0f} | {n:.0f} | "
            f"{b / 1e6:.1f} | {other or '-'} | {r['param_bytes'] / 1e6:.1f} |"
        )
    return lines


def compile_all_table(rows: list[dict], gpus: list[str]) -> list[str]:
    head = "| op (forward / backward) | " + " | ".join(f"{GPUS[g].sm} ({g})" for g in gpus) + " |"
    lines = [head, "|---|" + "---|" * len(gpus)]
    for r in rows:
        cells = []
        for g in gpus:
            fwd, bwd = r[g]["fwd"], r[g]["bwd"]
            if fwd is None and bwd is None:
                cells.append("ok / ok")
            else:
                cells.append(
                    ("ok" if fwd is None else f"**fails**: {_brief(fwd)}") + " / "
                    + ("ok" if bwd is None else f"**fails**: {_brief(bwd)}")
                )  # fmt: skip
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return lines


def render(results: dict) -> str:
    """The Markdown report of a run's results (what ``--json`` holds)."""
    gpus = results["gpus"]
    command = f"python -m bench.gpu {results.get('argv', '')}".strip()
    lines = [
        f"# GPU compile: FLOPs, HBM bytes and kernels, {results['date']}",
        "",
        f"`{command}` (JAX {results['jax']}, `jax[cuda12]`, "
        "compiled ahead of time on a CPU host; nothing runs). Float32. Bytes: every kernel's "
        "operands plus results, loop bodies times their trip counts; roofline = max(FLOPs / "
        "peak, bytes / HBM bandwidth), launches aside. `+?`: FLOPs of some Triton calls "
        "unknown. Temp: `memory_analysis().temp_size_in_bytes` (the larger of forward and "
        "backward for an op).",
        "",
    ]
    if "step" in results:
        rows = results["step"]
        lines += [f"## airbench94 train step, batch {rows[0]['batch']} (forward, backward, "
                  "Nesterov SGD)", "", *steps_table(rows), ""]  # fmt: skip
    if "data_parallel" in results:
        dp = results["data_parallel"]
        lines += [f"### Data parallel on 8 H100s (`topology=1x1x8`), global batch "
                  f"{dp[0]['batch']} split over the mesh axis `data` as `train.distributed` "
                  "does; counts per device", "", *data_parallel_table(dp), ""]  # fmt: skip
    for suite in ("airbench", "core"):
        for g in gpus:
            rows = [r for r in results.get(suite, []) if r["gpu"] == g]
            if rows:
                lines += [f"## {suite} suite on {GPUS[g].name} ({GPUS[g].sm})", ""]
                lines += ops_table(rows) + [""]
    if "compile_all" in results:
        lines += ["## Every public op, forward and backward, small shapes", ""]
        lines += compile_all_table(results["compile_all"], gpus) + [""]
    if "seconds" in results:
        lines.append(f"Compile time of this run: {results['seconds']:.0f} s.")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", default="h100_sxm,a100_sxm_80,t4")
    parser.add_argument("--suite", choices=["core", "airbench", "step", "all"], default="all")
    parser.add_argument("--compile-all", action="store_true", help="every public op, small")
    parser.add_argument("--quick", action="store_true", help="small batches, few cases")
    parser.add_argument("--out", default="", help="default bench/out/gpu.md (gpu-all.md)")
    parser.add_argument("--render", default="", help="only re-render this results JSON")
    parser.add_argument(
        "--data-format", choices=["NCHW", "NHWC"], default="NCHW",
        help="jspatial's layout (and XLA's, per op); core in NHWC: its convolutions",
    )  # fmt: skip
    args = parser.parse_args(argv)

    if args.render:
        results = json.loads(Path(args.render).read_text())
        text = render(results)
        print(text)
        Path(args.out or Path(args.render).with_suffix(".md")).write_text(text + "\n")
        return
    gpus = args.gpu.split(",")
    for g in gpus:
        if g not in GPUS:
            parser.error(f"--gpu {g}: one of {', '.join(GPUS)}")
    if jax.default_backend() != "cpu":
        parser.error("run with JAX_PLATFORMS=cpu: the GPU is only a compile target here")
    started = time.time()
    results: dict = {"jax": jax.__version__, "date": time.strftime("%Y-%m-%d"), "gpus": gpus}
    results["argv"] = " ".join(argv if argv is not None else sys.argv[1:])
    fmt = args.data_format
    if args.compile_all:
        results["compile_all"] = run_compile_all(gpus, args.quick)
    else:
        suites = ["step", "airbench", "core"] if args.suite == "all" else [args.suite]
        for suite in suites:
            if suite == "step":
                results["step"] = [r for g in gpus for r in run_steps(g, args.quick, fmt)]
                if "h100_sxm" in gpus and fmt == "NCHW":
                    results["data_parallel"] = run_data_parallel(args.quick)
            else:
                results[suite] = [r for g in gpus for r in run_ops(g, suite, args.quick, fmt)]
    results["seconds"] = time.time() - started
    text = render(results)
    print(text)
    out = Path(args.out or ("bench/out/gpu-all.md" if args.compile_all else "bench/out/gpu.md"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
