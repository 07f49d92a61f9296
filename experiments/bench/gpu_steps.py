"""The steps of `bench gpu`, each run in a process of its own by `experiments.bench.gpu`.

`child()` is the entry point of that process: `python -c "from experiments.bench import
gpu_steps; gpu_steps.child()" STEP SIZE WORK RESULT [PEAK]` runs one step and writes its
figures as JSON to RESULT, with the process's peak device memory (jax's `peak_bytes_in_use`,
None on a CPU) and peak host RSS. SIZE is "full" (the accelerator's sizes) or "micro" (seconds
on a CPU, for the tests).
"""
from __future__ import annotations

import dataclasses
import json
import os
import resource
import sys
import time
from pathlib import Path

NANOGPT_VAL_LOSS = 1.4697  # nanoGPT's README: shakespeare_char, 5000 iterations, validation loss
TRAIN_CAP_S = {"full": 180.0, "micro": 300.0}  # training stops at the first evaluation past this


def device(size: str, work: Path) -> dict:
    """What jax runs on, its memory and the measured matmul peak: fp32 at jax's default precision
    (TF32 tensor cores on recent NVIDIA GPUs), fp32 at the highest precision, and bf16."""
    import jax
    import jax.numpy as jnp

    from dynamics import stacks
    from experiments.bench.timing import matmul_peak_gflops

    devices = jax.local_devices()
    n = 256 if size == "micro" else (8192 if stacks.on_accelerator() else 2048)
    peaks = {f"matmul_peak_{name}_gflops": matmul_peak_gflops(n, dtype, precision)
             for name, dtype, precision in (("fp32", jnp.float32, None), ("fp32_highest", jnp.float32, "highest"),
                                            ("bf16", jnp.bfloat16, None))}
    stats = stacks.device_memory_stats()
    return {"platform": devices[0].platform, "device_kind": devices[0].device_kind, "n_devices": len(devices),
            "jax_version": jax.__version__, "matmul_n": n, **peaks,
            "device_memory_gib": (stats[0]["bytes_limit"] / 2 ** 30) if stats else None}


class _Stop(Exception):
    """Raised from the evaluation to end the training: the target was met or the time is up."""


def train(size: str, work: Path) -> dict:
    """nanoGPT's shakespeare-char recipe (the `shakespeare-char` preset: 6 layers, width 384,
    context 256, dropout 0.2, batch 64, lr 1e-3 cosine to 1e-4 over 5000 steps) through the
    trainer the CLI uses (`dynamics.train.run_training`: donated step, orbax checkpoints, the
    preset's evaluations of 20 held-out batches every 250 steps), stopped at the first
    evaluation at or below nanoGPT's published validation loss, or past `TRAIN_CAP_S`. Times
    include compilation, evaluations and checkpoints. [choice] The held-out split is
    Ontogeny's (whole plays), not nanoGPT's last 10% of the text, so the target is a reference
    point, not a replication; the whole held-out split is scored at the end."""
    import jax
    import numpy as np

    from dynamics import data as data_lib
    from dynamics import train as train_lib
    from dynamics.runlog import RunFolder
    from experiments.bench.timing import train_flops_per_token
    from experiments.studies.pretrain.study import PRESETS, full_split_summary, resolved_model
    from models import gpt

    preset = PRESETS["shakespeare-char"]
    if size == "micro":
        preset = dataclasses.replace(PRESETS["micro"], train=dataclasses.replace(PRESETS["micro"].train, steps=30,
                                                                                 eval_every=10))
    target = NANOGPT_VAL_LOSS if size == "full" else None
    corpus = data_lib.load_corpus(preset.data)
    model_config, tc = resolved_model(preset, corpus), preset.train
    optimizer = train_lib.scheduled_adamw(tc)
    state = train_lib.init_state(gpt.init_params(model_config, jax.random.PRNGKey(tc.seed)), optimizer, tc.seed)
    loss_fn = train_lib.lm_loss(model_config)
    step_fn = train_lib.make_train_step(loss_fn, optimizer, dropout=model_config.dropout > 0)
    eval_loss = train_lib.make_eval_fn(loss_fn)
    val = [dict(zip(("inputs", "targets"), b))
           for b in data_lib.eval_batches(corpus.val_ids, tc.eval_batches, tc.batch_size, model_config.context)]
    seen, trace, t0 = {"step": 0}, [], time.perf_counter()
    final = {"params": None, "why": "steps done"}

    def batch_fn(step):
        seen["step"] = step + 1  # the step the next evaluation follows
        x, y = data_lib.get_batch(corpus.train_ids, tc.seed, step, tc.batch_size, model_config.context)
        return {"inputs": x, "targets": y}

    def eval_fn(params):
        loss = float(np.mean([float(eval_loss(params, b)) for b in val]))
        trace.append({"step": seen["step"], "s": time.perf_counter() - t0, "val_loss": loss})
        met = target is not None and loss <= target and seen["step"] > 0
        if met or time.perf_counter() - t0 > TRAIN_CAP_S[size]:
            final.update(params=params, why="target met" if met else "time cap")
            raise _Stop
        return {"val_loss": loss}

    folder = RunFolder(work / "train")
    try:
        state = train_lib.run_training(folder, "pretrain", state, step_fn, batch_fn, tc, eval_fn=eval_fn,
                                       tokens_per_step=tc.batch_size * model_config.context)
        final["params"] = state["params"]
    except _Stop:
        pass
    wall = time.perf_counter() - t0
    rows = [r for r in folder.read_metrics() if r.get("tokens_per_s")]
    tps = float(np.median([r["tokens_per_s"] for r in rows[1:]] or [r["tokens_per_s"] for r in rows] or [0.0]))
    whole = full_split_summary(final["params"], model_config, corpus.val_ids)
    reached = [t for t in trace if target is not None and t["val_loss"] <= target and t["step"] > 0]
    return {"target_val_loss": target, "reached": bool(reached), "stopped": final["why"],
            "steps": seen["step"], "steps_planned": tc.steps, "wall_s": wall,
            "seconds_to_target": reached[0]["s"] if reached else None,
            "steps_to_target": reached[0]["step"] if reached else None,
            "last_val_loss": trace[-1]["val_loss"] if trace else None, "val_loss_whole_split": whole["val_loss_full"],
            "tokens_per_s": tps, "gflops_per_s": train_flops_per_token(model_config) * tps / 1e9,
            "evaluations": trace}


def suite(size: str, work: Path) -> dict:
    """A random suite of Pythia-70M's shape (32 steps; micro: a 4-layer width-64 NeoX, 4 steps)
    made as Hugging Face folders and imported in bf16 (`python -m experiments import`)."""
    from dynamics import hf_hub
    from experiments.bench.suite import PYTHIA_70M, make_suite
    from experiments.tools.import_suite import main as import_main

    cfg = PYTHIA_70M if size == "full" else {**PYTHIA_70M, "hidden_size": 64, "intermediate_size": 256,
                                              "num_attention_heads": 4, "num_hidden_layers": 4, "vocab_size": 512}
    steps = hf_hub.expand_steps("ge2025")[:32 if size == "full" else 4]
    t0 = time.perf_counter()
    make_suite(work / "hf", steps, cfg)
    made = time.perf_counter() - t0
    t0 = time.perf_counter()
    rc = import_main(["--from", str(work / "hf"), "--out", str(work / "run"), "--dtype", "bfloat16"])
    return {"checkpoints": len(steps), "make_s": made, "import_s": time.perf_counter() - t0, "rc": rc}


def _study(module, preset: str, out: Path, sets: dict, keys: tuple[str, ...]) -> dict:
    """One study run as the CLI runs it (preset, `--set` overrides, `run_into`), in this
    process: its wall time and summary figures; rc 2 with the one-line error where the CLI
    would exit 2."""
    from experiments.cli.config import override, run_into
    from models.errors import OntogenyError

    t0 = time.perf_counter()
    try:
        config = override(module.PRESETS[preset], [f"{k}={v}" for k, v in sets.items()])
        run_into(out, module.__name__.split(".")[-2], preset, module, config)
    except OntogenyError as e:
        print(f"error: {e}", flush=True)
        return {"rc": 2, "wall_s": time.perf_counter() - t0}
    summary = json.loads((out / "summary.json").read_text())
    return {"rc": 0, "wall_s": time.perf_counter() - t0, **{k: summary.get(k) for k in keys}}


def suite_crosscoders(size: str, work: Path) -> dict:
    """Ge et al.'s preset on the suite (JumpReLU, all snapshots, activations straight from the
    vmapped forward), cut to fit a few minutes: [choice] 16384 features as the preset, batch 1024
    instead of 4096 (the preset's latents would need ~70 GB), 200 steps, smaller analyses."""
    full = size == "full"
    sets = {"run": work / "run", "site": "resid_post.3", "crosscoder.n_snapshots": 32 if full else 4,
            "crosscoder.n_features": 16384 if full else 256, "crosscoder.batch_size": 1024 if full else 128,
            "crosscoder.steps": 200 if full else 4, "crosscoder.dead_tokens": 20000, "context": 128 if full else 32,
            "eval_windows": 16 if full else 4, "n_induction": 16 if full else 4, "n_ablate": 16 if full else 2,
            "n_random": 2 if full else 1}
    from experiments.studies.crosscoders import study

    return _study(study, "ge2025", work / "suite_crosscoders", sets,
                  ("explained_variance_min", "l0_mean", "train_tokens_per_s", "forward_s_per_token",
                   "memory_budget_gib", "crosscoder_training_gib"))


def suite_neuromfa(size: str, work: Path) -> dict:
    """Xiao et al.'s preset on the suite (micro: 2 samples of 16 / 32 neurons, short windows)."""
    from experiments.studies.neuromfa import study

    sets = {"run": work / "run"}
    if size == "micro":
        sets.update(n_resid=16, n_mlp=32, n_samples=2, context=16, eval_windows=4, control_draws=2,
                    **{"mfa.min_degree": 4})
    return _study(study, "xiao2025", work / "suite_neuromfa", sets,
                  ("alpha0_first", "alpha0_last", "emergence_last", "emergence_minus_control_last"))


def probes(size: str, work: Path) -> dict:
    """`bench probes` (its quick size for micro): the fits against scikit-learn and the matmul peak."""
    from experiments.bench import studies

    return studies.bench_probes(quick=size == "micro")


STEPS = {"device": device, "train": train, "suite": suite, "suite_crosscoders": suite_crosscoders,
         "suite_neuromfa": suite_neuromfa, "probes": probes}


def child() -> None:
    """Run STEP at SIZE in WORK and write its figures to RESULT (see the module docstring)."""
    step, size, work, result = sys.argv[1:5]
    from dynamics import stacks

    out = STEPS[step](size, Path(work))
    peak = stacks.device_peak_bytes()
    out.update(device_peak_gib=None if peak is None else peak / 2 ** 30,
               peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2 ** 30)
    tmp = Path(result + ".tmp")
    tmp.write_text(json.dumps(out, default=float))
    os.replace(tmp, result)
