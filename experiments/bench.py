"""Benchmarks: figures measured in one run on this machine, printed and optionally saved as JSON.

    python -m experiments bench [SECTION ...] [--out FILE] [--quick]

Sections: core (default: matmul peak, training throughput and MFU, sampling speed, stacked
vmap vs loop); probes and crosscoder live with their studies (STUDY_SECTIONS). Ratios are only comparable
within one run: the machine is shared and noisy.
"""
from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from dynamics.errors import OntogenyError
from experiments.config import ArgumentParser

DESCRIPTION = "measure matmul peak, training MFU, sampling speed and stacked-vmap speed-up (not a test)"


def timeit(fn, *, repeats: int = 3, number: int = 1) -> float:
    """Best wall time of `number` calls (after one warm-up call), over `repeats`."""
    jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            out = fn()
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def matmul_peak_gflops(n: int = 2048) -> float:
    """fp32 matmul throughput of jax.jit(jnp.dot) on an n x n problem."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    return 2 * n**3 / timeit(lambda: dot(a, b), repeats=5) / 1e9


def train_flops_per_token(config) -> float:
    """6 x matmul params (blocks and the head) + 12 L D T for attention (PaLM's estimate)."""
    L, D, F, V, T = config.n_layer, config.d_model, config.d_mlp, config.vocab_size, config.context
    matmul_params = L * (D * 3 * D + D * D + 2 * D * F) + D * V
    return 6 * matmul_params + 12 * L * D * T


def train_throughput(model_config, batch_size: int, steps: int = 5) -> dict:
    from dynamics import train as train_lib
    from models import gpt

    tc = train_lib.TrainConfig(steps=1000, batch_size=batch_size)
    optimizer = train_lib.make_optimizer(tc)
    state = train_lib.init_state(gpt.init_params(model_config, jax.random.PRNGKey(0)), optimizer, 0)
    step = train_lib.make_train_step(train_lib.lm_loss(model_config), optimizer, dropout=model_config.dropout > 0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, model_config.vocab_size, (batch_size, model_config.context + 1)).astype(np.int32)
    batch = {"inputs": x[:, :-1], "targets": x[:, 1:]}
    t0 = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    dt = float(np.median(times))
    tokens = batch_size * model_config.context
    return {"tokens_per_s": tokens / dt, "gflops": train_flops_per_token(model_config) * tokens / dt / 1e9,
            "step_s": dt, "compile_s": compile_s}


def sampling_speed(model_config, batch: int = 64, n_new: int = 256) -> float:
    from models import gpt, sample

    params = gpt.init_params(model_config, jax.random.PRNGKey(0))
    prompt = np.zeros((batch, 1), np.int32)
    n_new = min(n_new, model_config.context - 1)
    dt = timeit(lambda: sample.generate(params, model_config, prompt, n_new, jax.random.PRNGKey(1)), repeats=3)
    return batch * n_new / dt


def stacked_vs_loop(model_config, n_checkpoints: int = 16, batch: int = 8) -> dict:
    from dynamics.checkpoints import map_stack, stack_trees, unstack_tree
    from models import gpt

    stacked = stack_trees([gpt.init_params(model_config, jax.random.PRNGKey(i)) for i in range(n_checkpoints)])
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, model_config.vocab_size, (batch, model_config.context)))

    def resid(params, tokens):
        return gpt.apply(params, tokens, model_config, capture=("resid",))[1]["resid"]

    one = jax.jit(resid)
    per_ckpt = [jax.device_put(unstack_tree(stacked, t)) for t in range(n_checkpoints)]
    loop_s = timeit(lambda: [one(p, tokens) for p in per_ckpt][-1], repeats=3)
    vmap_s = timeit(lambda: map_stack(resid, stacked, tokens), repeats=3)
    return {"loop_s": loop_s, "vmap_s": vmap_s, "loop_over_vmap": loop_s / vmap_s}


def core(quick: bool = False) -> dict:
    from experiments.pretrain import PRESETS
    from models import gpt

    vocab = 84  # the Shakespeare corpus
    shapes = {name: PRESETS[name].model.__class__(**{**PRESETS[name].model.__dict__, "vocab_size": vocab})
              for name in ("tiny", "shakespeare-char")}
    batches = {name: PRESETS[name].train.batch_size for name in shapes}
    results = {"device": str(jax.devices()[0].platform), "n_devices": len(jax.devices())}
    results["matmul_peak_gflops"] = matmul_peak_gflops()
    print(f"matmul peak (fp32, jit dot 2048^2): {results['matmul_peak_gflops']:.1f} GFLOP/s", flush=True)
    for name, cfg in shapes.items():
        if quick and name != "tiny":
            continue
        r = train_throughput(cfg, batches[name], steps=3 if name != "tiny" else 8)
        key = name.replace("-", "_")
        results[f"tokens_per_s_{key}"] = r["tokens_per_s"]
        results[f"train_gflops_{key}"] = r["gflops"]
        results[f"mfu_{key}"] = r["gflops"] / results["matmul_peak_gflops"]
        results[f"compile_s_{key}"] = r["compile_s"]
        print(f"train {name} ({cfg.n_layer}L d{cfg.d_model} T{cfg.context} B{batches[name]}): "
              f"{r['tokens_per_s']:,.0f} tokens/s, {r['gflops']:.1f} GFLOP/s, MFU {results[f'mfu_{key}']:.3f}, "
              f"compile {r['compile_s']:.1f} s", flush=True)
    results["sample_chars_per_s"] = sampling_speed(shapes["tiny"])
    print(f"sampling (tiny, batch 64, KV cache): {results['sample_chars_per_s']:,.0f} chars/s", flush=True)
    r = stacked_vs_loop(shapes["tiny"])
    results["stack_vmap_over_loop"] = r["loop_over_vmap"]
    print(f"forward over 16 stacked checkpoints: loop {r['loop_s'] * 1e3:.0f} ms, vmap {r['vmap_s'] * 1e3:.0f} ms, "
          f"loop/vmap {r['loop_over_vmap']:.2f}", flush=True)
    return results


# Sections that live with their study, imported only when asked for.
STUDY_SECTIONS = {"probes": ("experiments.cognition", "bench_probes"),
                  "crosscoder": ("experiments.crosscoders", "bench"),
                  "sweep": ("experiments.sweep", "bench")}


def sections() -> dict:
    import importlib
    import importlib.util

    found = {"core": core}
    for name, (module, attr) in STUDY_SECTIONS.items():
        if importlib.util.find_spec(module) is not None:
            found[name] = (lambda module=module, attr=attr, **kw: getattr(importlib.import_module(module), attr)(**kw))
    return found


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="python -m experiments bench", description=DESCRIPTION)
    available = sections()
    parser.add_argument("sections", nargs="*", default=["core"], help=f"any of: {', '.join(available)}")
    parser.add_argument("--out", help="also write the figures as JSON to this file")
    parser.add_argument("--quick", action="store_true", help="skip the slow shakespeare-char shape")
    args = parser.parse_args(argv)
    unknown = [s for s in args.sections if s not in available]
    if unknown:
        raise OntogenyError(f"unknown bench section {unknown[0]!r}; choose from: {', '.join(available)}")
    results = {}
    for section in args.sections:
        results.update(available[section](quick=args.quick))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.out}")
    return 0
