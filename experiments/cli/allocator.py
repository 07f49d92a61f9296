"""glibc malloc settings for the CLI: fewer page faults when XLA allocates a step's buffers.

XLA's CPU runtime allocates each execution's temporary buffers anew and frees them when it ends
(680 MiB a step for the shakespeare-char train step, 45 MiB for tiny). glibc serves a request
above its mmap threshold with fresh pages from the kernel and unmaps them on free, so every
step page-faults its whole working set again and the kernel zeroes it.

`TUNABLES` sets glibc.malloc.hugetlb=1: malloc asks the kernel for transparent huge pages
(where its setting is `madvise`, the common default), so a fresh block faults 2 MiB at a time
instead of 4 KiB. Nothing else about malloc changes, and memory is returned to the kernel as
before. [choice] hugetlb alone: other settings gained at most a few percent more and kept freed
memory with the process (the measurements: docs/benchmarks/2026-11-30-xeon.md, "Huge pages"). `ONTOGENY_MALLOC=system` keeps glibc's defaults.
Tunables are read when a process starts, so `configure` re-executes the interpreter once with
GLIBC_TUNABLES set (same pid, same arguments); subprocesses inherit it. A tunable the user
already set in GLIBC_TUNABLES wins. Other C libraries, or a glibc older than 2.35 (which
ignores the tunable): no effect.

Imports no jax and no numpy (it runs before them).
"""
from __future__ import annotations

import os
import sys

from models.errors import OntogenyError

ENV = "ONTOGENY_MALLOC"  # unset or "ontogeny": the tunables; "system": glibc's defaults
DONE = "ONTOGENY_MALLOC_CONFIGURED"
TUNABLES = {"glibc.malloc.hugetlb": "1"}


def is_glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        return False


def merged_tunables(existing: str) -> str:
    """GLIBC_TUNABLES with `TUNABLES` added, keeping every key `existing` already sets."""
    items = [item for item in existing.split(":") if item]
    have = {item.split("=", 1)[0] for item in items}
    return ":".join(items + [f"{k}={v}" for k, v in TUNABLES.items() if k not in have])


def wanted(environ, glibc: bool) -> bool:
    """Whether this process should restart with the tunables: on glibc, not yet done, not opted out."""
    choice = environ.get(ENV, "").strip().lower()
    if choice not in ("", "ontogeny", "system"):
        raise OntogenyError(f"{ENV}={choice!r} is not known; use 'system' (glibc's defaults) or leave it unset")
    return glibc and choice != "system" and not environ.get(DONE)


def configure(environ=None, execv=os.execv) -> None:
    """Re-execute this interpreter with `TUNABLES` in GLIBC_TUNABLES when `wanted`; else return.
    Call first thing in the CLI's __main__, before jax or numpy is imported."""
    environ = os.environ if environ is None else environ
    if not wanted(environ, is_glibc()):
        return
    environ["GLIBC_TUNABLES"] = merged_tunables(environ.get("GLIBC_TUNABLES", ""))
    environ[DONE] = "1"
    argv = list(getattr(sys, "orig_argv", [])) or [sys.executable, "-m", "experiments", *sys.argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    execv(sys.executable, [sys.executable, *argv[1:]])
