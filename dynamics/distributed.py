"""Multi-host runs through JAX's own distributed runtime.

One process per host (or per GPU), each calling `initialize()` before any other JAX call;
`jax.devices()` then lists the devices of all processes, a Mesh over them is global, and each
process loads only its own slice of every batch (`local_batch`). On CPU the collectives go
through gloo, which JAX ships. The environment names the job:

    ONTOGENY_COORDINATOR=host0:8476  ONTOGENY_NUM_PROCESSES=N  ONTOGENY_PROCESS_ID=i

On SLURM or TPU pods `jax.distributed.initialize()` with no arguments discovers them itself;
`initialize()` falls back to that when the variables are absent and a cluster is detected.

Every process runs the whole experiment script with the same arguments, so all host-side
decisions agree; what may differ between hosts (a signal's arrival, free memory) is agreed
through `any_process` / `gather`. Process 0 writes; `barrier` makes its files visible to the
others before they read them.
"""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from models.errors import OntogenyError

_JOINED = False


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Join the distributed job named by the arguments or ONTOGENY_* variables; False if single-process.
    Idempotent: a second call (e.g. a second CLI command in one process) keeps the first job."""
    global _JOINED
    if _JOINED:
        return True
    coordinator = coordinator or os.environ.get("ONTOGENY_COORDINATOR")
    if coordinator is None:
        multi_task_slurm = "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1
        if multi_task_slurm or "TPU_WORKER_ID" in os.environ:
            jax.distributed.initialize()  # cluster auto-detection
            _JOINED = True
            return True
        return False
    try:
        num_processes = int(num_processes if num_processes is not None else os.environ["ONTOGENY_NUM_PROCESSES"])
        process_id = int(process_id if process_id is not None else os.environ["ONTOGENY_PROCESS_ID"])
    except (KeyError, ValueError):
        raise OntogenyError("ONTOGENY_COORDINATOR is set but ONTOGENY_NUM_PROCESSES / ONTOGENY_PROCESS_ID are "
                            "missing or not integers; set all three") from None
    # Only CPU collectives read this (GPUs use NCCL); asking for the backend here would
    # initialise it, which must not happen before `jax.distributed.initialize`.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    _JOINED = True
    return True


def local_batch(global_batch_size: int) -> slice:
    """This process's rows of a global batch (processes own contiguous, equal slices)."""
    n, i = jax.process_count(), jax.process_index()
    if global_batch_size % n:
        raise OntogenyError(f"train.batch_size={global_batch_size} does not split over {n} processes; "
                            f"use a multiple of {n}")
    per = global_batch_size // n
    return slice(i * per, (i + 1) * per)


def global_batch(local_arrays, mesh):
    """Assemble per-process slices into global arrays sharded along the mesh's data axis."""
    sharding = NamedSharding(mesh, P(mesh.axis_names[0]))

    def one(x):
        x = np.asarray(x)
        shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
        return jax.make_array_from_process_local_data(sharding, x, shape)

    return jax.tree.map(one, local_arrays)


def is_primary() -> bool:
    """True on the process that writes run folders and checkpoints (process 0)."""
    return jax.process_index() == 0


def to_host(tree):
    """numpy copies of a tree's arrays; a replicated array that spans other processes' devices
    is read from this process's own copy."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return np.asarray(x)
    return jax.tree.map(one, tree)


def barrier(name: str) -> None:
    """Wait until every process reaches this point (a no-op in a single process); e.g. so that
    readers see the checkpoints process 0 has just written."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def gather(value) -> np.ndarray:
    """Every process's `value` (same shape everywhere), stacked: [process_count, ...]."""
    value = np.asarray(value)
    if jax.process_count() == 1:
        return value[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(value))


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is true on any: decisions that change the step
    sequence (stop on a signal) must be taken by all processes at the same step."""
    return bool(gather(np.int32(bool(flag))).any())
