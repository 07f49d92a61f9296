"""One writer per folder: a run folder, an import's output folder, a token-cache entry.

A writer holds a lock file, `FOLDER/writer.lock` (for a token-cache entry, `tokens/KEY.lock`
beside it), a one-line JSON record: pid, host, start time (UTC) and command of the process
that writes. It is created atomically (`O_CREAT | O_EXCL`), so of two processes started at once
exactly one gets it, and it is removed when the writer ends: normally, on an error, on Ctrl-C or
SIGTERM.

- A second writer of a run or import folder exits 2 with one line naming the holder (pid, host,
  start time, command) and what to do: wait for it, or stop it and run the same command again,
  which resumes. A token-cache entry is waited for instead (the second process reuses what the
  first one tokenized).
- A stale lock, left by a process that was killed (SIGKILL, a crash, a reboot), is recognised on
  the same host: its pid no longer runs, or runs another program (the recorded kernel start time
  differs), or the machine has rebooted since (another boot id). It is taken over with a note on
  stderr. Breaking it is serialised (an `flock` on the folder, then the lock is re-read and removed
  only if it is still the same stale record), so of several processes finding the same stale lock
  exactly one becomes the writer.
- On another host (shared storage) whether the holder still runs cannot be known: the line says
  to delete the lock file if that process has ended.
- Readers never take a lock: `evaluate`, `report`, `probe`, and every study given `run=` or
  `pretrain_run=` only read that run. In a multi-process job process 0, the one that writes,
  holds the run folder's lock.

Library code that writes a run folder itself can hold one with `with folder_lock(root): ...`.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

from models.errors import OntogenyError

LOCK_NAME = "writer.lock"
GARBAGE_AFTER_S = 10.0   # [choice] an unreadable lock file older than this is stale (its creator died writing it)
_HELD: dict[str, dict] = {}          # lock path -> {"token", "count"} for the locks this process holds
_SIGNALS: dict[int, object] = {}     # handlers replaced while a lock is held


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _parse(raw: bytes | None) -> dict | None:
    try:
        record = json.loads(raw or b"")
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("pid"), int) else None


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of a process, from Linux's /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def identity() -> dict:
    """This process as a lock record."""
    stat = proc_stat(os.getpid())
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])[:160] if sys.argv else "python",
            "boot_id": _boot_id(), "start_ticks": stat[1] if stat else None, "token": uuid.uuid4().hex}


def describe(record: dict) -> str:
    return (f"pid {record.get('pid')} on host {record.get('host')}, started {record.get('started')} "
            f"({record.get('command')})")


def holder_alive(record: dict) -> bool | None:
    """Whether the lock's holder still runs: True, False, or None when it is on another host."""
    if record.get("host") != socket.gethostname():
        return None
    boot = _boot_id()
    if boot and record.get("boot_id") and record["boot_id"] != boot:
        return False
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it runs
        pass
    except (OverflowError, ValueError, OSError):
        return False
    stat = proc_stat(record["pid"])
    if stat is not None:
        state, ticks = stat
        if state in ("Z", "X"):  # killed, not yet reaped
            return False
        if record.get("start_ticks") is not None and record["start_ticks"] != ticks:
            return False  # the pid was reused by another process
    return True


@contextlib.contextmanager
def _breaking(directory: Path):
    """Serialise the breaking of stale locks in `directory` (flock on the folder itself)."""
    import fcntl

    fd = os.open(directory, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # a file system without flock: the re-read still narrows the race
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _primary() -> bool:
    if "jax" not in sys.modules:  # jax not even imported: a single process
        return True
    from dynamics import distributed

    return distributed.is_primary()


class FileLock:
    """The writer lock at `path` for `subject` (named in messages). `wait_s`: how long to wait for a
    live holder before refusing (0: refuse at once). Re-entrant within one process."""

    def __init__(self, path, subject: str, *, wait_s: float = 0.0, active: bool | None = None,
                 fix: tuple[str, str] | None = None):
        self.path = Path(path).absolute()
        self.subject, self.wait_s, self.fix = subject, wait_s, fix
        self.active = _primary() if active is None else active
        self._held = False

    def holder(self) -> dict | None:
        return _parse(_read(self.path))

    def acquire(self) -> "FileLock":
        from dynamics import faults

        if not self.active or self._held:
            return self
        key = str(self.path)
        if key in _HELD:
            _HELD[key]["count"] += 1
            self._held = True
            return self
        with faults.guarded(self.path.parent, fix=self.fix or faults.RUN_FIX):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        me = identity()
        deadline, waiting = time.monotonic() + self.wait_s, False
        while not self._create((json.dumps(me) + "\n").encode()):
            raw = _read(self.path)
            record = _parse(raw)
            if raw is None:  # released meanwhile
                continue
            if record is None:  # being written right now, or left unreadable by a crash
                if time.time() - _mtime(self.path) > GARBAGE_AFTER_S:
                    self._break(raw)
                else:
                    time.sleep(0.05)
                continue
            alive = holder_alive(record)
            if alive is False:
                print(f"note: {self.subject}: taking over the lock of {describe(record)}, which no longer runs",
                      file=sys.stderr)
                self._break(raw)
                continue
            if time.monotonic() < deadline:
                if not waiting:
                    print(f"note: waiting for {describe(record)}, which is writing {self.subject}", file=sys.stderr)
                    waiting = True
                time.sleep(0.5)
                continue
            raise OntogenyError(self._busy(record, alive))
        _HELD[key] = {"token": me["token"], "count": 1}
        self._held = True
        _catch_signals()
        return self

    def _busy(self, record: dict, alive: bool | None) -> str:
        if alive is None:
            return (f"{self.subject} is being written by a process on another host: {describe(record)}; wait for "
                    f"it to finish, or if it has ended, delete {self.path} and run the same command again")
        return (f"{self.subject} is being written by another process: {describe(record)}; wait for it to finish, "
                f"or stop it (kill {record['pid']}) and run the same command again to resume")

    def _create(self, data: bytes) -> bool:
        from dynamics import faults

        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as e:
            raise faults.as_write_failed(e, self.path, self.fix or faults.RUN_FIX) or e from None
        try:
            with faults.guarded(self.path, fix=self.fix or faults.RUN_FIX):
                faults.write_all(fd, data)
        except BaseException:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        os.close(fd)
        return True

    def _break(self, raw: bytes) -> None:
        with _breaking(self.path.parent):
            if _read(self.path) == raw:  # still the record judged stale: nobody took over meanwhile
                self.path.unlink(missing_ok=True)

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        key = str(self.path)
        entry = _HELD.get(key)
        if entry is None:
            return
        entry["count"] -= 1
        if entry["count"] > 0:
            return
        del _HELD[key]
        _remove_if_ours(self.path, entry["token"])
        if not _HELD:
            _restore_signals()

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def folder_lock(folder, what: str = "the run folder", **kwargs) -> FileLock:
    """The writer lock of a folder: FOLDER/writer.lock (not yet acquired)."""
    return FileLock(Path(folder) / LOCK_NAME, f"{what} {folder}", **kwargs)


def _remove_if_ours(path: Path, token: str) -> None:
    """Remove the lock at `path` if this very process took it (never another's, nor a forked child's)."""
    record = _parse(_read(path))
    if record is not None and record.get("token") == token and record.get("pid") == os.getpid():
        path.unlink(missing_ok=True)


def release_all() -> None:
    """Release every lock this process holds (at exit, and at the end of a CLI command)."""
    for key, entry in list(_HELD.items()):
        _remove_if_ours(Path(key), entry["token"])
        _HELD.pop(key, None)
    _restore_signals()


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)  # unwinds the `with` blocks, which release the locks


def _catch_signals() -> None:
    """While a lock is held, SIGTERM and SIGHUP unwind the process (releasing it) instead of
    killing it outright. The training loop installs its own handlers around its steps."""
    if _SIGNALS or threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:
            _SIGNALS[signum] = signal.signal(signum, _exit_on_signal)


def _restore_signals() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, previous in list(_SIGNALS.items()):
        if signal.getsignal(signum) is _exit_on_signal:
            signal.signal(signum, previous)
        del _SIGNALS[signum]


atexit.register(release_all)
