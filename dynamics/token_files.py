"""nanoGPT's token-file layout as a corpus: `train.bin` and `val.bin` (uint16, or uint32 with
`data.token_dtype`), read through `np.memmap` and never loaded whole, with the tokenizer beside
them (nanoGPT's `meta.pkl` character table or a `tokenizer.json`) or named by `data.tokenizer`.
Every id is checked against the tokenizer's vocabulary, in chunks."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from dynamics import tokenizers as tok_lib
from dynamics.corpus_files import TokenCorpus
from dynamics.corpus_files import sources_checksum
from models.errors import require


def load(config) -> TokenCorpus:
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

