"""JSON Lines input files (one JSON value a line), read with one-line errors.

Every reader of a file a user writes (probe labels, evaluate's multiple-choice items, word pairs)
goes through `rows`, so what no reader should see never reaches one: a line that is not JSON, is
nested too deep for Python's parser, or holds text that is not valid Unicode (a lone surrogate
escape such as "\\ud800", which no tokenizer can encode) comes back as None, which the reader
refuses in one line naming the file and the line.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from models.errors import OntogenyError


def rows(path: str | Path, what: str) -> Iterator[tuple[int, object]]:
    """(line number from 1, the line's JSON value, or None when it is not JSON) for every
    non-blank line of `path`; a file that cannot be read as UTF-8 is one line naming `what`."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError):
        raise OntogenyError(f"cannot read {path} as UTF-8 text; give a JSONL file of {what}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
            json.dumps(value, ensure_ascii=False).encode("utf-8")  # lone surrogates are no text
        except (ValueError, RecursionError, UnicodeEncodeError):
            value = None
        yield n, value


def plain_int(value) -> bool:
    """An integer as JSON writes one (1; not true, 1.0 or "1")."""
    return isinstance(value, int) and not isinstance(value, bool)
