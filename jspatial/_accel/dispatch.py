"""Which version of an op runs, decided by the compile target.

Every op has one portable version, the ``lax.fori_loop``s of ``jspatial.conv``,
``jspatial.pool`` and ``jspatial.norm``, which compiles for any backend. Some targets
also have on-chip versions of the same tap loops:

=============  ============================================  ==============================
op             TPU (``tpu/``, Pallas TPU)                    NVIDIA GPU, compute capability
                                                             >= 8.0 (``gpu/``, Pallas Triton)
=============  ============================================  ==============================
conv2d         ``tpu.conv``: ungrouped, stride 1, padding     ``gpu.conv``: the geometries
               at most 'same'                                 of ``gpu.conv.supports``
max_pool2d     ``tpu.pool``: non-overlapping windows          NCHW beside NCHW convolution
                                                             kernels: the portable loop on
                                                             the ``N * C`` planes
                                                             (``gpu.pool``)
batch norm     ``tpu.norm``: fused whole-array statistics     (the portable loop)
=============  ============================================  ==============================

``kernel_for(op, target, ...)`` answers the question "is there an on-chip version of
this op, with this geometry, for this target?" with a function or ``None``, and
``per_target(portable, kernels, *args)`` builds the program: one branch per target
that has a kernel, the portable version everywhere else. A kernel takes and returns
the op's arrays in the op's layout (``geom.layout``, the caller's ``data_format``):
the TPU kernels run ``(H, W, C, N)`` inside; the GPU ones run in the caller's layout
(``_tuning.GPU_CONV_LAYOUT``), so on a GPU no convolution transposes its activations.

The choice must follow the compile target, not the host: a program traced on a CPU
may be lowered for a TPU or a GPU. ``lax.platform_dependent`` stages every branch and
keeps, when lowering, the one for the target platform. A target's branch is staged only
where its compiler is installed (libtpu for a TPU, ``STAGE_TPU``; JAX's CUDA plugin for
a GPU, ``_tuning.STAGE_GPU``), so a CPU-only installation traces exactly the program it
always did.

A GPU's compute capability is not known to ``platform_dependent``: it is read at trace
time (``gpu_target``) from the devices of the mesh set with ``jax.set_mesh`` (how a
program is compiled ahead of time for a GPU it does not have), else from the local
GPUs. Triton kernels need 8.0 or more (Ampere and later); an older GPU (a T4 is 7.5),
an unknown one, and a program for several GPUs (XLA does not split a Pallas call over
devices) take the portable loops with the GPU settings of ``jspatial._tuning``.
"""

from __future__ import annotations

import functools
import importlib.util

import jax
from jax import lax

from jspatial import _tuning

# Pallas TPU kernels lower only with libtpu present (it names the chip the kernel is
# compiled for). Lowering for a TPU from a host without it (a portability check) sets
# this to False: the TPU branch then takes the portable loops for the convolution.
USE_PALLAS = True

# The TPU versions can be lowered only where libtpu is installed (a TPU host, or a host
# compiling ahead of time for a TPU topology). Elsewhere they are not staged at all:
# tracing them beside the portable loops would only cost trace time (about a second more
# for the airbench94 train step on a 2-core CPU).
STAGE_TPU = importlib.util.find_spec("libtpu") is not None


# Triton, and so Pallas on a GPU, needs compute capability 8.0 or more.
TRITON_MIN_CAPABILITY = (8, 0)


def gpu_target() -> tuple[int, int] | None:
    """The compute capability of the one GPU this trace is for, or ``None``.

    The devices of the mesh set with ``jax.set_mesh`` if that is a GPU mesh (compiling
    ahead of time for a GPU topology), else the local GPUs. ``None`` where there is no
    GPU, and where there are several: XLA cannot split a Pallas call over devices, so
    inside a sharded program each device would run it on the whole batch; a program for
    several GPUs takes the portable loops, which XLA partitions like any other op.
    """
    if not _tuning.STAGE_GPU:
        return None
    devices = _mesh_devices()
    if not devices or devices[0].platform != "gpu":
        try:
            devices = jax.devices("cuda")
        except RuntimeError:  # no GPU backend on this host
            return None
    capability = getattr(devices[0], "compute_capability", None)
    if len(devices) != 1 or not capability:
        return None
    major, minor = str(capability).split(".")
    return int(major), int(minor)


def _mesh_devices() -> list:
    """The devices of the mesh set with ``jax.set_mesh``, or ``[]``: a private JAX API,
    read defensively so that a JAX that moved it falls back to the local devices."""
    try:
        from jax._src import mesh as mesh_lib

        mesh = mesh_lib.get_concrete_mesh()
        return [] if mesh is None or mesh.empty else list(mesh.devices.flat)
    except (ImportError, AttributeError):
        return []


def kernel_for(op: str, target: str, *static, gpu=None, portable=None):
    """The on-chip version of ``op`` for ``target`` (``'tpu'`` or ``'cuda'``), or ``None``.

    ``static`` is the op's static description: ``(geom, groups)`` for ``'conv2d'``,
    ``(geom, return_indices)`` for ``'max_pool2d'``, ``(eps, layout)`` for ``'bn_train'``.
    ``gpu`` is the compute capability of a ``'cuda'`` target (``gpu_target()``);
    ``portable`` the op's portable version, for a kernel that runs it on other shapes
    (max pooling on a GPU, on planes). The function returned takes the op's array
    arguments, as the portable version does.
    """
    if target == "tpu" and STAGE_TPU:
        from jspatial._accel.tpu import conv, norm, pool

        if op == "conv2d" and USE_PALLAS and conv.same_size(*static) is not None:
            geom = static[0]
            return lambda x, w: conv.conv2d_cropped(x, w, geom)
        if op == "max_pool2d" and pool.supports(*static):
            geom = static[0]
            return lambda x: pool.max_pool2d(x, geom)
        if op == "bn_train":
            eps, layout = static
            return lambda x, w, b: norm.bn_train(x, w, b, eps, layout)
    triton = target == "cuda" and gpu is not None and gpu >= TRITON_MIN_CAPABILITY
    if triton and op == "conv2d" and (kernels := _gpu_conv()) and kernels.supports(*static):
        geom = static[0]
        return lambda x, w: kernels.conv2d(x, w, geom)
    # Beside NCHW convolution kernels, max pooling runs on the N * C planes as they lie.
    if triton and op == "max_pool2d" and portable is not None and _nchw_conv_kernels():
        from jspatial._accel.gpu import pool

        geom, return_indices = static
        if geom.layout == "NCHW" and not return_indices:
            return functools.partial(pool.max_pool2d_planes, portable, geom)
    return None


def _nchw_conv_kernels() -> bool:
    """Whether the GPU convolution kernels run NCHW callers in NCHW (no transposes)."""
    kernels = _gpu_conv()
    return kernels is not None and kernels.kernel_layout("NCHW") == "NCHW"


def _gpu_conv():
    """``jspatial._accel.gpu.conv``, or ``None`` where this JAX has no Pallas Triton."""
    try:
        from jspatial._accel.gpu import conv
    except ImportError:
        return None
    return conv


def program(op: str, portable, *, on_chip: bool = True, cuda_portable=None, **static):
    """The function of the op's arrays that runs ``op`` with the static description ``static``.

    ``portable`` is the op's portable version, a jitted function of the op's arrays and,
    as keywords, of ``static`` (its geometry). Where no compiler for an accelerator is
    installed (``STAGE_TPU``, ``_tuning.STAGE_GPU``: every CPU-only installation) this is
    ``partial(portable, **static)``, so the op calls its loop directly. Elsewhere it is a
    jitted program with one branch per target that has a kernel (``per_target``), cached
    per op and description. ``on_chip=False`` (integer input) asks for no kernel;
    ``cuda_portable`` is a portable version with the GPU's own settings, staged for a GPU
    that has no kernel for the op.
    """
    if not (STAGE_TPU or _tuning.STAGE_GPU):
        return functools.partial(portable, **static)
    return _program(op, portable, on_chip, cuda_portable, gpu_target(), tuple(static.items()))


@functools.cache
def _program(op, portable, on_chip, cuda_portable, gpu, static_items):
    static = dict(static_items)
    args = tuple(static.values())
    kernels = {}
    if on_chip:
        kernels = {"tpu": kernel_for(op, "tpu", *args)}
        kernels["cuda"] = kernel_for(op, "cuda", *args, gpu=gpu, portable=portable)
    if kernels.get("cuda") is None and _tuning.STAGE_GPU and cuda_portable is not None:
        kernels["cuda"] = functools.partial(cuda_portable, **static)
    fn = functools.partial(portable, **static)
    if all(k is None for k in kernels.values()):
        return fn
    return jax.jit(functools.partial(per_target, fn, kernels))


def per_target(portable, kernels, *args):
    """``portable(*args)``, with ``kernels[platform](*args)`` where lowered for that platform.

    ``kernels`` maps a platform (``'tpu'``, ``'cuda'``) to a function with the portable
    one's arguments; platforms without one, or a dict that is empty, run ``portable``.
    An empty batch always runs ``portable`` (the kernels' grids need an image).
    """
    kernels = {p: k for p, k in kernels.items() if k is not None}
    if not kernels or args[0].shape[0] == 0:  # args[0] is the op's batched input
        return portable(*args)
    shape = jax.eval_shape(portable, *args)

    def same_types(kernel):  # the same output types as the portable branch, as a switch needs
        return lambda *a: jax.tree.map(lambda y, s: y.astype(s.dtype), kernel(*a), shape)

    branches = {p: same_types(k) for p, k in kernels.items()}
    return lax.platform_dependent(*args, default=portable, **branches)
