"""MkDocs hook: one API reference page per module listed in docs/reference/modules.yml."""
from __future__ import annotations

from pathlib import Path

import yaml
from mkdocs.structure.files import File

LIST = Path(__file__).resolve().parents[1] / "reference" / "modules.yml"


def listed() -> dict[str, list[str]]:
    data = yaml.safe_load(LIST.read_text())
    return {package: list(modules) for package, modules in data["reference"].items()}


def page_of(module: str) -> str:
    return "reference/" + module.replace(".", "/") + ".md"


def on_config(config):
    sections = [{package: [{module: page_of(module)} for module in modules]}
                for package, modules in listed().items()]
    for item in config.nav:
        if isinstance(item, dict) and "API reference" in item:
            item["API reference"] = [item["API reference"], *sections]
    return config


def on_files(files, config):
    for modules in listed().values():
        for module in modules:
            files.append(File.generated(config, page_of(module), content=f"# `{module}`\n\n::: {module}\n"))
    return files
