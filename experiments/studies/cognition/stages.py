"""Which checkpoint series the cognition study measures on real systems, in which order.

A stage is one checkpoint series: `RUN/checkpoints/<series>/` of a run folder trained here or
written by `python -m experiments import` (whose `--stage` tag names the series). Two ways to
name them (the `run` and `stages` keys):

- one run folder holding several series (`--set run=RUN`): every series in it, in the order of
  its `import.json` (the order they were imported), then pretraining -> mid-training -> SFT ->
  DPO -> RL for the known names, then alphabetically ([choice]); or `--set stages=pretrain,sft`
  for those series in that order;
- several run folders, one stage each (`--set stages=pretrain:RUN_A,sft:RUN_B,rl:RUN_C`): the stage
  label, then its run folder, whose series of that name is read, or its only series (an import
  without `--stage` writes `pretrain`).

Each stage keeps its own run's model and tokenizer, so the runs of a series may differ in anything
but the task.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from dynamics import checkpoints
from dynamics import run_tokenizer
from models.errors import require

KNOWN_ORDER = ("pretrain", "midtrain", "mid", "sft", "dpo", "rlhf", "rl", "rlvr", "grpo", "instruct")


@dataclasses.dataclass(frozen=True)
class Stage:
    label: str      # the stage's name in the study (summary keys, figures)
    run: str        # the run folder
    series: str     # the series inside it (checkpoints/<series>/)
    steps: tuple[int, ...]


def series_names(run: str | Path) -> list[str]:
    """The checkpoint series of a run folder that hold at least one checkpoint, in study order."""
    root = Path(run) / "checkpoints"
    found = [p.name for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith("_")] \
        if root.is_dir() else []
    found = [name for name in found if checkpoints.Series(run, name, create=False).steps()]
    try:
        imported = list(json.loads((Path(run) / "import.json").read_text()).get("stages", {}))
    except (OSError, ValueError, AttributeError):
        imported = []
    rank = {name: i for i, name in enumerate(dict.fromkeys(imported + list(KNOWN_ORDER)))}
    return sorted(found, key=lambda name: (rank.get(name, len(rank)), name))


def check_run(run: str, key: str) -> None:
    """A run folder with a model config and a tokenizer (nothing is created)."""
    require(bool(run) and Path(run).is_dir(), f"{key}: {run!r} is not a run folder; train one here or write one with "
                                              f"`python -m experiments import`")
    checkpoints.load_model_config(run)
    run_tokenizer.load_tokenizer(Path(run))


def _stage(label: str, run: str, series: str) -> Stage:
    steps = checkpoints.Series(run, series, create=False).steps()
    require(steps, f"{run} holds no '{series}' checkpoints; import or train that stage first")
    return Stage(label, str(Path(run).resolve()), series, tuple(int(s) for s in steps))


def is_paired(stages: str) -> bool:
    """`stages` names label:RUN pairs (several run folders) rather than series of one run."""
    return ":" in stages


def parse(run: str, stages: str) -> list[Stage]:
    """The stages named by the `run` and `stages` keys, each checked (folder, model, tokenizer,
    a non-empty series)."""
    entries = [e.strip() for e in stages.split(",") if e.strip()]
    if is_paired(stages):
        out = []
        for entry in entries:
            label, _, path = entry.partition(":")
            label, path = label.strip(), path.strip()
            require(label and path and "/" not in label, f"stages entry {entry!r} is not LABEL:RUN; write e.g. "
                                                         f"stages=pretrain:runs/base,sft:runs/sft")
            check_run(path, f"stages entry {label}")
            names = series_names(path)
            require(names, f"{path} holds no checkpoint series; import or train it first")
            require(label in names or len(names) == 1, f"{path} holds the series {names}, none named {label!r}; "
                                                       f"give a run with one series or import it with --stage {label}")
            out.append(_stage(label, path, label if label in names else names[0]))
    else:
        check_run(run, "run")
        available = series_names(run)
        require(available, f"{run} holds no checkpoint series; import or train it first")
        for name in entries:
            require(name in available, f"stages: {run} has no series {name!r}; it has {available}")
        out = [_stage(name, run, name) for name in (entries or available)]
    labels = [s.label for s in out]
    require(len(set(labels)) == len(labels), f"stages {labels} name one stage twice; give each stage once")
    return out
