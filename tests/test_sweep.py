import csv
import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

from dynamics import members
from dynamics import train as train_lib
from dynamics.runlog import RunFolder
from experiments.studies.pretrain import study as pretrain
from experiments.tools import sweep
from experiments.__main__ import cli


def micro(steps=12, **train):
    base = pretrain.PRESETS["micro"]
    tc = dataclasses.replace(base.train, steps=steps, eval_every=6, log_every=2, log_checkpoints_until=4,
                             checkpoint_every=6, **train)
    return dataclasses.replace(base, train=tc)


def losses(folder):
    return [r["loss"] for r in RunFolder(folder).read_metrics() if r.get("loss") is not None]


def test_cosine_lr_matches_the_optax_schedule():
    tc = train_lib.TrainConfig(steps=50, warmup=7, lr=3e-3, min_lr=2e-4)
    t = jnp.arange(60)
    np.testing.assert_allclose(members.cosine_lr(t, tc.lr, tc.min_lr, tc.warmup, tc.steps),
                               train_lib.lr_schedule(tc)(t), rtol=1e-5, atol=1e-9)


def test_vmapped_group_equals_sequential_runs(tmp_path):
    configs = [micro(lr=3e-3, seed=0), micro(lr=1e-3, seed=1, weight_decay=0.3)]
    folders = [RunFolder(tmp_path / f"m{k}") for k in range(2)]
    outs = pretrain.run_group(configs, folders)
    for k, config in enumerate(configs):
        alone = RunFolder(tmp_path / f"alone{k}")
        summary = pretrain.run(config, alone)
        np.testing.assert_allclose(losses(folders[k].root), losses(alone.root), rtol=2e-4)
        assert outs[k]["val_loss"] == pytest.approx(summary["val_loss"], rel=2e-4)
        assert outs[k]["n_checkpoints"] == summary["n_checkpoints"]
    assert abs(outs[0]["val_loss"] - outs[1]["val_loss"]) > 1e-3     # the members really differ


def test_sweep_cli_table_failures_and_resume(tmp_path, capsys):
    out = tmp_path / "sw"
    argv = ["sweep", "pretrain", "--preset", "micro", "--set", "train.steps=8", "--set", "train.eval_every=4",
            "--set", "train.checkpoint_every=4", "--set", "train.log_checkpoints_until=2",
            "--grid", "train.lr=1e-3,1e6", "--out", str(out)]
    assert cli(argv) == 1                                    # lr=1e6 diverges: recorded, the other finishes
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["status"] for r in rows] == ["ok", "failed"] and "loss became" in rows[1]["error"]
    assert float(rows[0]["val_loss"]) < 4 and (out / "figures" / "sweep_train.lr.png").exists()
    assert json.loads((out / "results.json").read_text())[0]["train.lr"] == "1e-3"
    finished = (out / rows[0]["folder"] / "summary.json").stat().st_mtime
    assert cli(argv) == 1                                    # resume: the finished point is kept as it was
    assert (out / rows[0]["folder"] / "summary.json").stat().st_mtime == finished
    assert cli(argv[:-4] + ["--grid", "train.lr=2e-3", "--out", str(out)]) == 2   # a different sweep is refused
    assert "different sweep" in capsys.readouterr().err


def test_random_points_and_bad_specs():
    base = pretrain.PRESETS["micro"]
    points = sweep.expand(base, {"train.seed": ["0", "1"]}, {"train.lr": [1e-4, 1e-2, "log"]}, 3, seed=0)
    assert len(points) == 6 and all(1e-4 <= float(p["train.lr"]) <= 1e-2 for p in points)
    assert sweep.expand(base, {}, {"train.seed": [0, 9, "lin"]}, 2, 0)[0]["train.seed"].isdigit()
    with pytest.raises(Exception, match="unknown config key"):
        sweep.expand(base, {"train.nope": ["1"]}, {}, 0, 0)
    assert cli(["sweep", "pretrain", "--range", "train.lr=abc"]) == 2
    assert cli(["sweep", "nonexistent", "--grid", "a=1"]) == 2
