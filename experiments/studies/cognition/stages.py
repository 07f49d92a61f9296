"""Which checkpoint series the cognition study measures on real systems, in which order.

A stage is one checkpoint series: `RUN/checkpoints/<series>/` of a run folder trained here or
written by `python -m experiments import` (whose `--stage` tag names the series). Two ways to
name them (the `run` and `stages` keys):

- one run folder holding several series (`--set run=RUN`): every series in it, in training order
  (`dynamics.checkpoints.stages`: the order the stages first saved, recorded in the run; older
  runs pretrain -> midtrain -> SFT -> DPO -> RL, then by name); or `--set stages=pretrain,sft` for
  those series in that order;
- several run folders, one stage each (`--set stages=pretrain:RUN_A,sft:RUN_B,rl:RUN_C`): the stage
  label, then its run folder, whose series of that name is read, or its only series (an import
  without `--stage` writes `pretrain`).

Each stage keeps its own run's model and tokenizer, so the runs of a series may differ in anything
but the task.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from dynamics import checkpoints
from dynamics import run_tokenizer
from models.errors import require


@dataclasses.dataclass(frozen=True)
class Stage:
    label: str      # the stage's name in the study (summary keys, figures)
    run: str        # the run folder
    series: str     # the series inside it (checkpoints/<series>/)
    steps: tuple[int, ...]


def check_run(run: str, key: str) -> dict[str, list[int]]:
    """{series: steps} of a run folder with a model config and a tokenizer, in training order
    (`dynamics.checkpoints.stages`; nothing is created)."""
    require(bool(run) and Path(run).is_dir(), f"{key}: {run!r} is not a run folder; train one here or write one with "
                                              f"`python -m experiments import`")
    checkpoints.load_model_config(run)
    run_tokenizer.load_tokenizer(Path(run))
    return checkpoints.stages(run)


def is_paired(stages: str) -> bool:
    """`stages` names label:RUN pairs (several run folders) rather than series of one run."""
    return ":" in stages


def parse(run: str, stages: str) -> list[Stage]:
    """The stages named by the `run` and `stages` keys, each checked (folder, model, tokenizer,
    a non-empty series)."""
    entries = [e.strip() for e in stages.split(",") if e.strip()]
    out = []
    if is_paired(stages):
        for entry in entries:
            label, _, path = (part.strip() for part in entry.partition(":"))
            require(label and path and "/" not in label, f"stages entry {entry!r} is not LABEL:RUN; write e.g. "
                                                         f"stages=pretrain:runs/base,sft:runs/sft")
            series = check_run(path, f"stages entry {label}")
            require(label in series or len(series) == 1, f"{path} holds the series {list(series)}, none named "
                                                         f"{label!r}; give a run with one series or import it with "
                                                         f"--stage {label}")
            name = label if label in series else next(iter(series))
            out.append(Stage(label, str(Path(path).resolve()), name, tuple(series[name])))
    else:
        series = check_run(run, "run")
        for name in entries:
            require(name in series, f"stages: {run} has no series {name!r}; it has {list(series)}")
        out = [Stage(name, str(Path(run).resolve()), name, tuple(series[name])) for name in (entries or series)]
    labels = [s.label for s in out]
    require(len(set(labels)) == len(labels), f"stages {labels} name one stage twice; give each stage once")
    return out
