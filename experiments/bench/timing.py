"""What every benchmark section shares: a wall-clock timer, a count of XLA compilations, the
measured matmul peak, the training FLOP count of a GPT shape, and the model shapes compared with
PyTorch. No section imports another; each imports this (and quickstart its compile count)."""
from __future__ import annotations

import collections
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


class CompileMeter:
    """XLA programs built in this process, from jax.monitoring: how many (compiled, or loaded from
    the persistent cache), the seconds that took, and the cache's hits. One set of listeners per
    process (jax keeps them for its life)."""
    counts: collections.Counter = collections.Counter()
    _listening = False

    @classmethod
    def start(cls) -> "CompileMeter":
        if not cls._listening:
            jax.monitoring.register_event_duration_secs_listener(cls._on_duration)
            jax.monitoring.register_event_listener(cls._on_event)
            CompileMeter._listening = True
        return cls()

    @classmethod
    def _on_duration(cls, event: str, duration: float, **kwargs) -> None:
        if event.endswith("backend_compile_duration"):
            cls.counts["compiles"] += 1
            cls.counts["compile_s"] += duration

    @classmethod
    def _on_event(cls, event: str, **kwargs) -> None:
        if event.endswith("cache_hits"):
            cls.counts["cache_hits"] += 1

    def since(self, before: dict) -> str:
        d = {k: self.counts[k] - before.get(k, 0) for k in ("compiles", "compile_s", "cache_hits")}
        return f"{d['compiles']} programs, {d['compile_s']:.0f} s compiling, {d['cache_hits']} of them from the cache"

    def snapshot(self) -> dict:
        return dict(self.counts)


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
