"""Quickstart orchestration with stand-in studies (the real tiny presets take minutes each)."""
import dataclasses
import json
import types

import pytest

from experiments.cli import registry
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


def test_lanes_keep_the_pretrain_chain_together_and_deal_the_rest():
    from experiments.tools.quickstart import lanes

    names = registry.quickstart_studies()
    assert lanes(names, 1) == [names]
    two = lanes(names, 2)
    chain = [n for n in names if n == "pretrain" or registry.ENTRIES[n].reuses_pretrain]
    assert two[0] == chain and sorted(two[1]) == sorted(set(names) - set(chain))
    assert sorted(n for lane in lanes(names, 9) for n in lane) == sorted(names)  # no study lost or doubled
    assert lanes(["cognition", "neuromfa"], 2) == [["cognition"], ["neuromfa"]]


def test_run_lanes_starts_one_process_a_lane_and_reports_the_studies_left_without_a_summary(tmp_path, capsys):
    """Each lane is a real process (here a stand-in writing the summaries); a study whose lane
    wrote no summary is reported with its error line and its lane's log."""
    import sys

    from experiments.tools.quickstart import run_lanes

    code = ("import json, pathlib, sys\n"
            "out = pathlib.Path(sys.argv[1])\n"
            "for n in sys.argv[2:]:\n"
            "    (out / n).mkdir(exist_ok=True)\n"
            "    if n == 'b':\n"
            "        (out / n / 'error.txt').write_text('Traceback\\nRuntimeError: b broke')\n"
            "        print('b failed here')\n"
            "    else:\n"
            "        (out / n / 'summary.json').write_text(json.dumps({'value': 1}))\n")
    failed = run_lanes([["a", "b"], ["c"]], tmp_path, lambda lane: [sys.executable, "-c", code, str(tmp_path), *lane])
    assert list(failed) == ["b"] and failed["b"].startswith("RuntimeError: b broke (log: ")
    assert "b failed here" in (tmp_path / "quickstart-lane-0.log").read_text()
    assert (tmp_path / "c" / "summary.json").exists()
    shown = capsys.readouterr()
    assert "a: done" in shown.out + shown.err and "c: done" in shown.out + shown.err
    assert "b: done" not in shown.out + shown.err


def test_jobs_are_refused_below_one(tmp_path, capsys):
    assert cli(["quickstart", "--jobs", "0", "--out", str(tmp_path / "q")]) == 2
    assert "--jobs 0 must be at least 1" in capsys.readouterr().err


def test_the_lanes_share_one_compilation_cache_and_count_what_they_build(tmp_path, monkeypatch):
    """Every lane gets the same JAX_COMPILATION_CACHE_DIR (the user's, else OUT/xla-cache); a
    program built twice in one cache is loaded the second time, and the meter counts both."""
    import os
    import subprocess
    import sys

    from experiments.tools import quickstart as qs

    monkeypatch.delenv(qs.CACHE_ENV, raising=False)
    assert qs.compile_cache(tmp_path) == str(tmp_path.absolute() / "xla-cache")
    monkeypatch.setenv(qs.CACHE_ENV, str(tmp_path / "mine"))
    assert qs.compile_cache(tmp_path) == str(tmp_path / "mine")
    code = ("import os, pathlib, sys\n"
            "pathlib.Path(sys.argv[1], sys.argv[2]).mkdir()\n"
            "pathlib.Path(sys.argv[1], sys.argv[2], 'summary.json').write_text(os.environ['JAX_COMPILATION_CACHE_DIR'])\n")
    qs.run_lanes([["a"], ["b"]], tmp_path, lambda lane: [sys.executable, "-c", code, str(tmp_path), *lane],
                 env={qs.CACHE_ENV: "/shared/cache"})
    assert (tmp_path / "a" / "summary.json").read_text() == (tmp_path / "b" / "summary.json").read_text() == "/shared/cache"
    build = ("import jax, jax.numpy as jnp\n"
             "from experiments.tools.quickstart import CompileMeter\n"
             "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
             "m = CompileMeter.start(); before = m.snapshot()\n"
             "jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64))).block_until_ready()\n"
             "print(m.since(before))\n")
    env = {**os.environ, qs.CACHE_ENV: str(tmp_path / "cache")}
    runs = [subprocess.run([sys.executable, "-c", build], capture_output=True, text=True, env=env, check=True).stdout
            for _ in range(2)]
    assert "0 of them from the cache" in runs[0]
    assert runs[1].startswith(runs[0].split(",")[0]) and " 0 of them" not in runs[1]
