"""Data parallelism for ``train.cifar10`` on JAX's own engine: one mesh, jit does the rest.

The devices form a 1-D :class:`jax.sharding.Mesh` with the axis ``"data"``. Every global
batch is split along that axis (``NamedSharding(mesh, P("data"))``); the parameters,
optimiser state and the uint8 dataset are replicated (``P()``). Nothing else changes in the
train step: ``jit`` propagates these shardings through the program and inserts the
collectives itself. The summed loss and the gradients become all-reduces over the batch,
and every BatchNorm takes its per-channel statistics over the *global* batch, exactly as
one device would (jspatial's statistics loop over chunks of the batch, so the partitioner
gathers the activations for them rather than all-reducing partial sums: same numbers, more
traffic). The alternative, per-device "ghost" statistics over each device's slice (what
PyTorch computes with ``DistributedDataParallel`` and no ``SyncBatchNorm``), is not used.

Several processes (hosts) join through ``jax.distributed``; see :func:`initialize`. Each
process then reads the whole (small) dataset and builds the same model, and the global
arrays are assembled with :func:`jax.make_array_from_callback` from each process's copy:
each device receives only its own piece, so a process feeds only its own rows of every
global batch. The initial model state is broadcast from process 0, so all replicas start
bit-identical whatever each host's numerics.
"""

from __future__ import annotations

import hashlib
import os

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"


# ---------------------------------------------------------------------------- Processes


def initialize(coordinator=None, num_processes=None, process_id=None, auto=False) -> bool:
    """Joins the other processes of a multi-host run; must run before any device is used.

    - ``coordinator="host:port"`` with ``num_processes`` and ``process_id``: the explicit
      form, ``jax.distributed.initialize(coordinator_address=..., num_processes=...,
      process_id=...)``.
    - ``auto=True``: ``jax.distributed.initialize()`` without arguments; JAX reads them from
      the cluster environment it recognises (``jax._src.clusters``: SLURM, Open MPI, Cloud
      TPU VMs, Kubernetes with the ``kubernetes`` package).
    - neither: a single process, even inside a SLURM job (auto-detection is opt-in, so a
      one-process run inside a cluster allocation never waits for peers that don't exist;
      :func:`cluster_hint` says when a run looks like it should have opted in).

    On CPU the cross-process collectives are gloo's (``jax_cpu_collectives_implementation``,
    set before ``initialize``; GPUs use NCCL, TPUs their own interconnect). Returns whether
    ``jax.distributed`` was initialised.
    """
    if coordinator is None and not auto:
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if auto:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
        )
    return True


def cluster_hint() -> str | None:
    """A note when the environment looks like several tasks of one cluster job but the run
    was started without ``--distributed auto`` (each task would train on its own)."""
    tasks = os.environ.get("SLURM_NTASKS") or os.environ.get("OMPI_COMM_WORLD_SIZE")
    if tasks and tasks.isdigit() and int(tasks) > 1:
        return (
            f"note: {tasks} cluster tasks (SLURM/Open MPI) but this run is a single process; "
            "pass --distributed auto to join them into one run"
        )
    return None


def is_main() -> bool:
    """Whether this is process 0, the one that writes logs, metrics, plots and summary."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process gets here (nothing to wait for with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


# ---------------------------------------------------------------------------- Mesh


def make_mesh(devices_per_process: int | None = None) -> Mesh:
    """A 1-D ``"data"`` mesh of the first ``devices_per_process`` local devices of every
    process (default: all of them), process 0's first, so that each process's devices hold
    one contiguous slice of every global batch."""
    local = jax.local_device_count()
    n = local if devices_per_process is None else devices_per_process
    if not 1 <= n <= local:
        hint = ""
        if jax.default_backend() == "cpu":
            hint = f" (on CPU, XLA_FLAGS=--xla_force_host_platform_device_count={n} simulates them)"
        raise ValueError(f"--devices {n}: this process has {local} {jax.default_backend()} "
                         f"device(s){hint}")  # fmt: skip
    by_process = {}
    for d in sorted(jax.devices(), key=lambda d: (d.process_index, d.id)):
        by_process.setdefault(d.process_index, []).append(d)
    devices = [d for p in sorted(by_process) for d in by_process[p][:n]]
    return Mesh(np.array(devices), (AXIS,))


def batch_sharding(mesh: Mesh, ndim: int = 1, axis: int = 0) -> NamedSharding:
    """Splits dimension ``axis`` (the batch) of an ``ndim``-D array over the devices."""
    spec = [None] * ndim
    spec[axis] = AXIS
    return NamedSharding(mesh, P(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


# ---------------------------------------------------------------------------- Placing arrays


def put(x, sharding: NamedSharding) -> jax.Array:
    """A global array from ``x``, a host array every process holds in full.

    ``jax.make_array_from_callback`` hands each addressable device its own slice, in one
    process or many. (``jax.device_put`` of host data onto devices of several processes
    first checks that every process passed the same value, an all-gather of the array.)
    PRNG keys travel as their ``uint32`` key data.
    """
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(x)
        return jax.random.wrap_key_data(put(jax.random.key_data(x), sharding), impl=impl)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def replicate(obj, mesh: Mesh, *, from_process_0: bool = False) -> None:
    """Places every array of an NNX object (model, optimiser) on all devices of ``mesh``,
    in place; ``from_process_0`` first broadcasts process 0's values to the others."""
    state = nnx.state(obj)
    if from_process_0 and jax.process_count() > 1:
        state = multihost_utils.broadcast_one_to_all(state)  # NumPy leaves, process 0's
    sharding = replicated(mesh)
    nnx.update(obj, jax.tree.map(lambda x: put(x, sharding), state))


def to_host(x) -> np.ndarray:
    """The whole value of a (possibly multi-process) array as a NumPy array."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def checksum(obj) -> str:
    """SHA-256 of this process's copy of the arrays of an NNX object (16 hex digits), to
    check that the replicas on different processes agree."""
    digest = hashlib.sha256()
    for x in jax.tree.leaves(nnx.state(obj)):
        local = np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x)
        digest.update(np.ascontiguousarray(local).tobytes())
    return digest.hexdigest()[:16]
