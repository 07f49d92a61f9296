"""Tokenizers a run can train with: characters, bytes, a BPE trained here, or any `tokenizer.json`.

Every tokenizer has `encode(text) -> int32 ids`, `decode(ids)`, `vocab_size`, `save(path)` and
`spec` (what `data.tokenizer` said). Saved in the run folder as `tokenizer.json`:
{"chars": ...} (characters), {"bytes": 256} (bytes) or a Hugging Face tokenizer file, read
back by `load`, so every study and `resume` use the run's own tokenizer.

A BPE (`bpe:N`) is trained with the `tokenizers` library on the training split only:
byte-level pre-tokenisation (GPT-2's), so no text is out of vocabulary, N tokens in all
including the 256 bytes. Training is deterministic (the library breaks ties between equally
frequent pairs in a fixed order; tested by training twice). [choice] min_frequency=2: a pair
seen once is not merged.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable

import numpy as np

from models.errors import OntogenyError
from models.errors import require

_BPE = re.compile(r"^bpe:(\d+)$")


def check_spec(spec: str, field: str = "data.tokenizer") -> None:
    """Refuse a tokenizer spec that is not char, bytes, bpe:N (N > 256) or a *.json path."""
    m = _BPE.match(spec)
    require(spec in ("char", "bytes") or m is not None or spec.endswith(".json"),
            f"{field}={spec!r} is unknown; choose char, bytes, bpe:N (e.g. bpe:4096) or a path to a tokenizer.json")
    if m:
        require(256 < int(m.group(1)) < 2 ** 31, f"{field}={spec}: a byte-level BPE needs more than 256 tokens; "
                                                 f"give e.g. bpe:4096")


class CharTokenizer:
    """Characters <-> integer ids, ids in sorted character order."""

    def __init__(self, chars: str):
        self.chars = "".join(sorted(set(chars)))
        self._index = {c: i for i, c in enumerate(self.chars)}
        self._lookup = np.array([ord(c) for c in self.chars], dtype=np.int64)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        unknown = set(text) - set(self._index)
        if unknown:
            raise OntogenyError(f"text has characters outside the tokenizer's vocabulary: {sorted(unknown)[:5]}; "
                                f"use only characters of the training corpus")
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        table = np.zeros(int(codes.max(initial=0)) + 1, dtype=np.int32)
        table[[ord(c) for c in self.chars if ord(c) < len(table)]] = [
            self._index[c] for c in self.chars if ord(c) < len(table)]
        return table[codes]

    def decode(self, ids) -> str:
        return "".join(chr(int(c)) for c in self._lookup[np.asarray(ids, dtype=np.int64)])

    def save(self, path: str | os.PathLike) -> None:
        from dynamics.runlog import write_json

        write_json(path, {"chars": self.chars})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CharTokenizer":
        try:
            saved = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            raise OntogenyError(f"{path} is missing or unreadable; it is written by the run that trained "
                                f"the model: point at a complete run folder") from None
        if not (isinstance(saved, dict) and "chars" in saved):  # bytes or BPE: no character table
            raise OntogenyError(f"{path} is not a character tokenizer, and this analysis reads characters; "
                                f"use a run trained with data.tokenizer=char")
        return cls(saved["chars"])


class ByteTokenizer:
    """UTF-8 bytes <-> ids 0..255: no text is out of vocabulary."""
    spec = "bytes"
    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        return bytes(np.asarray(ids, np.int64).astype(np.uint8).tolist()).decode("utf-8", errors="replace")

    def save(self, path: str | os.PathLike) -> None:
        from dynamics.runlog import write_json

        write_json(path, {"bytes": 256})


class HFTokenizer:
    """A `tokenizers.Tokenizer` (a loaded tokenizer.json or a BPE trained here)."""

    def __init__(self, tok, spec: str):
        self._tok, self.spec = tok, spec
        unk = _unk_token(tok)
        self.unk_id = tok.token_to_id(unk) if unk else None

    @classmethod
    def from_file(cls, path: str | os.PathLike, spec: str | None = None) -> "HFTokenizer":
        require(Path(path).is_file(), f"tokenizer {path} does not exist; give the path of a tokenizer.json")
        return cls(read_tokenizer_json(path, "give a tokenizer.json written by the tokenizers library"),
                   spec or str(path))

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> np.ndarray:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Ids of each text; refuses text the tokenizer can only map to its unknown token.

        [choice] Long texts are encoded in pieces of ~4k characters (the library slows down
        ~6x on long strings), cut before a space that follows a non-space, where a GPT-2 style
        pre-tokenizer splits anyway; elsewhere only a forced cut (no such space) can differ."""
        pieces, owner = [], []
        for k, text in enumerate(texts):
            for piece in _pieces(text):
                pieces.append(piece)
                owner.append(k)
        encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        ids = [e.ids for e in encode(pieces, add_special_tokens=False)]
        out = [[] for _ in texts]
        for k, piece_ids in zip(owner, ids):
            out[k].extend(piece_ids)
        out = [np.asarray(o, np.int32) for o in out]
        if self.unk_id is not None and any((ids == self.unk_id).any() for ids in out):
            raise OntogenyError(f"the tokenizer {self.spec} cannot encode this text (it maps some of it to its "
                                f"unknown token); use data.tokenizer=bytes or bpe:N, which cover any text")
        return out

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids])

    def save(self, path: str | os.PathLike) -> None:
        self._tok.save(str(path))

    def to_str(self) -> str:
        return self._tok.to_str()


def _pieces(text: str, size: int = 4096) -> list[str]:
    out, start = [], 0
    while len(text) - start > size:
        cut = text.rfind(" ", start + size // 2, start + size)
        if cut <= start or text[cut - 1].isspace():
            cut = start + size
        out.append(text[start:cut])
        start = cut
    return out + [text[start:]]


def read_tokenizer_json(path: str | os.PathLike, fix: str):
    """A `tokenizers.Tokenizer` from a tokenizer.json, or one line naming the problem and `fix`."""
    Tokenizer = _library().Tokenizer
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:
        raise OntogenyError(f"{path} is not a readable Hugging Face tokenizer ({type(e).__name__}); {fix}") from None


def _library():
    try:
        import tokenizers
    except ImportError:
        raise OntogenyError("BPE tokenizers need the tokenizers package: pip install tokenizers") from None
    return tokenizers


def _unk_token(tok) -> str | None:
    model = json.loads(tok.to_str()).get("model", {})
    return model.get("unk_token")


def train_bpe(texts: Iterable[str], vocab_size: int) -> HFTokenizer:
    """A byte-level BPE of `vocab_size` tokens trained on `texts` (an iterator: bounded memory)."""
    lib = _library()
    tok = lib.Tokenizer(lib.models.BPE())
    tok.pre_tokenizer = lib.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = lib.decoders.ByteLevel()
    trainer = lib.trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=lib.pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False, min_frequency=2)
    tok.train_from_iterator((piece for text in texts for piece in _pieces(text)), trainer=trainer)
    return HFTokenizer(tok, f"bpe:{vocab_size}")


def make_tokenizer(spec: str, train_texts, all_chars: str | None = None):
    """The tokenizer `spec` names. `train_texts()` returns a fresh iterator over the training
    split (BPE is trained on it); `all_chars` is the character set (char tokenizer)."""
    check_spec(spec)
    if spec == "char":
        require(all_chars is not None, "data.tokenizer=char needs the corpus's characters")
        return CharTokenizer(all_chars)
    if spec == "bytes":
        return ByteTokenizer()
    m = _BPE.match(spec)
    if m:
        return train_bpe(train_texts(), int(m.group(1)))
    return HFTokenizer.from_file(Path(spec).expanduser(), spec)


def load(path: str | os.PathLike):
    """The tokenizer saved at `path` (a run's tokenizer.json): characters, bytes or Hugging Face."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        raise OntogenyError(f"{path} is missing or unreadable; it is written by the run that trained the model: "
                            f"point at a complete run folder") from None
    if isinstance(data, dict) and "chars" in data:
        return CharTokenizer(data["chars"])
    if isinstance(data, dict) and "bytes" in data:
        return ByteTokenizer()
    return HFTokenizer.from_file(path, "tokenizer.json")


def fingerprint(tokenizer) -> str:
    """A stable text identity of a tokenizer (compared on resume, hashed into cache keys)."""
    if isinstance(tokenizer, CharTokenizer):
        return json.dumps({"chars": tokenizer.chars})
    if isinstance(tokenizer, ByteTokenizer):
        return json.dumps({"bytes": 256})
    return tokenizer.to_str()


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (nanoGPT's choice), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2 ** 16 else np.uint32)
