"""Padding of the trailing axes, ``torch.nn.functional.pad``.

Each mode says what lies beyond the edge of the image, and each is a few slices
of the input glued on to it (``a b c d`` padded by 2 on each side)::

    constant    0 0 | a b c d | 0 0     a fixed value (conv2d's zero padding)
    reflect     c b | a b c d | c b     mirrored about the edge cell (no repeat)
    replicate   a a | a b c d | d d     the edge cell repeated
    circular    c d | a b c d | a b     wrapped around (a torus)

The axes are padded in order (rows, then columns), so the corners of ``reflect``
are reflected twice, as in torch. A negative amount crops that side instead. The gradient of a
slice is the slice run backwards (the gradient added back into the cells it came
from), so plain autodiff is exact and cheap: padding copies, it never multiplies.
The API is ``jspatial.pad``; the names with a leading underscore are internal.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from jspatial import _args

_MODES = ("constant", "reflect", "replicate", "circular")
# How the messages name the last axes (counted from the end), as torch's layouts do.
_AXIS_NAMES = {1: "width", 2: "height", 3: "depth"}


def pad(
    x: ArrayLike,
    pad: tuple[int, ...],
    mode: str = "constant",
    value: float | None = None,
    *,
    data_format: str = "NCHW",
) -> jax.Array:
    """Pad (or crop) the trailing axes of ``x``, as ``torch.nn.functional.pad``.

    See also: no loop here, slices (``jspatial.pad._pad_axis``);
    ``jspatial.reference.pad`` copies the cells one by one.

    Args:
        x: an array of any rank and dtype; an axis may be empty.
        pad: amounts in torch's order, last axis first: ``(left, right)`` pads the last
            axis, ``(left, right, top, bottom)`` the last two, and so on, one pair per
            axis. Negative amounts crop. ``'constant'`` mode pads any number of trailing
            axes (at most all of them); the others pad the last one, two or three, of an
            input with one or two axes more (``(N, C, W)`` or ``(C, W)`` for a pair,
            ``(N, C, H, W)`` or ``(C, H, W)`` for four amounts, 4-D or 5-D for six), as
            torch.
        mode: ``'constant'``, ``'reflect'``, ``'replicate'`` or ``'circular'``.
        value: the fill of ``'constant'`` mode (``None``: 0), cast to the dtype of
            ``x``; the other modes take none (or 0), as torch.
        data_format: keyword only, not in torch. ``'NCHW'`` (torch's reading: the
            amounts pad the trailing axes) or ``'NHWC'``, for a 4-D ``(N, H, W, C)`` or
            3-D ``(H, W, C)`` image: the amounts keep their NCHW meaning (``(left, right,
            top, bottom)`` pads W and H, six amounts pad C too, eight N), i.e. the
            result is the NCHW call's, channels last.

    Returns:
        ``x`` with each padded axis ``lo + size + hi`` long, in the dtype of ``x``.

    Raises:
        ValueError: as torch: a ``reflect`` amount must be smaller than the size of
            its axis, a ``circular`` one at most that size (after cropping),
            ``replicate`` needs a non-empty axis, and no axis may end up negative.
            ``data_format='NHWC'`` needs a 3-D or 4-D input.

    Example:
        >>> import jax.numpy as jnp, jspatial as js
        >>> x = jnp.arange(4.0).reshape(1, 1, 4)
        >>> js.pad(x, (2, 2), mode="reflect")[0, 0]
        Array([2., 1., 0., 1., 2., 3., 2., 1.], dtype=float32)
        >>> js.pad(x[0], (1, -1, 1, 0), value=9.0)
        Array([[9., 9., 9., 9.],
               [9., 0., 1., 2.]], dtype=float32)
        >>> js.pad(jnp.ones((1, 4, 4, 3)), (1, 1, 2, 0), data_format="NHWC").shape
        (1, 6, 6, 3)
    """
    return _pad_checked(x, pad, mode, value, op="pad", data_format=data_format)


def _pad_checked(x, pad, mode, value, *, op, data_format="NCHW"):
    """``pad`` with errors attributed to ``op``."""
    x = _args.check_array(x, op, "input", floating=False)
    data_format = _args.check_data_format(data_format, op)
    _args.one_of(mode, _MODES, op, "mode")
    if value is not None:
        value = _args.check_number(value, op, "value")
        if mode != "constant" and value != 0:
            raise ValueError(
                f"{op} mode {mode!r} does not take a value (only 'constant' does), got {value!r}"
            )
    pads = _check_pad(x.shape, pad, mode, op, data_format)
    axes = _pad_axes(x.ndim, len(pads), data_format)
    return _pad_normalised(x, pads, mode, 0.0 if value is None else value, axes)


def _amounts(pad, ndim, mode, op):
    """``pad`` (torch's order) as ``((lo, hi), ...)`` for the last axes, in axis order."""
    if not isinstance(pad, (tuple, list)):
        raise TypeError(
            f"{op} pad must be a tuple of ints (left, right, top, bottom, ...), got {pad!r}"
        )
    for p in pad:
        _args.check_int(p, op, "pad")  # an int, not a float or bool
    if len(pad) % 2:
        raise ValueError(f"{op} pad must hold pairs (lo, hi), got {len(pad)} values: {pad!r}")
    if len(pad) > 2 * ndim:
        raise ValueError(
            f"{op} pad of {len(pad)} values pads {len(pad) // 2} axes, more than the "
            f"{ndim} of the input"
        )
    axes = len(pad) // 2
    if mode != "constant" and not (axes in (1, 2, 3) and ndim in (axes + 1, axes + 2)):
        raise ValueError(
            f"{op} mode {mode!r} pads the last 1, 2 or 3 axes of a 2D-3D, 3D-4D or 4D-5D "
            f"input respectively, got {len(pad)} pad values for a {ndim}D input"
        )
    pairs = [(int(pad[2 * i]), int(pad[2 * i + 1])) for i in range(axes)]
    return tuple(reversed(pairs))


# Where each axis of an NCHW image lies in the NHWC one (by rank: batched, unbatched).
_NHWC_AXES = {4: (0, 3, 1, 2), 3: (2, 0, 1)}


def _pad_axes(ndim, count, data_format):
    """The axes of an input in ``data_format`` that the ``count`` amount pairs of
    ``_check_pad`` pad: ``None`` (the last ``count``) in NCHW; in NHWC, where those NCHW
    axes lie (``(1, 2)`` for H and W of a batch)."""
    if data_format == "NCHW":
        return None
    return _NHWC_AXES[ndim][ndim - count :]


def _check_pad(shape, pad, mode, op, data_format="NCHW"):
    """Validate ``pad`` (torch's order) for an input of ``shape`` in ``mode``.

    Returns ``((lo, hi), ...)`` for the last ``len(pad) // 2`` axes of the input read
    as NCHW (in NHWC: of its NCHW transpose), in axis order: ``((top, bottom), (left,
    right))`` for four amounts.
    """
    if data_format == "NHWC":
        if len(shape) not in _NHWC_AXES:
            raise ValueError(
                f"{op} data_format='NHWC' needs a 4D (batch, height, width, channels) or 3D "
                f"(height, width, channels) input, got {len(shape)}D: {tuple(shape)}"
            )
        shape = tuple(shape[a] for a in _NHWC_AXES[len(shape)])
    pads = _amounts(pad, len(shape), mode, op)
    first = len(shape) - len(pads)
    for axis, (lo, hi) in enumerate(pads, first):
        size = shape[axis]
        name = _AXIS_NAMES.get(len(shape) - axis, f"axis {axis}")
        if size + lo + hi < 0:
            raise ValueError(
                f"{op} {name} {size} with padding ({lo}, {hi}) gives a negative size "
                f"{size + lo + hi}"
            )
        if mode == "reflect" and (lo >= size or hi >= size):
            raise ValueError(
                f"{op} reflect padding must be smaller than the input {name} {size}, "
                f"got ({lo}, {hi}) (the edge cell is not repeated, so {size - 1} is the most)"
            )
        if mode == "replicate" and size == 0 and max(lo, hi) > 0:
            raise ValueError(f"{op} replicate padding needs a non-empty {name}, got {size}")
        if mode == "circular":
            kept = size - max(-lo, 0) - max(-hi, 0)
            if lo > kept or hi > kept:
                raise ValueError(
                    f"{op} circular padding ({lo}, {hi}) wraps around more than once: at "
                    f"most the {name} ({kept} after cropping)"
                )
    return pads


# Compiled once per shape, amounts and mode, so eager calls do not re-trace the slices.
@partial(jax.jit, static_argnums=(1, 2, 4))
def _pad_normalised(x, pads, mode, value, axes=None):
    """Pad validated ``((lo, hi), ...)`` amounts (``_check_pad``) of ``axes``, by default
    the last ones (``_pad_axes``)."""
    fill = jnp.asarray(value, x.dtype)
    axes = range(x.ndim - len(pads), x.ndim) if axes is None else axes
    for axis, (lo, hi) in zip(axes, pads, strict=True):
        x = _pad_axis(x, axis, lo, hi, mode, fill)
    return x


def _crop(x, axis, lo, hi):
    """Drop ``lo`` cells at the start of ``axis`` and ``hi`` at the end."""
    return lax.slice_in_dim(x, lo, x.shape[axis] - hi, axis=axis)


def _pad_axis(x, axis, lo, hi, mode, fill):
    if mode == "circular":
        # torch wraps what is left after cropping: crop first.
        x = _crop(x, axis, max(-lo, 0), max(-hi, 0))
        size = x.shape[axis]
        before = lax.slice_in_dim(x, size - max(lo, 0), size, axis=axis)
        after = lax.slice_in_dim(x, 0, max(hi, 0), axis=axis)
        return jnp.concatenate([before, x, after], axis)
    # The others pad from the uncropped input, then crop (a crop may eat into the far pad).
    before, after = (
        _side(x, axis, max(lo, 0), mode, fill, True),
        _side(x, axis, max(hi, 0), mode, fill, False),
    )
    x = jnp.concatenate([before, x, after], axis)
    return _crop(x, axis, max(-lo, 0), max(-hi, 0))


def _side(x, axis, amount, mode, fill, start):
    """The ``amount`` cells that go before (``start``) or after ``x`` along ``axis``."""
    size = x.shape[axis]
    shape = x.shape[:axis] + (amount,) + x.shape[axis + 1 :]
    if amount == 0 or mode == "constant":
        return jnp.full(shape, fill, x.dtype)
    if mode == "replicate":
        edge = (
            lax.slice_in_dim(x, 0, 1, axis=axis)
            if start
            else lax.slice_in_dim(x, size - 1, size, axis=axis)
        )
        return jnp.broadcast_to(edge, shape)
    # reflect: cells amount, ..., 1 before; size - 2, ..., size - 1 - amount after
    if start:
        return lax.rev(lax.slice_in_dim(x, 1, amount + 1, axis=axis), (axis,))
    return lax.rev(lax.slice_in_dim(x, size - 1 - amount, size - 1, axis=axis), (axis,))
