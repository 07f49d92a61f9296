"""What every benchmark section shares: a wall-clock timer, the measured matmul peak, the training
FLOP count of a GPT shape, and the model shapes compared with PyTorch. No section imports another;
each imports this."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp


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


def matmul_peak_gflops(n: int = 2048, dtype=jnp.float32, precision: str | None = None) -> float:
    """Matmul throughput of jax.jit(jnp.dot) on an n x n problem (fp32 at jax's default precision
    unless told: on recent NVIDIA GPUs that rounds inputs to TF32; "highest" keeps float32)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
    dot = jax.jit(lambda x, y: jnp.dot(x, y, precision=precision))
    return 2 * n**3 / timeit(lambda: dot(a, b), repeats=5) / 1e9


def train_flops_per_token(config) -> float:
    """6 x matmul params (blocks and the head) + 12 L D T for attention (PaLM's estimate)."""
    L, D, F, V, T = config.n_layer, config.d_model, config.d_mlp, config.vocab_size, config.context
    matmul_params = L * (D * 3 * D + D * D + 2 * D * F) + D * V
    return 6 * matmul_params + 12 * L * D * T


def comparison_shapes(vocab: int = 84) -> dict:
    """The tiny and shakespeare-char model shapes at the Shakespeare vocabulary.
    [choice] Dropout off: the comparison is of fp32 arithmetic (the tiny recipe has none)."""
    from experiments.studies.pretrain.study import PRESETS

    return {name: PRESETS[name].model.__class__(**{**PRESETS[name].model.__dict__, "vocab_size": vocab, "dropout": 0.0})
            for name in ("tiny", "shakespeare-char")}
