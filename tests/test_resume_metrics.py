"""metrics.jsonl after a hard kill: the resumed run logs every step once, as an uninterrupted run does."""
import pytest

from dynamics import train as train_lib
from models.errors import OntogenyError
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
    assert not list(folder.root.glob(".metrics.jsonl.*.tmp"))
    killed = _rows(folder)
    assert ("pretrain", 12) in [r[:2] for r in killed]  # the row a resume from step 8 replays
    (folder.root / "metrics.jsonl").open("a").write('{"stage": "other", "step": 99}\n')  # not this stage's

    state, step_fn, batch_fn, tc = _setup(tmp_path, steps=16)
    train_lib.run_training(folder, "pretrain", state, step_fn, batch_fn, tc)
    resumed = [r for r in _rows(folder) if r[0] == "pretrain"]
    assert resumed == _rows(straight)  # same steps, once each, same losses (the series is bit-identical)
    assert ("other", 99, None) in _rows(folder)


def test_a_row_cut_short_by_a_kill_is_dropped_and_a_damaged_row_is_one_line(tmp_path):
    """A process killed while appending leaves a last row with no newline: it is left out when
    read and removed when a resumed stage drops its replayed rows. A malformed row elsewhere (an
    edited file) is refused in one line naming the file and the line."""
    folder = RunFolder(tmp_path / "run")
    for step in range(3):
        folder.log({"stage": "pretrain", "step": step, "loss": 1.0})
    with open(folder.metrics_path, "a") as f:
        f.write('{"stage": "pretrain", "step": 3, "lo')
    assert [r["step"] for r in folder.read_metrics()] == [0, 1, 2]
    assert folder.drop_metrics(lambda row: row["step"] > 1) == 1
    assert folder.metrics_path.read_text().endswith('"loss": 1.0}\n')
    folder.log({"stage": "pretrain", "step": 2, "loss": 0.5})
    assert [(r["step"], r["loss"]) for r in folder.read_metrics()] == [(0, 1.0), (1, 1.0), (2, 0.5)]
    lines = folder.metrics_path.read_text().splitlines()
    folder.metrics_path.write_text("\n".join([lines[0], "not json", *lines[1:]]) + "\n")
    with pytest.raises(OntogenyError, match=rf"{folder.metrics_path} line 2 is not a JSON object"):
        folder.read_metrics()
