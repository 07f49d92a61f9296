"""Which experiments exist, and where they live.

A study module defines `DESCRIPTION` (one line), a frozen dataclass `Config`, `PRESETS`
(name -> Config) and `run(config, folder: RunFolder) -> dict` (the summary). It may define
`FLAGS` ({flag: config key}) for boolean switches such as `--sweep`.
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
}


def available() -> dict[str, str]:
    """Experiments whose module is present in this checkout."""
    return {name: mod for name, mod in MODULES.items() if importlib.util.find_spec(mod) is not None}


def load(name: str):
    return importlib.import_module(available()[name])
