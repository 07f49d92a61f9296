"""`python -m experiments bench gpu`: one prepared check of an accelerator, meant to run first time
and to finish in under 8 minutes on one H100.

Steps, each in a process of its own (`experiments.bench.gpu_steps`), each guarded: a failure,
a crash or a time-out is recorded with the tail of its log and the next step runs; the JSON is
rewritten after every step, so a check cut short still leaves what it measured.

1. device: what jax runs on, its memory, the matmul peak (fp32 at jax's default precision, which
   is TF32 on recent NVIDIA GPUs; fp32 at the highest precision; bf16).
2. train: nanoGPT's shakespeare-char recipe until the held-out loss reaches nanoGPT's published
   1.4697 (or a time cap): seconds and steps to it, tokens/s, MFU against the step-1 peaks.
3. suite (beside 1 and 2, on the host's CPU: JAX_PLATFORMS=cpu): a random 32-step suite of
   Pythia-70M's shape made and imported in bf16.
4. suite_crosscoders: Ge et al.'s preset on it, cut to fit; 5. suite_neuromfa: Xiao et al.'s on it;
   wall time, peak device memory and peak host RSS of each.
6. probes: `bench probes` (fits against scikit-learn, and their share of the matmul peak).

`--micro` (or `--quick`) runs every step at micro sizes on whatever jax has (the CPU in the
tests, under a minute) so the check cannot rot. Where it goes: `--out FILE`, else
ONTOGENY_BENCH_GPU_JSON, else bench-gpu.json; ONTOGENY_BENCH_GPU_DIR keeps the work folder (logs, suite, runs), else a
temporary one is deleted. What a GPU changes was thought through: the CLI's malloc restart
touches host memory only; host-device flags are left alone when JAX_PLATFORMS names an
accelerator; no float64 and no host callbacks are used; XLA's default preallocation (75% of
the device) is kept, and the suite is built on the CPU so that no two processes hold the
device at once; the probes fit at the highest matmul precision (TF32 would stall Newton's
convergence test).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments.bench.gpu_steps import TRAIN_CAP_S

# [choice] full: the caps add up to the 8 minutes (the suite is built beside device and train);
# micro: generous, for a loaded CI machine (about 30 s of two quiet cores' time in all)
TOTAL_S = {"full": 470.0, "micro": 900.0}
CAPS_S = {"full": {"device": 60, "train": TRAIN_CAP_S["full"] + 60, "suite": 420,
                   "suite_crosscoders": 120, "suite_neuromfa": 100, "probes": 90},
          "micro": dict.fromkeys(("device", "train", "suite", "suite_crosscoders", "suite_neuromfa", "probes"), 400)}
NEEDS_SUITE = ("suite_crosscoders", "suite_neuromfa")
_CODE = "from experiments.bench import gpu_steps; gpu_steps.child()"
_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the `experiments` package


def start(step: str, size: str, work: Path, env_extra: dict | None = None) -> dict:
    """Start one step's process; its output goes to WORK/STEP.log, its figures to WORK/STEP.json."""
    env = {**os.environ, **(env_extra or {})}
    env["PYTHONPATH"] = os.pathsep.join([str(_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    log = open(work / f"{step}.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", _CODE, step, size, str(work), str(work / f"{step}.json")],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
    return {"step": step, "proc": proc, "log": log, "t0": time.perf_counter(), "work": work}


def finish(handle: dict, timeout: float) -> dict:
    """Wait for a started step (killing it after `timeout` s): its figures with ok, or the error."""
    proc, step, work = handle["proc"], handle["step"], handle["work"]
    try:
        rc = proc.wait(timeout=max(timeout, 1.0))
        error = None if rc == 0 else f"exit status {rc}"
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        error = f"timed out after {timeout:.0f} s"
    handle["log"].close()
    result = work / f"{step}.json"
    out = json.loads(result.read_text()) if result.exists() and error is None else {}
    if out.get("rc", 0) != 0:
        error = f"the command exited {out['rc']}"
    tail = (work / f"{step}.log").read_text(errors="replace").strip().splitlines()[-15:]
    return {**out, "ok": error is None, "error": error, "log_tail": tail if error else None,
            "step_s": time.perf_counter() - handle["t0"]}


def headline(steps: dict) -> dict:
    """The figures worth a line: time to the target loss, MFU, each step's wall and peak memory."""
    d, t = steps.get("device", {}), steps.get("train", {})
    out = {"gpu_device": d.get("device_kind"), "gpu_platform": d.get("platform"),
           "gpu_steps_ok": sorted(k for k, v in steps.items() if v.get("ok")),
           "gpu_steps_failed": sorted(k for k, v in steps.items() if not v.get("ok"))}
    for peak in ("fp32", "fp32_highest", "bf16"):
        out[f"gpu_matmul_peak_{peak}_gflops"] = d.get(f"matmul_peak_{peak}_gflops")
        if t.get("gflops_per_s") and d.get(f"matmul_peak_{peak}_gflops"):
            out[f"gpu_train_mfu_vs_{peak}"] = t["gflops_per_s"] / d[f"matmul_peak_{peak}_gflops"]
    for key in ("reached", "seconds_to_target", "steps_to_target", "last_val_loss", "val_loss_whole_split",
                "tokens_per_s", "wall_s"):
        out[f"gpu_train_{key}"] = t.get(key)
    for name in ("suite", "suite_crosscoders", "suite_neuromfa", "probes"):
        s = steps.get(name, {})
        out[f"gpu_{name}_s"], out[f"gpu_{name}_device_peak_gib"] = s.get("step_s"), s.get("device_peak_gib")
        out[f"gpu_{name}_peak_rss_gib"] = s.get("peak_rss_gib")
    return out


def _say(name: str, r: dict) -> None:
    state = "ok" if r["ok"] else f"FAILED ({r['error']})"
    mem = f", device peak {r['device_peak_gib']:.2f} GiB" if r.get("device_peak_gib") is not None else ""
    print(f"bench gpu: {name} {state} in {r['step_s']:.0f} s{mem}", flush=True)


def bench(quick: bool = False) -> dict:
    """Run the steps (micro sizes with `quick`), writing the JSON after each; returns the
    headline figures with every step's record under `gpu_steps`."""
    size = "micro" if quick else "full"
    path = Path(os.environ.get("ONTOGENY_BENCH_GPU_JSON", "bench-gpu.json")).absolute()
    keep = os.environ.get("ONTOGENY_BENCH_GPU_DIR")
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    deadline = time.perf_counter() + TOTAL_S[size]
    env = {k: os.environ.get(k) for k in ("JAX_PLATFORMS", "XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE",
                                          "XLA_PYTHON_CLIENT_MEM_FRACTION", "GLIBC_TUNABLES", "ONTOGENY_HOST_DEVICES")}
    record = {"size": size, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "environment": env, "steps": {}}

    def save(name: str, r: dict) -> None:
        record["steps"][name] = r
        record.update(headline(record["steps"]))
        path.write_text(json.dumps(record, indent=2, default=str))
        _say(name, r)

    def steps(names: list[str], started: dict) -> None:
        """Run `names` one after another, or (micro) all at once; `started` steps are waited for too."""
        started = dict(started)
        for name in names:
            if name in NEEDS_SUITE and not record["steps"].get("suite", {}).get("ok"):
                save(name, {"ok": False, "error": "skipped: the suite step failed", "step_s": 0.0})
            elif deadline - time.perf_counter() < 10:
                save(name, {"ok": False, "error": "skipped: out of the check's time", "step_s": 0.0})
            elif together:
                started[name] = start(name, size, work)
            else:
                save(name, finish(start(name, size, work), min(CAPS_S[size][name], deadline - time.perf_counter())))
        for name, handle in started.items():
            save(name, finish(handle, min(CAPS_S[size][name], max(deadline - time.perf_counter(), 1.0))))

    # [choice] micro: the steps of a phase run side by side (each is mostly one core compiling);
    # full: one at a time, so that each has the device to itself, the suite built meanwhile
    together = size == "micro"
    suite = start("suite", size, work, {"JAX_PLATFORMS": "cpu"})  # host work, beside the device's
    try:
        steps(["device", "train"], {"suite": suite})
        steps(["suite_crosscoders", "suite_neuromfa", "probes"], {})
    finally:
        if suite["proc"].poll() is None:  # interrupted while the suite was still being built
            suite["proc"].kill()
            suite["proc"].wait()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"bench gpu: {len(record['gpu_steps_ok'])}/{len(record['steps'])} steps ok; wrote {path}", flush=True)
    return {**headline(record["steps"]), "gpu_size": size, "gpu_started": record["started"],
            "gpu_environment": env, "gpu_steps": record["steps"]}
