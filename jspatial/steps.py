"""Watch an op run one tap at a time, and find its loop in the compiled program.

Every sliding-window op in jspatial is a ``lax.fori_loop`` over kernel (or window)
taps whose body is a short, named function: ``jspatial.conv.conv_tap``
(``y += window(x, t) @ w[t]``), ``jspatial.conv.conv_transpose_tap``,
``jspatial.pool.max_pool_tap`` and ``jspatial.pool.avg_pool_tap``.

``steps(op, ...)`` runs that same body in a plain Python loop, eagerly, and yields
what each tap read and what the output looks like after it, so a learner can print,
plot or animate the sum being built. It is for tiny inputs: one eager call per tap.

``loop_jaxpr(op, ...)`` traces the op as it is compiled and returns the jaxpr of the
body of its innermost loop: one tap, as XLA sees it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from jspatial import _args, _conv_args, _pool_args, conv, conv_transpose, pool
from jspatial import _windows as win


class Step(NamedTuple):
    """One tap of a sliding-window op, as ``steps`` yields it. Arrays are in the op's
    ``data_format``: NCHW, as below, or with ``data_format='NHWC'`` channels last.

    Attributes:
        t: the tap number, row-major over the kernel: ``t = i * kw + j``.
        tap: ``(i, j)``, the tap's row and column in the kernel (or pooling window).
        block: what the tap reads. For ``conv2d`` and the pools, the input cell at offset
            ``(i, j)`` of every output cell's window, ``(N, C_in, H_out, W_out)`` (padding
            reads as 0, or as ``-inf`` for max pooling). For ``conv_transpose2d``, the
            whole input ``(N, C_in, H, W)``: every tap reads all of it and adds its
            products into the output cells of its window.
        weight: the weights the tap multiplies, ``weight[:, :, i, j]``:
            ``(C_out, C_in // groups)`` for ``conv2d``, ``(C_in, C_out // groups)`` for
            ``conv_transpose2d``; ``None`` for pooling.
        out: the output so far: what the op would return had its loop stopped after this
            tap (bias included, in the op's dtype). After the last tap it is the op's
            output.
        argmax: ``max_pool2d`` only: for every output cell, the tap that holds its maximum
            so far (``-1``: none yet, a window that has read only padding).
    """

    t: int
    tap: tuple[int, int]
    block: jax.Array
    weight: jax.Array | None
    out: jax.Array
    argmax: jax.Array | None = None


def steps(op: Callable, *args: Any, **kwargs: Any) -> Iterator[Step]:
    """Run ``op(*args, **kwargs)`` one tap at a time, eagerly: an iterator of ``Step``.

    ``op`` is ``jspatial.conv2d``, ``conv_transpose2d``, ``max_pool2d`` or
    ``avg_pool2d``, with the arguments the op takes. Each step applies the op's own loop
    body (``jspatial.conv.conv_tap`` and friends, the code the compiled op runs) once,
    so the last step's ``out`` equals the op's output, bit for bit (for ``conv2d``,
    that of ``algorithm='direct'``, the tap loop; the other algorithms compute the same
    sum in another order). Arguments are checked as the op checks them, when ``steps``
    is called.

    Cost: ``kh * kw`` eager steps, each a few dispatched array ops; meant for inputs of
    a few thousand values.

    Args:
        op: one of the four ops above.
        *args: the op's positional arguments.
        **kwargs: the op's keyword arguments. ``max_pool2d``'s ``return_indices`` is
            accepted and ignored (every step carries its ``argmax``); ``conv2d``'s
            ``algorithm`` must be ``'auto'`` or ``'direct'``. With
            ``data_format='NHWC'`` the input and every array of a step are channels
            last, and the last ``out`` is the NHWC op's output, bit for bit.

    Yields:
        ``Step(t, tap, block, weight, out, argmax)`` per tap, ``t = 0 .. kh * kw - 1``.

    Example:
        >>> import jax.numpy as jnp, jspatial as js
        >>> x = jnp.arange(16.0).reshape(1, 1, 4, 4)
        >>> w = jnp.ones((1, 1, 2, 2))
        >>> for step in js.steps(js.conv2d, x, w):
        ...     print(step.t, step.tap, step.block[0, 0, 0].tolist(), step.out[0, 0, 0].tolist())
        0 (0, 0) [0.0, 1.0, 2.0] [0.0, 1.0, 2.0]
        1 (0, 1) [1.0, 2.0, 3.0] [1.0, 3.0, 5.0]
        2 (1, 0) [4.0, 5.0, 6.0] [5.0, 8.0, 11.0]
        3 (1, 1) [5.0, 6.0, 7.0] [10.0, 14.0, 18.0]
        >>> bool((step.out == js.conv2d(x, w, algorithm="direct")).all())
        True
        >>> [s.argmax[0, 0].tolist() for s in js.steps(js.max_pool2d, x, 2)][-1]
        [[3, 3], [3, 3]]
    """
    runner = _RUNNERS.get(op)
    if runner is None:
        names = ", ".join(f"jspatial.{f.__name__}" for f in _RUNNERS)
        raise ValueError(f"steps supports {names}; got {op!r}")
    bound = inspect.signature(op).bind(*args, **kwargs)
    bound.apply_defaults()
    return runner(**bound.arguments)  # checks now; the generator runs the taps


def loop_jaxpr(op: Callable, *args: Any, index_math: bool = False, **kwargs: Any):
    """The jaxpr of one tap: the body of the innermost loop of ``op(*args, **kwargs)``.

    The op is traced as it is compiled (``jax.make_jaxpr``); the body of its deepest
    ``scan``/``while`` (a ``lax.fori_loop`` with static bounds becomes a ``scan``) is
    what XLA runs once per tap. For ``jspatial.conv2d``, ``algorithm`` defaults to
    ``'direct'`` here, so the tap loop is there to see (``'auto'`` picks im2col on a
    small input: one matrix product, no tap loop). Array arguments are traced, the rest
    are passed as they are. Forward pass only.

    About two thirds of a body's equations are integer arithmetic on scalars: the
    tap number ``t`` becomes the kernel row and column, then the start of the window
    block (``tap_start`` in ``jspatial._windows``). By default those are left out and
    their results, the slice starts, appear as extra inputs at the end of the
    binder, so the array work of the tap is what remains: a ``dynamic_slice`` per block
    read, the ``dot_general`` of a convolution, the ``add`` or ``max`` that accumulates.

    Args:
        op: any jspatial op (or function of arrays) containing a loop.
        *args: its positional arguments.
        **kwargs: its keyword arguments.
        index_math: keep the scalar index arithmetic: the body exactly as traced.

    Returns:
        A ``jax.extend.core.Jaxpr``; ``print`` it to read it. Its inputs are the loop
        counter (the tap number) and the carry, then the values the body closes over
        (then, without ``index_math``, the slice starts).

    Raises:
        ValueError: if the traced program contains no loop.

    Example:
        >>> import jax.numpy as jnp, jspatial as js
        >>> body = js.loop_jaxpr(js.conv2d, jnp.ones((1, 3, 8, 8)), jnp.ones((4, 3, 3, 3)))
        >>> names = [e.primitive.name for e in body.eqns]
        >>> "dynamic_slice" in names and "dot_general" in names
        True
    """
    if op is conv.conv2d:
        kwargs.setdefault("algorithm", "direct")
    arrays = [(k, v) for k, v in enumerate(args) if isinstance(v, (jax.Array, np.ndarray))]
    arrays += [(k, v) for k, v in kwargs.items() if isinstance(v, (jax.Array, np.ndarray))]

    def call(*values):
        a, kw = list(args), dict(kwargs)
        for (key, _), value in zip(arrays, values):
            if isinstance(key, int):
                a[key] = value
            else:
                kw[key] = value
        return op(*a, **kw)

    closed = jax.make_jaxpr(call)(*(v for _, v in arrays))
    loops = list(_loop_bodies(closed.jaxpr, 0))
    if not loops:
        raise ValueError(f"loop_jaxpr found no loop in {getattr(op, '__name__', op)!r}")
    body = max(loops, key=lambda depth_body: depth_body[0])[1]
    return body if index_math else _array_ops_only(body)


def _array_ops_only(body):
    """``body`` without the equations that compute only integer (or bool) scalars; the
    values they computed, where still used, become inputs after the body's own."""
    index_vars, kept = set(), []
    for eqn in body.eqns:
        if eqn.outvars and all(_is_index(v.aval) for v in eqn.outvars):
            index_vars.update(eqn.outvars)
        else:
            kept.append(eqn)
    used = [v for eqn in kept for v in eqn.invars] + list(body.outvars)
    lifted = [v for v in used if not isinstance(v, jcore.Literal) and v in index_vars]
    lifted = list(dict.fromkeys(lifted))
    info = body.debug_info
    if info is not None and info.arg_names is not None:
        info = info._replace(arg_names=(*info.arg_names, *["start"] * len(lifted)))
    invars = [*body.invars, *lifted]
    return jcore.Jaxpr(body.constvars, invars, body.outvars, kept, body.effects, info)


def _is_index(aval):
    return aval.shape == () and (
        jnp.issubdtype(aval.dtype, jnp.integer) or jnp.issubdtype(aval.dtype, jnp.bool_)
    )


def _loop_bodies(jaxpr, depth):
    """``(depth, body)`` of every ``scan``/``while`` in ``jaxpr`` and its sub-jaxprs.

    Where the program holds one version per platform (``lax.platform_dependent``: a
    ``cond`` on a ``platform_index``, e.g. a TPU kernel beside the portable loop), only
    the version for the default backend is searched: the one that runs here.
    """
    chosen = {}  # platform_index outputs -> the branch this backend takes
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "platform_index":
            chosen[eqn.outvars[0]] = _platform_branch(eqn.params["platforms"])
            continue
        if name == "cond" and eqn.invars[0] in chosen:
            yield from _loop_bodies(eqn.params["branches"][chosen[eqn.invars[0]]].jaxpr, depth)
            continue
        if name == "scan":
            yield depth + 1, eqn.params["jaxpr"].jaxpr
        elif name == "while":
            yield depth + 1, eqn.params["body_jaxpr"].jaxpr
        for sub in jcore.jaxprs_in_params(eqn.params):
            yield from _loop_bodies(sub, depth + (name in ("scan", "while")))


def _platform_branch(platforms):
    """The branch of a ``platform_index`` that the default backend takes."""
    backend = jax.default_backend()
    names = {backend, "cuda", "rocm"} if backend == "gpu" else {backend}
    for i, group in enumerate(platforms):
        if group is None or names & set(group):
            return i
    return len(platforms) - 1


# ---------------------------------------------------------------- one runner per op
#
# Each tap is one call of the op's loop body, compiled as the loop compiles it (the tap
# number traced, the geometry static): XLA then makes the same choices inside the body
# (a multiply and an add become one fused multiply-add, say) and the last output equals
# the op's bit for bit, which separate eager operations would not guarantee. What a
# step shows (the block, the output in NCHW) is computed beside it, compiled too, so
# that a run costs a few compilations, not one per operation and shape.


@functools.cache
def _compiled(body):
    return jax.jit(body, static_argnames="geom")


@partial(jax.jit, static_argnames="geom")
def _block(xph, t, geom):
    """The block tap ``t`` reads, in the op's layout."""
    return win.from_nhwc(win.window(xph, t, geom), geom.layout)


@partial(jax.jit, static_argnames=("shape", "dtype", "layout"))
def _conv_out(y, bias, shape, dtype, layout):
    """The output-side sum ``(M, G, C/G)`` as the op returns it: its layout, bias, dtype."""
    return _conv_args.output(win.from_nhwc(y.reshape(shape), layout), bias, layout, dtype)


@partial(jax.jit, static_argnames=("geom", "dtype"))
def _conv_transpose_out(yph, bias, geom, dtype):
    y = win.from_nhwc(win.from_phases(yph, geom), geom.layout)
    return _conv_args.output(y, bias, geom.layout, dtype)


@partial(jax.jit, static_argnames=("dtype", "layout"))
def _avg_out(total, scale, dtype, layout):
    return win.from_nhwc((total * scale).astype(dtype), layout)


_in_layout = jax.jit(win.from_nhwc, static_argnames="layout")


def _tap(t, geom):
    return divmod(t, geom.kernel[1])


@jax.jit
def _tap_weight(w, i, j):
    """``w[:, :, i, j]``, one compilation for all taps (the indices traced)."""
    return w[:, :, i, j]


def _conv2d_steps(
    x, weight, bias, stride, padding, dilation, groups, algorithm, data_format="NCHW"
):
    _args.check_input(x, "conv2d", integers=True, data_format=data_format)
    a = _conv_args.conv2d_args(
        x, weight, bias, stride, padding, dilation, groups, op="conv2d", algorithm=algorithm,
        data_format=data_format,
    )  # fmt: skip
    if algorithm not in ("auto", "direct"):
        raise ValueError(f"steps runs conv2d's tap loop (algorithm='direct'), got {algorithm!r}")
    return _conv_loop(a.x, a.weight, a.bias, a.geom, a.groups)


def _conv_loop(x, w, bias, geom, groups):
    n, c_out = x.shape[0], w.shape[0]
    xph = win.to_phases(win.to_nhwc(x, geom.layout), geom, 0)
    w_taps = win.weight_taps(w, groups)
    y = jnp.zeros((n * geom.out_hw[0] * geom.out_hw[1], groups, c_out // groups))
    y = y.astype(win.accum_dtype(x.dtype))
    for t in range(geom.taps):
        y = _compiled(conv.conv_tap)(t, y, xph, w_taps, geom=geom)
        out = _conv_out(y, bias, (n, *geom.out_hw, c_out), x.dtype, geom.layout)
        i, j = _tap(t, geom)
        yield Step(t, (i, j), _block(xph, t, geom), _tap_weight(w, i, j), out)


def _conv_transpose2d_steps(
    x, weight, bias, stride, padding, output_padding, groups, dilation, data_format="NCHW"
):
    _args.check_input(x, "conv_transpose2d", integers=True, data_format=data_format)
    a = _conv_args.conv_transpose2d_args(
        x, weight, bias, stride, padding, output_padding, groups, dilation,
        op="conv_transpose2d", data_format=data_format,
    )  # fmt: skip
    return _conv_transpose_loop(a.x, a.weight, a.bias, a.geom, a.groups)


def _conv_transpose_loop(x, w, bias, geom, groups):
    shape = win.phased_shape(x.shape[0], w.shape[1] * groups, geom)
    yph = jnp.zeros(shape, win.accum_dtype(x.dtype))
    w_taps = win.weight_taps(w, groups)
    xm = conv._output_side(x, groups, geom.layout)
    for t in range(geom.taps):
        yph = _compiled(conv.conv_transpose_tap)(t, yph, xm, w_taps, geom=geom)
        i, j = _tap(t, geom)
        out = _conv_transpose_out(yph, bias, geom, x.dtype)
        yield Step(t, (i, j), x, _tap_weight(w, i, j), out)


def _max_pool2d_steps(
    x, kernel_size, stride, padding, dilation, ceil_mode, return_indices, data_format="NCHW"
):
    a = _pool_args.max_pool2d_args(
        x, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
        op="max_pool2d", data_format=data_format,
    )  # fmt: skip
    return _max_pool_loop(a.x, a.geom)


def _max_pool_loop(x, geom):
    xph, real, carry = pool.max_pool_start(win.to_nhwc(x, geom.layout), geom)
    for t in range(geom.taps):
        carry = _compiled(pool.max_pool_tap)(t, carry, xph, real, geom=geom)
        best, arg = (_in_layout(a, layout=geom.layout) for a in carry)
        yield Step(t, _tap(t, geom), _block(xph, t, geom), None, best, arg)


def _avg_pool2d_steps(
    x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
    data_format="NCHW",
):  # fmt: skip
    a = _pool_args.avg_pool2d_args(
        x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
        op="avg_pool2d", data_format=data_format,
    )  # fmt: skip
    return _avg_pool_loop(a.x, a.geom, a.divisor)


def _avg_pool_loop(x, geom, divisor):
    acc = win.accum_dtype(x.dtype)
    scale = pool._avg_scale(geom, divisor, acc)
    xph = win.to_phases(win.to_nhwc(x, geom.layout), geom, 0)
    total = jnp.zeros((x.shape[0], *geom.out_hw, x.shape[_args.channel_axis(geom.layout)]), acc)
    for t in range(geom.taps):
        total = _compiled(pool.avg_pool_tap)(t, total, xph, geom=geom)
        out = _avg_out(total, scale, x.dtype, geom.layout)
        yield Step(t, _tap(t, geom), _block(xph, t, geom), None, out)


_RUNNERS = {
    conv.conv2d: _conv2d_steps,
    conv_transpose.conv_transpose2d: _conv_transpose2d_steps,
    pool.max_pool2d: _max_pool2d_steps,
    pool.avg_pool2d: _avg_pool2d_steps,
}
