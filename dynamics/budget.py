"""`map_stack`'s memory budgets: the host's, and on a GPU or TPU the device's.

The host budget is a byte count or a fraction of the free host memory (`/proc/meminfo`); the
device budget a byte count or a fraction of the fullest local device's free memory (jax's
`memory_stats()`, read through `dynamics.stacks.device_free_bytes`, so a test can fake a
device). On a CPU the host is the device and only the host budget counts.
"""
from __future__ import annotations

from dynamics import stacks

_BUDGET = {"max_bytes": None, "fraction": 0.25, "device_max_bytes": None, "device_fraction": 0.5}


def set_memory_budget(max_bytes: int | None = None, fraction: float = 0.25, *, device_max_bytes: int | None = None,
                      device_fraction: float = 0.5) -> None:
    """The default budgets of `map_stack`'s chunks. Host: `max_bytes`, or `fraction` of the free
    host memory when it is None (default a quarter). Accelerator (GPU, TPU; ignored on a CPU,
    where the host is the device): `device_max_bytes`, or `device_fraction` of the device's free
    memory (`stacks.device_free_bytes`; [choice] default a half, since XLA's accelerator
    backends report their temporaries exactly and the allocator's pool is the device's own).
    Studies set the host budget from their config."""
    _BUDGET.update(max_bytes=None if not max_bytes else int(max_bytes), fraction=float(fraction),
                   device_max_bytes=None if not device_max_bytes else int(device_max_bytes),
                   device_fraction=float(device_fraction))


def memory_budget_bytes(max_bytes: int | None = None, memory_fraction: float | None = None) -> int:
    """The host-memory budget in force: `max_bytes`, else `set_memory_budget`'s bytes, else a
    fraction (`memory_fraction` or the set one) of the free memory."""
    max_bytes = max_bytes if max_bytes is not None else _BUDGET["max_bytes"]
    if max_bytes is not None:
        return int(max_bytes)
    fraction = memory_fraction if memory_fraction is not None else _BUDGET["fraction"]
    return int(fraction * stacks.available_memory_bytes())


def device_budget_bytes() -> int | None:
    """The accelerator-memory budget in force (per device): `set_memory_budget`'s
    `device_max_bytes`, else its `device_fraction` of the fullest device's free memory; None on
    a CPU (the host budget covers everything there)."""
    free = stacks.device_free_bytes()  # read through the module, so a test can fake a device
    if free is None:
        return None
    fixed = _BUDGET["device_max_bytes"]
    return int(fixed) if fixed is not None else int(_BUDGET["device_fraction"] * free)


def reserve_memory(nbytes: int) -> int:
    """Set `nbytes` aside for work that lives where the computations run (e.g. dictionaries in
    training) and fix what is left, at least a quarter ([choice], so work larger than the budget
    still runs), as `map_stack`'s budget until the next `set_memory_budget`: on a CPU out of the
    host budget, on an accelerator out of the device budget (the host budget then stays whole:
    the work is not on the host). Returns the budget it was taken from, in bytes."""
    device = device_budget_bytes()
    if device is None:
        budget = memory_budget_bytes()
        set_memory_budget(max(budget - nbytes, budget // 4), _BUDGET["fraction"])
        return budget
    set_memory_budget(_BUDGET["max_bytes"], _BUDGET["fraction"], device_max_bytes=max(device - nbytes, device // 4),
                      device_fraction=_BUDGET["device_fraction"])
    return device


def outputs_budget_bytes(n_checkpoints: int) -> int:
    """What `map_stack`'s outputs over `n_checkpoints` checkpoints may take: the host budget, and
    on an accelerator no more than `n_checkpoints` x the device budget, since one checkpoint's
    outputs must fit the device while a chunk of one is computed."""
    device = device_budget_bytes()
    host = memory_budget_bytes()
    return host if device is None else min(host, device * n_checkpoints)
