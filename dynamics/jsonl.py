"""JSON Lines input files (one JSON value a line), read with one-line errors."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from models.errors import OntogenyError


def rows(path: str | Path, what: str) -> Iterator[tuple[int, object]]:
    """(line number from 1, the line's JSON value, or None when it is not JSON) for every
    non-blank line of `path`; a file that cannot be read as UTF-8 is one line naming `what`."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        raise OntogenyError(f"cannot read {path} as UTF-8 text; give a JSONL file of {what}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except ValueError:
            yield n, None
