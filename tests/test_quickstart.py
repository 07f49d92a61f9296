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


def test_the_studies_that_reuse_the_pretrain_run_wait_for_it():
    from experiments.tools.quickstart import chosen_studies, inputs

    names = registry.quickstart_studies()
    for name in names:
        want = ["pretrain"] if registry.ENTRIES[name].reuses_pretrain else []
        assert inputs(name, names) == want
    assert inputs("crosscoders", ["crosscoders"]) == []  # an existing pretrain run given by the user
    assert chosen_studies("waves") == ["pretrain", "waves"]
    assert chosen_studies("waves", add_pretrain=False) == ["waves"]  # one study of a scheduled run


STAND_IN = ("import json, os, pathlib, sys, time\n"
            "from experiments.cli import host_devices\n"
            "host_devices.pin_cpus()  # as the CLI does first\n"
            "out, n = pathlib.Path(sys.argv[1]), sys.argv[2]\n"
            "(out / n).mkdir(exist_ok=True)\n"
            "start = time.time(); time.sleep(float(os.environ.get('NAP_' + n, '0.05')))\n"
            "if n.startswith('bad'):\n"
            "    (out / n / 'error.txt').write_text('Traceback\\nRuntimeError: ' + n + ' broke')\n"
            "    print(n, 'failed here')\n"
            "else:\n"
            "    (out / n / 'summary.json').write_text(json.dumps({'start': start, 'end': time.time(),\n"
            "        'cpus': sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else []}))\n")


def run_stand_ins(tmp_path, names, jobs, needs, naps=None):
    import os
    import sys

    from experiments.tools.quickstart import run_scheduled

    env = {f"NAP_{n}": str(t) for n, t in (naps or {}).items()}
    os.environ.update(env)
    try:
        return run_scheduled(names, jobs, tmp_path, lambda n: [sys.executable, "-c", STAND_IN, str(tmp_path), n],
                             needs=needs)
    finally:
        for k in env:
            os.environ.pop(k)


def test_a_free_slot_takes_the_next_ready_study_and_failures_are_reported(tmp_path, capsys):
    """Real processes (stand-ins writing the summaries): a study starts only after its input
    finished, a free slot does not wait for a slow one, a study whose input failed is not
    started, and each failure names its error line and its slot's log."""
    needs = {"after": ["first"], "orphan": ["bad"]}.get
    failed = run_stand_ins(tmp_path, ["first", "slow", "after", "bad", "orphan"], 2, lambda n: needs(n) or [],
                           naps={"first": 0.3, "slow": 2.5})
    assert set(failed) == {"bad", "orphan"}
    assert failed["bad"].startswith("RuntimeError: bad broke (log: ") and "quickstart-lane-" in failed["bad"]
    assert failed["orphan"] == "not run: it needs bad, which did not finish"
    assert not (tmp_path / "orphan").exists()
    read = lambda n: json.loads((tmp_path / n / "summary.json").read_text())
    assert read("after")["start"] >= read("first")["end"]
    assert read("after")["end"] <= read("slow")["end"]  # ran beside the slow one, in the freed slot
    logs = "".join((tmp_path / f"quickstart-lane-{k}.log").read_text() for k in range(2))
    assert "bad failed here" in logs and "== after" in logs
    shown = capsys.readouterr()
    assert "first: done" in shown.out + shown.err and "bad: done" not in shown.out + shown.err


def test_lane_cpus_split_the_cpus_without_overlap():
    from experiments.tools.quickstart import lane_cpus

    assert lane_cpus(2, [0, 1]) == [{0}, {1}]
    assert lane_cpus(2, [0, 1, 2, 3, 4]) == [{0, 1, 2}, {3, 4}]  # the first slot gets the rest
    assert lane_cpus(3, [4, 5, 6, 7, 8, 9]) == [{4, 5}, {6, 7}, {8, 9}]
    assert lane_cpus(3, [0, 1]) is None and lane_cpus(1, [0, 1]) is None  # too few CPUs; one slot: no pinning


def test_each_slot_runs_on_its_own_cpus(tmp_path):
    import os

    from experiments.tools.quickstart import lane_cpus

    if lane_cpus(2) is None:
        pytest.skip("needs two CPUs this process may use")
    assert run_stand_ins(tmp_path, ["a", "b"], 2, lambda n: [], naps={"a": 1.0, "b": 1.0}) == {}
    a, b = (set(json.loads((tmp_path / n / "summary.json").read_text())["cpus"]) for n in "ab")
    assert sorted([a, b], key=min) == lane_cpus(2) and not a & b
    assert os.sched_getaffinity(0) >= a | b  # this process keeps every CPU


def test_jobs_are_refused_below_one(tmp_path, capsys):
    assert cli(["quickstart", "--jobs", "0", "--out", str(tmp_path / "q")]) == 2
    assert "--jobs 0 must be at least 1" in capsys.readouterr().err


def test_the_processes_share_one_compilation_cache_and_count_what_they_build(tmp_path, monkeypatch):
    """Every study's process gets the same JAX_COMPILATION_CACHE_DIR (the user's, else OUT/xla-cache); a
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
    qs.run_scheduled(["a", "b"], 2, tmp_path, lambda name: [sys.executable, "-c", code, str(tmp_path), name],
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
