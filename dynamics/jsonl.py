"""JSONL files a user writes (labels, multiple-choice tasks, word pairs): read with every problem
refused in one line naming the file, the line and what a row should look like.

`read_rows` does what every reader needs (an unreadable or non-UTF-8 file, a line that is not
JSON, nesting too deep for Python's parser, numbers too long to convert, text that is not valid
Unicode); each reader then checks its own fields, with `require_row`.
"""
from __future__ import annotations

import json
from pathlib import Path

from models.errors import OntogenyError


def read_rows(path, example: str, what: str = "file") -> list[tuple[int, object]]:
    """(line number, parsed value) of every non-blank line of the JSONL file `path`. `example`
    shows a valid row (e.g. '{"text": ..., "label": ...}'); `what` names the setting (labels=...)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise OntogenyError(f"{what} {path} cannot be read ({e.strerror or type(e).__name__}); give a JSONL file of "
                            f"{example} rows") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise OntogenyError(f"{path} line {line} is not UTF-8 text; save the file as UTF-8") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
            json.dumps(value, ensure_ascii=False).encode("utf-8")  # a lone surrogate escape ("\ud800") is no text
        except (ValueError, RecursionError, UnicodeEncodeError):
            raise OntogenyError(f"{path} line {n} is not a JSON row like {example}; fix it") from None
        rows.append((n, value))
    return rows


def require_row(ok: bool, path, line: int, example: str) -> None:
    if not ok:
        raise OntogenyError(f"{path} line {line} is not a row like {example}; fix it")


def plain_int(value) -> bool:
    """An integer (JSON's 1, not true, 1.0 or "1")."""
    return isinstance(value, int) and not isinstance(value, bool)
