"""The one list of experiments: every study and tool, and what the other tools need to know of it.

The CLI lists and dispatches from `ENTRIES`; `quickstart` runs the entries with
`in_quickstart` (in this order, pointing `reuses_pretrain` ones at its shared pretrain run);
`report` orders its sections by it; `sweep` offers the studies, vmaps those with
`sweep_vmapped` and plots their `sweep_metrics`; `bench` adds their `bench` sections. Adding a
study is one new module and one line here.

A study module defines `DESCRIPTION` (one line), a frozen dataclass `Config`, `PRESETS`
(name -> Config), `resolve(config) -> dict` (the run it performs: the lower-level settings `run`
reads, every reference such as pretrain_run checked; called before any folder is claimed) and
`run(config, folder: RunFolder) -> dict` (the summary). Every Config field carries a trailing
`# one line of meaning` (shown by --help); a Config may define `unused() -> {key: reason}`, the
keys its other settings make ineffective (an override of one is refused). It may define
`FLAGS` ({flag: config key}) for boolean switches such as `--sweep`, and
`findings(summary) -> list[str]`: one to three sentences stating the run's conclusions with
their intervals and verdicts (what the report opens with).
A tool module (bench, sweep, report, quickstart, render-check, import) defines `DESCRIPTION` and `main(argv) -> int`.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from types import MappingProxyType


@dataclasses.dataclass(frozen=True)
class Entry:
    """One experiment: its module and the parts the tools read."""
    module: str                          # dotted module name
    kind: str = "study"                  # "study" (Config, PRESETS, resolve, run) or "tool" (main)
    in_quickstart: bool = False          # quickstart runs its tiny preset
    reuses_pretrain: bool = False        # quickstart sets its pretrain_run to the shared pretrain run
    sweep_vmapped: bool = False          # sweep trains shape-keeping points in one program: run_group(configs, folders)
    sweep_metrics: tuple[str, ...] = ()  # what sweep plots; () plots the summary's first four numbers
    bench: tuple[tuple[str, str], ...] = ()  # (bench section, "module:function(quick=) -> dict")

    def __post_init__(self):
        if self.kind not in ("study", "tool"):
            raise ValueError(f"Entry.kind is {self.kind!r}; use 'study' or 'tool'")


ENTRIES = MappingProxyType({
    "pretrain": Entry("experiments.pretrain", in_quickstart=True, sweep_vmapped=True, sweep_metrics=("val_loss",),
                      bench=(("data", "experiments.data_bench:bench"),)),
    "linear-origins": Entry("experiments.linear_origins", in_quickstart=True),
    "cognition": Entry("experiments.cognition", in_quickstart=True,
                       bench=(("probes", "experiments.study_bench:bench_probes"),)),
    "crosscoders": Entry("experiments.crosscoders", in_quickstart=True, reuses_pretrain=True,
                         bench=(("crosscoder", "experiments.study_bench:bench_crosscoder"),)),
    "neuromfa": Entry("experiments.neuromfa", in_quickstart=True),
    "waves": Entry("experiments.waves", in_quickstart=True, reuses_pretrain=True),
    "bench": Entry("experiments.bench", "tool"),
    "sweep": Entry("experiments.sweep", "tool", bench=(("sweep", "experiments.sweep_bench:bench"),)),
    "report": Entry("experiments.report", "tool"),
    "quickstart": Entry("experiments.quickstart", "tool"),
    "render-check": Entry("experiments.render_check", "tool"),
    "import": Entry("experiments.import_suite", "tool", bench=(("suite", "experiments.suite_bench:bench"),)),
    "evaluate": Entry("experiments.evaluate"),
    "probe": Entry("experiments.probe"),
})


def available() -> dict[str, str]:
    """Experiments whose module is present in this checkout: {name: module}, in registry order."""
    return {name: e.module for name, e in ENTRIES.items() if importlib.util.find_spec(e.module) is not None}


def load(name: str):
    return importlib.import_module(available()[name])


def studies() -> list[str]:
    """The studies present (not the tools), in registry order."""
    return [name for name in available() if ENTRIES[name].kind == "study"]


def quickstart_studies() -> list[str]:
    """The studies quickstart runs, in order (pretrain first: the others may reuse it)."""
    return [name for name in studies() if ENTRIES[name].in_quickstart]


def bench_sections() -> dict[str, tuple[str, str]]:
    """Every present entry's bench sections: {section: (module, function)}."""
    sections = {}
    for name in available():
        for section, target in ENTRIES[name].bench:
            module, function = target.split(":")
            if importlib.util.find_spec(module) is not None:
                sections[section] = (module, function)
    return sections


def findings(name: str, summary: dict) -> list[str]:
    """The study's own statement of what a summary shows ([] for a study without `findings`)."""
    if name not in available():
        return []
    fn = getattr(load(name), "findings", None)
    return list(fn(summary)) if fn is not None else []
