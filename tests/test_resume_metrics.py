"""metrics.jsonl after a hard kill: the resumed run logs every step once, as an uninterrupted run does."""
import pytest

from dynamics import train as train_lib
from dynamics.runlog import RunFolder
from tests.test_train import _setup


class Killed(Exception):
    """Stands in for SIGKILL: the process dies mid-stage with no resume checkpoint saved."""


def _rows(folder):
    return [(r["stage"], r["step"], r.get("loss")) for r in folder.read_metrics()]


def test_resume_after_a_hard_kill_drops_the_replayed_rows(tmp_path):
    state, step_fn, batch_fn, tc = _setup(tmp_path, steps=16)
    straight = RunFolder(tmp_path / "a")
    train_lib.run_training(straight, "pretrain", state, step_fn, batch_fn, tc)

    folder = RunFolder(tmp_path / "b")
    state, step_fn, batch_fn, tc = _setup(tmp_path, steps=16)

    def dies_at_step_14(step):
        if step == 13:  # rows up to step 12 are logged; the last checkpoint is step 8
            raise Killed
        return batch_fn(step)

    with pytest.raises(Killed):
        train_lib.run_training(folder, "pretrain", state, step_fn, dies_at_step_14, tc)
    assert (folder.metrics_path.with_suffix(".jsonl.tmp")).exists() is False
    killed = _rows(folder)
    assert ("pretrain", 12) in [r[:2] for r in killed]  # the row a resume from step 8 replays
    (folder.root / "metrics.jsonl").open("a").write('{"stage": "other", "step": 99}\n')  # not this stage's

    state, step_fn, batch_fn, tc = _setup(tmp_path, steps=16)
    train_lib.run_training(folder, "pretrain", state, step_fn, batch_fn, tc)
    resumed = [r for r in _rows(folder) if r[0] == "pretrain"]
    assert resumed == _rows(straight)  # same steps, once each, same losses (the series is bit-identical)
    assert ("other", 99, None) in _rows(folder)
