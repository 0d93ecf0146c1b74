"""A linear function with a hand-written transpose, as a JAX primitive: ``linear_call``.

Every op's derivative is built from it. Forward mode (``jax.jvp``) of an op gives its
tangent as a ``linear_call``; reverse mode (``jax.grad``) transposes that tangent, and the
transpose of a ``linear_call`` is the hand-written backward loop it names. So one rule
serves both modes, and the backward pass keeps its loops and its memory.

``linear_call(fun, transpose, res, lin)`` is ``fun(res, lin)``, where ``fun``
is linear in the arrays ``lin`` (and may be anything in ``res``), and
``transpose(res, cts)`` is its transpose: the cotangents of ``lin`` given those of the
outputs. JAX then knows how to

* transpose it (``jax.grad``, ``jax.linear_transpose``): the ``linear_call`` of
  ``transpose``, whose own transpose is ``fun`` again;
* differentiate it (``jax.jvp``, so second derivatives): linear in ``lin``, it is its own
  derivative there, plus ``jax.jvp`` of ``fun`` in ``res``;
* batch it (``jax.vmap``): ``fun`` and ``transpose`` under ``jax.vmap``;
* compile it (``jax.jit``): ``fun`` inlined, so the compiled program is ``fun``'s own.

``jax.custom_derivatives.linear_call`` is the same idea but supports neither a tangent
of ``res`` nor ``jax.vmap``, which ``jax.hessian`` and per-example gradients need.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive, jaxpr_as_fun
from jax.interpreters import ad, batching, mlir

linear_p = Primitive("jspatial_linear_call")
linear_p.multiple_results = True


def linear_call(fun, transpose, res, lin):
    """``fun(res, lin)``, linear in ``lin``, with ``transpose(res, cts)`` as its transpose.

    ``fun`` is traced once, here, to a jaxpr: the primitive carries it (so ``jax.make_jaxpr``
    shows the loop that runs), and compiling the primitive compiles that jaxpr.

    Args:
        fun: ``(res, lin) -> outputs``, lists of arrays; linear in ``lin``.
        transpose: ``(res, cts) -> cts of lin``: one array per entry of ``lin``, of its
            shape and dtype, linear in ``cts`` (one per output).
        res: arrays ``fun`` need not be linear in.
        lin: arrays ``fun`` is linear in.

    Returns:
        The list of outputs.
    """
    n_res = len(res)
    avals = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (*res, *lin)]
    jaxpr = jax.make_jaxpr(lambda *a: list(fun(*_split(a, n_res))))(*avals)
    return linear_p.bind(*res, *lin, jaxpr=jaxpr, fun=fun, transpose=transpose, n_res=n_res)


def _split(args, n_res):
    return list(args[:n_res]), list(args[n_res:])


def _impl(*args, jaxpr, **_):
    return jaxpr_as_fun(jaxpr)(*args)


def _abstract_eval(*args, jaxpr, **_):
    return jaxpr.out_avals


def _transpose_rule(cts, *args, jaxpr, fun, transpose, n_res):
    res, lin = _split(args, n_res)
    if any(ad.is_undefined_primal(r) for r in res):
        raise ValueError("linear_call is not linear in its residual arguments")
    cts = [ad.instantiate_zeros(ct) for ct in cts]
    # The transpose of the transpose is ``fun`` again: transposing twice (jax.grad of a
    # jax.linear_transpose) returns to the forward loop.
    dlin = linear_call(transpose, fun, res, cts)
    # An argument given as a value (a zero tangent made concrete) has no cotangent.
    return [None] * n_res + [d if ad.is_undefined_primal(x) else None for x, d in zip(lin, dlin)]


def _jvp_rule(primals, tangents, *, jaxpr, fun, transpose, n_res):
    res, lin = _split(primals, n_res)
    dres, dlin = _split(tangents, n_res)
    params = dict(jaxpr=jaxpr, fun=fun, transpose=transpose, n_res=n_res)
    out = linear_p.bind(*res, *lin, **params)
    tangent = None
    if not all(_is_zero(d) for d in dlin):
        dlin = [ad.instantiate_zeros(d) for d in dlin]
        tangent = linear_p.bind(*res, *dlin, **params)
    if not all(_is_zero(d) for d in dres):
        # Not linear in res: differentiate fun there (it is made of the ops themselves,
        # whose derivatives are linear_calls again).
        dres = [ad.instantiate_zeros(d) for d in dres]
        _, t_res = jax.jvp(lambda *r: list(fun(list(r), lin)), res, dres)
        tangent = t_res if tangent is None else [a + b for a, b in zip(tangent, t_res)]
    if tangent is None:
        tangent = [ad.Zero(a.to_tangent_aval()) for a in jaxpr.out_avals]
    return out, tangent


def _is_zero(tangent):
    # Integer arguments (max pooling's winning taps) have float0 tangents: no derivative.
    return type(tangent) is ad.Zero or tangent.dtype == jax.dtypes.float0


def _batch_rule(args, dims, *, jaxpr, fun, transpose, n_res):
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    res, lin = _split(args, n_res)
    res_dims, lin_dims = _split(dims, n_res)
    # Every linear argument and every output batched at axis 0, so that the batched
    # transpose takes and gives the layout the batched function has.
    lin = [
        jnp.broadcast_to(x, (size, *x.shape)) if d is None else jnp.moveaxis(x, d, 0)
        for x, d in zip(lin, lin_dims)
    ]
    axes = (res_dims, [0] * len(lin))
    out = linear_call(_Batched(fun, axes), _Batched(transpose, axes), res, lin)
    return out, [0] * len(out)


class _Batched:
    """``f`` under ``jax.vmap`` with ``in_axes=axes``; equal when ``f`` and ``axes`` are."""

    def __init__(self, f, axes):
        self.f, self.axes = f, (tuple(axes[0]), tuple(axes[1]))

    def __call__(self, res, lin):
        in_axes = ([d for d in self.axes[0]], [0] * len(lin))
        return jax.vmap(lambda r, a: list(self.f(r, a)), in_axes=in_axes)(res, lin)

    def __eq__(self, other):
        return isinstance(other, _Batched) and (self.f, self.axes) == (other.f, other.axes)

    def __hash__(self):
        return hash((self.f, self.axes))


def _lowering(ctx, *args, jaxpr, **_):
    return mlir.lower_fun(jaxpr_as_fun(jaxpr), multiple_results=True)(ctx, *args)


linear_p.def_impl(_impl)
linear_p.def_abstract_eval(_abstract_eval)
ad.primitive_jvps[linear_p] = _jvp_rule
ad.primitive_transposes[linear_p] = _transpose_rule
batching.primitive_batchers[linear_p] = _batch_rule
mlir.register_lowering(linear_p, _lowering)


# ------------------------------------------------------------------ the ops' derivatives


class Fn:
    """``f(*static, *args)``: ``functools.partial`` that compares by value, so that two
    traces of the same op give equal ``linear_call`` parameters."""

    def __init__(self, f, *static):
        self.f, self.static = f, static

    def __call__(self, *args):
        return self.f(*self.static, *args)

    def __eq__(self, other):
        return isinstance(other, Fn) and (self.f, self.static) == (other.f, other.static)

    def __hash__(self):
        return hash((self.f, self.static))


def _bilinear_tangent(op, static, res, lin):
    (x, w), (dx, dw) = res, lin
    return [op(dx, w, *static) + op(x, dw, *static)]


def _one_cotangent(bwd, static, res, cts):
    return list(bwd(*static, tuple(res), cts[0]))


def bilinear_jvp(op, bwd, static, primals, tangents):
    """The JVP of a bilinear op ``y = op(x, w, *static)``: ``op(dx, w) + op(x, dw)``.

    A ``linear_call`` in ``(dx, dw)`` whose transpose is the op's hand-written backward
    ``bwd(*static, (x, w), g) -> (dx, dw)``, so ``jax.grad`` runs that loop. ``op`` is the
    ``jax.custom_jvp`` op itself, so the tangent differentiates again (second derivatives).
    """
    x, w = primals
    y = op(x, w, *static)
    fun, transpose = Fn(_bilinear_tangent, op, static), Fn(_one_cotangent, bwd, static)
    return y, linear_call(fun, transpose, [x, w], list(tangents))[0]


def defbilinear(op, bwd):
    """Give the ``jax.custom_jvp`` op ``op(x, w, *static)`` its derivatives from ``bwd``."""
    op.defjvp(lambda *args: bilinear_jvp(op, bwd, args[:-2], *args[-2:]))


def _linear_tangent(op, static, res, tangents):
    return [op(*tangents, *static)]


def linear_jvp(op, bwd, *args):
    """The JVP of a linear op ``y = op(x, *static)`` (average pooling): ``op(dx)``.

    A ``linear_call`` whose transpose is the op's hand-written backward
    ``bwd(*static, [], [g]) -> [dx]``. Use as ``op.defjvp(partial(linear_jvp, op, bwd))``.
    """
    *static, (x,), tangents = args
    static = tuple(static)
    y = op(x, *static)
    fun, transpose = Fn(_linear_tangent, op, static), Fn(bwd, *static)
    return y, linear_call(fun, transpose, [], list(tangents))[0]


def float0_zeros(a):
    """The tangent of an integer output (max pooling's winning taps): float0 zeros."""
    return np.zeros(a.shape, jax.dtypes.float0)
