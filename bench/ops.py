"""Op benchmarks: jspatial's loops against XLA's own primitives and PyTorch CPU.

For every shape, forward and forward+backward are timed for three implementations
interleaved in one run (ours, XLA, PyTorch), keeping the minimum of the repeats
so that noise from a shared machine inflates nothing. Reported: milliseconds,
the ratio of ours to XLA and to PyTorch, GFLOP/s for convolutions, and the
compiled backward's peak temporary memory (``memory_analysis()``).

    python -m bench.ops                 # both suites, writes bench/out/ops.md
    python -m bench.ops --suite core --repeats 7
    python -m bench.ops --memory-only   # backward peak memory alone (compiles, runs nothing)
    python -m bench.ops --data-format both   # each suite in NCHW, then channels last (NHWC)

``--data-format NHWC`` passes ``data_format='NHWC'`` to jspatial's ops and feeds them (and
XLA's primitives, given the same layout) channels-last inputs: the same numbers, transposed
from the NCHW draw; weights stay ``(C_out, C_in, kh, kw)``, as PyTorch keeps them in
channels-last memory. An op whose signature has no ``data_format`` keyword yet is run in
NCHW only (the report says which were left out). PyTorch's inputs are channels-last memory
in both layouts.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import lax

import jspatial as js
from jspatial.shapes import conv_transpose2d_macs


@dataclass(frozen=True)
class Case:
    name: str
    op: str  # conv | conv_transpose | maxpool | bn
    shape: tuple  # input (N, C, H, W)
    out_channels: int = 0
    kernel: int = 3
    padding: int = 1
    stride: int = 1  # conv_transpose only
    output_padding: int = 0  # conv_transpose only


DATA_FORMATS = ("NCHW", "NHWC")
# jspatial's op of each case kind.
_OURS = {
    "conv": js.conv2d,
    "conv_transpose": js.conv_transpose2d,
    "maxpool": js.max_pool2d,
    "bn": js.batch_norm,
}


def takes_data_format(op: str) -> bool:
    """Whether jspatial's op of a case kind (``Case.op``) takes ``data_format``."""
    return "data_format" in inspect.signature(_OURS[op]).parameters


def runs_in(case: Case, data_format: str) -> bool:
    """Whether ``case`` can run in ``data_format``: NCHW always, NHWC where the op takes it."""
    return data_format == "NCHW" or takes_data_format(case.op)


def _suites(batch_core: int = 128, batch_model: int = 512) -> dict[str, list[Case]]:
    b = batch_core
    core = [
        Case("conv 3->64 @32", "conv", (b, 3, 32, 32), 64),
        Case("conv 64->64 @32", "conv", (b, 64, 32, 32), 64),
        Case("conv 64->128 @16", "conv", (b, 64, 16, 16), 128),
        Case("conv 128->128 @16", "conv", (b, 128, 16, 16), 128),
        Case("conv 128->256 @8", "conv", (b, 128, 8, 8), 256),
        Case("conv 256->256 @8", "conv", (b, 256, 8, 8), 256),
        Case("maxpool 2x2 64ch @32", "maxpool", (b, 64, 32, 32), kernel=2, padding=0),
        Case("batchnorm 256ch @8", "bn", (b, 256, 8, 8)),
        Case(
            "conv_transpose 256->128 s2 @8->16",
            "conv_transpose",
            (b, 256, 8, 8),
            128,
            stride=2,
            output_padding=1,
        ),
    ]
    m = batch_model
    model = [
        Case("conv 24->64 @31", "conv", (m, 24, 31, 31), 64),
        Case("conv 64->64 @15", "conv", (m, 64, 15, 15), 64),
        Case("conv 64->256 @15", "conv", (m, 64, 15, 15), 256),
        Case("conv 256->256 @7", "conv", (m, 256, 7, 7), 256),
        Case("maxpool 2x2 64ch @31", "maxpool", (m, 64, 31, 31), kernel=2, padding=0),
    ]
    return {"core": core, "model": model}


# ----------------------------------------------------------------------------- JAX


def _jax_fns(case: Case, impl: str, data_format: str = "NCHW"):
    """(forward, forward+backward) jitted functions of ``(x, w)`` for one implementation.

    ``impl``: ``"xla"``, ``"ours"`` (``algorithm='auto'``) or ``"direct"`` (the tap loop).
    ``data_format``: the layout of ``x`` (``_inputs``); in NCHW jspatial's ops are called
    without the keyword, as before it existed.
    """
    k, p = case.kernel, case.padding
    layout = {} if data_format == "NCHW" else {"data_format": data_format}
    dims = (data_format, "OIHW", data_format)
    if case.op == "conv":
        if impl in ("ours", "direct"):
            algorithm = "auto" if impl == "ours" else "direct"
            f = lambda x, w: js.conv2d(x, w, padding=p, algorithm=algorithm, **layout)  # noqa: E731
        else:
            f = lambda x, w: lax.conv_general_dilated(  # noqa: E731
                x, w, (1, 1), ((p, p), (p, p)), dimension_numbers=dims
            )
    elif case.op == "conv_transpose":
        s, op = case.stride, case.output_padding
        if impl == "ours":
            f = lambda x, w: js.conv_transpose2d(x, w, None, s, p, op, **layout)  # noqa: E731
        else:  # the same op as an input-dilated convolution, kernel flipped and transposed
            pads = ((k - 1 - p, k - 1 - p + op),) * 2
            f = lambda x, w: lax.conv_transpose(  # noqa: E731
                x, w, (s, s), pads, dimension_numbers=dims, transpose_kernel=True,
            )  # fmt: skip
    elif case.op == "maxpool":
        if impl == "ours":
            f = lambda x, w: js.max_pool2d(x, k, **layout)  # noqa: E731
        else:
            window = (1, 1, k, k) if data_format == "NCHW" else (1, k, k, 1)
            f = lambda x, w: lax.reduce_window(  # noqa: E731
                x, -jnp.inf, lax.max, window, window, "VALID"
            )
    else:
        c = case.shape[1]
        stats = (jnp.zeros(c), jnp.ones(c))
        if impl == "ours":
            f = lambda x, w: js.batch_norm(x, *stats, w, w, training=True, **layout)[0]  # noqa: E731
        else:
            f = lambda x, w: _xla_batch_norm(x, w, w, data_format)  # noqa: E731

    def loss(x, w):
        return jnp.vdot(f(x, w), jnp.ones_like(f(x, w)) * 0.001)

    return jax.jit(f), jax.jit(jax.grad(loss, argnums=(0, 1)))


def _xla_batch_norm(x, w, b, data_format="NCHW"):
    if data_format == "NCHW":
        axes, index = (0, 2, 3), (None, slice(None), None, None)
    else:
        axes, index = (0, 1, 2), (None, None, None, slice(None))
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.var(x, axis=axes, keepdims=True)
    y = (x - mean) * lax.rsqrt(var + 1e-5)
    return y * w[index] + b[index]


def _inputs(case: Case, data_format: str = "NCHW"):
    """``(x, w)``: ``x`` drawn in NCHW (``case.shape``), transposed for NHWC."""
    key = jax.random.key(0)
    x = jax.random.normal(key, case.shape, jnp.float32)
    if data_format == "NHWC":
        x = jnp.transpose(x, (0, 2, 3, 1))
    if case.op == "conv":
        w = jax.random.normal(key, (case.out_channels, case.shape[1], case.kernel, case.kernel))
        return x, w * 0.05
    if case.op == "conv_transpose":  # weight (C_in, C_out, kh, kw), as torch's
        w = jax.random.normal(key, (case.shape[1], case.out_channels, case.kernel, case.kernel))
        return x, w * 0.05
    return x, jnp.ones((case.shape[1],), jnp.float32)


def peak_bytes_of(compiled) -> int:
    """Temporaries + outputs of a compiled program (``jit(f).lower(...).compile()``)."""
    analysis = compiled.memory_analysis()
    return int(analysis.temp_size_in_bytes + analysis.output_size_in_bytes)


def _peak_bytes(fn, *args) -> int:
    return peak_bytes_of(fn.lower(*args).compile())


# ----------------------------------------------------------------------------- PyTorch


def _torch_fns(case: Case, device: str = "cpu"):
    """(forward, forward+backward) of PyTorch's op on ``device``. On a GPU each returns
    once its kernels are queued: a timer waits for them after a run of calls
    (``bench.train_torch.torch_sync``), as ``jax.block_until_ready`` after JAX calls."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    # Drawn on the CPU whatever the device: the same numbers everywhere.
    x = torch.randn(case.shape).to(device).contiguous(memory_format=torch.channels_last)
    k, p = case.kernel, case.padding
    if case.op == "conv":
        w = (torch.randn(case.out_channels, case.shape[1], k, k) * 0.05).to(device)
        w = w.contiguous(memory_format=torch.channels_last)
        f = lambda x, w: F.conv2d(x, w, padding=p)  # noqa: E731
    elif case.op == "conv_transpose":
        w = (torch.randn(case.shape[1], case.out_channels, k, k) * 0.05).to(device)
        s, op = case.stride, case.output_padding
        f = lambda x, w: F.conv_transpose2d(x, w, None, s, p, op)  # noqa: E731
    elif case.op == "maxpool":
        w = torch.ones(case.shape[1], device=device)
        f = lambda x, w: F.max_pool2d(x, k)  # noqa: E731
    else:
        w = torch.ones(case.shape[1], device=device)
        c = case.shape[1]
        stats = (torch.zeros(c, device=device), torch.ones(c, device=device))
        f = lambda x, w: F.batch_norm(x, *stats, w, w, training=True)  # noqa: E731

    def forward():
        with torch.no_grad():
            f(x, w)

    xg, wg = x.detach().requires_grad_(), w.detach().requires_grad_()

    def forward_backward():
        y = f(xg, wg)
        y.backward(torch.full_like(y, 0.001))
        xg.grad = wg.grad = None

    return forward, forward_backward


# ----------------------------------------------------------------------------- timing


def _time(fn, repeats_done: list[float]) -> None:
    start = time.perf_counter()
    out = fn()
    if out is not None:
        jax.block_until_ready(out)
    repeats_done.append(time.perf_counter() - start)


def interleaved(items, repeats: int):
    """The order of each repeat of an interleaved timing: as given, then reversed, and so
    on, so that every item sees the same noise and none is always timed right after
    another (on a shared machine that alone moved a step's time by several percent)."""
    items = list(items)
    for r in range(repeats):
        yield items if r % 2 == 0 else items[::-1]


def run_case(case: Case, repeats: int, with_torch: bool, data_format: str = "NCHW") -> dict:
    x, w = _inputs(case, data_format)
    timers: dict[str, tuple] = {}
    for impl in ("ours", "xla"):
        fwd, fwd_bwd = _jax_fns(case, impl, data_format)
        jax.block_until_ready(fwd(x, w))
        jax.block_until_ready(fwd_bwd(x, w))
        timers[impl] = (
            lambda f=fwd: f(x, w),
            lambda f=fwd_bwd: f(x, w),
            _peak_bytes(fwd_bwd, x, w),
        )
    if with_torch:
        tf, tfb = _torch_fns(case)
        tf(), tfb()
        timers["torch"] = (tf, tfb, None)
    samples = {(impl, mode): [] for impl in timers for mode in (0, 1)}
    for order in interleaved(timers.items(), repeats):
        for impl, fns in order:
            for mode in (0, 1):
                _time(fns[mode], samples[(impl, mode)])
    result = {"case": case, "mem": {i: timers[i][2] for i in timers}}
    for (impl, mode), ts in samples.items():
        result[(impl, mode)] = min(ts) * 1e3
    return result


def _gflops(case: Case, ms: float, passes: int) -> str:
    if case.op == "conv_transpose":
        macs = conv_transpose2d_macs(
            case.shape, case.out_channels, case.kernel, case.stride, case.padding,
            case.output_padding,
        )  # fmt: skip
        return f"{2 * macs * passes / (ms * 1e-3) / 1e9:.0f}"
    if case.op != "conv":
        return ""
    macs = js.conv2d_macs(case.shape, case.out_channels, case.kernel, padding=case.padding)
    return f"{2 * macs * passes / (ms * 1e-3) / 1e9:.0f}"


def format_table(results: list[dict], with_torch: bool, digits: int = 1) -> str:
    """The op table; ``digits``: decimals of the milliseconds (more for a GPU's)."""
    head = "| shape | fwd ours ms | fwd XLA ms | fwd ours/XLA |"
    head += " fwd ours/torch |" if with_torch else ""
    head += " f+b ours ms | f+b XLA ms | f+b ours/XLA |"
    head += " f+b torch ms | f+b ours/torch |" if with_torch else ""
    head += " ours GFLOP/s f+b | bwd peak MB ours / XLA |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        c = r["case"]
        ms = lambda key, r=r: f"{r[key]:.{digits}f}"  # noqa: E731
        row = [c.name, ms(("ours", 0)), ms(("xla", 0))]
        row.append(f"{r[('ours', 0)] / r[('xla', 0)]:.2f}")
        if with_torch:
            row.append(f"{r[('ours', 0)] / r[('torch', 0)]:.2f}")
        row += [ms(("ours", 1)), ms(("xla", 1))]
        row.append(f"**{r[('ours', 1)] / r[('xla', 1)]:.2f}**")
        if with_torch:
            row += [ms(("torch", 1)), f"{r[('ours', 1)] / r[('torch', 1)]:.2f}"]
        row.append(_gflops(c, r[("ours", 1)], 3))
        row.append(f"{r['mem']['ours'] / 2**20:.0f} / {r['mem']['xla'] / 2**20:.0f}")
        lines.append("| " + " | ".join(row) + " |")
    ratios = [r[("ours", 1)] / r[("xla", 1)] for r in results]
    geo = math.exp(sum(map(math.log, ratios)) / len(ratios))
    lines.append("")
    lines.append(
        f"Geometric mean of the forward+backward ratio ours/XLA: **{geo:.2f}** "
        f"(max {max(ratios):.2f})."
    )
    if with_torch:
        tr = [r[("ours", 1)] / r[("torch", 1)] for r in results]
        lines.append(
            f"Geometric mean ours/PyTorch (forward+backward): "
            f"{math.exp(sum(map(math.log, tr)) / len(tr)):.2f}."
        )
    return "\n".join(lines)


def memory_table(cases: list[Case], data_format: str = "NCHW") -> str:
    """Backward peak memory (temporaries + outputs) of every implementation, in MiB."""
    lines = [
        "| shape | XLA | ours (auto) | ours/XLA | direct loop |",
        "|---|---|---|---|---|",
    ]
    for case in cases:
        x, w = _inputs(case, data_format)
        impls = ("xla", "ours", "direct") if case.op == "conv" else ("xla", "ours")
        mib = {i: _peak_bytes(_jax_fns(case, i, data_format)[1], x, w) / 2**20 for i in impls}
        direct = f"{mib['direct']:.1f}" if "direct" in mib else ""
        lines.append(
            f"| {case.name}, b{case.shape[0]} | {mib['xla']:.1f} | {mib['ours']:.1f} | "
            f"**{mib['ours'] / mib['xla']:.2f}** | {direct} |"
        )
        print(lines[-1], flush=True)
    return "\n".join(lines)


def write_report(text: str, out: str) -> None:
    """Print a benchmark's Markdown report and save it to ``out``."""
    print(text)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text + "\n")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = jax.devices()[0]
    return (
        f"{cpu}, {os.cpu_count()} cores, JAX {jax.__version__} on {dev.platform} "
        f"({dev.device_kind}), Python {platform.python_version()}"
    )


def _suite_report(name, suite, data_format, args, with_torch) -> list[str]:
    """The report lines of one suite in one layout."""
    cases = [c for c in suite if args.only in c.name]
    left_out = sorted({c.op for c in cases if not runs_in(c, data_format)})
    cases = [c for c in cases if runs_in(c, data_format)]
    lines = []
    if left_out:
        note = ", ".join(_OURS[op].__name__ for op in left_out)
        print(f"  {name} {data_format}: left out, no data_format keyword yet: {note}")
        lines += [f"Left out in {data_format} (no `data_format` keyword yet): {note}.", ""]
    if not cases:
        return lines
    if args.memory_only:
        title = f"## {name} suite, {data_format}: backward peak memory, MiB"
        return [title, ""] + lines + [memory_table(cases, data_format), ""]
    results = []
    for case in cases:
        results.append(run_case(case, args.repeats, with_torch, data_format))
        print(
            f"  {case.name} {data_format}: ours {results[-1][('ours', 1)]:.1f} ms f+b", flush=True
        )
    batch = args.batch if name == "core" else args.model_batch
    title = f"## {name} suite (float32, {data_format}, batch {batch}, min of {args.repeats})"
    return [title, ""] + lines + [format_table(results, with_torch), ""]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=["core", "model", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128, help="batch of the core suite")
    parser.add_argument("--model-batch", type=int, default=512, help="batch of the model suite")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--only", default="", help="run only cases whose name contains this")
    parser.add_argument(
        "--memory-only", action="store_true", help="backward peak memory alone, no timing"
    )
    parser.add_argument(
        "--data-format",
        choices=[*DATA_FORMATS, "both"],
        default="NCHW",
        help="layout of the inputs of jspatial's ops and XLA's (both: NCHW, then NHWC)",
    )
    parser.add_argument("--out", default="bench/out/ops.md")
    args = parser.parse_args(argv)

    with_torch = not args.no_torch
    if with_torch:
        try:
            import torch

            torch.set_num_threads(os.cpu_count() or 1)
        except ImportError:
            with_torch = False
    suites = _suites(args.batch, args.model_batch)
    names = ["core", "model"] if args.suite == "all" else [args.suite]
    report = [f"# Op benchmarks, {time.strftime('%Y-%m-%d')}", "", f"Machine: {machine()}", ""]
    formats = DATA_FORMATS if args.data_format == "both" else (args.data_format,)
    for name in names:
        for data_format in formats:
            report += _suite_report(name, suites[name], data_format, args, with_torch)
    write_report("\n".join(report), args.out)


if __name__ == "__main__":
    main()
