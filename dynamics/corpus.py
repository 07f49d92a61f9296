"""Your own corpus: text (a file, folder or glob) or nanoGPT token files, at any size.

Text is tokenized once into a content-addressed cache (`$ONTOGENY_CACHE`, default
~/.cache/ontogeny, then `tokens/<key>/`: train.bin, val.bin, tokenizer.json, meta.json), the
key hashing the sources' contents, the split and the tokenizer, so a second run (or another
study) reuses it. Files are streamed in blocks, never read whole, and token files are read
through `np.memmap`, so batches (pure functions of (seed, step)) read only their own windows.

Documents are files, or the pieces of each file between occurrences of `data.separator`. The
validation split holds out whole documents: those named in `data.val_docs`, else a
`data.val_fraction` of them, evenly spaced in sorted order. [choice] Documents are joined by
the separator (by "\\n\\n", as the Shakespeare works are, when documents are files); a long
document is tokenized in blocks of about 1M characters cut after a newline (exact for
char/bytes; for BPE only a merge across a cut can differ from tokenizing the document whole).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from dynamics import corpus_files
from dynamics import faults
from dynamics import tokenizers as tok_lib
from dynamics.corpus_files import Source
from dynamics.corpus_files import TokenCorpus
from dynamics.corpus_files import cache_root
from dynamics.corpus_files import documents
from dynamics.corpus_files import file_checksum
from dynamics.corpus_files import is_token_folder
from dynamics.corpus_files import sources_checksum
from dynamics.corpus_files import text_files
from dynamics.corpus_files import unescape
from models.errors import OntogenyError
from models.errors import require

FORMAT = 1        # bump when the cache layout or tokenization changes


def check_path(path: str) -> None:
    """Refuse a missing path before anything is written."""
    from dynamics import hf_corpus

    if hf_corpus.is_dataset(path):
        hf_corpus.library()
    elif not is_token_folder(path):
        text_files(path)


def choose_val(names: list[str], val_fraction: float, val_docs: tuple[str, ...]) -> set[str]:
    """The validation documents: `val_docs`, else an evenly spaced `val_fraction` of them."""
    if val_docs:
        missing = sorted(set(val_docs) - set(names))
        if missing:
            raise OntogenyError(f"data.val_docs names {missing[0]!r}, not a document of data.path; documents are "
                                f"named like {names[0]!r}")
        require(len(set(val_docs)) < len(names), "data.val_docs holds out every document; leave some to train on")
        return set(val_docs)
    require(len(names) >= 2, f"data.path holds {len(names)} document; the validation split needs whole documents: "
                             f"add files or set data.separator (e.g. data.separator=\\n\\n)")
    n_val = min(len(names) - 1, max(1, round(val_fraction * len(names))))
    picks = ((np.arange(n_val) + 0.5) * len(names) / n_val).astype(int)
    return {names[i] for i in picks}


def load(config) -> TokenCorpus:
    """The corpus `config.path` names (a `dynamics.data.DataConfig` with a path)."""
    from dynamics import hf_corpus

    if is_token_folder(config.path):
        from dynamics import token_files

        return token_files.load(config)
    if hf_corpus.is_dataset(config.path):
        return load_text(config, hf_corpus.source(config.path))
    return load_text(config, file_source(config.path, unescape(config.separator)))


def file_source(path: str, separator: str) -> Source:
    root, files = text_files(path)
    files = [f for f in files if f.stat().st_size > 0]
    require(files, f"data.path={path} holds no text (every file is empty); point at your corpus")
    return Source(sources_checksum(root, files), lambda: documents(root, files, separator),
                  sum(f.stat().st_size for f in files), str(Path(path).expanduser().resolve()))


def load_text(config, source: Source) -> TokenCorpus:
    separator = unescape(config.separator)
    spec = config.tokenizer
    tok_file = Path(spec).expanduser() if spec.endswith(".json") else None
    key_text = json.dumps({"format": FORMAT, "sources": source.checksum, "separator": separator,
                           "val_fraction": config.val_fraction, "val_docs": list(config.val_docs), "tokenizer": spec,
                           "tokenizer_file": file_checksum(tok_file) if tok_file and tok_file.is_file() else None})
    folder = cache_root() / "tokens" / hashlib.sha256(key_text.encode()).hexdigest()[:24]
    if not (folder / "meta.json").is_file():
        # one builder; another process waits, then reuses it. A full disk: one line naming the cache
        with corpus_files.cache_lock(folder), faults.guarded(folder, faults.CACHE_FIX):
            if not (folder / "meta.json").is_file():
                build(folder, source, separator, config)
    meta = json.loads((folder / "meta.json").read_text())
    tokenizer = tok_lib.load(folder / "tokenizer.json")
    dtype = np.dtype(meta["dtype"])
    train, val = (np.memmap(folder / f, dtype, mode="r") for f in ("train.bin", "val.bin"))
    record = {"source": source.where, "kind": "text", **meta, "cache": str(folder)}
    return TokenCorpus(Path(config.path).name or "corpus", tokenizer, train, val, record)


def build(folder: Path, source: Source, separator: str, config) -> None:
    """Scan, train the tokenizer, tokenize, then move the finished folder into place (atomic)."""
    names, chars = [], set()
    for name, text in source.docs():
        if not names or names[-1] != name:
            names.append(name)
        if config.tokenizer == "char":
            chars.update(text)
    require(names, f"data.path={config.path} holds no text; point at your corpus")
    val = choose_val(names, config.val_fraction, tuple(config.val_docs))
    joiner = separator or "\n\n"
    train_docs = lambda: (text for name, text in source.docs() if name not in val)
    tokenizer = tok_lib.make_tokenizer(config.tokenizer, train_docs, "".join(chars) + joiner)
    dtype = tok_lib.token_dtype(tokenizer.vocab_size)
    tmp = folder.with_name(f"{folder.name}.tmp{uuid.uuid4().hex[:12]}")  # unique across hosts sharing the cache
    shutil.rmtree(tmp, ignore_errors=True)
    try:  # a failure leaves no partial cache behind
        tmp.mkdir(parents=True)
        counts = _tokenize(tmp, tokenizer, source.docs(), val, joiner, dtype, source.total)
        require(counts["train"][0] > 0 and counts["val"][0] > 0, f"data.path={config.path}: the training or validation "
                                                                 f"split is empty; add text")
        tokenizer.save(tmp / "tokenizer.json")
        meta = {"checksum": source.checksum, "tokenizer": config.tokenizer, "vocab_size": tokenizer.vocab_size,
                "dtype": dtype.name, "separator": separator, "n_docs": len(names), "n_val_docs": len(val),
                "val_docs": sorted(val)[:1000],
                "train_tokens": counts["train"][0], "val_tokens": counts["val"][0],
                "train_chars": counts["train"][1], "val_chars": counts["val"][1]}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished first: theirs is identical
        shutil.rmtree(tmp)
        require((folder / "meta.json").is_file(), f"could not write the token cache {folder}; check that "
                                                  f"$ONTOGENY_CACHE is writable")


def _tokenize(tmp: Path, tokenizer, docs, val: set[str], joiner: str, dtype, total: int) -> dict:
    """Stream (name, piece) documents into tmp/train.bin and tmp/val.bin; {split: [tokens, chars]}."""
    from tqdm.auto import tqdm

    counts = {"train": [0, 0], "val": [0, 0]}  # tokens, characters
    with open(tmp / "train.bin", "wb") as out_train, open(tmp / "val.bin", "wb") as out_val, \
            tqdm(total=total, unit="B", unit_scale=True, desc="tokenizing", leave=False) as bar:
        outs = {"train": out_train, "val": out_val}
        batch, size, previous = [], 0, None
        for name, text in docs:
            if previous is not None and name != previous:
                batch[-1] = (batch[-1][0], batch[-1][1] + joiner)  # the previous document ended
            split = "val" if name in val else "train"
            batch.append((split, text))
            size, previous = size + len(text), name
            if size >= 8 * corpus_files.BLOCK:  # ~8 MB of text per encode call
                _write(tokenizer, batch[:-1], outs, counts, dtype, bar)
                batch, size = batch[-1:], len(text)
        if batch:
            batch[-1] = (batch[-1][0], batch[-1][1] + joiner)
            _write(tokenizer, batch, outs, counts, dtype, bar)
    return counts


def _write(tokenizer, batch, outs, counts, dtype, bar) -> None:
    """Encode a batch of (split, text) pieces and append the ids to each split's token file."""
    if not batch:
        return
    if hasattr(tokenizer, "encode_batch"):
        ids = tokenizer.encode_batch([text for _, text in batch])
    else:  # char/bytes: context-free, so one call per run of the same split
        ids, runs = [], []
        for split, text in batch:
            if runs and runs[-1][0] == split:
                runs[-1][1].append(text)
            else:
                runs.append((split, [text]))
        batch = [(split, "".join(texts)) for split, texts in runs]
        ids = [tokenizer.encode(text) for _, text in batch]
    for (split, text), chunk in zip(batch, ids):
        chunk.astype(dtype).tofile(outs[split])
        counts[split][0] += len(chunk)
        counts[split][1] += len(text)
        bar.update(len(text))


def record_run(root: Path, corpus) -> None:
    """Save the corpus's tokenizer and data.json (source, checksum, tokenizer) in a run folder;
    on resume refuse a corpus or tokenizer that changed since (nothing is overwritten)."""
    from dynamics.runlog import write_json

    root, record = Path(root), {k: v for k, v in corpus.record.items() if k != "cache"}
    tok_path, data_path = root / "tokenizer.json", root / "data.json"
    if data_path.is_file():
        before = json.loads(data_path.read_text())
        require(before.get("checksum") == record["checksum"],
                f"the corpus {record['source']} changed since {root} started (checksum "
                f"{before.get('checksum', '?')[:12]} -> {record['checksum'][:12]}); restore it, or train in a new --out")
    if tok_path.is_file():
        saved = tok_lib.fingerprint(tok_lib.load(tok_path))
        require(saved == tok_lib.fingerprint(corpus.tokenizer),
                f"the tokenizer ({record['tokenizer']}) differs from the one {root} was trained with "
                f"({tok_path}); resume with that tokenizer, or train in a new --out")
    else:
        with faults.atomic_path(tok_path) as tmp:  # a full disk leaves no half-written tokenizer.json
            corpus.tokenizer.save(tmp)
    write_json(data_path, record)
