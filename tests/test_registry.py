"""One registry: a study added with one registry line reaches the quickstart, the report, the
sweep and bench, and no other module of experiments/ keeps its own list of studies."""
import ast
import json
import pathlib
import textwrap
from types import MappingProxyType

import pytest

from experiments.bench import main as bench
from experiments.tools import quickstart
from experiments.cli import registry
from experiments.tools import report
from experiments.tools import sweep
from experiments.__main__ import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]

FAKE = '''
    import dataclasses

    DESCRIPTION = "a stand-in study"

    @dataclasses.dataclass(frozen=True)
    class Config:
        pretrain_run: str = ""   # the shared run
        size: int = 1            # what the summary echoes

    PRESETS = {"tiny": Config()}

    def resolve(config):
        return dataclasses.asdict(config)

    def run(config, folder):
        return {"value": 10 * config.size, "other": 1.0}

    def findings(summary):
        return [f"fake value {summary['value']}"]

    def bench(quick=False):
        return {"fake_quick": quick}
'''


@pytest.fixture
def fake_entry(monkeypatch, tmp_path):
    (tmp_path / "fake_study_mod.py").write_text(textwrap.dedent(FAKE))
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = registry.Entry("fake_study_mod", in_quickstart=True, reuses_pretrain=True, sweep_metrics=("value",),
                           bench=(("fakebench", "fake_study_mod:bench"),))
    monkeypatch.setattr(registry, "ENTRIES", MappingProxyType({**registry.ENTRIES, "fake": entry}))
    return entry


def test_one_registry_line_reaches_quickstart_sweep_bench_and_report(fake_entry, tmp_path, capsys):
    assert registry.quickstart_studies()[-1] == "fake" and "fake" in registry.studies()
    assert quickstart.chosen_studies("fake") == ["pretrain", "fake"]      # reuses_pretrain pulls pretrain in
    config = quickstart.study_config("fake", registry.load("fake"), tmp_path / "pretrain")
    assert config.pretrain_run == str(tmp_path / "pretrain")
    assert bench.sections()["fakebench"](quick=True) == {"fake_quick": True}

    out = tmp_path / "sweep"
    assert cli(["sweep", "fake", "--grid", "size=1,3", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [r["value"] for r in rows] == [10, 30]
    assert sweep.headline_keys("fake", rows, ["size"]) == ["value"]       # the entry's sweep_metrics
    assert "value 30" in capsys.readouterr().out

    root = tmp_path / "runs"                                              # report: registry order, findings
    for name in ("fake", "pretrain"):
        (root / name).mkdir(parents=True)
        (root / name / "config.json").write_text(json.dumps({"experiment": name}))
        (root / name / "summary.json").write_text(json.dumps({"value": 7, "val_loss": 2.0, "tokens_per_s": 1.0}))
    page = report.render(root)
    assert "fake value 7" in page
    assert page.index('id="run0"><h2>pretrain') < page.index('id="run1"><h2>fake')


def test_the_tools_are_commands_and_not_studies():
    from experiments.cli import commands

    assert set(commands.TOOLS) & set(registry.ENTRIES) == set()
    assert all(hasattr(commands.load(name), "main") for name in commands.TOOLS)
    assert registry.quickstart_studies()[0] == "pretrain"                   # the others may reuse it


def study_name_lists(path: pathlib.Path, names: set[str]) -> list[int]:
    """Lines of tuple/list/set/dict displays holding two or more study names as string literals."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text())):
        items = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None)
        if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)) and items:
            literal = [i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)]
            if len(set(literal) & names) >= 2:
                hits.append(node.lineno)
    return hits


def test_no_module_but_the_registry_lists_studies(tmp_path):
    names = set(registry.studies())
    found = [f"{p.relative_to(ROOT)}:{line}" for p in sorted((ROOT / "experiments").rglob("*.py"))
             if p.name != "registry.py" for line in study_name_lists(p, names)]
    assert not found, "a list of studies outside experiments/cli/registry.py: " + ", ".join(found)
    bad = tmp_path / "bad.py"
    bad.write_text('STUDIES = ("pretrain", "waves")\nONE = ("pretrain", "x")\n')
    assert study_name_lists(bad, names) == [1]
