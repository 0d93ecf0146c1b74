"""Receptive fields: how many input pixels one output cell sees, and how far apart cells are.

One rule, ``widen``, carries the field through a window (a convolution or a pool):
``field += dilation * (kernel - 1) * jump`` and ``jump *= stride``, where the *jump* is the
input distance between neighbouring cells. ``receptive_field`` applies it to a stack of
``(kernel_size, stride)`` layers; ``_Field`` (what ``jspatial.summary`` tracks through a
model) applies it per axis in exact fractions, and adds the transposed convolution's and
the adaptive pool's own rules.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import Any

from jspatial import _args
from jspatial.shapes.sizes import _factor, _print


def widen(field, jump, kernel, stride, dilation=1):
    """One window on one axis: ``(field + dilation * (kernel - 1) * jump, jump * stride)``.

    ``field`` and ``jump`` are in input pixels (ints, or ``Fraction`` past a transposed
    convolution).

    >>> widen(3, 1, 2, 2), widen(4, 2, 3, 1, dilation=2)
    ((4, 2), (12, 2))
    """
    return field + dilation * (kernel - 1) * jump, jump * stride


def receptive_field(layers: Iterable[tuple[int, int]], *, explain: bool = False) -> int:
    """Receptive field (in input pixels) of a stack of ``(kernel_size, stride)`` layers.

    Each layer widens the field by ``(k - 1)`` times the product of the strides
    before it (its *jump*, the input distance between neighbouring cells of its
    input): ``r = 1 + sum_l (k_l - 1) * prod_{m<l} s_m``. A dilated kernel counts
    as its extent ``dilation * (k - 1) + 1``. ``explain=True`` prints one line per
    layer, ``r_l = r_{l-1} + (k_l-1)*(s_1*...*s_{l-1})``.

    >>> receptive_field([(3, 1), (3, 1)]), receptive_field([(3, 1), (2, 2), (3, 1), (3, 1)])
    (5, 12)
    >>> _ = receptive_field([(3, 1), (2, 2), (3, 1)], explain=True)
    r_1 = 1 + (3-1)*1 = 3
    r_2 = 3 + (2-1)*1 = 4
    r_3 = 4 + (3-1)*(1*2) = 8
    """
    field, jump = 1, 1
    strides: list[int] = []
    lines = []
    for i, layer in enumerate(layers):
        if not (isinstance(layer, (tuple, list)) and len(layer) == 2):
            raise ValueError(
                f"receptive_field layers must be (kernel_size, stride) pairs, got {layer!r} "
                f"at position {i}"
            )
        k, s = (_args.pair(v, "receptive_field", n)[0] for v, n in zip(layer, ("kernel", "stride")))
        new, jump = widen(field, jump, k, s)
        jump_text = _factor("*".join(str(v) for v in strides) or "1")
        lines.append(f"r_{i + 1} = {field} + ({k}-1)*{jump_text} = {new}")
        field = new
        strides.append(s)
    if explain:
        _print(lines or ["r = 1  (no layers)"])
    return field


@dataclasses.dataclass(frozen=True)
class _Field:
    """Receptive field and jump per axis, in input pixels (``Fraction``: exact arithmetic)."""

    field: tuple[Fraction, Fraction]
    jump: tuple[Fraction, Fraction]
    exact: bool

    @staticmethod
    def identity() -> _Field:
        one = Fraction(1)
        return _Field((one, one), (one, one), True)

    def _evenly_spaced(self) -> bool:
        return all(j.denominator == 1 for j in self.jump)

    def window(self, kernel: Any, stride: Any, dilation: Any = (1, 1)) -> _Field:
        """Through a conv or pool: ``widen`` on each axis."""
        axes = [widen(*a) for a in zip(self.field, self.jump, kernel, stride, dilation)]
        field, jump = (tuple(f for f, _ in axes), tuple(j for _, j in axes))
        trivial = tuple(kernel) == (1, 1) and tuple(stride) == (1, 1)
        return _Field(field, jump, self.exact and (self._evenly_spaced() or trivial))

    def transposed(self, kernel: Any, stride: Any, dilation: Any = (1, 1)) -> _Field:
        """Through a transposed conv: the widest set of input cells one output cell sees."""
        field, jump = [], []
        for f, k, s, d, j in zip(self.field, kernel, stride, dilation, self.jump):
            g = math.gcd(s, d)
            taps = -(-k // (s // g))  # taps of one output cell: every (s/g)-th of the k
            field.append(f + (taps - 1) * Fraction(d, g) * j)
            jump.append(j / s)
        return _Field(tuple(field), tuple(jump), self.exact and self._evenly_spaced())

    def adaptive(self, in_hw: Sequence[int], out_hw: Sequence[int]) -> _Field | None:
        """Through an adaptive pool: bins ``[floor(i*H/O), ceil((i+1)*H/O))``."""
        if min(out_hw) == 0:
            return None
        field, jump, even = [], [], True
        for f, j, h, o in zip(self.field, self.jump, in_hw, out_hw):
            widest = max(-(-(i + 1) * h // o) - (i * h) // o for i in range(o))
            field.append(f + (widest - 1) * j)
            jump.append(j * Fraction(h, o))
            even = even and h % o == 0
        return _Field(tuple(field), tuple(jump), self.exact and self._evenly_spaced() and even)

    def field_value(self) -> tuple[Any, Any]:
        return _plain(self.field)

    def jump_value(self) -> tuple[Any, Any]:
        return _plain(self.jump)


def _plain(pair: tuple[Fraction, Fraction]) -> tuple[Any, Any]:
    return tuple(int(v) if v.denominator == 1 else v for v in pair)  # type: ignore[return-value]
