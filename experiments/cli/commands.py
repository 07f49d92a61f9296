"""Every command of `python -m experiments`: the studies of the registry, then the tools.

A tool module (bench, sweep, report, quickstart, render-check, import) defines `DESCRIPTION` and
`main(argv) -> int`. The tools read the registry; only this module, which the entry point
alone imports, names them, so no import circle runs through the registry.
"""
from __future__ import annotations

import importlib
import importlib.util
from types import MappingProxyType

from experiments.cli import registry

TOOLS = MappingProxyType({
    "bench": "experiments.bench.main",
    "sweep": "experiments.tools.sweep",
    "report": "experiments.tools.report",
    "quickstart": "experiments.tools.quickstart",
    "render-check": "experiments.tools.render_check",
    "import": "experiments.tools.import_suite",
})


def available() -> dict[str, str]:
    """Every command present in this checkout: {name: module}, the studies first."""
    tools = {name: module for name, module in TOOLS.items() if importlib.util.find_spec(module) is not None}
    return {**registry.available(), **tools}


def load(name: str):
    if name in registry.available():
        return registry.load(name)
    return importlib.import_module(TOOLS[name])
