"""On a machine with a GPU: the op suites and the train step, ours vs XLA (cuDNN) vs PyTorch CUDA.

One prepared script, sized to finish in about five minutes, compiles included, so that it
fits a short loan of an accelerator. It runs straight from a checkout on the machine's
own Python (JAX with CUDA, Flax, optax, orbax and PyTorch with CUDA already there; nothing
is installed): ``PYTHONPATH=. python3 -m bench.device`` or ``make bench-device``.

What it measures, each implementation timed interleaved with the others (the alternating
order of ``bench.ops.interleaved``), after a first call that compiles and autotunes, the
minimum over the repeats of the mean over a few back-to-back calls that end in
``jax.block_until_ready`` / ``torch.cuda.synchronize``:

1. the airbench94 train step (forward, backward, Nesterov SGD, BatchNorm statistics;
   ``bench.accel.train_step_fn``): jspatial's layers, the same network on Flax's
   built-in layers (XLA's convolutions: cuDNN), and its PyTorch twin
   (``bench.train_torch.make_net`` via ``bench.train_step.torch_runner``);
2. forward and forward+backward of every op of the core suite and of the airbench94
   layers (``bench.ops._suites``): ours, XLA's primitives, PyTorch.

The train step goes first: it is the one number a cut-short run should not lose. Progress
is printed (flushed) as it goes, and ``device.md`` and ``device.json`` in ``--out`` are
rewritten after every case, so a killed run leaves what it had. ``--budget-s`` (300 by
default) skips the cases that would not end inside it, judging each by the longest one of
its suite so far, and says which; a case once started is not interrupted.

``--recipe`` runs, instead, the default CIFAR-10 recipe (``python -m train.cifar10``,
airbench94, 9.9 epochs) and the same recipe on PyTorch (``bench.train_torch --full
--device cuda``), one after the other in fresh processes, and reports test accuracy and
wall time of both; their logs go to ``--out`` too, the JAX run's own folder (metrics,
checkpoints) is ``runs/device-recipe/``. Nothing is downloaded (the data is checked for
first): the CIFAR-10 binary folder ``cifar-10-batches-bin/`` travels with the checkout, in
its ``data/`` (ignored by git, looked in by default) or in the folder ``--data-dir`` names.

    PYTHONPATH=. python3 -m bench.device                     # the GPU benchmark, ~5 min
    PYTHONPATH=. python3 -m bench.device --budget-s 200 --no-torch
    PYTHONPATH=. python3 -m bench.device --recipe            # to 94%, ours vs PyTorch
    PYTHONPATH=. python -m bench.device --smoke              # tiny, on any backend: every path
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import jax

from bench.ops import (
    _inputs,
    _jax_fns,
    _suites,
    _torch_fns,
    format_table,
    interleaved,
    peak_bytes_of,
)

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("train", "core", "model")
MAX_INNER = 50  # back-to-back calls in one timed sample, at most

# ----------------------------------------------------------------------------- version adapter
# What differs, or may, between the JAX/Flax releases this runs on (0.10.x on the
# development machines, 0.11.x on the GPU machine) lives here; the rest of the file uses
# only jit, grad, block_until_ready, random and devices, unchanged across them.


def package_versions() -> dict[str, str]:
    """Versions of the packages that make the numbers (those installed)."""
    names = ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax",
             "orbax-checkpoint", "numpy", "torch", "triton")  # fmt: skip
    out = {"python": platform.python_version()}
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    return out


def backend_version() -> str:
    """The XLA backend's own version string (on a GPU its CUDA version), or ``"?"``."""
    try:
        from jax.extend import backend

        return str(backend.get_backend().platform_version)
    except Exception:  # moved or renamed in some release: a label only
        return "?"


def compile_aot(fn, *args):
    """``fn`` (jitted) lowered and compiled for ``args``: a callable that runs without
    tracing again, so the compile is timed apart from the runs."""
    jitted = fn if hasattr(fn, "lower") or hasattr(fn, "trace") else jax.jit(fn)
    if hasattr(jitted, "lower"):
        return jitted.lower(*args).compile()
    return jitted.trace(*args).lower().compile()  # should ``lower`` go: its successor


def peak_bytes(compiled) -> float:
    """Temporaries + outputs of a compiled program, or NaN where the backend or the
    release gives no memory analysis."""
    try:
        return float(peak_bytes_of(compiled))
    except Exception:
        return float("nan")


def device_peak_mb(device) -> float | None:
    """The device allocator's peak so far (GPU), or None where it keeps no statistics."""
    try:
        stats = device.memory_stats() or {}
        return stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else None
    except Exception:
        return None


def set_highest_precision() -> None:
    """Full float32 matrix products and convolutions (no TF32) in JAX."""
    jax.config.update("jax_default_matmul_precision", "highest")


def torch_full_float32(torch) -> None:
    """No TF32 in PyTorch's float32 convolutions and matrix products: the ``fp32_precision``
    settings where the release has them (they succeed the ``allow_tf32`` flags)."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if hasattr(conv, "fp32_precision") and hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def torch_tf32_state(torch) -> str:
    """PyTorch's float32 settings on a GPU, in the words of its release."""
    try:
        conv = getattr(torch.backends.cudnn, "conv", None)
        if hasattr(conv, "fp32_precision"):
            return (f"float32 precision: convolutions {conv.fp32_precision}, matmuls "
                    f"{torch.backends.cuda.matmul.fp32_precision}")  # fmt: skip
        return (f"TF32 convolutions {torch.backends.cudnn.allow_tf32}, matmuls "
                f"{torch.backends.cuda.matmul.allow_tf32}")  # fmt: skip
    except Exception:  # a label only
        return "float32 settings unknown"


# ----------------------------------------------------------------------------- PyTorch


def load_torch(precision: str, gpu: bool):
    """``(torch module or None, device, description)``."""
    try:
        import torch
    except ImportError:
        return None, None, "PyTorch: not installed"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if gpu and device == "cpu":
        return None, None, f"PyTorch {torch.__version__}: sees no GPU, left out"
    if device == "cuda":
        # cuDNN's own autotuning, as XLA autotunes its convolutions at compile time.
        torch.backends.cudnn.benchmark = True
        if precision == "highest":
            torch_full_float32(torch)
        desc = (
            f"PyTorch {torch.__version__} on {torch.cuda.get_device_name(0)} (CUDA "
            f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, cudnn.benchmark, "
            f"{torch_tf32_state(torch)})"
        )
    else:
        desc = f"PyTorch {torch.__version__} on the CPU ({torch.get_num_threads()} threads)"
    return torch, device, desc


# ----------------------------------------------------------------------------- timing


def jax_loop(compiled, *args):
    """``run(k)``: ``k`` back-to-back calls, then wait for the last result."""

    def run(k: int) -> None:
        out = None
        for _ in range(k):
            out = compiled(*args)
        jax.block_until_ready(out)

    return run


def torch_loop(fn, device: str):
    """``run(k)``: ``k`` back-to-back calls of a PyTorch function, then wait for the device."""
    from bench.train_torch import torch_sync

    sync = torch_sync(device)

    def run(k: int) -> None:
        for _ in range(k):
            fn()
        sync()

    return run


def measure(runners: dict, repeats: int, sample_s: float) -> dict:
    """``{name: ms per call}``: each ``run(k)`` timed interleaved with the others.

    A sample is ``k`` back-to-back calls, ``k`` chosen from one call so that a sample
    lasts about ``sample_s``: on a GPU one call of a small op is shorter than the time it
    takes to launch and wait for it. The minimum over the repeats is kept.
    """
    inner = {}
    for name, run in runners.items():
        start = time.perf_counter()
        run(1)
        once = time.perf_counter() - start
        inner[name] = max(1, min(MAX_INNER, math.ceil(sample_s / max(once, 1e-6))))
    samples = {name: [] for name in runners}
    for order in interleaved(runners.items(), repeats):
        for name, run in order:
            start = time.perf_counter()
            run(inner[name])
            samples[name].append((time.perf_counter() - start) / inner[name])
    return {name: min(ts) * 1e3 for name, ts in samples.items()}


def timed_first(fn):
    """``(fn(), seconds)``."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


# ----------------------------------------------------------------------------- the cases

IMPL_LABELS = {"ours": "jspatial", "flax": "Flax built-ins (XLA)", "xla": "XLA", "torch": "PyTorch"}


def guarded(errors: list[str], label: str, fn):
    """``fn()``, or None after noting its error: one implementation that fails (a release
    that lacks an API, a framework that sees no GPU) must not cost the others."""
    try:
        return fn()
    except Exception as exc:
        traceback.print_exc()
        errors.append(f"{label}: {type(exc).__name__}: {str(exc)[:300]}")
        print(f"    {errors[-1]}", flush=True)
        return None


def _jax_first(fn, *args):
    """``(compiled fn, seconds)``: compile ahead of time, then one call, timed together."""

    def first():
        compiled = compile_aot(fn, *args)
        jax.block_until_ready(compiled(*args))
        return compiled

    return timed_first(first)


def train_step_case(batch: int, torch_device, repeats: int, sample_s: float, errors) -> dict:
    """The airbench94 step three ways: ``{"ms", "first_s"}`` keyed by ``ours/flax/torch``."""
    from bench.accel import train_step_fn
    from bench.train_step import batch as random_batch
    from bench.train_step import torch_runner

    x, y = random_batch(batch)
    runners, first_s = {}, {}
    for kind in ("ours", "flax"):

        def build(kind=kind):
            step, (params, rest, opt_state, _, _) = train_step_fn(kind, batch)
            args = (params, rest, opt_state, x, y)
            compiled, first_s[kind] = _jax_first(jax.jit(step), *args)
            print(f"    {kind}: compile + first step {first_s[kind]:.1f} s", flush=True)
            return jax_loop(compiled, *args)

        runners[kind] = guarded(errors, f"train step, {IMPL_LABELS[kind]}", build)
    if torch_device is not None:

        def build_torch():
            step, first_s["torch"] = torch_runner(batch, torch_device)
            print(f"    torch: first step {first_s['torch']:.1f} s", flush=True)
            return torch_loop(step, torch_device)

        runners["torch"] = guarded(errors, "train step, PyTorch", build_torch)
    runners = {k: v for k, v in runners.items() if v is not None}
    if not runners:
        raise RuntimeError("no implementation of the train step could be built")
    return {"ms": measure(runners, repeats, sample_s), "first_s": first_s}


def op_case(case, torch_device, repeats: int, sample_s: float, errors) -> dict:
    """One op: ``bench.ops``' result layout (``(impl, 0|1)``: forward / forward+backward
    ms, NaN where PyTorch failed; ``"mem"``: the compiled backward's peak bytes) plus
    ``"first_s"``."""
    x, w = _inputs(case)
    runners, first_s, mem = {}, {}, {}
    for impl in ("ours", "xla"):  # no guard: without both there is no row
        for mode, fn in enumerate(_jax_fns(case, impl)):
            compiled, first_s[(impl, mode)] = _jax_first(fn, x, w)
            runners[(impl, mode)] = jax_loop(compiled, x, w)
        mem[impl] = peak_bytes(compiled)  # the last one compiled: forward+backward
    if torch_device is not None:

        def build_torch():
            fns = _torch_fns(case, torch_device)
            for mode, fn in enumerate(fns):
                _, first_s[("torch", mode)] = timed_first(
                    lambda fn=fn: torch_loop(fn, torch_device)(1)
                )
            return fns

        fns = guarded(errors, f"{case.name}, PyTorch", build_torch)
        for mode, fn in enumerate(fns or ()):
            runners[("torch", mode)] = torch_loop(fn, torch_device)
    result = {"case": case, "mem": mem, "first_s": first_s}
    if torch_device is not None:
        result.update({("torch", 0): float("nan"), ("torch", 1): float("nan")})
    result.update(measure(runners, repeats, sample_s))
    return result


def smoke_cases(cases):
    """The first case of every kind of op: each code path once, on tiny shapes."""
    seen, out = set(), []
    for case in cases:
        if case.op not in seen:
            seen.add(case.op)
            out.append(case)
    return out


# ----------------------------------------------------------------------------- the report


class Budget:
    """Wall-clock budget: an item may start if the longest item of its section so far
    would still end inside it (``seconds`` None: no limit)."""

    def __init__(self, seconds: float | None):
        self.seconds, self.start = seconds, time.perf_counter()
        self.longest: dict[str, float] = {}
        self.total: dict[str, float] = {}  # seconds spent per section, to size later runs

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, section: str, like: str | None = None) -> bool:
        """``like``: the section whose items judge this one's first."""
        if self.seconds is None:
            return True
        guess = self.longest.get(section, self.longest.get(like, 0.0))
        return self.elapsed() + guess <= self.seconds

    def record(self, section: str, seconds: float) -> None:
        self.longest[section] = max(self.longest.get(section, 0.0), seconds)
        self.total[section] = self.total.get(section, 0.0) + seconds


class Report:
    """Results as they come; ``write()`` renders ``device.md`` and ``device.json``."""

    def __init__(self, out_dir: Path, meta: dict):
        self.out_dir, self.meta = out_dir, meta
        self.train: dict | None = None
        self.ops: dict[str, list[dict]] = {}
        self.recipe: dict[str, dict] = {}
        self.skipped: list[str] = []
        self.errors: list[str] = []
        self.wall_s, self.finished = 0.0, False
        self.section_s: dict[str, float] = {}  # the budget's per-section totals

    # Markdown --------------------------------------------------------------

    def markdown(self) -> str:
        m = self.meta
        sample = "one call"
        if m["sample_s"] > 0:
            sample = (
                f"up to {MAX_INNER} back-to-back calls lasting about {m['sample_s'] * 1e3:g} ms"
            )
        lines = [
            f"# Device benchmark, {m['date']}",
            "",
            f"Device: {m['platform']} ({m['device_kind']}), backend {m['backend']}; "
            + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
            "",
            f"{m['torch']}. JAX float32 precision: {m['precision']}.",
            "",
            f"Mode: {m['mode']}.",
        ]
        if not m["mode"].startswith("recipe"):
            lines[-1] += (
                f" Timing: min of {m['repeats']} interleaved samples, each {sample}, after a "
                "first call that compiles; first = that call, compile included."
            )
        if self.train is not None:
            lines += ["", f"## airbench94 train step (float32, batch {m['train_batch']})", ""]
            lines += train_table(self.train, m["train_batch"])
        for suite, results in self.ops.items():
            if results:
                batch = m["batch"] if suite == "core" else m["model_batch"]
                lines += ["", f"## {suite} suite (float32, batch {batch}), ms", ""]
                lines += [format_table(results, ("torch", 1) in results[0], digits=3)]
                lines += ["", first_call_line(results)]
        if self.recipe:
            lines += ["", "## CIFAR-10 recipe (airbench94), ours vs PyTorch", ""]
            lines += recipe_table(self.recipe)
        if self.skipped:
            lines += ["", f"Skipped for the {m['budget_s']:g} s budget: " + "; ".join(self.skipped)]
        if self.errors:
            lines += ["", "Errors:", ""] + [f"- {e}" for e in self.errors]
        state = "finished" if self.finished else "still running (partial results)"
        spent = ", ".join(f"{k} {v:.0f} s" for k, v in self.section_s.items())
        lines += ["", f"Wall time {self.wall_s:.0f} s ({spent or 'nothing run yet'}), {state}."]
        return "\n".join(lines)

    # JSON ------------------------------------------------------------------

    def as_json(self) -> dict:
        ops = {}
        for suite, results in self.ops.items():
            ops[suite] = [
                {
                    "name": r["case"].name,
                    "op": r["case"].op,
                    "shape": list(r["case"].shape),
                    "ms": _named(r.items()),
                    "first_s": _named(r["first_s"].items()),
                    "bwd_peak_bytes": r["mem"],
                }
                for r in results
            ]
        return {
            "meta": self.meta,
            "train_step": self.train,
            "ops": ops,
            "recipe": self.recipe,
            "skipped": self.skipped,
            "errors": self.errors,
            "wall_s": self.wall_s,
            "section_s": self.section_s,
            "finished": self.finished,
        }

    def write(self, elapsed: float, section_s: dict | None = None) -> None:
        self.wall_s = elapsed
        self.section_s = dict(section_s or self.section_s)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "device.md").write_text(self.markdown() + "\n")
        text = json.dumps(self.as_json(), indent=1, default=str, allow_nan=True)
        (self.out_dir / "device.json").write_text(text + "\n")


def first_call_line(results: list[dict]) -> str:
    """Seconds of the first calls (compiles, autotuning) over a suite, per implementation."""
    sums: dict[str, float] = {}
    for r in results:
        for (impl, _), seconds in r["first_s"].items():
            sums[impl] = sums.get(impl, 0.0) + seconds
    parts = ", ".join(f"{IMPL_LABELS.get(k, k)} {v:.1f}" for k, v in sums.items())
    return f"First calls (compile included), s, forward and forward+backward summed: {parts}."


def _named(items) -> dict:
    """``{"ours fwd": ..., "ours fwd+bwd": ...}`` from the ``(impl, 0|1)`` keys of ``items``."""
    return {f"{k[0]} {('fwd', 'fwd+bwd')[k[1]]}": v for k, v in items if isinstance(k, tuple)}


def train_table(train: dict, batch: int) -> list[str]:
    ms, first = train["ms"], train["first_s"]
    lines = [
        "| implementation | step ms | images/s | vs Flax built-ins | vs PyTorch | first step s |",
        "|---|---|---|---|---|---|",
    ]
    for kind, t in ms.items():

        def vs(other, t=t):
            return f"{ms[other] / t:.2f}x" if other in ms else "-"

        lines.append(
            f"| {IMPL_LABELS[kind]} | {t:.2f} | {batch / t * 1e3:.0f} | {vs('flax')} | "
            f"{vs('torch')} | {first[kind]:.1f} |"
        )
    lines += ["", "`vs X`: X's step time over this one's (above 1: faster than X)."]
    return lines


def recipe_table(recipe: dict) -> list[str]:
    lines = [
        "| implementation | test accuracy (TTA) | without TTA | train images/s | run wall s "
        "| process wall s |",
        "|---|---|---|---|---|---|",
    ]
    for kind, r in recipe.items():
        if "error" in r:
            lines.append(f"| {IMPL_LABELS[kind]} | {r['error']} | | | | |")
            continue
        lines.append(
            f"| {IMPL_LABELS[kind]} | {100 * r['test_accuracy']:.2f}% | "
            f"{100 * r['test_accuracy_no_tta']:.2f}% | {r['images_per_second'] or 0:.0f} | "
            f"{r['wall_time_s']:.1f} | {r['process_s']:.1f} |"
        )
    lines += [
        "",
        "run wall: the run's own clock (data, compile, training, evaluation); process wall: "
        "the whole command, interpreter start and imports included.",
    ]
    return lines


# ----------------------------------------------------------------------------- the runs


def run_benchmark(args, report: Report, budget: Budget, torch_device) -> None:
    def attempt(section: str, name: str, fn) -> dict | None:
        if not budget.allows(section, like="core"):  # op cases: alike enough
            report.skipped.append(f"{section}: {name}")
            print(f"  {name}: SKIPPED (budget {args.budget_s:g} s, {budget.elapsed():.0f} s "
                  "used)", flush=True)  # fmt: skip
            return None
        print(f"  {name} ...", flush=True)
        start = time.perf_counter()
        try:
            return fn()
        except Exception as exc:  # one broken case must not cost the others
            traceback.print_exc()
            report.errors.append(f"{section}: {name}: {type(exc).__name__}: {exc}")
            return None
        finally:
            budget.record(section, time.perf_counter() - start)
            report.write(budget.elapsed(), budget.total)

    if "train" in args.sections:
        print(f"== airbench94 train step, batch {args.train_batch}", flush=True)
        report.train = attempt(
            "train", "airbench94 step",
            lambda: train_step_case(
                args.train_batch, torch_device, args.repeats, args.sample_s, report.errors
            ),
        )  # fmt: skip
        report.write(budget.elapsed(), budget.total)
        if report.train is not None:
            print("\n".join(train_table(report.train, args.train_batch)[2:-2]), flush=True)
    suites = _suites(args.batch, args.model_batch)
    for suite in ("core", "model"):
        if suite not in args.sections:
            continue
        cases = [c for c in suites[suite] if args.only in c.name]
        cases = smoke_cases(cases) if args.smoke else cases
        print(f"== {suite} suite, {len(cases)} cases", flush=True)
        report.ops[suite] = []
        for case in cases:
            result = attempt(
                suite, case.name,
                lambda case=case: op_case(
                    case, torch_device, args.repeats, args.sample_s, report.errors
                ),
            )  # fmt: skip
            if result is not None:
                report.ops[suite].append(result)
                t = result.get(("torch", 1), float("nan"))
                print(f"    f+b ms: ours {result[('ours', 1)]:.3f}, XLA "
                      f"{result[('xla', 1)]:.3f}, torch {t:.3f}", flush=True)  # fmt: skip
                report.write(budget.elapsed(), budget.total)


def _stream(cmd: list[str], log: Path) -> tuple[int, float]:
    """Runs ``cmd`` from the checkout's root, echoing and logging its output as it comes."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    print("$ " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip
        for line in proc.stdout:
            print("    " + line, end="", flush=True)
            f.write(line)
        proc.wait()
    return proc.returncode, time.perf_counter() - start


def recipe_data_dir(given: str | None) -> Path | None:
    """``--data-dir`` if given, else the checkout's ``data/`` if it exists, else None (then
    ``train.data``'s default: ``$JSPATIAL_DATA_DIR`` or ``~/.cache/jspatial/data``)."""
    if given:
        return Path(given).expanduser().resolve()
    return ROOT / "data" if (ROOT / "data").is_dir() else None


def run_recipe(args, report: Report, budget: Budget, torch_device) -> None:
    """The CIFAR-10 recipe, jspatial (``train.cifar10``) then PyTorch (``bench.train_torch``)."""
    from train.data import DatasetNotFoundError, default_data_dir, load_cifar10

    data_dir = recipe_data_dir(args.data_dir)
    try:  # there is no network where this runs: fail here, clearly, not in a download
        load_cifar10(data_dir, download=False)
    except (DatasetNotFoundError, ValueError) as exc:
        where = data_dir or default_data_dir()
        report.errors.append(f"recipe: no usable CIFAR-10 in {where}: {exc}")
        print(report.errors[-1], flush=True)
        return
    # The runs start in the checkout's root: every path they get is absolute.
    out = Path(args.out).resolve()
    common = ["--data-dir", str(data_dir)] if data_dir else []  # else they read the env too
    if args.smoke:  # a few steps on a few images: the plumbing, not the accuracy
        common += ["--train-limit", "256", "--batch-size", "64", "--epochs", "0.5"]
    # Its checkpoints and metrics stay out of --out, which then holds a handful of files.
    jax_dir = ROOT / "runs" / "device-recipe"
    jax_cmd = [sys.executable, "-m", "train.cifar10", "--out-dir", str(jax_dir), "--overwrite",
               "--no-plots", "--no-progress", *common,
               *(["--test-limit", "256"] if args.smoke else [])]  # fmt: skip
    torch_json = out / "recipe-torch.json"
    torch_cmd = [sys.executable, "-m", "bench.train_torch", "--full", "--device",
                 torch_device or "cpu", "--threads", str(os.cpu_count() or 1), "--json",
                 str(torch_json), *common]  # fmt: skip
    runs = [("ours", jax_cmd, jax_dir / "summary.json", out / "recipe-jax.log")]
    if torch_device is not None:
        runs.append(("torch", torch_cmd, torch_json, out / "recipe-torch.log"))
    out.mkdir(parents=True, exist_ok=True)
    for kind, cmd, result_file, log in runs:
        if not budget.allows("recipe"):
            report.skipped.append(f"recipe: {kind}")
            continue
        result_file.unlink(missing_ok=True)
        code, process_s = _stream(cmd, log)
        budget.record("recipe", process_s)
        if code != 0 or not result_file.is_file():
            report.recipe[kind] = {"error": f"exit status {code}, see {log.name}"}
        else:
            result = json.loads(result_file.read_text())
            keep = ("test_accuracy", "test_accuracy_no_tta", "images_per_second",
                    "wall_time_s", "epochs", "steps", "batch_size")  # fmt: skip
            report.recipe[kind] = {k: result.get(k) for k in keep} | {"process_s": process_s}
        report.write(budget.elapsed(), budget.total)
    print("\n".join(recipe_table(report.recipe)), flush=True)


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true",
                   help="tiny shapes, one case per op, on any backend (CPU too)")  # fmt: skip
    p.add_argument("--recipe", action="store_true",
                   help="the CIFAR-10 recipe to 94%%, jspatial vs PyTorch, instead")  # fmt: skip
    p.add_argument("--data-dir", default=None,
                   help="for --recipe: the folder holding cifar-10-batches-bin/ (default: the "
                   "checkout's data/ if there, else $JSPATIAL_DATA_DIR, else "
                   "~/.cache/jspatial/data)")  # fmt: skip
    p.add_argument("--budget-s", type=float, default=None,
                   help="skip what would start past this many seconds (default: 300; none "
                   "for --recipe and --smoke); 0: no limit")  # fmt: skip
    p.add_argument("--out", default="bench/out", help="folder for device.md and device.json")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help="comma-separated, of: train, core, model")  # fmt: skip
    p.add_argument("--only", default="", help="op cases whose name contains this")
    p.add_argument("--repeats", type=int, default=None, help="timed samples (default: 10)")
    p.add_argument("--sample-ms", type=float, default=None,
                   help="length of a timed sample (default: 20 ms; --smoke: one call)")  # fmt: skip
    p.add_argument("--batch", type=int, default=None, help="core suite (default: 128)")
    p.add_argument("--model-batch", type=int, default=None, help="model suite (default: 512)")
    p.add_argument("--train-batch", type=int, default=None, help="train step (default: 512)")
    p.add_argument("--precision", choices=("default", "highest"), default="default",
                   help="float32 products: each framework's default (TF32 on a recent GPU) "
                   "or full float32 in both")  # fmt: skip
    p.add_argument("--no-torch", action="store_true")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        p.error(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    small = dict(repeats=2, sample_ms=0.0, batch=2, model_batch=2, train_batch=4)
    full = dict(repeats=10, sample_ms=20.0, batch=128, model_batch=512, train_batch=512)
    for name, value in (small if args.smoke else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.budget_s is None:  # the GPU benchmark's; not the training runs' nor a check's
        args.budget_s = 0 if args.recipe or args.smoke else 300
    if args.budget_s < 0 or args.repeats < 1:
        p.error("--budget-s must be >= 0 and --repeats >= 1")
    args.sample_s = args.sample_ms / 1e3
    return args


def gpu_memory_settings(recipe: bool) -> None:
    """Before JAX starts its backend (the first ``jax.devices()``): JAX takes 75% of a
    GPU's memory by default, but here PyTorch shares the device, and with ``--recipe`` the
    training runs are other processes, which this one must leave all of it."""
    if recipe:
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    else:
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")


def main(argv=None) -> Report:
    args = parse_args(argv)
    gpu_memory_settings(args.recipe)
    if args.precision == "highest":
        set_highest_precision()
    dev = jax.devices()[0]
    gpu = dev.platform == "gpu"
    if not args.smoke and dev.platform == "cpu":
        raise SystemExit("bench.device needs a GPU (JAX sees only the CPU); --smoke checks "
                         "the script on any backend")  # fmt: skip
    torch, torch_device, torch_desc = (None, None, "PyTorch: left out (--no-torch)")
    if not args.no_torch:
        torch, torch_device, torch_desc = load_torch(args.precision, gpu)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "backend": backend_version(),
        "versions": package_versions(),
        "torch": torch_desc,
        "precision": "highest (no TF32)" if args.precision == "highest" else "JAX's default",
        "mode": ("recipe" if args.recipe else "benchmark") + (" (smoke)" if args.smoke else ""),
        "budget_s": args.budget_s or None,
        "repeats": args.repeats,
        "sample_s": args.sample_s,
        "batch": args.batch,
        "model_batch": args.model_batch,
        "train_batch": args.train_batch,
        "argv": sys.argv[1:] if argv is None else list(argv),
    }
    print(f"{dev.platform} ({dev.device_kind}), backend {meta['backend']}", flush=True)
    print(", ".join(f"{k} {v}" for k, v in meta["versions"].items()), flush=True)
    print(torch_desc, flush=True)
    report = Report(Path(args.out), meta)
    budget = Budget(args.budget_s or None)
    report.write(0.0)
    (run_recipe if args.recipe else run_benchmark)(args, report, budget, torch_device)
    peak = device_peak_mb(dev)
    if peak is not None:
        report.meta["jax_device_peak_mb"] = round(peak)
    report.finished = True
    report.write(budget.elapsed(), budget.total)
    print(report.markdown(), flush=True)
    print(f"written: {Path(args.out) / 'device.md'}, {Path(args.out) / 'device.json'}")
    return report


if __name__ == "__main__":
    main()
