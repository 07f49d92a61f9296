"""Failed writes (a full disk, a quota, a read-only file system) as one line, with nothing lost.

Every save of a run (orbax checkpoints and the resume point, metrics.jsonl, config.json and the
other JSON files, figures, TensorBoard events, the token cache, imported steps) goes through
`guarded` or `atomic_path`: a write that fails for lack of space raises `WriteFailed`, an
`OntogenyError` whose one line names the path, the reason and the fix, so the CLI exits 2.
What was saved before stays as it was: files are written beside their final name and renamed
into place (a failed write removes its partial file), metrics.jsonl is cut back to its last whole
row, and orbax writes each checkpoint to a temporary folder that is renamed only when complete
(the failed one is removed, freeing its space). Re-running the same command after freeing space
resumes from the last complete checkpoint, bit for bit as if the run had never stopped.

Libraries that write in background threads report a full disk there: orbax (tensorstore's
event loops), asyncio's "exception was never retrieved", tensorboardX's writer thread. `install`
puts narrow filters on those channels: a disk error from a background thread is recorded (and
raised as `WriteFailed` by `raise_pending` at the next write of the run) instead of printed as a
thread traceback; everything else passes through unchanged.

Faults tried (tests/test_faults_*.py, on a real tmpfs of a few MB where the platform allows it,
else a fault-injecting writer) and what happens:

- the disk fills mid-run (`pretrain --preset micro` on 1.5 MB, as a real process): one line
  naming the checkpoint or file, exit 2, complete checkpoints intact (verified), no orbax
  temporaries; after freeing space the same command finishes bit for bit as an uninterrupted run;
- the disk fills at a SIGTERM's resume point: one line, the previous resume point kept and
  resumed from, bit for bit;
- metrics.jsonl, summary.json, a figure, config.json / the writer lock, the token cache, an
  imported step: one line naming that path; the file keeps its last whole content (no partial
  row, figure or JSON, no half-built cache entry, no stray lock); the import resumes after the
  last imported step;
- a full disk met by a background thread (tensorboardX, orbax): no thread traceback, the next
  write raises it as the same one line.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import sys
import threading
import time
import uuid
from pathlib import Path

from models.errors import OntogenyError

REASONS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
           errno.EFBIG: "the file is too large for the file system", errno.EROFS: "the file system is read-only"}
ADVICE = {errno.ENOSPC: "free space on that disk", errno.EDQUOT: "free space within your quota",
          errno.EFBIG: "use a file system that allows larger files", errno.EROFS: "make that file system writable"}
_MESSAGES = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
             "Read-only file system": errno.EROFS, "File too large": errno.EFBIG}
_OS_CODE = re.compile(r"os_error_code='?(\d+)")          # tensorstore's errors (orbax) carry the errno
_LOCAL_FILE = re.compile(r'local file "([^"]+)"')
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")
# (where else, what then): the end of the line, after the reason and ADVICE
RUN_FIX = ("give an --out on another disk", "run the same command again: it resumes from the last complete checkpoint")
CACHE_FIX = ("set ONTOGENY_CACHE to a folder on another disk", "run the same command again")
IMPORT_FIX = ("give an --out on another disk", "run the same command again: it resumes after the last imported step")


class WriteFailed(OntogenyError):
    """A save failed for lack of space (or on an over-quota or read-only file system)."""

    def __init__(self, path, code: int = errno.ENOSPC, fix: tuple[str, str] = RUN_FIX):
        super().__init__()
        self.path, self.errno = str(path), code
        self.restate(fix)
        note_failure()

    def restate(self, fix: tuple[str, str]) -> None:
        """End the line with `fix` (where else to write, what to run then)."""
        elsewhere, then = fix
        self.args = (f"could not write {self.path}: {REASONS[self.errno]}; {ADVICE[self.errno]} (or {elsewhere}) "
                     f"and {then}",)


def _chain(exc: BaseException | None):
    """The exception and every exception it was raised from or during, newest first."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def disk_errno(exc: BaseException | None, path=None) -> int | None:
    """The errno of the first disk error (ENOSPC, EDQUOT, EFBIG, EROFS) in `exc`'s chain, else None;
    tensorstore's wrapped errors (orbax raises ValueError) are read from their message, and a short
    write with no errno (numpy's "N requested and M written") counts when `path`'s disk is full."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in REASONS:
            return e.errno
        text = str(e)
        if path is not None and isinstance(e, OSError) and _SHORT_WRITE.search(text) and _full(path):
            return errno.ENOSPC
        match = _OS_CODE.search(text)
        if match and int(match.group(1)) in REASONS:
            return int(match.group(1))
        for phrase, code in _MESSAGES.items():
            if phrase in text:
                return code
    return None


def _full(path) -> bool:
    """Whether the file system holding `path` (or its nearest existing parent) has no space left."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        stats = os.statvfs(path)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < (1 << 16)


def earliest_failure(exc: BaseException | None) -> WriteFailed | None:
    """The first `WriteFailed` raised in `exc`'s chain (the cause, not a later cleanup's echo)."""
    found = [e for e in _chain(exc) if isinstance(e, WriteFailed)]
    return found[-1] if found else None


def as_write_failed(exc: BaseException, path=None, fix: tuple[str, str] = RUN_FIX) -> WriteFailed | None:
    """`exc` as a `WriteFailed` naming `path` (else the file the error names), or None when it is
    not a disk error."""
    earlier = earliest_failure(exc)
    if earlier is not None:
        return earlier
    code = disk_errno(exc, path)
    if code is None:
        return None
    if path is None:
        path = next((e.filename for e in _chain(exc) if isinstance(e, OSError) and e.filename), None)
        match = _LOCAL_FILE.search(str(exc))
        path = path or (match.group(1) if match else "a file of the run")
    return WriteFailed(path, code, fix)


@contextlib.contextmanager
def guarded(path, fix: tuple[str, str] = RUN_FIX, restate: bool = False):
    """Turn a disk error inside the block into `WriteFailed(path)`; other errors pass unchanged.
    `restate`: a `WriteFailed` raised inside (a checkpoint's) ends with this block's `fix` instead."""
    try:
        yield
    except BaseException as e:
        failed = as_write_failed(e, path, fix)
        if failed is not None and restate:
            failed.restate(fix)
        if failed is None or failed is e:
            raise
        raise failed from None


@contextlib.contextmanager
def atomic_path(path, fix: tuple[str, str] = RUN_FIX):
    """Yield a temporary path beside `path`; when the block succeeds it replaces `path` (atomic on
    POSIX), when it fails the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with guarded(path, fix):
            yield tmp
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` to the open file `fd` (`os.write` may write fewer at a time)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def remove_partials(directory: Path, step: int, settle_s: float = 0.0) -> None:
    """Remove orbax's temporary folders of checkpoint `step` in `directory` (never a complete
    checkpoint); after a failed save, again until tensorstore's last pending writes have landed
    (for `settle_s` seconds)."""
    deadline = time.monotonic() + settle_s
    while True:
        for partial in Path(directory).glob(f"{int(step)}.orbax-checkpoint-tmp*"):
            shutil.rmtree(partial, ignore_errors=True)
        if time.monotonic() >= deadline:
            return
        time.sleep(0.1)


# ----------------------------------------------------------------------------- background threads
_PENDING: list[WriteFailed] = []
_INSTALLED = {"done": False}
_FAILED = {"any": False, "saving": 0}  # a write failed in this process / saves running (echoes dropped)


class _DropDiskErrors(logging.Filter):
    """Drops a library's log records about a disk error (the failure is raised as one line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return disk_errno(exc) is None and disk_errno(Exception(record.getMessage())) is None


def thread_hook(previous):
    """A `threading.excepthook` that records a thread's disk error for `raise_pending` and passes
    every other exception to `previous`."""
    def hook(args):
        failed = as_write_failed(args.exc_value) if args.exc_value is not None else None
        if failed is None:
            return previous(args)
        _PENDING.append(failed)  # raised by the main thread at its next write
    return hook


def _unraisable_hook(previous):
    def hook(args):
        # a failing orbax save: tensorstore's callbacks reach the event loop orbax has closed
        late = (_FAILED["any"] or _FAILED["saving"]) and isinstance(args.exc_value, RuntimeError) \
            and "Event loop is closed" in str(args.exc_value)
        if late or disk_errno(args.exc_value) is not None:
            return None
        return previous(args)
    return hook


@contextlib.contextmanager
def background_save():
    """Mark a save whose library writes in background threads (orbax): their echoes of a failure
    are dropped while it runs (the failure itself is raised by the save)."""
    install()
    _FAILED["saving"] += 1
    try:
        yield
    finally:
        _FAILED["saving"] -= 1


def install() -> None:
    """Route background disk errors to `raise_pending` instead of stderr (idempotent)."""
    if _INSTALLED["done"]:
        return
    _INSTALLED["done"] = True
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(_DropDiskErrors())
    threading.excepthook = thread_hook(threading.excepthook)
    sys.unraisablehook = _unraisable_hook(sys.unraisablehook)


def note_failure() -> None:
    """A write failed in this process: late echoes of it from closed event loops are dropped."""
    _FAILED["any"] = True


def raise_pending() -> None:
    """Raise the first disk error a background thread met (once), if any."""
    if _PENDING:
        failed = _PENDING[0]
        _PENDING.clear()
        note_failure()
        raise failed
