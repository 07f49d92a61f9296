"""Data parallel training over host devices for the CLI: ONTOGENY_HOST_DEVICES=N.

XLA's CPU backend runs one training step on one device, and one device keeps about one core
busy at a time; `--xla_force_host_platform_device_count=N` makes N host devices, over which
`dynamics.train.training_mesh` splits each batch. The flag must be in XLA_FLAGS before JAX
creates its CPU backend, so `python -m experiments` calls `configure()` before importing
anything that imports jax.

[choice] The default is 1 device (`DEFAULT_DEVICES`): 2 host devices helped training only on an
otherwise idle CPU and slowed non-training computations (docs/benchmarks/2026-11-29-xeon.md,
"Host devices"). Set DEFAULT_DEVICES = 2 to make min(2, cores) the default where it measures faster.

Imports no jax (that is the point).
"""
from __future__ import annotations

import os

from models.errors import OntogenyError

FLAG = "--xla_force_host_platform_device_count"
ENV = "ONTOGENY_HOST_DEVICES"
DEFAULT_DEVICES = 1  # [choice] see above; the default asks for min(DEFAULT_DEVICES, usable cores)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def multi_process_job(environ) -> bool:
    """A launcher names the job (dynamics.distributed): then it, not this default, decides the devices."""
    slurm_tasks = environ.get("SLURM_NTASKS", "1") or "1"
    return bool(environ.get("ONTOGENY_COORDINATOR") or "TPU_WORKER_ID" in environ
                or ("SLURM_JOB_ID" in environ and slurm_tasks.isdigit() and int(slurm_tasks) > 1))


def host_device_count(environ, cores: int) -> int | None:
    """How many host devices to ask for, or None to leave XLA_FLAGS alone: when an accelerator
    platform is requested, when XLA_FLAGS already sets the count, in a multi-process job, or when
    the answer is 1. ONTOGENY_HOST_DEVICES=N overrides the default min(DEFAULT_DEVICES, cores)."""
    platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms not in ("", "cpu") or FLAG in environ.get("XLA_FLAGS", "") or multi_process_job(environ):
        return None
    raw = environ.get(ENV, "").strip()
    if raw:
        if not (raw.isdigit() and int(raw) >= 1):
            raise OntogenyError(f"{ENV}={raw!r} is not a positive integer; set it to the number of host devices "
                                f"(1 turns data parallelism over host devices off)")
        n = int(raw)
    else:
        n = min(DEFAULT_DEVICES, max(cores, 1))
    return n if n > 1 else None


def configure(environ=None, cores: int | None = None) -> int | None:
    """Put the host device count into `environ` (default os.environ) when `host_device_count`
    asks for one; returns it. Call before jax is imported."""
    environ = os.environ if environ is None else environ
    n = host_device_count(environ, usable_cores() if cores is None else cores)
    if n is not None:
        environ["XLA_FLAGS"] = f"{environ.get('XLA_FLAGS', '')} {FLAG}={n}".strip()
    return n
