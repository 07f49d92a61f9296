"""`bench gpu` at micro size on the CPU (every step for real, so the check cannot rot), and its
guards: a failing, crashing or hanging step is recorded and the others still run."""
import json
import math

import pytest

from experiments.bench import gpu
from experiments.cli import registry


@pytest.fixture
def out_json(tmp_path, monkeypatch):
    path = tmp_path / "bench-gpu.json"
    monkeypatch.setenv("ONTOGENY_BENCH_GPU_JSON", str(path))
    monkeypatch.setenv("ONTOGENY_BENCH_GPU_DIR", str(tmp_path / "work"))
    return path


def test_the_micro_check_runs_every_step_and_writes_one_json(out_json):
    assert registry.bench_sections()["gpu"] == ("experiments.bench.gpu", "bench")
    r = gpu.bench(quick=True)
    steps = r["gpu_steps"]
    failed = {k: (v["error"], v["log_tail"]) for k, v in steps.items() if not v["ok"]}
    assert not failed, failed
    assert set(steps) == {"device", "train", "suite", "suite_crosscoders", "suite_neuromfa", "probes"}
    assert json.loads(out_json.read_text())["gpu_steps_ok"] == sorted(steps)
    d, t = steps["device"], steps["train"]
    assert d["platform"] == "cpu" and d["matmul_peak_fp32_gflops"] > 0 and d["matmul_peak_bf16_gflops"] > 0
    # the micro model starts at about ln(vocab) nats and must have learned something in 30 steps
    assert t["steps"] == 30 and t["stopped"] == "steps done" and not t["reached"]
    assert t["last_val_loss"] < t["evaluations"][0]["val_loss"] - 0.3
    assert math.isfinite(t["val_loss_whole_split"]) and t["tokens_per_s"] > 0
    assert 0 < r["gpu_train_mfu_vs_fp32"] < 1.5
    assert steps["suite"]["checkpoints"] == 4 and steps["suite"]["rc"] == 0
    cc = steps["suite_crosscoders"]
    assert cc["rc"] == 0 and -1 < cc["explained_variance_min"] <= 1 and cc["train_tokens_per_s"] > 0
    assert steps["suite_neuromfa"]["rc"] == 0 and math.isfinite(steps["suite_neuromfa"]["alpha0_last"])
    p = steps["probes"]
    assert p["probes_converged"] == p["probes_total"] and p["probes_objective_ours_le_sklearn"]
    for name in ("suite_crosscoders", "suite_neuromfa", "probes"):
        assert steps[name]["peak_rss_gib"] > 0 and steps[name]["device_peak_gib"] is None  # a CPU has no device stats


FAKE_CHILD = """
import json, sys, time
step, size, work, result = sys.argv[1:5]
if step == "suite":
    print("the suite could not be written: disk full"); sys.exit(3)
if step == "probes":
    time.sleep(30)
json.dump({"rc": 0, "step": step}, open(result, "w"))
"""


def test_a_failing_or_hanging_step_is_recorded_and_the_others_run(out_json, monkeypatch):
    monkeypatch.setattr(gpu, "_CODE", FAKE_CHILD)
    monkeypatch.setitem(gpu.CAPS_S, "micro", {**gpu.CAPS_S["micro"], "probes": 2})
    r = gpu.bench(quick=True)
    steps = r["gpu_steps"]
    assert steps["device"]["ok"] and steps["train"]["ok"]
    assert not steps["suite"]["ok"] and steps["suite"]["error"] == "exit status 3"
    assert "disk full" in steps["suite"]["log_tail"][-1]
    for name in ("suite_crosscoders", "suite_neuromfa"):
        assert steps[name]["error"] == "skipped: the suite step failed"
    assert steps["probes"]["error"] == "timed out after 2 s"
    written = json.loads(out_json.read_text())
    assert written["gpu_steps_failed"] == ["probes", "suite", "suite_crosscoders", "suite_neuromfa"]
