"""Stacked checkpoint trees: stacking, sizes, a series left on disk and its chunked reading.

A stack is one pytree whose leaves carry a leading checkpoint axis C. `StackOnDisk` stands in
for a stack whose checkpoints stay in their series until `chunks` reads them, one chunk at a
time with the next prefetched in a thread. `dynamics.checkpoints.map_stack` drives both; this
module knows nothing of orbax (a `StackOnDisk` reads through any object with
`restore_params(step)`, in practice a `checkpoints.Series`).
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import jax
import numpy as np


def stack_trees(trees: Sequence) -> object:
    """[tree, tree, ...] -> one tree whose leaves have a new leading axis."""
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def unstack_tree(tree, index: int):
    return jax.tree.map(lambda x: x[index], tree)


def tree_bytes(tree) -> int:
    """Bytes of a tree's leaves (arrays or ShapeDtypeStructs)."""
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def available_memory_bytes() -> int:
    """Free host memory (Linux /proc/meminfo), or 4 GiB when it cannot be read."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def on_accelerator() -> bool:
    """Whether jax computes on an accelerator (GPU, TPU): then the device's memory, not the host's,
    bounds what a computation may hold."""
    return jax.local_devices()[0].platform != "cpu"


def device_memory_stats() -> list[dict]:
    """`memory_stats()` of every local accelerator device ([] on a CPU, or where the backend
    reports none)."""
    if not on_accelerator():
        return []
    stats = []
    for device in jax.local_devices():
        try:
            one = device.memory_stats()
        except Exception:  # a backend without memory statistics
            return []
        if not one or "bytes_limit" not in one:
            return []
        stats.append(one)
    return stats


def device_free_bytes() -> int | None:
    """Free memory of the fullest local accelerator device: min over devices of jax's
    `bytes_limit - bytes_in_use` (the allocator's pool, so with XLA's default preallocation it is
    what is left of the 75% XLA took). None on a CPU or where the backend reports no statistics:
    then the host's free memory (`available_memory_bytes`) is the one that counts."""
    stats = device_memory_stats()
    if not stats:
        return None
    return min(max(0, int(s["bytes_limit"]) - int(s.get("bytes_in_use", 0))) for s in stats)


def device_peak_bytes() -> int | None:
    """Largest `peak_bytes_in_use` over the local accelerator devices since the process started
    (None on a CPU)."""
    stats = device_memory_stats()
    return max(int(s.get("peak_bytes_in_use", 0)) for s in stats) if stats else None


def _status_bytes(field: str) -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> int | None:
    """Reset this process's peak-RSS mark (Linux: `5` to /proc/self/clear_refs) and return the
    resident bytes now; None where the mark cannot be reset (then nothing can be measured)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return _status_bytes("VmRSS")


def peak_rss() -> int | None:
    """This process's peak resident bytes since the last `reset_peak_rss` (VmHWM)."""
    return _status_bytes("VmHWM")


class StackOnDisk:
    """A series' checkpoints left on disk, usable wherever `map_stack` takes a stacked tree
    (alone or as a leaf of a larger tree). `load(index)` stacks the checkpoints at those
    positions; `release(n)` says n of them are done with. `resident` / `max_resident` count the
    checkpoints loaded and not yet released (what the bounded-memory guarantee is about)."""

    def __init__(self, series, steps: Sequence[int]):
        self.series = series
        self.steps = np.asarray(steps)
        self.resident = self.max_resident = 0
        self._lock = threading.Lock()
        self._template = None

    def __len__(self) -> int:
        return len(self.steps)

    def template(self):
        """One checkpoint's leaves as ShapeDtypeStructs (read once from the first checkpoint)."""
        if self._template is None:
            one = self.series.restore_params(int(self.steps[0]))
            self._template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), one)
        return self._template

    def load(self, index: Sequence[int]):
        with self._lock:
            self.resident += len(index)
            self.max_resident = max(self.max_resident, self.resident)
        return stack_trees([self.series.restore_params(int(self.steps[i])) for i in index])

    def release(self, n: int) -> None:
        with self._lock:
            self.resident -= n


def is_disk(x) -> bool:
    return isinstance(x, StackOnDisk)


def disk_leaves(stacked) -> list[StackOnDisk]:
    """The `StackOnDisk` leaves of a stacked tree."""
    return [x for x in jax.tree.leaves(stacked, is_leaf=is_disk) if is_disk(x)]


def stack_length(stacked) -> int:
    """C, the number of checkpoints of a stacked tree (its first leaf's)."""
    return len(jax.tree.leaves(stacked, is_leaf=is_disk)[0])


def one_template(stacked):
    """One checkpoint's shapes: a StackOnDisk leaf gives its checkpoint's tree."""
    return jax.tree.map(lambda x: x.template() if is_disk(x) else jax.ShapeDtypeStruct(x.shape[1:], x.dtype),
                        stacked, is_leaf=is_disk)


_SCRATCH: dict = {}


def largest_intermediate_bytes(jaxpr) -> int:
    """Bytes of the largest value any equation of `jaxpr` (sub-jaxprs included) produces."""
    largest = 0
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            aval = getattr(v, "aval", None)
            if hasattr(aval, "shape") and hasattr(aval, "dtype"):
                itemsize = getattr(aval.dtype, "itemsize", 8)   # a PRNG key's dtype is not numpy's
                largest = max(largest, int(np.prod(aval.shape, dtype=np.int64)) * itemsize)
        for sub in jax.core.jaxprs_in_params(eqn.params):
            largest = max(largest, largest_intermediate_bytes(sub))
    return largest


def shape_structs(one, args):
    """(one checkpoint, the arguments) as ShapeDtypeStructs."""
    spec = lambda x: jax.ShapeDtypeStruct(np.shape(x), getattr(x, "dtype", np.asarray(x).dtype))
    return jax.tree.map(spec, (one, args))


def shapes_key(fn: Callable, one, args) -> tuple:
    """A hashable key of `fn` and the shapes and dtypes of one checkpoint and the arguments."""
    shapes = shape_structs(one, args)
    return fn, str(jax.tree.structure(shapes)), tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(shapes))


def scratch_bytes(fn: Callable, one, args) -> int | None:
    """Temporary bytes for one checkpoint (e.g. a forward's logits, which the outputs do not
    show): XLA's own count from compiling `fn` unbatched once per shape, and at least twice the
    largest intermediate value of its jaxpr. [choice] The jaxpr bound is there because XLA's CPU
    backend reports no temporaries (temp_size_in_bytes is 0 in jax 0.10), which let a 32-step
    NeuroMFA ask for 55 GB in one chunk. None where neither can tell."""
    key = shapes_key(fn, one, args)
    if key not in _SCRATCH:
        shapes = shape_structs(one, args)
        counted = []
        try:
            counted.append(2 * largest_intermediate_bytes(jax.make_jaxpr(fn)(*shapes[:1], *shapes[1]).jaxpr))
            analysis = jax.jit(fn).lower(*shapes[:1], *shapes[1]).compile().memory_analysis()
            counted.append(int(analysis.temp_size_in_bytes))
        except Exception:  # backends without a memory analysis
            pass
        _SCRATCH[key] = max(counted) if counted else None
    return _SCRATCH[key]


def _chunk(stacked, start: int, chunk: int, C: int):
    """(the checkpoints start..start+chunk as a tree, padded to `chunk` by repeating the last;
    the number of real ones). StackOnDisk leaves are read from disk here."""
    real = np.arange(start, min(start + chunk, C))
    pad = np.minimum(np.arange(chunk), len(real) - 1)

    def take(x):
        if is_disk(x):
            part = x.load(real)
            return part if len(real) == chunk else jax.tree.map(lambda y: y[pad], part)
        return x[real[pad]]
    return jax.tree.map(take, stacked, is_leaf=is_disk), len(real)


def chunks(stacked, chunk: int, C: int, first: int = 0):
    """Every chunk of `chunk` checkpoints in order from checkpoint `first` to C, as (tree padded
    to `chunk`, number of real ones); with StackOnDisk leaves the next chunk is read in a thread
    while the caller computes on the current one (so at most two chunks are resident), and each
    chunk's checkpoints are released once the caller asks for the next."""
    disks = disk_leaves(stacked)
    if not disks:
        for start in range(first, C, chunk):
            yield _chunk(stacked, start, chunk, C)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="prefetch") as pool:
        pending = pool.submit(_chunk, stacked, first, chunk, C)
        for start in range(first, C, chunk):
            part, n_real = pending.result()
            if start + chunk < C:
                pending = pool.submit(_chunk, stacked, start + chunk, chunk, C)
            try:
                yield part, n_real
            finally:
                del part
                for d in disks:
                    d.release(n_real)
