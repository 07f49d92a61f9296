"""Which experiments exist, and where they live.

A study module defines `DESCRIPTION` (one line), a frozen dataclass `Config`, `PRESETS`
(name -> Config), `resolve(config) -> dict` (the run it performs: the lower-level settings `run`
reads, every reference such as pretrain_run checked; called before any folder is claimed) and
`run(config, folder: RunFolder) -> dict` (the summary). Every Config field carries a trailing
`# one line of meaning` (shown by --help); a Config may define `unused() -> {key: reason}`, the
keys its other settings make ineffective (an override of one is refused). It may define
`FLAGS` ({flag: config key}) for boolean switches such as `--sweep`, and
`findings(summary) -> list[str]`: one to three sentences stating the run's conclusions with
their intervals and verdicts (what the report opens with).
A tool module (bench, sweep, report, quickstart, render-check) defines `DESCRIPTION` and `main(argv) -> int`.
"""
import importlib
import importlib.util

MODULES = {
    "pretrain": "experiments.pretrain",
    "linear-origins": "experiments.linear_origins",
    "cognition": "experiments.cognition",
    "crosscoders": "experiments.crosscoders",
    "neuromfa": "experiments.neuromfa",
    "waves": "experiments.waves",
    "bench": "experiments.bench",
    "sweep": "experiments.sweep",
    "report": "experiments.report",
    "quickstart": "experiments.quickstart",
    "render-check": "experiments.render_check",
    "import": "experiments.import_suite",
    "evaluate": "experiments.evaluate",
}


def available() -> dict[str, str]:
    """Experiments whose module is present in this checkout."""
    return {name: mod for name, mod in MODULES.items() if importlib.util.find_spec(mod) is not None}


def load(name: str):
    return importlib.import_module(available()[name])


def findings(name: str, summary: dict) -> list[str]:
    """The study's own statement of what a summary shows ([] for a study without `findings`)."""
    if name not in available():
        return []
    fn = getattr(load(name), "findings", None)
    return list(fn(summary)) if fn is not None else []
