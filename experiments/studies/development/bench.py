"""`python -m experiments bench development`: the development study's cost per checkpoint, its
measures vmapped over the checkpoint axis (`map_stack`) against a Python loop of the same
jitted one-checkpoint function, on a stack of random GPTs of the tiny shape (`--quick`: a
smaller one). Both after compilation; the two results are compared (max abs difference)."""
from __future__ import annotations

import time

import jax
import numpy as np

from dynamics.checkpoints import map_stack
from dynamics.stacks import stack_trees, unstack_tree
from experiments.bench.timing import timeit
from models import gpt
from probes.development import heads
from probes.development.llc import SGLDConfig
from . import measures
from probes.development.series import forward_measures_fn


def _loop(one, stacked, *args):
    """`one` (a jitted one-checkpoint function) on every checkpoint in turn, stacked on the host."""
    C = jax.tree.leaves(stacked)[0].shape[0]
    return stack_trees([jax.device_get(one(unstack_tree(stacked, c), *args)) for c in range(C)])


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def bench(quick: bool = False) -> dict:
    """Seconds per checkpoint of the forward measures and of the LLC, vmapped and looped."""
    C = 4 if quick else 12
    cfg = gpt.GPTConfig(vocab_size=84, context=32 if quick else 64, n_layer=2 if quick else 4, n_head=4,
                        d_model=64 if quick else 128)
    stacked = stack_trees([gpt.init_params(cfg, jax.random.PRNGKey(i)) for i in range(C)])
    rng = np.random.default_rng(0)
    N, S, P = 16, cfg.context, cfg.context // 2
    data = {"windows": rng.integers(0, 84, (N, S + 1)).astype(np.int32),
            "positions": np.stack([np.sort(rng.choice(S, 8, replace=False)) for _ in range(N)]).astype(np.int32),
            "repeated": np.asarray(heads.repeated_random_tokens(jax.random.PRNGKey(1), 16, P, 84)),
            "control": np.asarray(heads.repeated_random_tokens(jax.random.PRNGKey(2), 16, P, 84, repeat=False))}
    forward = forward_measures_fn(cfg, batch_size=8)
    sgld = SGLDConfig(chains=4, draws=20 if quick else 50, batch_size=8)
    llc = measures.llc_fn(cfg, sgld)
    llc_windows = rng.integers(0, 84, (64, 33)).astype(np.int32)
    key = jax.random.PRNGKey(3)
    out = {"checkpoints": C, "shape": f"{cfg.n_layer}L D{cfg.d_model} ctx {cfg.context}",
           "llc_steps_per_chain": sgld.steps, "llc_chains": sgld.chains}
    for name, fn, args in (("forward", forward, (data,)), ("llc", llc, (llc_windows, key))):
        one = jax.jit(fn)
        vmapped = map_stack(fn, stacked, *args, chunk_size=C)
        looped = _loop(one, stacked, *args)
        t_vmap = timeit(lambda: map_stack(fn, stacked, *args, chunk_size=C), repeats=2)
        t0 = time.perf_counter()
        _loop(one, stacked, *args)
        t_loop = time.perf_counter() - t0
        out.update({f"{name}_vmap_s_per_checkpoint": t_vmap / C, f"{name}_loop_s_per_checkpoint": t_loop / C,
                    f"{name}_loop_over_vmap": t_loop / t_vmap, f"{name}_max_abs_diff": _max_diff(vmapped, looped)})
        print(f"development {name}: {t_vmap / C * 1e3:.1f} ms/checkpoint vmapped, {t_loop / C * 1e3:.1f} looped "
              f"({t_loop / t_vmap:.2f}x), max |diff| {out[f'{name}_max_abs_diff']:.2e}")
    return out
