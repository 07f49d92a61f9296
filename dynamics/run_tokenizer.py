"""The run's own tokenizer: characters (`dynamics.data.CharTokenizer`, a run trained here) or
a Hugging Face `tokenizer.json` (an imported suite) read with the `tokenizers` library. Both
have `encode(text) -> int32 ids`, `decode(ids)` and `vocab_size`."""
from __future__ import annotations

import json
from pathlib import Path

from dynamics.errors import OntogenyError
from dynamics.tokenizers import ByteTokenizer, HFTokenizer


def load_tokenizer(run_dir: Path):
    """The run's own tokenizer: characters (a run trained here) or BPE (an imported suite)."""
    from dynamics.data import CharTokenizer

    path = Path(run_dir) / "tokenizer.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise OntogenyError(f"{path} is missing or unreadable; import the suite with its tokenizer.json or train "
                            f"the run here") from None
    if isinstance(data, dict) and "bytes" in data:  # data.tokenizer=bytes
        return ByteTokenizer()
    return CharTokenizer(data["chars"]) if isinstance(data, dict) and "chars" in data else HFTokenizer.from_file(path)
