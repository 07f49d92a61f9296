"""A small file system that fills up on demand, for the full-disk tests.

Where the platform allows (root, Linux) it is a real tmpfs mounted on a test folder: `fill()`
writes a balloon file until the kernel answers ENOSPC, `free()` deletes it, `grow()` remounts it
larger. Elsewhere `SmallDisk` falls back to a fault-injecting writer: while "full", every write
under the folder raises ENOSPC (Python's open/os.write, orbax's save, the token cache's numpy
writes), as the kernel would. `ONTOGENY_TEST_FAULT_INJECTION=1` forces the fallback.
"""
from __future__ import annotations

import builtins
import errno
import io
import os
import re
import subprocess
import uuid
from pathlib import Path

TQDM_BAR = re.compile(r"^\s*[\w .:/-]*:\s*\d+%\|")


def error_lines(stderr: str) -> list[str]:
    """What a user reads on stderr, progress bars and notes left out."""
    lines = [line.strip() for line in re.split(r"[\r\n]", stderr)]
    return [line for line in lines if line and not TQDM_BAR.match(line) and not line.startswith("note:")]


def one_error_line(stderr: str) -> str:
    """The single `error:` line of a failed command; no traceback anywhere."""
    assert "Traceback" not in stderr and "Exception in thread" not in stderr, stderr[-3000:]
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _can_mount() -> bool:
    return os.environ.get("ONTOGENY_TEST_FAULT_INJECTION") != "1" and hasattr(os, "geteuid") and os.geteuid() == 0


class SmallDisk:
    """`root`: a folder on a file system of `size` bytes that `fill()` fills and `free()` frees."""

    def __init__(self, root: Path, size: int, monkeypatch):
        self.root, self.size, self.mp = Path(root), size, monkeypatch
        self.root.mkdir(parents=True, exist_ok=True)
        self.mounted = _can_mount() and self._mount(size)
        self.mode = "tmpfs" if self.mounted else "inject"
        self.full = False
        self.balloon = self.root / f".balloon-{uuid.uuid4().hex[:6]}"
        if not self.mounted:
            self._inject()

    def _mount(self, size: int) -> bool:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(self.root)],
                              capture_output=True)
        return done.returncode == 0

    def fill(self) -> None:
        """Leave no space: a balloon file grows until the file system refuses (or, injected, every
        write under root fails from now on)."""
        self.full = True
        if not self.mounted:
            return
        block = b"\0" * 65536
        with open(self.balloon, "ab", buffering=0) as f:
            while True:
                try:
                    f.write(block)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    if len(block) == 1:
                        break
                    block = block[: len(block) // 2]

    def free(self) -> None:
        self.full = False
        if self.mounted:
            self.balloon.unlink(missing_ok=True)

    def grow(self, size: int) -> None:
        """Free the balloon and make the file system `size` bytes."""
        self.free()
        self.size = size
        if self.mounted:
            subprocess.run(["mount", "-o", f"remount,size={size}", str(self.root)], check=True)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.root)], capture_output=True)

    # ------------------------------------------------------------------ fault injection
    def _under(self, path) -> bool:
        try:
            return self.full and Path(os.path.abspath(os.fspath(path))).is_relative_to(self.root.absolute())
        except TypeError:
            return False

    def _error(self, path=None) -> OSError:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), None if path is None else str(path))

    def _inject(self) -> None:
        real_open, real_write, disk = builtins.open, os.write, self

        class Full(io.RawIOBase):
            """A file whose writes find the disk full (reads pass through)."""

            def __init__(self, inner, path):
                self.inner, self.path = inner, path

            def write(self, data):
                if disk._under(self.path) and len(data):
                    raise disk._error()
                return self.inner.write(data)

            def __getattr__(self, name):
                return getattr(self.inner, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.inner.close()

            def close(self):
                self.inner.close()

        def fake_open(file, mode="r", *args, **kwargs):
            handle = real_open(file, mode, *args, **kwargs)
            if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+") and disk._under(file):
                return Full(handle, file)
            return handle

        def fake_write(fd, data):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                target = None
            if target and disk._under(target) and len(data):
                raise disk._error()
            return real_write(fd, data)

        import orbax.checkpoint as ocp

        real_save = ocp.CheckpointManager.save

        def fake_save(manager, step, *args, **kwargs):
            directory = Path(str(manager.directory))
            if disk._under(directory):
                (directory / f"{step}.orbax-checkpoint-tmp").mkdir(parents=True, exist_ok=True)
                raise ValueError(f'RESOURCE_EXHAUSTED: Error writing local file "{directory}/{step}": No space left '
                                 f"on device [os_error_code='28']")
            return real_save(manager, step, *args, **kwargs)

        from dynamics import corpus

        real_tokens = corpus._write

        def fake_tokens(tokenizer, batch, outs, *args):
            if any(disk._under(f.name) for f in outs.values()):  # numpy writes through the file descriptor
                raise disk._error()
            return real_tokens(tokenizer, batch, outs, *args)

        self.mp.setattr(builtins, "open", fake_open)
        self.mp.setattr(io, "open", fake_open)
        self.mp.setattr(os, "write", fake_write)
        self.mp.setattr(ocp.CheckpointManager, "save", fake_save)
        self.mp.setattr(corpus, "_write", fake_tokens)
