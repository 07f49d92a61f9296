"""`python -m experiments bench sweep`: K tiny trainings as one vmapped program against K in turn.

The sweep tool's benchmark section (registered in `experiments.cli.registry`): the vmapped member
step of `dynamics.members` (learning rate and weight decay traced) beside the ordinary train
step, on the tiny pretrain shape with random tokens; also the member axis sharded over 2 host
devices, in a subprocess with XLA's host device count.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np

from dynamics import members
from dynamics import train as train_lib
from experiments.studies.pretrain.study import PRESETS
from models import gpt


def setup(K: int, batch_size: int = 16):
    """The tiny pretrain shape, K train configs (seed k, lr x (1 + 0.1 k)), a batch [K, B, S] and an init."""
    model_config = dataclasses.replace(PRESETS["tiny"].model, vocab_size=84)
    tc = train_lib.TrainConfig(steps=1000, batch_size=batch_size, lr=2e-3, warmup=100)
    configs = [dataclasses.replace(tc, seed=k, lr=tc.lr * (1 + 0.1 * k)) for k in range(K)]
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 84, (K, batch_size, model_config.context + 1)).astype(np.int32)
    batch = {"inputs": tokens[:, :, :-1], "targets": tokens[:, :, 1:]}
    init = lambda seed: gpt.init_params(model_config, jax.random.PRNGKey(seed))
    return model_config, tc, configs, batch, init


def bench_vmapped(K: int, n_steps: int) -> dict:
    """Seconds per step of K tiny models trained as one vmapped program (member axis sharded
    over the devices when there are several), compile apart."""
    model_config, tc, configs, batch, init = setup(K)
    states = members.init_states(init, configs)
    states, batch = members.shard_members(states, K), members.shard_members(batch, K)
    hp = members.hyperparams(configs)
    step = members.make_step(train_lib.lm_loss(model_config), tc, dropout=False)
    t0 = time.perf_counter()
    states, m = step(states, batch, hp)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n_steps):
        states, m = step(states, batch, hp)
    jax.block_until_ready(m)
    return {"step_s": (time.perf_counter() - t0) / n_steps, "compile_s": compile_s, "devices": len(jax.devices())}


def bench(quick: bool = False) -> dict:
    """K=8 tiny-shape trainings (4 layers, width 128, context 64, batch 16) as one vmapped program
    against 8 sequential trainings with the ordinary step, in one run; also the vmapped program
    with the member axis sharded over 2 host devices (a subprocess with XLA's host device count)."""
    K, n_steps = (4, 3) if quick else (8, 10)
    model_config, tc, configs, batch, init = setup(K)
    optimizer = train_lib.scheduled_adamw(tc)
    step = train_lib.make_train_step(train_lib.lm_loss(model_config), optimizer, dropout=False)
    seq_s, compile_s = 0.0, None
    for k in range(K):
        state = train_lib.init_state(init(k), optimizer, k)
        one = {n: v[k] for n, v in batch.items()}
        t0 = time.perf_counter()
        state, m = step(state, one)
        jax.block_until_ready(m)
        compile_s = compile_s if compile_s is not None else time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(n_steps):
            state, m = step(state, one)
        jax.block_until_ready(m)
        seq_s += time.perf_counter() - t0
    vm = bench_vmapped(K, n_steps)
    tokens = K * n_steps * tc.batch_size * model_config.context
    result = {"sweep_K": K, "sweep_steps": n_steps, "sweep_sequential_tokens_per_s": tokens / seq_s,
              "sweep_vmapped_tokens_per_s": tokens / (vm["step_s"] * n_steps),
              "sweep_speedup": seq_s / (vm["step_s"] * n_steps), "sweep_compile_sequential_s": compile_s,
              "sweep_compile_vmapped_s": vm["compile_s"]}
    code = ("import json; from experiments.bench import sweep as sweep_bench; "
            f"print(json.dumps(sweep_bench.bench_vmapped({K}, {n_steps})))")
    env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode == 0:
        sharded = json.loads(proc.stdout.strip().splitlines()[-1])
        result["sweep_sharded2_speedup"] = seq_s / (sharded["step_s"] * n_steps)
    print(f"sweep: K={K} tiny trainings x {n_steps} steps: sequential {result['sweep_sequential_tokens_per_s']:,.0f} "
          f"tokens/s, vmapped {result['sweep_vmapped_tokens_per_s']:,.0f} tokens/s, speed-up {result['sweep_speedup']:.2f}x"
          + (f", sharded over 2 host devices {result['sweep_sharded2_speedup']:.2f}x" if "sweep_sharded2_speedup" in result
             else "") + f" (compile {compile_s:.1f} s sequential, {vm['compile_s']:.1f} s vmapped)", flush=True)
    return result
