"""One writer per folder, tested with real processes: a second writer exits 2 naming the first;
a lock left by a killed process is taken over, by exactly one of several racing processes;
a lock from another host is refused with how to remove it; readers need no lock; the lock goes
with its holder on exit, on an error and on SIGTERM; the token cache waits for its builder."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dynamics import locks
from experiments.__main__ import cli
from models.errors import OntogenyError
from tests.conftest import REPO, run_cli
from tests.faultfs import one_error_line

HOLD = """
import sys, time
from dynamics import locks
lock = locks.FileLock(sys.argv[1], "the folder", active=True).acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
lock.release()
"""

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def holder(lock_path: Path, seconds: float = 120) -> subprocess.Popen:
    """A process holding the lock at `lock_path` for `seconds` (it has it when this returns)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_path), str(seconds)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ENV, cwd=REPO)
    assert proc.stdout.readline().strip() == b"held", proc.stderr.read()
    return proc


def test_a_second_writer_is_refused_naming_the_holder_and_readers_need_no_lock(micro_run, tmp_path, capsys):
    from dynamics.checkpoints import load_stack

    run = tmp_path / "run"
    shutil.copytree(micro_run, run)
    proc = holder(run / locks.LOCK_NAME)
    try:
        assert cli(["pretrain", "--preset", "micro", "--out", str(run)]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"pid {proc.pid} on host {socket.gethostname()}, started " in line and f"kill {proc.pid}" in line
        # readers: the series, a report over it, an evaluation of it
        steps, _ = load_stack(run, verify=True)
        assert len(steps) == 8
        assert cli(["report", str(run)]) == 0 and (run / "report.html").exists()
        assert cli(["evaluate", "--set", f"run={run}", "--set", "n_windows=2", "--out", str(tmp_path / "ev")]) == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert not (run / locks.LOCK_NAME).exists()  # SIGTERM released it
    capsys.readouterr()
    assert cli(["pretrain", "--preset", "micro", "--out", str(run)]) == 0


def test_a_killed_writers_lock_is_taken_over(tmp_path, capsys):
    path = tmp_path / "run" / locks.LOCK_NAME
    proc = holder(path)
    proc.kill()  # not yet reaped: a zombie holds no lock either
    time.sleep(0.2)
    lock = locks.FileLock(path, "the folder", active=True).acquire()
    try:
        assert f"taking over the lock of pid {proc.pid}" in capsys.readouterr().err
        assert json.loads(path.read_text())["pid"] == os.getpid()
    finally:
        lock.release()
        proc.wait()
    assert not path.exists()


def test_a_reused_pid_or_a_reboot_makes_a_lock_stale(tmp_path):
    path = tmp_path / locks.LOCK_NAME
    ticks = locks.proc_stat(os.getppid())[1]
    parent = locks.identity() | {"pid": os.getppid(), "start_ticks": ticks}  # a live process
    for record in (parent | {"start_ticks": ticks + 1}, parent | {"boot_id": "another-boot"}):
        path.write_text(json.dumps(record))
        assert locks.holder_alive(record) is False
        with locks.FileLock(path, "the folder", active=True):
            assert json.loads(path.read_text())["pid"] == os.getpid()
    assert locks.holder_alive(parent) is True


def test_a_lock_from_another_host_is_refused_with_how_to_remove_it(tmp_path):
    path = tmp_path / locks.LOCK_NAME
    path.write_text(json.dumps(locks.identity() | {"host": "node-17", "pid": 4242}))
    with pytest.raises(OntogenyError, match=rf"another host: pid 4242 on host node-17.*delete {path}"):
        locks.FileLock(path, "the folder", active=True).acquire()
    assert json.loads(path.read_text())["host"] == "node-17"  # never removed by a refused process


RACE = """
import sys, time
from pathlib import Path
from dynamics import locks
from models.errors import OntogenyError
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.001)
try:
    lock = locks.FileLock(sys.argv[1], "the folder", active=True).acquire()
except OntogenyError:
    print("refused")
else:
    print("won")
    time.sleep(1.5)
    lock.release()
"""


def test_of_several_processes_finding_a_stale_lock_exactly_one_becomes_the_writer(tmp_path):
    path, go = tmp_path / locks.LOCK_NAME, tmp_path / "go"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_text(json.dumps(locks.identity() | {"pid": int(dead.stdout), "start_ticks": None}))
    racers = [subprocess.Popen([sys.executable, "-c", RACE, str(path), str(go)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=ENV, cwd=REPO) for _ in range(4)]
    time.sleep(1.0)  # every racer is waiting at the start line
    go.touch()
    outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in racers)
    assert outcomes == ["refused", "refused", "refused", "won"], outcomes
    assert not path.exists()


def test_the_lock_goes_with_an_error_and_with_a_failed_command(tmp_path, monkeypatch, capsys):
    with pytest.raises(ValueError):
        with locks.folder_lock(tmp_path / "a", active=True):
            assert (tmp_path / "a" / locks.LOCK_NAME).exists()
            raise ValueError("boom")
    assert not (tmp_path / "a" / locks.LOCK_NAME).exists()
    from experiments.studies.pretrain import study

    monkeypatch.setattr(study, "run", lambda config, folder: (_ for _ in ()).throw(OntogenyError("bad corpus")))
    assert cli(["pretrain", "--preset", "micro", "--out", str(tmp_path / "b")]) == 2
    assert "bad corpus" in capsys.readouterr().err
    assert (tmp_path / "b" / "config.json").exists() and not (tmp_path / "b" / locks.LOCK_NAME).exists()


def test_an_import_folder_has_one_writer(tmp_path, capsys):
    run = tmp_path / "run"
    proc = holder(run / locks.LOCK_NAME)
    try:
        fixture = REPO / "tests" / "fixtures" / "hf" / "gpt2_plain"
        assert cli(["import", "--from", str(fixture), "--out", str(run)]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"the import folder {run} is being written by another process: pid {proc.pid}" in line
    finally:
        proc.kill()
        proc.wait()
    assert not (run / "import.json").exists()


def test_the_token_cache_waits_for_the_process_building_it(tmp_path, capsys):
    from dynamics import corpus_files

    entry = tmp_path / "tokens" / "abc123"
    proc = holder(entry.with_name("abc123.lock"), seconds=2.0)
    t0 = time.monotonic()
    with corpus_files.cache_lock(entry):
        waited = time.monotonic() - t0
    proc.wait(timeout=30)
    assert waited > 1.0 and proc.returncode == 0
    assert f"note: waiting for pid {proc.pid}" in capsys.readouterr().err


def test_two_pretrain_processes_on_one_folder(micro_run, tmp_path):
    """The scenario of a relaunched job: the second exits 2 naming the first, which finishes with
    every step logged once."""
    run = tmp_path / "run"
    env = {**ENV, "TQDM_DISABLE": "1"}
    first = subprocess.Popen([sys.executable, "-m", "experiments", "pretrain", "--preset", "micro", "--out", str(run)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    deadline = time.monotonic() + 120
    while not (run / locks.LOCK_NAME).exists():
        assert time.monotonic() < deadline and first.poll() is None, first.stderr.read() if first.poll() else ""
        time.sleep(0.05)
    first.send_signal(signal.SIGSTOP)  # however fast this machine, the first is still writing
    try:
        second = run_cli("pretrain", "--preset", "micro", "--out", str(run), env_extra={"TQDM_DISABLE": "1"})
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=300)
    assert second.returncode == 2
    assert f"is being written by another process: pid {first.pid}" in one_error_line(second.stderr)
    assert first.returncode == 0, err[-2000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    keys = [(r.get("stage"), r.get("step"), "val_loss" in r) for r in rows]
    assert len(keys) == len(set(keys))
    want = [json.loads(line) for line in (micro_run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("loss"), r.get("val_loss")) for r in rows] == \
        [(r["step"], r.get("loss"), r.get("val_loss")) for r in want]
    assert not (run / locks.LOCK_NAME).exists()
