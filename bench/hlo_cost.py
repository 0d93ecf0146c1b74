"""FLOPs, HBM bytes and kernel launches of an optimized GPU HLO module, read from its text.

Pure text in, numbers out (no JAX): ``bench.gpu`` compiles for a GPU ahead of time and
hands ``compiled.as_text()`` to :func:`count`. XLA's own cost analysis gets three things
wrong on such a module, and this counter is written around them:

1. A ``while`` loop (a rolled ``lax.fori_loop``) is one instruction: its body is counted
   times the trip count that XLA records on it (``backend_config={"known_trip_count":
   {"n": ...}}``). With a known trip count the GPU runtime runs the body that many times
   and never evaluates the condition; a loop without one is counted once and flagged.
2. Custom calls (cuDNN convolutions, cuBLAS gemms, Pallas/Triton kernels) are opaque:
   each is charged its operands plus its results (not the ``u8`` scratch workspace that
   cuDNN and cuBLAS calls return last), and the FLOPs of the convolution or dot it stands
   for. A Triton call's FLOPs cannot be read from the HLO: they come from a
   ``pl.CostEstimate`` (in the backend config where the lowering keeps it, else from the
   ``kernel_flops`` the caller read off the jaxpr); without one they are unknown and
   counted in ``Cost.unknown_flops``.
3. A fusion reads only the slice of a parameter that a ``dynamic-slice``/``slice``/
   ``gather`` takes, and an in-place ``dynamic-update-slice`` at its root writes only the
   update (and does not read the buffer), also when a ``bitcast`` sits in between.

Every other instruction of the entry (and of a loop body) that is not bookkeeping
(``parameter``, ``constant``, ``tuple``, ``get-tuple-element``, ``bitcast``, ...) is one
kernel launch (a fusion, a library call, a copy, a collective), charged its operands plus
its results: a kernel reads its inputs from HBM once and writes its outputs once. FLOPs
follow XLA's convention: one per element of an element-wise op (transcendental ones,
``exp``, ``tanh``, ``rsqrt``, ... counted apart), two per multiply-add of a dot or
convolution, one per combination of a reduction.

    cost = count(compiled.as_text())
    cost.flops, cost.bytes, cost.kernels, cost.collectives["all-reduce"]
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

DTYPE_BYTES = {
    "pred": 1, "s2": 0.25, "u2": 0.25, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2,
    "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8,
    "c64": 8, "c128": 16, "token": 0,
}  # fmt: skip
# Every float8 flavour (f8e4m3fn, f8e5m2, ...) is one byte.
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")

# Instructions that launch nothing: bookkeeping of buffers the runtime resolves itself.
NO_KERNEL = {
    "parameter", "constant", "tuple", "get-tuple-element", "bitcast", "after-all",
    "add-dependency", "opt-barrier", "domain",
}  # fmt: skip
ELEMENTWISE = {
    "abs", "add", "and", "ceil", "clamp", "clz", "compare", "complex", "convert", "divide",
    "floor", "imag", "is-finite", "maximum", "minimum", "multiply", "negate", "not", "or",
    "popcnt", "real", "reduce-precision", "remainder", "round-nearest-afz",
    "round-nearest-even", "select", "shift-left", "shift-right-arithmetic",
    "shift-right-logical", "sign", "subtract", "xor",
}  # fmt: skip
TRANSCENDENTAL = {
    "atan2", "cbrt", "cos", "erf", "exponential", "exponential-minus-one", "log",
    "log-plus-one", "logistic", "power", "rsqrt", "sin", "sqrt", "tan", "tanh",
}  # fmt: skip
COLLECTIVES = {"all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute"}
SLICING = {"dynamic-slice", "slice", "gather"}
TRITON_TARGET = "__gpu$xla.gpu.triton"


# ----------------------------------------------------------------------------- shapes


def arrays(shape: str) -> list[tuple[str, tuple[int, ...]]]:
    """``(dtype, dims)`` of every array in a shape string, tuples flattened.

    >>> arrays("(f32[2,3]{1,0}, u8[0]{0})")
    [('f32', (2, 3)), ('u8', (0,))]
    """
    return [
        (dtype, tuple(int(d) for d in dims.split(",") if d))
        for dtype, dims in _ARRAY.findall(shape)
    ]


def _dtype_bytes(dtype: str) -> float:
    return 1 if dtype.startswith("f8") else DTYPE_BYTES.get(dtype, 4)


def nbytes(shape: str) -> float:
    """Bytes of every array in a shape string.

    >>> nbytes("(f32[2,3]{1,0}, s8[4])")
    28
    """
    return sum(_dtype_bytes(t) * math.prod(d) for t, d in arrays(shape))


def elements(shape: str) -> int:
    """Elements of the first array of a shape string (a tuple's first element)."""
    found = arrays(shape)
    return math.prod(found[0][1]) if found else 0


# ----------------------------------------------------------------------------- parsing


def _close(s: str, i: int) -> int:
    """Index of the bracket that closes the one at ``s[i]``; quoted strings skipped."""
    depth, quoted, j = 0, False, i
    while j < len(s):
        ch = s[j]
        if quoted:
            if ch == "\\":
                j += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
            if depth == 0:
                return j
        j += 1
    raise ValueError(f"unbalanced HLO text: {s[i : i + 80]!r}")


def _split_top(s: str) -> list[str]:
    """``s`` split at the commas outside brackets and quotes."""
    parts, start, j = [], 0, 0
    while j < len(s):
        ch = s[j]
        if ch in "({[" or ch == '"':
            j = _close(s, j) if ch != '"' else _end_quote(s, j)
        elif ch == ",":
            parts.append(s[start:j])
            start = j + 1
        j += 1
    parts.append(s[start:])
    return [p.strip() for p in parts if p.strip()]


def _end_quote(s: str, i: int) -> int:
    j = i + 1
    while j < len(s) and s[j] != '"':
        j += 2 if s[j] == "\\" else 1
    return j


@dataclass
class Instr:
    name: str
    shape: str
    opcode: str
    operands: list[str]  # names (for a parameter or constant: its literal text)
    attrs: dict[str, str]
    root: bool = False

    def called(self, key: str) -> list[str]:
        """Computation names in attribute ``key`` (``calls``, ``body``, ``to_apply``, ...)."""
        return [n.lstrip("%") for n in re.findall(r"%?[\w.\-$]+", self.attrs.get(key, ""))]


def parse_instr(line: str) -> Instr:
    """One instruction line: ``[ROOT] %name = SHAPE opcode(operands), attr=value, ...``."""
    line = re.sub(r"/\*.*?\*/", "", line.strip())
    root = line.startswith("ROOT ")
    if root:
        line = line[5:]
    name, rest = line.split(" = ", 1)
    if rest.startswith("("):
        end = _close(rest, 0)
        shape, rest = rest[: end + 1], rest[end + 1 :].lstrip()
    else:
        shape, rest = rest.split(" ", 1)
    opcode = re.match(r"[\w\-]+", rest).group(0)
    open_at = len(opcode)
    end = _close(rest, open_at)
    raw_operands = rest[open_at + 1 : end]
    if opcode in ("parameter", "constant"):
        operands = [raw_operands]
    else:
        operands = [p.split()[-1].lstrip("%") for p in _split_top(raw_operands)]
    attrs = {}
    for part in _split_top(rest[end + 1 :].lstrip(", ")):
        key, _, value = part.partition("=")
        attrs[key.strip()] = value.strip()
    return Instr(name.lstrip("%"), shape, opcode, operands, attrs, root)


@dataclass
class Computation:
    name: str
    instrs: list[Instr]

    def __post_init__(self):
        self.by_name = {i.name: i for i in self.instrs}
        self.users: dict[str, list[tuple[Instr, int]]] = {}
        for instr in self.instrs:
            for pos, operand in enumerate(instr.operands):
                self.users.setdefault(operand, []).append((instr, pos))

    @property
    def root(self) -> Instr:
        return next(i for i in self.instrs if i.root)

    def params(self) -> dict[int, Instr]:
        return {int(i.operands[0]): i for i in self.instrs if i.opcode == "parameter"}


def parse_module(text: str) -> tuple[dict[str, Computation], str]:
    """``(computations by name, entry name)`` of an HLO module's text."""
    comps, entry, current, lines = {}, None, None, []
    for line in text.splitlines():
        if current is None:
            head = line.rstrip()
            if head and not head[0].isspace() and head.endswith("{") and "(" in head:
                words = head.split()
                is_entry = words[0] == "ENTRY"
                current = words[1 if is_entry else 0].lstrip("%")
                entry = current if is_entry else entry
                lines = []
        elif line.rstrip() == "}":
            comps[current] = Computation(current, [parse_instr(x) for x in lines])
            current = None
        elif line.strip():
            lines.append(line)
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    return comps, entry


# ----------------------------------------------------------------------------- costs


@dataclass
class Cost:
    flops: float = 0.0
    transcendentals: float = 0.0
    bytes: float = 0.0
    kernels: float = 0.0
    unknown_flops: float = 0.0  # kernel launches whose FLOPs the HLO does not tell
    unknown_trips: int = 0  # while loops without a known trip count (counted once)
    # opcode (without -start) -> [instructions executed, operand bytes]
    collectives: dict[str, list[float]] = field(default_factory=dict)
    custom_calls: dict[str, float] = field(default_factory=dict)  # target -> launches

    def add(self, other: Cost, times: float = 1) -> None:
        self.flops += times * other.flops
        self.transcendentals += times * other.transcendentals
        self.bytes += times * other.bytes
        self.kernels += times * other.kernels
        self.unknown_flops += times * other.unknown_flops
        self.unknown_trips += other.unknown_trips
        for key, (n, b) in other.collectives.items():
            mine = self.collectives.setdefault(key, [0.0, 0.0])
            mine[0] += times * n
            mine[1] += times * b
        for key, n in other.custom_calls.items():
            self.custom_calls[key] = self.custom_calls.get(key, 0.0) + times * n


def trip_count(instr: Instr) -> int | None:
    found = re.search(r'"known_trip_count":\{"n":"(\d+)"', instr.attrs.get("backend_config", ""))
    return int(found.group(1)) if found else None


class Counter:
    """Walks a parsed module; ``kernel_flops`` maps a Triton kernel's name to its FLOPs."""

    def __init__(self, text: str, kernel_flops: Mapping[str, float] | None = None):
        self.comps, self.entry = parse_module(text)
        self.kernel_flops = dict(kernel_flops or {})

    def total(self) -> Cost:
        return self.launches(self.comps[self.entry])

    # -- what runs: kernels and the bytes they move

    def launches(self, comp: Computation) -> Cost:
        cost = Cost()
        for instr in comp.instrs:
            self._launch(comp, instr, cost)
        return cost

    def _launch(self, comp: Computation, instr: Instr, cost: Cost) -> None:
        op = instr.opcode
        if op in NO_KERNEL:
            return
        if op == "while":
            n = trip_count(instr)
            body = self.launches(self.comps[instr.called("body")[0]])
            if n is None:  # the condition runs too; the number of trips is unknown
                cost.unknown_trips += 1
                body.add(self.launches(self.comps[instr.called("condition")[0]]))
            cost.add(body, 1 if n is None else n)
            return
        if op == "call":
            cost.add(self.launches(self.comps[instr.called("to_apply")[0]]))
            return
        if op == "conditional":  # one branch runs: the one that moves the most is charged
            names = instr.called("branch_computations") or (
                instr.called("true_computation") + instr.called("false_computation")
            )
            cost.add(max((self.launches(self.comps[n]) for n in names), key=lambda c: c.bytes))
            return
        if op.endswith("-done"):  # the result of an asynchronous op lands here
            cost.bytes += nbytes(instr.shape)
            return
        cost.kernels += 1
        operands = [comp.by_name[o].shape for o in instr.operands if o in comp.by_name]
        base = op[: -len("-start")] if op.endswith("-start") else op
        if base in COLLECTIVES:
            entry = cost.collectives.setdefault(base, [0.0, 0.0])
            entry[0] += 1
            entry[1] += sum(map(nbytes, operands))
        if op.endswith("-start"):  # operands now, the result at the matching -done
            cost.bytes += sum(map(nbytes, operands))
            return
        if op == "fusion":
            fused = self.comps[instr.called("calls")[0]]
            cost.bytes += self.fusion_bytes(instr, comp, fused)
            self._flops(fused, cost)
            return
        if op == "custom-call":
            target = instr.attrs.get("custom_call_target", "").strip('"')
            cost.custom_calls[target] = cost.custom_calls.get(target, 0) + 1
            results = arrays(instr.shape)
            library = target.startswith(("__cudnn", "__cublas"))
            if library and len(results) > 1 and results[-1][0] == "u8":
                results = results[:-1]  # the library's scratch workspace
            cost.bytes += sum(map(nbytes, operands))
            cost.bytes += sum(_dtype_bytes(t) * math.prod(d) for t, d in results)
            self._custom_call_flops(instr, comp, target, cost)
            return
        cost.bytes += sum(map(nbytes, operands)) + nbytes(instr.shape)
        self._instr_flops(comp, instr, cost)

    def fusion_bytes(self, instr: Instr, caller: Computation, fused: Computation) -> float:
        """Bytes a fusion reads and writes, slices and in-place updates seen through
        bitcasts. (XLA's own analysis also charges an in-place update's buffer a read of the
        update's size; it is not read.)"""
        outputs = self._outputs(fused)
        in_place = {id(source) for _, source in outputs if self._in_place(fused, source)}
        total = 0.0
        params = fused.params()
        for pos, operand in enumerate(instr.operands):
            full = nbytes(caller.by_name[operand].shape) if operand in caller.by_name else 0
            param = params.get(pos)
            total += full if param is None else min(full, self._read(fused, param, in_place))
        for element, source in outputs:
            if id(source) in in_place:
                total += nbytes(fused.by_name[source.operands[1]].shape)  # the update only
            else:
                total += nbytes(element.shape)
        return total

    def _outputs(self, fused: Computation) -> list[tuple[Instr, Instr]]:
        """``(output, what made it)`` for each output of a fusion, bitcasts looked through."""
        root = fused.root
        elements = [root] if root.opcode != "tuple" else [fused.by_name[o] for o in root.operands]
        return [(e, self._through_bitcasts_up(fused, e)) for e in elements]

    def _in_place(self, fused: Computation, source: Instr) -> bool:
        """An output made by a dynamic-update-slice of a fusion parameter: written in place."""
        if source.opcode != "dynamic-update-slice":
            return False
        buffer = self._through_bitcasts_up(fused, fused.by_name[source.operands[0]])
        return buffer.opcode == "parameter"

    @staticmethod
    def _through_bitcasts_up(comp: Computation, instr: Instr) -> Instr:
        while instr.opcode == "bitcast":
            instr = comp.by_name[instr.operands[0]]
        return instr

    def _read(self, fused: Computation, param: Instr, in_place: set[int]) -> float:
        """Bytes of a fusion parameter that the fusion reads: the slices taken, nothing for
        the buffer of an in-place update, the whole array for any other use."""
        full = nbytes(param.shape)
        read, stack = 0.0, [param.name]
        while stack:
            for user, pos in fused.users.get(stack.pop(), []):
                if user.opcode == "bitcast":
                    stack.append(user.name)
                elif user.opcode in SLICING and pos == 0:
                    read += nbytes(user.shape)
                elif user.opcode == "dynamic-update-slice" and pos == 0 and id(user) in in_place:
                    pass
                else:
                    return full
        return read

    # -- FLOPs

    def _flops(self, comp: Computation, cost: Cost) -> None:
        for instr in comp.instrs:
            self._instr_flops(comp, instr, cost)

    def _instr_flops(self, comp: Computation, instr: Instr, cost: Cost) -> None:
        op, shape = instr.opcode, instr.shape
        if op == "fusion":
            self._flops(self.comps[instr.called("calls")[0]], cost)
        elif op in ELEMENTWISE:
            cost.flops += elements(shape)
        elif op in TRANSCENDENTAL:
            cost.transcendentals += elements(shape)
        elif op == "dot":
            lhs = arrays(comp.by_name[instr.operands[0]].shape)[0][1]
            dims = re.findall(r"\d+", instr.attrs.get("lhs_contracting_dims", ""))
            cost.flops += 2 * elements(shape) * math.prod(lhs[int(d)] for d in dims)
        elif op == "convolution":
            kernel = comp.by_name[instr.operands[1]].shape
            cost.flops += conv_flops(shape, kernel, instr.attrs.get("dim_labels", ""))
        elif op == "reduce":
            reduced = elements(comp.by_name[instr.operands[0]].shape) - elements(shape)
            cost.flops += reduced * self._scalar_flops(instr.called("to_apply")[0])
        elif op == "reduce-window":
            reducer = self._scalar_flops(instr.called("to_apply")[0])
            cost.flops += elements(shape) * _window_size(instr) * reducer
        elif op == "select-and-scatter":
            source = elements(comp.by_name[instr.operands[1]].shape)
            select, scatter = instr.called("select")[0], instr.called("scatter")[0]
            cost.flops += source * (
                _window_size(instr) * self._scalar_flops(select) + self._scalar_flops(scatter)
            )

    def _scalar_flops(self, name: str) -> float:
        """FLOPs of one application of a reducer (a computation on scalars)."""
        cost = Cost()
        self._flops(self.comps[name], cost)
        return cost.flops

    def _custom_call_flops(self, instr: Instr, comp: Computation, target: str, cost: Cost):
        shape = lambda name: comp.by_name[name].shape  # noqa: E731
        config = instr.attrs.get("backend_config", "")
        if target.startswith("__cudnn$conv"):
            # The window and dim_labels describe the forward convolution: find its output
            # and its kernel among the operands and results.
            result = instr.shape
            if "BackwardInput" in target:
                out, kernel = shape(instr.operands[0]), shape(instr.operands[1])
            elif "BackwardFilter" in target:
                out, kernel = shape(instr.operands[1]), result
            else:
                out, kernel = result, shape(instr.operands[1])
            cost.flops += conv_flops(out, kernel, instr.attrs.get("dim_labels", ""))
        elif target.startswith("__cublas"):
            lhs = arrays(shape(instr.operands[0]))[0][1]
            found = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', config)
            dims = re.findall(r"\d+", found.group(1)) if found else []
            cost.flops += 2 * elements(instr.shape) * math.prod(lhs[int(d)] for d in dims)
        else:
            flops = _estimate(config)
            if flops is None and target == TRITON_TARGET:
                found = re.search(r'\bname\s*=\s*"([^"]*)"', config)
                flops = self.kernel_flops.get(found.group(1)) if found else None
            if flops is None:
                cost.unknown_flops += 1
            else:
                cost.flops += flops


def _estimate(config: str) -> float | None:
    """FLOPs of a ``pl.CostEstimate`` kept in a custom call's backend config, if any."""
    found = re.search(r'"?\bflops"?\s*[=:]\s*"?(\d+)', config)
    return float(found.group(1)) if found else None


def _window_size(instr: Instr) -> int:
    found = re.search(r"size=([\dx]+)", instr.attrs.get("window", ""))
    return math.prod(int(s) for s in found.group(1).split("x")) if found else 1


def conv_flops(out_shape: str, kernel_shape: str, dim_labels: str) -> float:
    """Two FLOPs per multiply-add: every output element takes one product per kernel tap and
    input channel of its group, i.e. the kernel's size over its output features.

    >>> conv_flops("f32[8,4,4,16]", "f32[16,3,3,2]", "b01f_o01i->b01f")  # 2 * 2048 * 3*3*2
    73728
    """
    kernel = arrays(kernel_shape)[0][1]
    labels = dim_labels.split("_")[1].split("->")[0] if "_" in dim_labels else ""
    per_output = math.prod(kernel) // kernel[labels.index("o")] if "o" in labels else 1
    return 2 * elements(out_shape) * per_output


def count(text: str, kernel_flops: Mapping[str, float] | None = None) -> Cost:
    """The :class:`Cost` of an optimized HLO module (``compiled.as_text()``)."""
    return Counter(text, kernel_flops).total()
