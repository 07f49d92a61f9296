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

import dataclasses
import glob as globlib
import hashlib
import json
import os
import pickle
import shutil
import uuid
from pathlib import Path

import numpy as np

from dynamics import tokenizers as tok_lib
from dynamics.errors import OntogenyError
from dynamics.errors import require

BLOCK = 1 << 20   # characters per block when streaming text
FORMAT = 1        # bump when the cache layout or tokenization changes


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


def check_path(path: str) -> None:
    """Refuse a missing path before anything is written."""
    if not is_token_folder(path):
        text_files(path)


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
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_suffix(f".{uuid.uuid4().hex[:12]}.tmp")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, memo_path)
    return memo[key]


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


def load(config) -> TokenCorpus:
    """The corpus `config.path` names (a `dynamics.data.DataConfig` with a path)."""
    if is_token_folder(config.path):
        return load_token_folder(config)
    return load_text(config)


def load_text(config) -> TokenCorpus:
    root, files = text_files(config.path)
    files = [f for f in files if f.stat().st_size > 0]
    require(files, f"data.path={config.path} holds no text (every file is empty); point at your corpus")
    separator = unescape(config.separator)
    spec = config.tokenizer
    tok_file = Path(spec).expanduser() if spec.endswith(".json") else None
    key_text = json.dumps({"format": FORMAT, "sources": sources_checksum(root, files), "separator": separator,
                           "val_fraction": config.val_fraction, "val_docs": list(config.val_docs), "tokenizer": spec,
                           "tokenizer_file": file_checksum(tok_file) if tok_file and tok_file.is_file() else None})
    folder = cache_root() / "tokens" / hashlib.sha256(key_text.encode()).hexdigest()[:24]
    if not (folder / "meta.json").is_file():
        build(folder, root, files, separator, config)
    meta = json.loads((folder / "meta.json").read_text())
    tokenizer = tok_lib.load(folder / "tokenizer.json")
    dtype = np.dtype(meta["dtype"])
    train, val = (np.memmap(folder / f, dtype, mode="r") for f in ("train.bin", "val.bin"))
    record = {"source": str(Path(config.path).expanduser().resolve()), "kind": "text", **meta, "cache": str(folder)}
    return TokenCorpus(Path(config.path).name or "corpus", tokenizer, train, val, record)


def build(folder: Path, root: Path, files: list[Path], separator: str, config) -> None:
    """Scan, train the tokenizer, tokenize, then move the finished folder into place (atomic)."""
    names, chars = [], set()
    for name, text in documents(root, files, separator):
        if not names or names[-1] != name:
            names.append(name)
        if config.tokenizer == "char":
            chars.update(text)
    require(names, f"data.path={config.path} holds no text; point at your corpus")
    val = choose_val(names, config.val_fraction, tuple(config.val_docs))
    joiner = separator or "\n\n"
    train_docs = lambda: (text for name, text in documents(root, files, separator) if name not in val)
    tokenizer = tok_lib.make_tokenizer(config.tokenizer, train_docs, "".join(chars) + joiner)
    dtype = tok_lib.token_dtype(tokenizer.vocab_size)
    tmp = folder.with_name(f"{folder.name}.tmp{uuid.uuid4().hex[:12]}")  # unique across hosts sharing the cache
    shutil.rmtree(tmp, ignore_errors=True)
    try:  # a failure leaves no partial cache behind
        tmp.mkdir(parents=True)
        counts = _tokenize(tmp, tokenizer, documents(root, files, separator), val, joiner, dtype,
                           sum(f.stat().st_size for f in files))
        require(counts["train"][0] > 0 and counts["val"][0] > 0, f"data.path={config.path}: the training or validation "
                                                                 f"split is empty; add text")
        tokenizer.save(tmp / "tokenizer.json")
        meta = {"checksum": sources_checksum(root, files), "tokenizer": config.tokenizer, "vocab_size": tokenizer.vocab_size,
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
            if size >= 8 * BLOCK:
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


def load_token_folder(config) -> TokenCorpus:
    """nanoGPT's layout: train.bin and val.bin (uint16 or uint32) with meta.pkl or tokenizer.json beside."""
    folder = Path(config.path).expanduser()
    require((folder / "val.bin").is_file(), f"{folder} has train.bin but no val.bin; write the validation tokens "
                                            f"there (nanoGPT's prepare.py writes both)")
    tokenizer = token_folder_tokenizer(folder, config.tokenizer)
    dtype = np.dtype(config.token_dtype)
    ids = {}
    for split in ("train", "val"):
        path = folder / f"{split}.bin"
        require(path.stat().st_size % dtype.itemsize == 0 and path.stat().st_size > 0,
                f"{path} is empty or not a whole number of {dtype.name} ids; check data.token_dtype")
        ids[split] = np.memmap(path, dtype, mode="r")
        top = max_id(ids[split])
        require(top < tokenizer.vocab_size, f"{path} holds token id {top}, beyond the tokenizer's vocabulary of "
                                            f"{tokenizer.vocab_size}; give the tokenizer the file was written with "
                                            f"(or data.token_dtype=uint32 if it was written as uint32)")
    record = {"source": str(folder.resolve()), "kind": "tokens", "tokenizer": config.tokenizer,
              "checksum": sources_checksum(folder, [folder / "train.bin", folder / "val.bin"]),
              "vocab_size": tokenizer.vocab_size, "dtype": dtype.name,
              "train_tokens": int(ids["train"].size), "val_tokens": int(ids["val"].size)}
    return TokenCorpus(folder.name, tokenizer, ids["train"], ids["val"], record)


def max_id(ids: np.ndarray, chunk: int = 1 << 24) -> int:
    """Largest id of a memmap, read in chunks (bounded memory)."""
    return max(int(ids[i:i + chunk].max()) for i in range(0, ids.size, chunk))


def token_folder_tokenizer(folder: Path, spec: str):
    """data.tokenizer for token files: a tokenizer.json path or bytes; `char` means the one beside them."""
    require(not spec.startswith("bpe:"), f"data.tokenizer={spec} trains a BPE on text, but {folder} holds token "
                                         f"files; give their tokenizer.json, or leave data.tokenizer=char")
    if spec != "char":
        return tok_lib.make_tokenizer(spec, None)
    if (folder / "tokenizer.json").is_file():
        return tok_lib.HFTokenizer.from_file(folder / "tokenizer.json")
    require((folder / "meta.pkl").is_file(), f"{folder} has no meta.pkl or tokenizer.json beside train.bin; put the "
                                             f"tokenizer there or give data.tokenizer=PATH/tokenizer.json")
    with open(folder / "meta.pkl", "rb") as f:
        meta = pickle.load(f)  # nanoGPT's own format (trusted: the user's file)
    itos = meta.get("itos") if isinstance(meta, dict) else None
    require(isinstance(itos, dict) and itos, f"{folder / 'meta.pkl'} has no itos table; give "
                                             f"data.tokenizer=PATH/tokenizer.json")
    chars = "".join(itos[i] for i in range(len(itos)))
    tokenizer = tok_lib.CharTokenizer(chars)
    require(tokenizer.chars == chars, f"{folder / 'meta.pkl'}: its characters are not in sorted order, which the "
                                      f"character tokenizer needs; re-run nanoGPT's prepare.py")
    return tokenizer


def record_run(root: Path, corpus) -> None:
    """Save the corpus's tokenizer and data.json (source, checksum, tokenizer) in a run folder;
    on resume refuse a corpus or tokenizer that changed since (nothing is overwritten)."""
    from dynamics.runlog import write_json

    root, record = Path(root), {k: v for k, v in corpus.record.items() if k != "cache"}
    tok_path, data_path = root / "tokenizer.json", root / "data.json"
    if data_path.is_file():
        before = json.loads(data_path.read_text())
        require(before.get("checksum") == record["checksum"],
                f"the corpus {record['source']} changed since {root} started (checksum {before.get('checksum', '?')[:12]} "
                f"-> {record['checksum'][:12]}); restore it, or train in a new --out")
    if tok_path.is_file():
        saved = tok_lib.fingerprint(tok_lib.load(tok_path))
        require(saved == tok_lib.fingerprint(corpus.tokenizer),
                f"the tokenizer ({record['tokenizer']}) differs from the one {root} was trained with "
                f"({tok_path}); resume with that tokenizer, or train in a new --out")
    else:
        corpus.tokenizer.save(tok_path)
    write_json(data_path, record)
