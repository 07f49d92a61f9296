"""Hugging Face `datasets` as a text corpus (the optional `datasets` extra).

`data.path=hf:NAME` (or `hf:NAME:CONFIG`) loads a hub dataset on a machine that reaches the hub;
`data.path=FOLDER` reads a dataset written by `save_to_disk`. [choice] The `train` split (or the
only split) is read and each row's `text` column is one document, named `row{i}`; rows are
streamed in batches into the token cache like files, and validation holds out whole rows
(`data.val_fraction` / `data.val_docs`) as for any text corpus.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from models.errors import OntogenyError
from models.errors import require

_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def is_dataset(path: str) -> bool:
    p = Path(path).expanduser()
    return path.startswith("hf:") or (p.is_dir() and any((p / m).is_file() for m in _MARKERS))


def library():
    try:
        import datasets
    except ImportError:
        raise OntogenyError("a Hugging Face dataset as data.path needs the datasets package: "
                            "pip install -e '.[datasets]'") from None
    return datasets


def open_dataset(path: str):
    """The dataset's train split (a `datasets.Dataset`), checked to have a text column."""
    lib = library()
    if path.startswith("hf:"):
        name, _, config = path[3:].partition(":")
        try:
            ds = lib.load_dataset(name, config or None, split="train")
        except Exception as e:
            raise OntogenyError(f"could not load the dataset {name!r} ({type(e).__name__}); check the name and "
                                f"the network, or save it with save_to_disk and give that folder") from None
    else:
        ds = lib.load_from_disk(str(Path(path).expanduser()))
        if isinstance(ds, lib.DatasetDict):
            require("train" in ds or len(ds) == 1, f"the dataset {path} has splits {sorted(ds)} and no train split; "
                                                   f"save the split to train on")
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    require("text" in ds.column_names, f"the dataset {path} has no 'text' column (it has "
                                       f"{', '.join(ds.column_names)}); rename the column to text")
    return ds


def source(path: str, batch: int = 1000):
    """A `dynamics.corpus.Source` over the rows: checksum of the saved files (a hub dataset: its
    fingerprint, which names its revision), rows read `batch` at a time."""
    from dynamics import corpus_files as corpus

    ds = open_dataset(path)

    def docs():
        for start in range(0, len(ds), batch):
            for i, text in enumerate(ds[start:start + batch]["text"], start):
                if text:
                    yield f"row{i}", text

    if path.startswith("hf:"):
        checksum = hashlib.sha256(f"{path}|{ds._fingerprint}".encode()).hexdigest()
    else:
        root = Path(path).expanduser()
        checksum = corpus.sources_checksum(root, sorted(f for f in root.rglob("*") if f.is_file()))
    return corpus.Source(checksum, docs, int(ds.data.nbytes), path)
