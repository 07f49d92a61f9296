"""The CLI's host devices: when `python -m experiments` asks XLA for them
(ONTOGENY_HOST_DEVICES, or the default where DEFAULT_DEVICES > 1), training over them gives one
device's losses, and a batch that does not split still trains."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from models.errors import OntogenyError
from experiments.cli import host_devices
from tests.conftest import REPO, run_cli


ASK = {"ONTOGENY_HOST_DEVICES": "2"}


@pytest.mark.parametrize("env, cores, expected", [
    (ASK, 2, 2), ({"ONTOGENY_HOST_DEVICES": "4"}, 2, 4), ({"ONTOGENY_HOST_DEVICES": "1"}, 4, None),
    ({**ASK, "JAX_PLATFORMS": "cpu"}, 4, 2), ({**ASK, "JAX_PLATFORMS": "cuda"}, 4, None),
    ({**ASK, "XLA_FLAGS": "--xla_force_host_platform_device_count=3"}, 4, None),
    ({**ASK, "XLA_FLAGS": "--xla_cpu_use_thunk_runtime=true"}, 4, 2),
    ({**ASK, "ONTOGENY_COORDINATOR": "h:1"}, 4, None), ({**ASK, "SLURM_JOB_ID": "7", "SLURM_NTASKS": "2"}, 4, None),
])
def test_host_device_count(env, cores, expected):
    assert host_devices.host_device_count(env, cores) == expected


@pytest.mark.parametrize("default", [1, 2])
def test_the_default_is_min_of_its_constant_and_the_cores(monkeypatch, default):
    monkeypatch.setattr(host_devices, "DEFAULT_DEVICES", default)
    assert host_devices.host_device_count({}, 8) == (default if default > 1 else None)
    assert host_devices.host_device_count({}, 1) is None


def test_configure_appends_to_xla_flags_and_refuses_a_bad_count():
    env = {**ASK, "XLA_FLAGS": "--xla_cpu_use_thunk_runtime=true"}
    assert host_devices.configure(env, cores=2) == 2
    assert env["XLA_FLAGS"] == "--xla_cpu_use_thunk_runtime=true --xla_force_host_platform_device_count=2"
    assert host_devices.configure(env, cores=2) is None  # already set: left alone
    with pytest.raises(OntogenyError, match="ONTOGENY_HOST_DEVICES"):
        host_devices.configure({"ONTOGENY_HOST_DEVICES": "two"}, cores=2)


def _pretrain(tmp_path, name, env, *settings):
    env = {"XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", **env}
    proc = run_cli("pretrain", "--preset", "micro", "--out", str(tmp_path / name), "--set", "train.steps=6",
                   "--set", "train.log_every=1", *[a for s in settings for a in ("--set", s)], env_extra=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((tmp_path / name / "summary.json").read_text())
    return [r["loss"] for r in rows if r.get("loss") is not None], summary, proc.stderr


def test_cli_trains_on_host_devices_like_one_device(tmp_path):
    two_losses, two, _ = _pretrain(tmp_path, "two", ASK)
    one_losses, one, _ = _pretrain(tmp_path, "one", {"ONTOGENY_HOST_DEVICES": "1"})
    assert two["train_devices"] == 2 and one["train_devices"] == 1
    assert len(one_losses) == 6
    np.testing.assert_allclose(two_losses, one_losses, rtol=1e-5)
    np.testing.assert_allclose(two["val_loss_full"], one["val_loss_full"], rtol=1e-5)

    odd_losses, odd, stderr = _pretrain(tmp_path, "odd", ASK, "train.batch_size=7")
    assert odd["train_devices"] == 1 and len(odd_losses) == 6 and np.all(np.isfinite(odd_losses))
    assert "batch size 7 does not split over 2 devices; training on 1" in stderr


def test_training_mesh_falls_back_to_the_devices_that_split_the_batch():
    code = ("from dynamics import train as t; import jax; c = t.TrainConfig(batch_size=4); "
            "print(len(jax.devices()), t.training_mesh(c).devices.size, t.training_mesh(c, (4, 6)).devices.size, "
            "t.training_mesh(c, (5,)), t.training_mesh(t.TrainConfig(batch_size=6)).devices.size, "
            "t.training_mesh(t.TrainConfig(batch_size=6, data_parallel=False)))")
    env = {**os.environ, "PYTHONPATH": str(REPO), "XLA_FLAGS": "--xla_force_host_platform_device_count=3",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["3", "2", "2", "None", "3", "None"]
    assert proc.stderr.count("does not split over 3 devices") == 3
