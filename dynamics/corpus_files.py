"""The files under a corpus: where the token cache lives (and its writer lock), text files
streamed in blocks as documents, content checksums, and the on-disk corpus (`TokenCorpus`) that
`dynamics.corpus` builds and `dynamics.token_files` reads."""
from __future__ import annotations

import dataclasses
import glob as globlib
import hashlib
import json
import os
import uuid
from pathlib import Path

import numpy as np

from dynamics import faults, locks
from models.errors import OntogenyError
from models.errors import require

BLOCK = 1 << 20   # characters per block when streaming text


def cache_root() -> Path:
    return Path(os.environ.get("ONTOGENY_CACHE") or Path.home() / ".cache" / "ontogeny")


def unescape(separator: str) -> str:
    """`\\n`, `\\t`, `\\r` typed on a command line mean newline, tab, return."""
    return separator.replace("\\n", "\n").replace("\\t", "\t").replace("\\r", "\r")


def is_token_folder(path: str) -> bool:
    return Path(path).expanduser().is_dir() and (Path(path).expanduser() / "train.bin").is_file()


def text_files(path: str) -> tuple[Path, list[Path]]:
    """(root that names are relative to, the sorted text files) of a file, folder or glob."""
    p = Path(path).expanduser()
    if p.is_file():
        return p.parent, [p]
    if p.is_dir():
        files = [f for f in sorted(p.rglob("*")) if f.is_file()
                 and not any(part.startswith(".") for part in f.relative_to(p).parts)]
        return p, files
    matches = sorted(Path(m) for m in globlib.glob(str(p), recursive=True) if Path(m).is_file())
    require(matches, f"data.path={path} is not a file, folder or glob that matches any file; check the path")
    return Path(os.path.commonpath([m.parent for m in matches])), matches


def file_checksum(path: Path) -> str:
    """sha256 of a file, streamed; remembered by (path, size, mtime) so a run start does not re-read it."""
    stat = path.stat()
    memo_path = cache_root() / "checksums.json"
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if key not in memo:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
        memo[key] = h.hexdigest()
        tmp = memo_path.with_suffix(f".{uuid.uuid4().hex[:12]}.tmp")
        try:  # only a memo: a full or read-only cache disk costs a re-read next time, nothing else
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(memo))
            os.replace(tmp, memo_path)
        except OSError:
            tmp.unlink(missing_ok=True)
    return memo[key]


CACHE_WAIT_S = 4 * 3600  # [choice] how long a second process waits for another building the same cache entry


def cache_lock(folder: Path):
    """The writer lock of a token-cache entry, `tokens/KEY.lock` beside it (`dynamics.locks`): a
    second process that needs the same entry waits for the first (up to CACHE_WAIT_S, or until it
    dies, when the lock is taken over) and then reuses what it wrote, instead of tokenizing twice."""
    return locks.FileLock(folder.with_name(folder.name + ".lock"), f"the token cache {folder}", wait_s=CACHE_WAIT_S,
                          active=True, fix=faults.CACHE_FIX)


def sources_checksum(root: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(root).as_posix()}\0{file_checksum(f)}\n".encode())
    return h.hexdigest()


def pieces(path: Path, separator: str):
    """(document number within the file, text) pieces of a file, in bounded memory."""
    keep = max(len(separator), 1)
    try:
        with open(path, encoding="utf-8", errors="strict", newline="") as f:
            carry, k, started = "", 0, False  # started: part of document k was already emitted
            for block in iter(lambda: f.read(BLOCK), ""):
                carry += block
                if separator:
                    *done, carry = carry.split(separator)
                    for text in done:
                        if text:
                            yield k, text
                        if text or started:
                            k, started = k + 1, False
                if len(carry) > 2 * BLOCK:  # a long document: emit it in blocks cut after a newline
                    cut = carry.rfind("\n", 0, len(carry) - keep) + 1 or len(carry) - keep
                    yield k, carry[:cut]
                    carry, started = carry[cut:], True
            if carry:
                yield k, carry
    except UnicodeDecodeError:
        raise OntogenyError(f"{path} is not UTF-8 text; convert it, or remove it from data.path") from None


def documents(root: Path, files: list[Path], separator: str):
    """(document name, text piece); consecutive pieces of one name form one document."""
    for f in files:
        name = f.relative_to(root).as_posix()
        for k, text in pieces(f, separator):
            yield (f"{name}#{k}" if separator else name), text


@dataclasses.dataclass
class TokenCorpus:
    """A corpus on disk: token ids as read-only memmaps, its tokenizer and what it came from."""
    name: str
    tokenizer: object
    train_ids: np.ndarray
    val_ids: np.ndarray
    record: dict
    train_works: tuple[str, ...] = ()

    @property
    def val_works(self) -> tuple[str, ...]:
        return tuple(self.record.get("val_docs", ()))

    @property
    def train_text(self) -> str:  # studies that read text; decodes the whole split
        return self.tokenizer.decode(self.train_ids)

    @property
    def val_text(self) -> str:
        return self.tokenizer.decode(self.val_ids)


@dataclasses.dataclass(frozen=True)
class Source:
    """Text documents to tokenize: a content checksum, `docs()` -> (name, piece) iterator, size."""
    checksum: str
    docs: object
    total: int
    where: str
