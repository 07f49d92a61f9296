"""Importing a suite under faults: a step folder that disappears or changes while it is read, a
hub download interrupted midway, one model served under two step names, and a checkpoint
changed on disk after the import, caught by `load_stack(..., verify=True)`. Every fault is one
line and exit 2, the steps imported before it stay, and the same command resumes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dynamics import hf_hub, hf_import
from dynamics.checkpoints import Series, load_stack
from experiments.__main__ import cli
from models.errors import OntogenyError
from tests.faultfs import one_error_line

HF = Path(__file__).parent / "fixtures" / "hf"
LLAMA = HF / "llama_gqa"  # steps 0, 10, 20


def suite(tmp_path) -> Path:
    root = tmp_path / "suite"
    shutil.copytree(LLAMA, root, ignore=shutil.ignore_patterns("refs"))
    return root


def imported(run: Path) -> list[str]:
    return list(json.loads((run / "import.json").read_text())["stages"]["pretrain"])


@pytest.mark.parametrize("fault", ["disappears", "changes"])
def test_a_step_folder_that_disappears_or_changes_while_read(fault, tmp_path, monkeypatch, capsys):
    root, run = suite(tmp_path), tmp_path / "run"
    real = hf_import.load_checkpoint

    def meddling(folder, dtype="float32"):
        result = real(folder, dtype)
        if Path(folder).name == "step10":
            if fault == "disappears":
                shutil.move(folder, tmp_path / "moved")
            else:  # another copy lands on it while it is read
                shutil.copy(root / "step20" / "model.safetensors", Path(folder) / "model.safetensors")
        return result

    monkeypatch.setattr(hf_import, "load_checkpoint", meddling)
    argv = ["import", "--from", str(root), "--out", str(run)]
    assert cli(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(root / "step10") in line and ("disappeared" if fault == "disappears" else "changed") in line
    assert "the steps before it are kept" in line
    assert Series(run, "pretrain").steps() == [0] and imported(run) == ["0"]
    if fault == "disappears":
        shutil.move(tmp_path / "moved", root / "step10")
    else:
        shutil.copy(LLAMA / "step10" / "model.safetensors", root / "step10" / "model.safetensors")
    monkeypatch.setattr(hf_import, "load_checkpoint", real)
    assert cli(argv) == 0
    steps, _ = load_stack(run, verify=True)
    assert list(steps) == [0, 10, 20]
    _, want = hf_import.load_checkpoint(LLAMA / "step10")
    assert json.loads((run / "import.json").read_text())["stages"]["pretrain"]["10"]["checksum"] == \
        hf_import.checksum(want)


def test_an_interrupted_hub_download_is_one_line_and_downloaded_again(tmp_path, monkeypatch, capsys):
    hub = pytest.importorskip("huggingface_hub")
    cache, run, fails = tmp_path / "hub", tmp_path / "run", {"step10": True}

    def snapshot_download(repo_id, revision, cache_dir, allow_patterns):
        """huggingface_hub's layout; an interrupted download leaves config.json and no weights."""
        commit = f"{int(revision.removeprefix('step')):040x}"
        base = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
        snapshot = base / "snapshots" / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        (base / "refs").mkdir(exist_ok=True)
        (base / "refs" / revision).write_text(commit)
        shutil.copy(LLAMA / revision / "config.json", snapshot / "config.json")
        if fails.pop(revision, False):
            (base / "blobs").mkdir(exist_ok=True)
            (base / "blobs" / "0123.incomplete").write_bytes(b"\0" * 100)
            raise ConnectionError("Connection reset by peer")
        shutil.copy(LLAMA / revision / "model.safetensors", snapshot / "model.safetensors")
        return str(snapshot)

    monkeypatch.setattr(hub, "list_repo_files", lambda repo_id, revision: ["config.json", "model.safetensors"])
    monkeypatch.setattr(hub, "snapshot_download", snapshot_download)
    argv = ["import", "--model", "org/tiny", "--steps", "0,10,20", "--cache-dir", str(cache), "--out", str(run)]
    assert cli(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "could not fetch org/tiny@step10 (ConnectionError: Connection reset by peer)" in line
    assert Series(run, "pretrain").steps() == [0]
    assert hf_hub.cached_snapshot(cache, "org/tiny", "step10") is None  # a partial snapshot is not "cached"
    offline = argv + ["--offline"]
    assert cli(offline) == 2
    assert "org/tiny@step10 is not in the hub cache" in one_error_line(capsys.readouterr().err)
    assert cli(argv) == 0  # downloaded again
    steps, _ = load_stack(run, verify=True)
    assert list(steps) == [0, 10, 20]


def test_one_model_under_two_step_names_is_refused(tmp_path, capsys):
    root = suite(tmp_path)
    shutil.copy(root / "step0" / "model.safetensors", root / "step20" / "model.safetensors")
    assert cli(["import", "--from", str(root), "--out", str(tmp_path / "run")]) == 2
    assert "steps 0 and 20 have identical weights" in one_error_line(capsys.readouterr().err)
    assert Series(tmp_path / "run", "pretrain").steps() == [0, 10]


def test_verify_catches_a_checkpoint_changed_on_disk_after_the_import(tmp_path):
    run = tmp_path / "run"
    assert cli(["import", "--from", str(suite(tmp_path)), "--out", str(run)]) == 0
    steps, _ = load_stack(run, verify=True)
    assert list(steps) == [0, 10, 20]
    series = run / "checkpoints" / "pretrain"
    shutil.rmtree(series / "10" / "params")  # a well-formed checkpoint with other weights (step 20's)
    shutil.copytree(series / "20" / "params", series / "10" / "params")
    load_stack(run)  # nothing looks wrong to a plain load
    with pytest.raises(OntogenyError, match=rf"{series / '10'} changed on disk since it was saved"):
        load_stack(run, verify=True)
