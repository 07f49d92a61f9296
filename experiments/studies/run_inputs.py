"""What the studies share on a run of any family (an imported suite or a run trained here):
checking the run folder, naming an activation site, the text a study scores (read with the run's
own tokenizer, and named in every summary as `text_source`)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

from dynamics import checkpoints
from dynamics import run_tokenizer
from models.errors import OntogenyError
from models.errors import require

BUILTIN_TEXT = "shakespeare (built-in)"


def run_reference(run: str, key: str = "run") -> dict:
    """{"run", "model", "steps"} of a run folder of any family, checked (model.json, the
    tokenizer, a pretrain series) before anything is created."""
    require(Path(run).is_dir(), f"{key}={run!r} is not a run folder; give one trained here or written by `import`")
    model = checkpoints.load_model_config(run)
    run_tokenizer.load_tokenizer(run)
    steps = checkpoints.Series(run, "pretrain", create=False).steps()
    require(len(steps) >= 1, f"{key}={run} holds no pretrain checkpoints; point at a finished or imported run")
    return {"run": str(Path(run).resolve()), "model": model, "steps": steps}


def trained_here(run: str | Path) -> bool:
    """A run trained here keeps its config.json (with the data it was trained on); an import does not."""
    return (Path(run) / "config.json").exists()


def text_source(run: str | Path, text: str = "") -> str:
    """The name of the text a study scores on `run` (each on-run summary's `text_source`): the
    path of `text`, else a run trained here's own corpus (its data.path or corpus name), else
    the built-in Shakespeare."""
    if text:
        return str(Path(text).resolve())
    if trained_here(run):
        try:
            data = json.loads((Path(run) / "config.json").read_text())["config"]["data"]
            return f"the run's own corpus ({data.get('path') or data.get('corpus')})"
        except (OSError, ValueError, KeyError, TypeError):
            return "the run's own corpus"
    return BUILTIN_TEXT


def check_text(text: str) -> None:
    """Refuse a `text` key that names nothing (an empty one means the study's default text)."""
    require(not text or Path(text).exists(), f"text={text!r} does not exist; give a text file or a folder of .txt files")


def read_text(text: str) -> str:
    """A text file, or the .txt files of a folder joined by blank lines, as one string."""
    path = Path(text)
    check_text(text)
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    require(files, f"text={text!r} holds no .txt file")
    try:
        return "\n\n".join(f.read_text(encoding="utf-8") for f in files)
    except (OSError, UnicodeDecodeError):
        raise OntogenyError(f"cannot read text={text!r} as UTF-8; give a UTF-8 text file or folder") from None


def held_out_text(run: str | Path, text: str = "") -> str:
    """Text to score a run on, none of it seen in training as far as the run records: `text`
    whole ([choice]: a user's text is not the run's training split), else a run trained here's
    validation split, else Shakespeare's held-out works."""
    from dynamics import data as data_lib

    if text:
        return read_text(text)
    return own_corpus(run).val_text if trained_here(run) else data_lib.load_shakespeare().val_text


def own_corpus(run: str | Path):
    """The corpus a run trained here was trained on (its config.json's data section, re-read and
    re-tokenized exactly as training did). A run without one (an imported suite) is an error
    that names the fix, never a silent fallback to another text."""
    from dynamics import data as data_lib
    from dynamics.runlog import from_dict

    try:
        data = json.loads((Path(run) / "config.json").read_text())["config"]["data"]
    except (OSError, ValueError, KeyError, TypeError):
        raise OntogenyError(f"{run} is not a run trained here, so it has no corpus of its own; "
                            f"give a text file with --set text=PATH") from None
    return data_lib.load_corpus(from_dict(data_lib.DataConfig, data))


def parse_site(site: str) -> int:
    """`resid_post.N` -> N: the residual stream after block N, counted from 0 (TransformerLens's
    `blocks.N.hook_resid_post`; [choice] Ge et al.'s "block 6" of Pythia-160M read this way)."""
    match = re.fullmatch(r"resid_post\.(\d+)", site)
    require(match is not None, f"site={site!r} is not a known site; write resid_post.N (the residual stream "
                               f"after block N, from 0)")
    return int(match.group(1))


def text_corpus(run: str, text: str = "", val_fraction: float = 0.1):
    """train_ids / val_ids / tokenizer of a text read with the run's own tokenizer: Shakespeare
    (whole works held out, `dynamics.data.load_shakespeare`) when `text` is empty, else a text
    file or a folder of .txt files whose last `val_fraction` of characters is held out ([choice])."""
    from dynamics import data as data_lib

    tokenizer = run_tokenizer.load_tokenizer(run)
    if not text:
        corpus = data_lib.load_shakespeare()
        train, val = corpus.train_text, corpus.val_text
    else:
        whole = read_text(text)
        cut = int(len(whole) * (1 - val_fraction))
        train, val = whole[:cut], whole[cut:]
    return SimpleNamespace(name=text or "shakespeare", source=str(Path(text).resolve()) if text else BUILTIN_TEXT,
                           tokenizer=tokenizer, train_ids=tokenizer.encode(train), val_ids=tokenizer.encode(val),
                           val_text=val)
