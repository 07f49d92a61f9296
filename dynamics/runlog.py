"""Run folders: config.json, metrics.jsonl, figures/*.png, summary.json, checkpoints/.

Every experiment writes one. Metrics are appended as JSON lines so a resumed run keeps
its history; summary.json holds the headline numbers and is written last. In a multi-process
job only process 0 (`distributed.is_primary`) writes; every process computes alike. One process
writes a run folder at a time (`dynamics.locks`, taken by `experiments.cli.config.claim_folder`).

Nothing already saved is lost when a write fails (`dynamics.faults`): JSON files are written
beside their name and renamed into place, and a metrics row that does not fit on the disk is cut
off again, so metrics.jsonl always ends with a whole row; the failure is one line naming the path.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from pathlib import Path
from typing import Any

import numpy as np

from dynamics import distributed
from dynamics import faults


def field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls, data: dict):
    """Rebuild a config dataclass from its JSON form (as written to config.json)."""
    hints = field_types(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        kind, value = hints[f.name], data[f.name]
        if dataclasses.is_dataclass(kind):
            value = from_dict(kind, value)
        elif typing.get_origin(kind) in (tuple,) and value is not None:
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def to_jsonable(value: Any) -> Any:
    """Plain-JSON form of numbers, arrays, dataclasses and containers (NaN -> None)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)) or type(value).__module__.startswith("jax"):
        arr = np.asarray(value)
        return to_jsonable(arr.item() if arr.ndim == 0 else arr.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def non_finite(value: Any, path: str = "") -> tuple[str, float] | None:
    """The first non-finite number in a (nested) summary as (dotted path, value), else None.
    None entries are "undefined" by the study's own choice and pass; NaN or inf never do."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    elif isinstance(value, (np.ndarray, np.generic, float)) or type(value).__module__.startswith("jax"):
        arr = np.asarray(value)
        if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
            bad = arr.reshape(-1)[~np.isfinite(arr.reshape(-1))][0]
            index = "" if arr.ndim == 0 else str(list(np.argwhere(~np.isfinite(arr))[0]))
            return path + index, float(np.real(bad))
        return None
    else:
        return None
    for sub_path, sub in items:
        found = non_finite(sub, sub_path)
        if found is not None:
            return found
    return None


def require_finite_summary(summary: dict, where: str) -> None:
    """Refuse a summary holding NaN or inf (one line naming the metric), before it is written."""
    from models.errors import OntogenyError

    found = non_finite(summary)
    if found is not None:
        raise OntogenyError(f"summary metric {found[0]} is {found[1]} in {where}; no summary.json written: a "
                            f"headline number is undefined, see metrics.jsonl there and change the config")


def write_json(path: str | os.PathLike, value: Any) -> None:
    """Write JSON atomically (temp file + rename), so a crash never leaves half a file. In a
    multi-process job only process 0 writes (all compute the same value)."""
    if not distributed.is_primary():
        return
    text = json.dumps(to_jsonable(value), indent=2, sort_keys=False) + "\n"
    with faults.atomic_path(path) as tmp:
        tmp.write_text(text)


class RunFolder:
    """One experiment's output folder (written by process 0 of a multi-process job)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.figures = self.root / "figures"
        with faults.guarded(self.figures):
            self.figures.mkdir(parents=True, exist_ok=True)

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def sub(self, name: str) -> "RunFolder":
        """A nested run folder (e.g. the pretrain run a study trains for itself)."""
        return RunFolder(self.root / name)

    def log(self, record: dict) -> None:
        """Append one row to metrics.jsonl. A row that does not fit is cut off again (the file keeps
        its whole rows) and `faults.WriteFailed` names the file."""
        if not distributed.is_primary():
            return
        faults.raise_pending()  # a background writer (TensorBoard, orbax) of this run met a full disk
        line = (json.dumps(to_jsonable(record)) + "\n").encode()
        with faults.guarded(self.metrics_path):
            fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                try:
                    faults.write_all(fd, line)
                except BaseException:
                    os.ftruncate(fd, size)  # truncating needs no space
                    raise
            finally:
                os.close(fd)

    def drop_metrics(self, stale) -> int:
        """Remove the rows `stale(row)` selects (e.g. steps a resumed stage will replay), atomically:
        the kept rows go to a new file that replaces the old one. Returns how many rows went."""
        if not distributed.is_primary() or not self.metrics_path.exists():
            return 0
        lines, rows = self._rows()
        kept = [line for line, row in zip(lines, rows) if not stale(row)]
        if len(kept) < len(lines) or not self.metrics_path.read_bytes().endswith(b"\n"):
            with faults.atomic_path(self.metrics_path) as tmp:
                tmp.write_text("".join(line + "\n" for line in kept))
        return len(lines) - len(kept)

    def read_metrics(self) -> list[dict]:
        return self._rows()[1] if self.metrics_path.exists() else []

    def _rows(self) -> tuple[list[str], list[dict]]:
        """(lines, rows) of metrics.jsonl. A last line cut short (a process killed while appending it,
        with no newline after it) is left out; a malformed row elsewhere is refused in one line."""
        text = self.metrics_path.read_text(encoding="utf-8", errors="replace")
        lines, rows = [], []
        numbered = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        for n, line in numbered:
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError(line)
            except (ValueError, RecursionError):
                if n == numbered[-1][0] and not text.endswith("\n"):
                    break  # torn final row: its step is replayed on resume
                from models.errors import OntogenyError
                raise OntogenyError(f"{self.metrics_path} line {n} is not a JSON object; fix or delete that line "
                                    f"(the run resumes from its checkpoints)") from None
            lines.append(line)
            rows.append(row)
        return lines, rows

    def figure(self, name: str) -> Path:
        """Path for figures/<name>.png."""
        return self.figures / (name if name.endswith(".png") else name + ".png")

    def write_summary(self, summary: dict) -> None:
        if not distributed.is_primary():
            return
        write_json(self.root / "summary.json", summary)

    def read_summary(self) -> dict | None:
        path = self.root / "summary.json"
        return json.loads(path.read_text()) if path.exists() else None
