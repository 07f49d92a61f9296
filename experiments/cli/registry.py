"""The one list of studies, and what the tools need to know of each; the benchmark sections.

The CLI lists and dispatches from `ENTRIES` (and the tools from `experiments.cli.commands`,
which no module named here imports, so that the registry sits in no import circle);
`quickstart` runs the entries with
`in_quickstart` (in this order, pointing `reuses_pretrain` ones at its shared pretrain run);
`report` orders its sections by it; `sweep` offers the studies, vmaps those with
`sweep_vmapped` and plots their `sweep_metrics`; `bench` adds their `bench` sections. Adding a
study is one new folder under `experiments/studies/` and one line here.

A study module defines `DESCRIPTION` (one line), a frozen dataclass `Config`, `PRESETS`
(name -> Config), `resolve(config) -> dict` (the run it performs: the lower-level settings `run`
reads, every reference such as pretrain_run checked; called before any folder is claimed) and
`run(config, folder: RunFolder) -> dict` (the summary). Every Config field carries a trailing
`# one line of meaning` (shown by --help); a Config may define `unused() -> {key: reason}`, the
keys its other settings make ineffective (an override of one is refused). It may define
`FLAGS` ({flag: config key}) for boolean switches such as `--sweep`, and
`findings(summary) -> list[str]`: one to three sentences stating the run's conclusions with
their intervals and verdicts (what the report opens with).
Inside a study's folder the modules import each other relatively (`from . import figures`), so
a copied folder is a new study.
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
    in_quickstart: bool = False          # quickstart runs its tiny preset
    reuses_pretrain: bool = False        # quickstart sets its pretrain_run to the shared pretrain run
    sweep_vmapped: bool = False          # sweep trains shape-keeping points in one program: run_group(configs, folders)
    sweep_metrics: tuple[str, ...] = ()  # what sweep plots; () plots the summary's first four numbers
    bench: tuple[tuple[str, str], ...] = ()  # (bench section, "module:function(quick=) -> dict")


ENTRIES = MappingProxyType({
    "pretrain": Entry("experiments.studies.pretrain.study", in_quickstart=True, sweep_vmapped=True, sweep_metrics=("val_loss",),
                      bench=(("data", "experiments.bench.data:bench"),)),
    "linear-origins": Entry("experiments.studies.linear_origins.study", in_quickstart=True),
    "cognition": Entry("experiments.studies.cognition.study", in_quickstart=True,
                       bench=(("probes", "experiments.bench.studies:bench_probes"),)),
    "crosscoders": Entry("experiments.studies.crosscoders.study", in_quickstart=True, reuses_pretrain=True,
                         bench=(("crosscoder", "experiments.bench.studies:bench_crosscoder"),)),
    "neuromfa": Entry("experiments.studies.neuromfa.study", in_quickstart=True),
    "waves": Entry("experiments.studies.waves.study", in_quickstart=True, reuses_pretrain=True),
    "development": Entry("experiments.studies.development.study", in_quickstart=True, reuses_pretrain=True,
                         bench=(("development", "experiments.studies.development.bench:bench"),)),
    "evaluate": Entry("experiments.studies.evaluate.study"),
    "probe": Entry("experiments.studies.probe.study"),
})

# The sections `bench` runs besides the studies' own: {section: "module:function(quick=) -> dict"}.
BENCH = MappingProxyType({
    "core": "experiments.bench.core:core",
    "torch": "experiments.bench.core:torch_section",
    "stacked": "experiments.bench.core:stacked_memory",
    "quality": "experiments.bench.recipes:quality",
    "sampling": "experiments.bench.recipes:sampling",
    "sweep": "experiments.bench.sweep:bench",
    "suite": "experiments.bench.suite:bench",
    "gpu": "experiments.bench.gpu:bench",
})


def available() -> dict[str, str]:
    """Experiments whose module is present in this checkout: {name: module}, in registry order."""
    return {name: e.module for name, e in ENTRIES.items() if importlib.util.find_spec(e.module) is not None}


def load(name: str):
    return importlib.import_module(available()[name])


def studies() -> list[str]:
    """The studies present, in registry order."""
    return list(available())


def quickstart_studies() -> list[str]:
    """The studies quickstart runs, in order (pretrain first: the others may reuse it)."""
    return [name for name in studies() if ENTRIES[name].in_quickstart]


def bench_sections() -> dict[str, tuple[str, str]]:
    """Every bench section, `BENCH`'s then the present studies': {section: (module, function)}."""
    sections = {}
    targets = list(BENCH.items()) + [pair for name in available() for pair in ENTRIES[name].bench]
    for section, target in targets:
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
