"""`bench core`, `bench torch` and `bench stacked`: the matmul peak, training throughput and MFU
beside nanoGPT in PyTorch eager when torch is importable, sampling speed, and the stacked vmap
against a loop over checkpoints (each mode in its own process)."""
from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from models.errors import OntogenyError
from experiments.bench.timing import CompileMeter, comparison_shapes, matmul_peak_gflops, timeit, train_flops_per_token


def train_throughput(model_config, batch_size: int, steps: int = 5) -> dict:
    from dynamics import train as train_lib
    from models import gpt

    tc = train_lib.TrainConfig(steps=1000, batch_size=batch_size)
    optimizer = train_lib.scheduled_adamw(tc)
    state = train_lib.init_state(gpt.init_params(model_config, jax.random.PRNGKey(0)), optimizer, 0)
    step = train_lib.make_train_step(train_lib.lm_loss(model_config), optimizer, dropout=model_config.dropout > 0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, model_config.vocab_size, (batch_size, model_config.context + 1)).astype(np.int32)
    batch = {"inputs": x[:, :-1], "targets": x[:, 1:]}
    if len(jax.devices()) > 1:  # data parallel over every device, as `pretrain` trains
        from dynamics import sharding

        mesh = sharding.data_mesh()
        state, batch = sharding.replicate(state, mesh), sharding.shard_batch(batch, mesh)
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
    from dynamics.checkpoints import map_stack
    from dynamics.stacks import stack_trees, unstack_tree
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


def _stacked_child(mode: str, n_checkpoints: int, n_windows: int) -> None:
    """One measurement in a fresh process (so its peak RSS is its own): every layer's residual
    stream of `n_checkpoints` tiny-model checkpoints over n_windows x 64 tokens, by the chunked
    `map_stack` ("vmap") or by a loop of one jitted call per checkpoint ("loop")."""
    import resource

    from dynamics.checkpoints import auto_chunk_size, map_stack
    from dynamics.stacks import stack_trees, unstack_tree
    from experiments.studies.pretrain.study import PRESETS
    from models import gpt

    cfg = PRESETS["tiny"].model.__class__(**{**PRESETS["tiny"].model.__dict__, "vocab_size": 84})
    stacked = stack_trees([gpt.init_params(cfg, jax.random.PRNGKey(i)) for i in range(n_checkpoints)])
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 84, (n_windows, cfg.context)), jnp.int32)

    def every_layer(params, tokens):
        _, acts = gpt.apply(params, tokens, cfg, capture=("embed", "resid"))
        return jnp.concatenate([acts["embed"][None], acts["resid"]], axis=0)        # [L+1, B, C, D]

    meter = CompileMeter.start()  # XLA compilations from here on (this process is fresh)
    t0 = time.perf_counter()
    if mode == "vmap":
        chunk = auto_chunk_size(every_layer, stacked, tokens)
        out = map_stack(every_layer, stacked, tokens)
    else:
        chunk = 1
        one = jax.jit(every_layer)
        out = np.stack([np.asarray(one(unstack_tree(stacked, t), tokens)) for t in range(n_checkpoints)])
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30      # ru_maxrss is KiB on Linux
    print(json.dumps({"wall_s": wall, "peak_rss_gib": peak, "compiles": meter.counts["compiles"], "chunk": chunk,
                      "output_gib": out.nbytes / 2**30, "shape": list(out.shape)}))


def stacked_memory(quick: bool = False) -> dict:
    """32 checkpoints x 8192 tokens, every layer's residual: chunked vmap against a loop, each in
    its own process (wall time including compilation, peak RSS, compile count)."""
    import subprocess
    import sys

    T, windows = (8, 32) if quick else (32, 128)
    runs = {}
    for mode in ("vmap", "loop"):
        code = f"from experiments.bench import core; core._stacked_child({mode!r}, {T}, {windows})"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if proc.returncode != 0:
            raise OntogenyError(f"the stacked-memory measurement failed: {proc.stderr.strip().splitlines()[-1]}")
        runs[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    v, l = runs["vmap"], runs["loop"]
    result = {"stacked_checkpoints": T, "stacked_tokens": windows * 64, "stacked_output_gib": v["output_gib"],
              "stacked_vmap_s": v["wall_s"], "stacked_loop_s": l["wall_s"], "stacked_loop_over_vmap": l["wall_s"] / v["wall_s"],
              "stacked_peak_rss_gib": v["peak_rss_gib"], "stacked_loop_peak_rss_gib": l["peak_rss_gib"],
              "stacked_chunk": v["chunk"], "stacked_compiles_vmap": v["compiles"], "stacked_compiles_loop": l["compiles"]}
    print(f"stacked: {T} checkpoints x {windows * 64} tokens, every layer's residual ({v['output_gib']:.2f} GiB out): "
          f"chunked vmap {v['wall_s']:.1f} s (chunk {v['chunk']}, peak RSS {v['peak_rss_gib']:.2f} GiB, "
          f"{v['compiles']} compiles), loop {l['wall_s']:.1f} s (peak RSS {l['peak_rss_gib']:.2f} GiB, "
          f"{l['compiles']} compiles), loop/vmap {result['stacked_loop_over_vmap']:.2f}", flush=True)
    return result


def _train_child(name: str, steps: int, batch_size: int | None = None) -> None:
    """Training throughput of a preset's shape in this process (run with a host device count)."""
    from experiments.studies.pretrain.study import PRESETS

    cfg = PRESETS[name].model.__class__(**{**PRESETS[name].model.__dict__, "vocab_size": 84, "dropout": 0.0})
    r = train_throughput(cfg, batch_size or PRESETS[name].train.batch_size, steps=steps)
    print(json.dumps({**r, "devices": len(jax.devices())}))


def train_on_host_devices(name: str, n_devices: int, steps: int, batch_size: int | None = None) -> dict:
    """The same measurement in a subprocess with `n_devices` host devices (data parallel)."""
    import os
    import subprocess
    import sys

    flags = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n_devices}").strip()
    code = f"from experiments.bench import core; core._train_child({name!r}, {steps}, {batch_size!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "XLA_FLAGS": flags})
    if proc.returncode != 0:
        raise OntogenyError(f"the {n_devices}-device training measurement failed: "
                            f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def train_vs_torch(shapes: dict, peak_gflops: float, quick: bool = False) -> dict:
    """Training tokens/s at the comparison batches (`torch_reference.SHAPES`), beside nanoGPT in PyTorch eager when
    torch is importable (interleaved windows), and on 2 host devices (data parallel): interleaved
    too when this process has them (ONTOGENY_HOST_DEVICES=2 python -m experiments bench), else in a
    subprocess."""
    from experiments.bench import torch_reference as bench_torch

    chosen = {name: (cfg, bench_torch.SHAPES[name]) for name, cfg in shapes.items() if not quick or name == "tiny"}
    results = bench_torch.side_by_side(chosen, train_flops_per_token, peak_gflops,
                                       steps={"tiny": 20, "shakespeare-char": 3})
    for name, (cfg, batch) in chosen.items():
        key = name.replace("-", "_")
        if f"tokens_per_s_{key}_2dev" in results:  # measured beside the others
            continue
        r = train_on_host_devices(name, 2, steps=3 if name != "tiny" else 20, batch_size=batch)
        results[f"tokens_per_s_{key}_2dev"] = r["tokens_per_s"]
        results[f"mfu_{key}_2dev"] = r["gflops"] / peak_gflops
        print(f"train {name} B{batch} on 2 host devices (data parallel, XLA_FLAGS=--xla_force_host_platform_device_count=2): "
              f"{r['tokens_per_s']:,.0f} tokens/s, MFU {results[f'mfu_{key}_2dev']:.3f}", flush=True)
    return results


def torch_section(quick: bool = False) -> dict:
    """`bench torch`: the matmul peak and the training figures of `bench core`, nothing else."""
    shapes = comparison_shapes()
    results = {"matmul_peak_gflops": matmul_peak_gflops()}
    print(f"matmul peak (fp32, jit dot 2048^2): {results['matmul_peak_gflops']:.1f} GFLOP/s", flush=True)
    return {**results, **train_vs_torch(shapes, results["matmul_peak_gflops"], quick)}


def core(quick: bool = False) -> dict:
    shapes = comparison_shapes()
    results = {"device": str(jax.devices()[0].platform), "n_devices": len(jax.devices())}
    results["matmul_peak_gflops"] = matmul_peak_gflops()
    print(f"matmul peak (fp32, jit dot 2048^2): {results['matmul_peak_gflops']:.1f} GFLOP/s", flush=True)
    results.update(train_vs_torch(shapes, results["matmul_peak_gflops"], quick))
    results["sample_chars_per_s"] = sampling_speed(shapes["tiny"])
    print(f"sampling (tiny, batch 64, KV cache): {results['sample_chars_per_s']:,.0f} chars/s", flush=True)
    r = stacked_vs_loop(shapes["tiny"])
    results["stack_vmap_over_loop"] = r["loop_over_vmap"]
    print(f"forward over 16 stacked checkpoints: loop {r['loop_s'] * 1e3:.0f} ms, vmap {r['vmap_s'] * 1e3:.0f} ms, "
          f"loop/vmap {r['loop_over_vmap']:.2f}", flush=True)
    return results
