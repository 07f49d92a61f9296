"""Quickstart orchestration with stand-in studies (the real tiny presets take minutes each)."""
import dataclasses
import json
import types

import pytest

from experiments import registry
from experiments.__main__ import cli


@dataclasses.dataclass(frozen=True)
class FakeConfig:
    pretrain_run: str = ""
    size: int = 1


def fake_module(name, calls, fail=False):
    def run(config, folder):
        calls.append((name, config.pretrain_run))
        if fail:
            raise RuntimeError(f"{name} broke")
        (folder.root / "figures").mkdir(exist_ok=True)
        return {"value": len(calls)}
    return types.SimpleNamespace(DESCRIPTION=name, PRESETS={"tiny": FakeConfig()}, run=run,
                                 resolve=lambda config: dataclasses.asdict(config))


@pytest.fixture
def fake_studies(monkeypatch):
    calls = []
    modules = {n: fake_module(n, calls, fail=(n == "neuromfa")) for n in registry.quickstart_studies()}
    real_load = registry.load
    monkeypatch.setattr(registry, "load", lambda name: modules.get(name) or real_load(name))
    return calls


def test_runs_every_study_reuses_pretrain_reports_and_resumes(fake_studies, tmp_path, capsys):
    out = tmp_path / "qs"
    assert cli(["quickstart", "--out", str(out)]) == 1          # neuromfa fails, the rest still run
    assert [c[0] for c in fake_studies] == registry.quickstart_studies()
    reused = dict(fake_studies)
    assert reused["crosscoders"] == reused["waves"] == str(out / "pretrain") and reused["cognition"] == ""
    assert "neuromfa: FAILED: RuntimeError: neuromfa broke" in capsys.readouterr().out
    assert (out / "report.html").exists() and "waves" in (out / "report.html").read_text()
    assert json.loads((out / "waves" / "summary.json").read_text())["value"] == 6
    fake_studies.clear()
    assert cli(["quickstart", "--out", str(out)]) == 1          # resume: only the failed study runs again
    assert [c[0] for c in fake_studies] == ["neuromfa"]


def test_only_adds_the_pretrain_it_needs_and_rejects_unknown_studies(fake_studies, tmp_path, capsys):
    assert cli(["quickstart", "--only", "waves", "--out", str(tmp_path / "a")]) == 0
    assert [c[0] for c in fake_studies] == ["pretrain", "waves"]
    assert cli(["quickstart", "--only", "wavez", "--out", str(tmp_path / "b")]) == 2
    assert "'wavez' is not a study" in capsys.readouterr().err
