"""A full disk at every kind of save: one line naming the path and the fix, exit 2, the last good
checkpoint and resume point intact, and after freeing space a resume equal to the uninterrupted
run bit for bit. On a real small tmpfs where the platform allows it (root), else through a
fault-injecting writer (`tests.faultfs`)."""
from __future__ import annotations

import errno
import json
import os
import signal
import threading

import jax
import numpy as np
import pytest

from dynamics import faults, locks
from dynamics.checkpoints import Series, load_stack
from dynamics.loop import Checkpoints
from dynamics.runlog import RunFolder
from experiments.__main__ import cli
from models.errors import OntogenyError
from tests.conftest import run_cli
from tests.faultfs import SmallDisk, one_error_line

HF = os.path.join(os.path.dirname(__file__), "fixtures", "hf")


@pytest.fixture
def disk(tmp_path, monkeypatch):
    small = SmallDisk(tmp_path / "disk", 32 << 20, monkeypatch)
    yield small
    small.close()


def same_series(a, b) -> None:
    """Two pretrain runs hold the same checkpoints, bit for bit, and log the same rows."""
    steps_a, params_a = load_stack(a)
    steps_b, params_b = load_stack(b, verify=True)
    assert list(steps_a) == list(steps_b)
    assert all(jax.tree.leaves(jax.tree.map(lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), params_a,
                                            params_b)))
    rows = lambda run: [(r.get("stage"), r["step"], r.get("loss"), r.get("val_loss")) for r in RunFolder(run).read_metrics()]
    assert rows(a) == rows(b)


def no_partial_files(root) -> None:
    left = [p for p in root.rglob("*") if "orbax-checkpoint-tmp" in p.name or p.name.endswith(".tmp")
            or p.name == locks.LOCK_NAME]
    assert not left, left


def test_a_full_disk_mid_run_is_one_line_then_the_resume_is_bit_identical(micro_run, tmp_path, monkeypatch, capfd):
    """The CLI as a user runs it on a 1.5 MB file system (a micro run needs 2.9 MB)."""
    small = SmallDisk(tmp_path / "small", 1_500_000, monkeypatch)
    run = small.root / "run"
    argv = ["pretrain", "--preset", "micro", "--out", str(run)]
    try:
        if small.mode == "tmpfs":  # a real process, its background threads included
            failed = run_cli(*argv, env_extra={"TQDM_DISABLE": "1"})
            code, err = failed.returncode, failed.stderr
        else:  # injected: the disk fills when checkpoint 8 is saved
            real = Series.save
            monkeypatch.setattr(Series, "save", lambda s, step, *a, **k: (step == 8 and small.fill(),
                                                                          real(s, step, *a, **k))[1])
            code, err = cli(argv), capfd.readouterr().err
            monkeypatch.setattr(Series, "save", real)
        line = one_error_line(err)
        assert code == 2 and f"could not write {run}" in line and "no space left on the device" in line
        assert "run the same command again: it resumes from the last complete checkpoint" in line
        saved, _ = load_stack(run, verify=True)  # what was saved is complete and intact
        assert 1 <= len(saved) < 8
        no_partial_files(run)
        assert not (run / "checkpoints" / "_resume").exists()  # no empty resume-point folder either
        small.grow(64 << 20)
        if small.mode == "tmpfs":
            done = run_cli(*argv, env_extra={"TQDM_DISABLE": "1"})
            assert done.returncode == 0, done.stderr[-2000:]
        else:
            assert cli(argv) == 0
        same_series(micro_run, run)
    finally:
        small.close()


def test_a_full_disk_at_the_resume_point_keeps_the_previous_one(micro_run, disk, monkeypatch, capfd):
    """SIGTERM saves a resume point; when the next one does not fit, the one before it stays, and
    the run resumes from it exactly."""
    from dynamics import data

    run, kill_at, real_batch = disk.root / "run", {"batch": 5}, data.get_batch
    argv = ["pretrain", "--preset", "micro", "--out", str(run)]

    def batch(ids, seed, step, *args, **kwargs):
        if step == kill_at["batch"]:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_batch(ids, seed, step, *args, **kwargs)

    monkeypatch.setattr(data, "get_batch", batch)
    assert cli(argv) == 128 + signal.SIGTERM
    resume = Series(run, "_resume/pretrain", create=False)
    first = resume.steps()
    assert len(first) == 1 and first[0] not in Series(run, "pretrain").steps()

    real_save = Checkpoints.save_resume
    monkeypatch.setattr(Checkpoints, "save_resume", lambda c, *a, **k: (disk.fill(), real_save(c, *a, **k))[1])
    kill_at["batch"] = first[0]  # the first step after resuming
    capfd.readouterr()
    assert cli(argv) == 2
    line = one_error_line(capfd.readouterr().err)
    assert f"could not write {run / 'checkpoints' / '_resume' / 'pretrain'}" in line and "no space left" in line
    assert resume.steps() == first
    params, _, meta = resume.restore(first[0], state_target=None)
    assert meta["step"] == first[0]
    no_partial_files(run)

    disk.free()
    monkeypatch.setattr(Checkpoints, "save_resume", real_save)
    kill_at["batch"] = -1
    assert cli(argv) == 0
    same_series(micro_run, run)


def test_metrics_rows_stay_whole_when_one_does_not_fit(disk):
    folder = RunFolder(disk.root / "run")
    folder.log({"step": 0, "loss": 1.0})
    disk.fill()
    logged = 1
    with pytest.raises(OntogenyError, match=rf"could not write {folder.metrics_path}: no space left"):
        for step in range(1, 5000):  # on tmpfs the last page still has room for a few rows
            folder.log({"step": step, "loss": 1.0 / step, "note": "x" * 40})
            logged += 1
    text = folder.metrics_path.read_text()
    assert text.endswith("\n") and [r["step"] for r in folder.read_metrics()] == list(range(logged))
    disk.free()
    folder.log({"step": logged, "loss": 0.5})
    assert [r["step"] for r in folder.read_metrics()] == list(range(logged + 1))


def test_json_files_and_figures_keep_their_last_good_content(disk):
    import matplotlib.pyplot as plt

    from experiments import plots

    folder = RunFolder(disk.root / "run")
    folder.write_summary({"val_loss": 1.5})
    disk.fill()
    with pytest.raises(OntogenyError, match=rf"could not write {folder.root / 'summary.json'}: no space left"):
        folder.write_summary({"val_loss": 0.5})
    assert folder.read_summary() == {"val_loss": 1.5}
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3])
    with pytest.raises(OntogenyError, match=rf"could not write {folder.figure('loss')}: no space left"):
        plots.save(fig, folder.figure("loss"))
    assert not folder.figure("loss").exists()
    no_partial_files(folder.root)


def test_claiming_a_folder_on_a_full_disk_leaves_nothing_half_written(disk, capsys):
    disk.fill()
    assert cli(["pretrain", "--preset", "micro", "--out", str(disk.root / "run")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"could not write {disk.root / 'run'}" in line and "no space left" in line
    assert not (disk.root / "run" / "config.json").exists()
    no_partial_files(disk.root)


def test_the_token_cache_on_a_full_disk(disk, tmp_path, monkeypatch):
    from dynamics import corpus, data

    monkeypatch.setenv("ONTOGENY_CACHE", str(disk.root / "cache"))
    (tmp_path / "corpus").mkdir()
    for k in range(3):
        (tmp_path / "corpus" / f"doc{k}.txt").write_text(f"the text of document {k}\n" * 200)
    config = data.DataConfig(path=str(tmp_path / "corpus"))
    real_build = corpus.build
    monkeypatch.setattr(corpus, "build", lambda *a: (disk.fill(), real_build(*a))[1])
    with pytest.raises(OntogenyError, match=r"could not write .*cache/tokens/\w+: no space left.*ONTOGENY_CACHE"):
        data.load_corpus(config)
    no_partial_files(disk.root / "cache")
    assert not list((disk.root / "cache" / "tokens").glob("*.lock"))
    disk.free()
    monkeypatch.setattr(corpus, "build", real_build)
    loaded = data.load_corpus(config)
    assert len(loaded.train_ids) > 0 and len(loaded.val_ids) > 0


def test_an_import_on_a_full_disk_keeps_the_steps_before_and_resumes(disk, monkeypatch, capsys):
    run, calls, real = disk.root / "run", [], Series.save

    def fills_at_the_second(series, step, *args, **kwargs):
        calls.append(step)
        if len(calls) == 2:
            disk.fill()
        return real(series, step, *args, **kwargs)

    monkeypatch.setattr(Series, "save", fills_at_the_second)
    argv = ["import", "--from", os.path.join(HF, "gpt2_plain"), "--out", str(run)]
    assert cli(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"could not write {run / 'checkpoints' / 'pretrain' / '50'}" in line and "resumes after the last imported" \
        in line
    assert Series(run, "pretrain").steps() == [0]
    assert list(json.loads((run / "import.json").read_text())["stages"]["pretrain"]) == ["0"]
    no_partial_files(run)
    disk.free()
    assert cli(argv) == 0
    steps, _ = load_stack(run, verify=True)
    assert list(steps) == [0, 50]


def test_a_disk_error_in_a_background_thread_is_one_line_not_a_thread_traceback(monkeypatch):
    printed = []
    monkeypatch.setattr(threading, "excepthook", faults.thread_hook(lambda args: printed.append(args.exc_value)))

    def raises(error):
        def target():
            raise error
        thread = threading.Thread(target=target, name="event-writer")
        thread.start()
        thread.join()

    raises(OSError(errno.ENOSPC, "No space left on device", "/runs/r/tb/events.out"))
    assert printed == []  # no thread traceback
    with pytest.raises(faults.WriteFailed, match="could not write /runs/r/tb/events.out: no space left"):
        faults.raise_pending()  # the run's next write raises it in the main thread
    faults.raise_pending()  # once
    bug = ValueError("a bug, not a disk")
    raises(bug)
    assert printed == [bug]  # everything else reaches the usual hook


def test_orbax_and_tensorstore_messages_are_read_as_disk_errors():
    orbax_error = ValueError('RESOURCE_EXHAUSTED: Error writing "w/0.0" in OCDBT database at local file '
                             '"/r/checkpoints/pretrain/8.orbax-checkpoint-tmp/params/": Failed to write 68517 bytes: '
                             "No space left on device [os_error_code='28']")
    assert faults.disk_errno(orbax_error) == errno.ENOSPC
    failed = faults.as_write_failed(orbax_error)
    assert failed.path == "/r/checkpoints/pretrain/8.orbax-checkpoint-tmp/params/"
    try:
        try:
            raise faults.WriteFailed("/r/ckpt/8")
        except faults.WriteFailed:
            raise OSError(errno.ENOSPC, "No space left on device")  # a later cleanup failing too
    except OSError as echo:
        assert faults.as_write_failed(echo).path == "/r/ckpt/8"  # the cause is named, not the echo
    assert faults.disk_errno(ValueError("NOT_FOUND: no such file")) is None
