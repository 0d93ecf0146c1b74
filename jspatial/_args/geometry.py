"""Checks of window geometry: padding, pooling windows, groups, output sizes.

Each normalises the value to the form the ops use (a pair per axis, a pair of pairs for
padding) and checks that the window fits the input it slides over.
"""

from __future__ import annotations

from typing import Any

from jspatial._args.arrays import spatial_shape
from jspatial._args.values import Padding2d, Pair, _as_int, is_int, pair


def conv_padding(
    padding: Any, kernel_size: Pair, stride: Pair, dilation: Pair, op: str
) -> Padding2d:
    """Normalise convolution padding to ``((top, bottom), (left, right))``.

    Accepts an int, ``(h, w)``, ``((top, bottom), (left, right))``, ``'valid'`` or
    ``'same'``. ``'same'`` needs stride 1; with an even kernel the extra cell goes
    to the bottom/right, as PyTorch does.
    """
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return ((0, 0), (0, 0))
        if mode == "same":
            if stride != (1, 1):
                raise ValueError(
                    f"{op} padding='same' needs stride 1, got stride={stride}; "
                    "use an explicit padding for strided convolutions"
                )
            result = []
            for k, d in zip(kernel_size, dilation):
                total = d * (k - 1)
                result.append((total // 2, total - total // 2))
            return (result[0], result[1])
        raise ValueError(f"{op} padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    nested = isinstance(padding, (tuple, list)) and len(padding) == 2
    if nested and all(isinstance(p, (tuple, list)) for p in padding):
        top, bottom = pair(padding[0], op, "padding", minimum=0)
        left, right = pair(padding[1], op, "padding", minimum=0)
        return ((top, bottom), (left, right))
    ph, pw = pair(padding, op, "padding", minimum=0)
    return ((ph, ph), (pw, pw))


def pool_params(
    kernel_size: Any, stride: Any, padding: Any, dilation: Any, op: str
) -> tuple[Pair, Pair, Pair, Pair]:
    """Normalise pooling hyper-parameters; ``stride=None`` (or ``()``, as PyTorch reads an
    empty stride) means the kernel size.

    Padding above half the (undilated) kernel is rejected, as in PyTorch: such a
    window could lie entirely in padding even without dilation.
    """
    kernel = pair(kernel_size, op, "kernel_size")
    default = stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0)
    strides = kernel if default else pair(stride, op, "stride")
    pads = pair(padding, op, "padding", minimum=0)
    dil = pair(dilation, op, "dilation")
    if pads[0] > kernel[0] // 2 or pads[1] > kernel[1] // 2:
        raise ValueError(
            f"{op} padding must be at most half the kernel size, got padding={pads} "
            f"for kernel_size={kernel}"
        )
    return kernel, strides, pads, dil


def check_fits(spatial: Pair, padded: Pair, kernel: Pair, dilation: Pair, op: str) -> None:
    """Raise when the (dilated) kernel is larger than the padded input."""
    extent = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    if extent[0] > padded[0] or extent[1] > padded[1]:
        dilated = f" (dilated to {extent})" if extent != tuple(kernel) else ""
        raise ValueError(
            f"{op} kernel {tuple(kernel)}{dilated} does not fit the padded input "
            f"{tuple(padded)} (input {tuple(spatial)})"
        )


def check_groups(in_channels: int, out_channels: int, groups: Any, op: str) -> int:
    """``groups`` must be a positive int dividing both channel counts."""
    if not is_int(groups):
        raise TypeError(f"{op} groups must be a positive int, got {groups!r}")
    if groups < 1:
        raise ValueError(f"{op} groups must be positive, got {groups}")
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"{op} groups={groups} must divide both in_channels={in_channels} and "
            f"out_channels={out_channels}"
        )
    return int(groups)


def adaptive_output_size(output_size: Any, op: str) -> tuple[int | None, int | None]:
    """Adaptive pooling's ``output_size``: an int, or an ``(h, w)`` pair of ints or ``None``.

    ``None`` keeps that input size (filled in per call). Zero, and sizes above the
    input, are valid, as in PyTorch.

    >>> adaptive_output_size((5, None), "adaptive_avg_pool2d")
    (5, None)
    """
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != 2:
            raise ValueError(
                f"{op} output_size must be an int or a pair (h, w), got {len(output_size)} "
                f"values: {output_size!r}"
            )
        values = tuple(output_size)
    elif output_size is None:
        raise TypeError(f"{op} output_size must be an int or a pair (h, w), got None")
    else:
        values = (output_size, output_size)
    result = []
    for v in values:
        if v is None:
            result.append(None)
            continue
        if not is_int(v):
            raise TypeError(
                f"{op} output_size must hold ints or None, got {output_size!r} ({type(v).__name__})"
            )
        if v < 0:
            raise ValueError(f"{op} output_size must be >= 0, got {output_size!r}")
        result.append(int(v))
    return result[0], result[1]


def unpool_output_size(
    output_size: Any,
    in_hw: Pair,
    kernel: Pair,
    stride: Pair,
    padding: Pair,
    op: str,
    *,
    data_format: str = "NCHW",
) -> Pair:
    """``max_unpool2d``'s output ``(H, W)``, PyTorch's rule.

    The default is ``(H_in - 1) * stride - 2 * padding + kernel_size`` per axis. An explicit
    ``output_size``, ``(H, W)`` or a full ``(N, C, H, W)`` shape (``(N, H, W, C)`` in
    ``data_format='NHWC'``), must lie strictly within ``stride`` of that default: the sizes
    a ``max_pool2d`` with these arguments maps to ``H_in``.

    >>> unpool_output_size((5, 7), (2, 3), (2, 2), (2, 2), (0, 0), "max_unpool2d")
    (5, 7)
    """
    default = tuple((in_hw[a] - 1) * stride[a] - 2 * padding[a] + kernel[a] for a in range(2))
    if output_size is None:
        size = default
    else:
        if not isinstance(output_size, (tuple, list)) or len(output_size) not in (2, 4):
            raise TypeError(
                f"{op} output_size must be (H, W) or a full ({', '.join(data_format)}) "
                f"shape, got {output_size!r}"
            )
        hw = output_size if len(output_size) == 2 else spatial_shape(output_size, data_format)
        size = tuple(_as_int(v, op, "output_size", output_size) for v in hw)
        for a in range(2):
            lo, hi = default[a] - stride[a], default[a] + stride[a]
            if not lo < size[a] < hi:
                raise ValueError(
                    f"{op} output_size {tuple(output_size)} is invalid: dim {a} must be "
                    f"strictly between {lo} and {hi} for an input of {tuple(in_hw)} with "
                    f"kernel_size={kernel}, stride={stride}, padding={padding}"
                )
    if min(size) < 0:
        raise ValueError(
            f"{op} output size must be non-negative, got {size} for an input of {tuple(in_hw)} "
            f"with kernel_size={kernel}, stride={stride}, padding={padding}"
        )
    return size[0], size[1]


def output_padding(value: Any, stride: Pair, dilation: Pair, op: str) -> Pair:
    """A transposed convolution's ``output_padding``: a pair, each entry smaller than the
    stride or the dilation on its axis (PyTorch's rule)."""
    out_pads = pair(value, op, "output_padding", minimum=0)
    if any(o >= max(s, d) for o, s, d in zip(out_pads, stride, dilation)):
        raise ValueError(
            f"{op} output_padding must be smaller than either stride or dilation on each "
            f"axis, got output_padding={out_pads}, stride={stride}, dilation={dilation}"
        )
    return out_pads
