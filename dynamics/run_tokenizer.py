"""The run's own tokenizer: characters (`dynamics.data.CharTokenizer`, a run trained here) or
a Hugging Face `tokenizer.json` (an imported suite) read with the `tokenizers` library. Both
have `encode(text) -> int32 ids`, `decode(ids)` and `vocab_size`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from models.errors import OntogenyError
from dynamics.tokenizers import read_tokenizer_json

class BPETokenizer:
    """A Hugging Face `tokenizer.json` read with the `tokenizers` library (same interface as
    `dynamics.data.CharTokenizer`: encode -> int32 ids, decode, vocab_size)."""

    def __init__(self, path: Path):
        # [choice] unlike `dynamics.tokenizers.HFTokenizer` (training data), an imported suite's
        # text may map to its unknown token and is encoded whole, as transformers does
        self._tok = read_tokenizer_json(path, "copy the checkpoint's tokenizer.json again")

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids])


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
        from dynamics.tokenizers import ByteTokenizer

        return ByteTokenizer()
    return CharTokenizer(data["chars"]) if isinstance(data, dict) and "chars" in data else BPETokenizer(path)
