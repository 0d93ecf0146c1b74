"""``summary``: a per-layer table of shapes, parameters, MACs, memory and receptive fields.

The model's forward pass runs abstractly (``jax.eval_shape`` over a copy built by
``nnx.merge``): nothing is computed, nothing is compiled, and the model itself is
never touched, so BatchNorm running statistics and RNG counters stay as they were.
While it runs, the ``__call__`` of every *leaf* layer (a module with no sub-modules,
or one that holds parameters itself) is intercepted to record its input and output,
in call order, whatever the model's ``__call__`` does between them. A layer called
twice gets two rows. The plain functions of an ``nnx.Sequential`` (``nnx.relu``,
``functools.partial(jax.nn.leaky_relu, ...)``) get a row for each call too, named by
their index like a layer there and typed by the function's name, as ``torchinfo``
lists a ``ReLU``; a function called inside a model's own ``__call__`` is not a layer
and has no row.

What each column counts:

- **Params**: the elements of the layer's ``nnx.Param`` variables, on the first
  call of the layer only (a weight shared by two layers is counted once). Arrays
  kept out of training (airbench's frozen whitening filters, BatchNorm statistics)
  are not parameters; the footer counts the frozen ones separately.
- **MACs**: multiply-accumulates for the whole batch, from the calculators of
  ``jspatial.shapes`` (``conv2d_macs``, ``conv_transpose2d_macs``; ``nnx.Linear``:
  ``rows * in_features * out_features``). Only dot products count: BatchNorm,
  pooling (comparisons or additions), activations and reshapes are 0, since at
  inference BatchNorm folds into the convolution before it. A layer of a type not
  known here that holds parameters shows ``?`` and is left out of the total; so does
  a function of a Sequential that multiplies arrays (a matrix product or a
  convolution in its traced program). Functions hold no parameters.
- **Memory**: bytes of the layer's output(s) for the given batch
  (``activation_bytes``), e.g. a pool's indices too.
- **RF / jump**: the receptive field of one output cell, in input pixels, and the
  jump (input pixels between neighbouring output cells), tracked through
  convolutions and pools as ``field += (dilation * (k - 1)) * jump; jump *= stride``
  (``receptive_field``). A transposed convolution (or ``MaxUnpool2d``) divides the
  jump by its stride and adds the span of the input cells that reach one output cell
  (``ceil(k / (s / g)) - 1`` of them, ``d / g`` apart, ``g = gcd(s, d)``): the
  largest field of any output cell. Past it the jump is fractional, output cells are
  no longer evenly spaced over the input and the field is approximate, shown
  ``~``; likewise after an adaptive pool whose bins are uneven. ``all``: each output
  depends on the whole input (``Linear``, ``GlobalAvgPool2d`` and after them);
  ``-``: no spatial axes to speak of (``Flatten``). The field follows tensors: a
  layer's input is matched to the layer output it is, or, when a function ran
  between the two layers (an activation, a residual sum, a scale), to the layer
  output of the same shape with the largest field (the field of a sum is that of
  its widest term), so residual networks come out right.

Channels last: a model built with ``data_format='NHWC'`` layers is summarised with
``summary(model, (N, H, W, C), data_format='NHWC')``; the shapes are then channels last
(as the layers return them) and the MACs, fields and memory are those of the NCHW model.

Example:
    >>> from flax import nnx
    >>> import jspatial as js
    >>> from jspatial.layers import Conv2d, Flatten, MaxPool2d
    >>> rngs = nnx.Rngs(0)
    >>> model = nnx.Sequential(
    ...     Conv2d(3, 8, 3, padding=1, rngs=rngs), nnx.relu, MaxPool2d(2),
    ...     Conv2d(8, 8, 3, padding=2, dilation=2, rngs=rngs), Flatten(),
    ...     nnx.Linear(8 * 8 * 8, 10, rngs=rngs),
    ... )
    >>> s = js.summary(model, (2, 3, 16, 16))
    Layer  Type       Output shape    Params     MACs    Memory   RF  Jump
    -----  ---------  --------------  ------  -------  --------  ---  ----
    0      Conv2d     (2, 8, 16, 16)     224  110,592  16.0 KiB    3     1
    1      relu       (2, 8, 16, 16)       0        0  16.0 KiB    3     1
    2      MaxPool2d  (2, 8, 8, 8)         0        0   4.0 KiB    4     2
    3      Conv2d     (2, 8, 8, 8)       584   73,728   4.0 KiB   12     2
    4      Flatten    (2, 512)             0        0   4.0 KiB    -     -
    5      Linear     (2, 10)          5,130   10,240      80 B  all     -
    -----  ---------  --------------  ------  -------  --------  ---  ----
    Total                              5,938  194,560  44.1 KiB
    Input (2, 3, 16, 16) float32, output (2, 10); MACs x 2 = FLOPs.
    >>> s.rows[3].receptive_field, s.rows[3].jump, s.total_params
    ((12, 12), (2, 2), 5938)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jspatial import _args
from jspatial.layers import module as _module
from jspatial.layers._summary_trace import Recorder, array_leaves, intercepted, torch_name
from jspatial.layers.pool import Flatten

# --------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class SummaryRow:
    """One call of one leaf layer (or of one function of an ``nnx.Sequential``).

    Attributes:
        name: PyTorch-style dotted path (``0``, ``features.3``, ``groups.0.conv1``);
            ``""`` for the model itself when it is a single layer.
        type: the layer's class name; for a function, its name (``relu``).
        call: 1 for the first call of this layer, 2 for the second, ...
        input_shape: shape of the first array argument.
        output_shape: shape of the first array output.
        output_shapes: shapes of all array outputs (a pool's indices too).
        params: elements of the layer's ``nnx.Param`` variables (0 on repeated calls).
        macs: multiply-accumulates for the batch; ``None`` when not known for the type
            (or for a function that multiplies arrays).
        activation_bytes: bytes of all the layer's outputs.
        receptive_field: ``(h, w)`` in input pixels (ints; ``Fraction`` past a
            transposed conv), ``"all"`` (the whole input) or ``None`` (no spatial
            axes, or unknown).
        jump: ``(h, w)`` input pixels between neighbouring output cells, or ``None``.
        exact: whether ``receptive_field`` is exact (see the module docstring).
    """

    name: str
    type: str
    call: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    output_shapes: tuple[tuple[int, ...], ...]
    params: int
    macs: int | None
    activation_bytes: int
    receptive_field: tuple[Any, Any] | str | None
    jump: tuple[Any, Any] | None
    exact: bool


@dataclasses.dataclass(frozen=True)
class Summary:
    """What ``summary`` found: the rows, in call order, and the totals.

    Attributes:
        rows: one ``SummaryRow`` per call of a leaf layer or of a Sequential's
            function, in the order the calls return.
        input_shape, dtype: the input the forward pass was traced with.
        output_shape: the shape of the model's (first array) output.
        total_params: every ``nnx.Param`` element of the model, counted once; equals
            ``sum(row.params) + sum(uncalled.values())``.
        total_macs: sum of the rows' known MACs.
        total_activation_bytes: sum of the rows' output bytes.
        frozen: elements of the other non-statistic variables (e.g. a ``Frozen``
            weight): arrays the model keeps but never trains.
        uncalled: ``{name: params}`` of layers with parameters that the forward pass
            never called.
        data_format: the layout of the input and of the shapes, ``'NCHW'`` or ``'NHWC'``.
    """

    rows: list[SummaryRow]
    input_shape: tuple[int, ...]
    dtype: Any
    output_shape: tuple[int, ...]
    total_params: int
    total_macs: int
    total_activation_bytes: int
    frozen: int
    uncalled: dict[str, int]
    data_format: str = "NCHW"

    def table(self) -> str:
        """The rows and totals as a fixed-width text table."""
        return _format_table(self)

    def __str__(self) -> str:
        return self.table()


# ----------------------------------------------------------------------- entry point


def summary(
    model: nnx.Module,
    input_shape: Sequence[int],
    dtype: Any = jnp.float32,
    print_table: bool = True,
    *,
    data_format: str = "NCHW",
) -> Summary:
    """Per-layer output shapes, parameters, MACs, activation memory and receptive fields.

    Args:
        model: any ``nnx.Module`` made of ``jspatial.layers``, ``nnx.Linear`` and
            functions (an ``nnx.Sequential``, a model with attributes); it may be
            abstract (built under ``nnx.eval_shape``). It is not modified.
        input_shape: the input's full shape, batch included: ``(N, C, H, W)``, or
            ``(N, H, W, C)`` with ``data_format='NHWC'``.
        dtype: the input's dtype.
        print_table: print ``Summary.table()``.
        data_format: the layout of ``input_shape`` and of the model's spatial layers,
            ``'NCHW'`` or ``'NHWC'``; the table's shapes are in it. A ``jspatial.layers``
            layer built with the other layout is an error (its input would be read
            wrongly), except ``Flatten``, which reshapes whatever it is given.

    Returns:
        A ``Summary``: ``rows`` (``SummaryRow``, in call order) and totals. See the
        module docstring for what each column counts.

    Cost: one abstract trace of the forward pass (about a second for ResNet-18 on
    a CPU); nothing is compiled or executed.

    Example:
        >>> from flax import nnx
        >>> import jspatial as js
        >>> from jspatial.layers import Conv2d, GlobalAvgPool2d
        >>> model = nnx.Sequential(
        ...     Conv2d(3, 8, 3, padding=1, data_format="NHWC", rngs=nnx.Rngs(0)),
        ...     GlobalAvgPool2d(data_format="NHWC"),
        ... )
        >>> s = js.summary(model, (2, 16, 16, 3), data_format="NHWC", print_table=False)
        >>> [(r.type, r.output_shape, r.macs) for r in s.rows]
        [('Conv2d', (2, 16, 16, 8), 110592), ('GlobalAvgPool2d', (2, 8), 0)]
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"summary model must be an nnx.Module, got {type(model).__name__}")
    if isinstance(input_shape, (int, str)) or not isinstance(input_shape, Sequence):
        raise TypeError(f"summary input_shape must be a sequence of ints, got {input_shape!r}")
    data_format = _args.check_data_format(data_format, "summary")
    _check_layouts(model, data_format)
    in_shape = tuple(int(s) for s in input_shape)
    dtype = jnp.dtype(dtype)
    graphdef, state = nnx.split(model)
    recorder = Recorder(SummaryRow)

    def forward(state: Any, x: jax.Array) -> Any:
        copy = nnx.merge(graphdef, state)
        recorder.start(copy, x)
        with intercepted(recorder):
            return copy(x)

    out = jax.eval_shape(forward, state, jax.ShapeDtypeStruct(in_shape, dtype))
    arrays = array_leaves(out)
    result = Summary(
        rows=recorder.rows,
        input_shape=in_shape,
        dtype=dtype,
        data_format=data_format,
        output_shape=tuple(arrays[0].shape) if arrays else (),
        total_params=_count(_module.named_variables(model, nnx.Param)),
        total_macs=sum(r.macs for r in recorder.rows if r.macs is not None),
        total_activation_bytes=sum(r.activation_bytes for r in recorder.rows),
        frozen=_count(
            (p, v)
            for p, v in _module.named_variables(model)
            if not isinstance(v, (nnx.Param, nnx.BatchStat, nnx.RngState))
        ),
        uncalled=recorder.uncalled(),
    )
    if print_table:
        print(result.table())
    return result


# ------------------------------------------------------------------------- checks


def _check_layouts(model: nnx.Module, data_format: str) -> None:
    """Every layout-aware layer of ``model`` (but ``Flatten``) runs in ``data_format``."""
    for path, mod in _module.named_modules(model):
        layout = getattr(mod, "data_format", None)
        if layout is None or layout == data_format or isinstance(mod, Flatten):
            continue
        name = torch_name(model, path) or type(mod).__name__
        raise ValueError(
            f"summary data_format={data_format!r}, but layer {name} ({type(mod).__name__}) "
            f"has data_format={layout!r}: pass the model's layout, and an input_shape in it"
        )


def _count(named: Any) -> int:
    return sum(math.prod(var.shape) for _, var in named)


# ------------------------------------------------------------------------------ table


def _format_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    raise AssertionError  # unreachable


def _format_pair(pair: Any, exact: bool = True) -> str:
    if pair is None:
        return "-"
    if isinstance(pair, str):
        return pair
    if exact:
        h, w = (str(v) for v in pair)
    else:
        h, w = (f"~{math.ceil(v)}" for v in pair)
    return h if h == w else f"{h}x{w}"


def _format_table(s: Summary) -> str:
    header = ("Layer", "Type", "Output shape", "Params", "MACs", "Memory", "RF", "Jump")
    right = (False, False, False, True, True, True, True, True)
    body = []
    for r in s.rows:
        name = r.name or "-"
        shape = str(r.output_shape)
        if len(r.output_shapes) > 1:
            shape += f" +{len(r.output_shapes) - 1}"
        body.append(
            (
                name if r.call == 1 else f"{name} #{r.call}",
                r.type,
                shape,
                f"{r.params:,}",
                "?" if r.macs is None else f"{r.macs:,}",
                _format_bytes(r.activation_bytes),
                _format_pair(r.receptive_field, r.exact),
                _format_pair(r.jump),
            )
        )
    total = ("Total", "", "", f"{s.total_params:,}", f"{s.total_macs:,}",
             _format_bytes(s.total_activation_bytes), "", "")  # fmt: skip
    widths = [max(len(row[i]) for row in (header, *body, total)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        text = "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right))
        return text.rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines = [line(header), rule, *(line(b) for b in body), rule, line(total)]
    layout = "" if s.data_format == "NCHW" else f" ({s.data_format})"
    lines.append(
        f"Input {s.input_shape}{layout} {jnp.dtype(s.dtype).name}, output {s.output_shape}; "
        "MACs x 2 = FLOPs."
    )
    if s.frozen:
        lines.append(f"Frozen (never trained) arrays: {s.frozen:,} elements, not in Params.")
    if s.uncalled:
        names = ", ".join(f"{k} ({v:,})" for k, v in s.uncalled.items())
        lines.append(f"Params of layers never called (in the total): {names}.")
    if any(r.macs is None for r in s.rows):
        lines.append("?: MACs not known for this layer type or function, left out of the total.")
    return "\n".join(lines)
