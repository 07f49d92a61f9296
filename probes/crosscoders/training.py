"""Training crosscoders: the loop over a shared activation stream, and the shuffled buffer it reads.

`train` drives the vmapped step of `probes.crosscoders.model` (K crosscoders with their own
hyperparameters, one compiled program) through `dynamics.loop.run_loop`, so it has the same
progress bar, NaN stop, signals and orbax resume point as every trainer. `ShuffleBuffer` streams
activation rows through a shuffled in-memory buffer, so no activation store is ever written.
Shapes: N tokens, C snapshots (checkpoints), D width, F features, K crosscoders.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from models.errors import require
from dynamics.loop import Checkpoints, run_loop
from probes.crosscoders.model import (CrosscoderConfig, decode, encode, make_init, make_train_step,
                               normaliser, stack_hps)


# ----------------------------------------------------------------------------- dead-feature resampling
def _mask_features(tree: dict, dead_F, value=0.0) -> dict:
    """Set the entries of dead features to `value` in a params-shaped dict."""
    axes = {"W_enc": (None, None, slice(None)), "W_dec": (slice(None), None, None), "b_enc": (slice(None),),
            "log_threshold": None}
    out = dict(tree)
    for name, index in axes.items():
        if index is not None and name in tree:
            out[name] = jnp.where(dead_F[index], value, tree[name])
    return out


def resample_dead(state, x_NCD, key, hp, config: CrosscoderConfig):
    """Re-initialise dead features on high-error inputs; returns (state, number resampled)."""
    params = state["params"]
    dead = state["since_fired"] >= config.dead_tokens
    x_hat = decode(params, encode(params, x_NCD, config, hp))
    err_N = jnp.sum((x_NCD - x_hat) ** 2, axis=(1, 2))
    pick_F = jax.random.categorical(key, 2.0 * jnp.log(err_N + 1e-12), shape=(config.n_features,))
    v_FCD = x_NCD[pick_F] - params["b_dec"]
    v_FCD = v_FCD / jnp.maximum(jnp.linalg.norm(v_FCD, axis=(1, 2), keepdims=True), 1e-12)
    alive = (~dead).astype(x_NCD.dtype)
    n_alive = jnp.maximum(alive.sum(), 1.0)
    dec_norm = jnp.sum(jnp.linalg.norm(params["W_dec"], axis=(1, 2)) * alive) / n_alive
    enc_norm = jnp.sum(jnp.linalg.norm(params["W_enc"], axis=(0, 1)) * alive) / n_alive
    new = dict(params)
    new["W_dec"] = jnp.where(dead[:, None, None], v_FCD * dec_norm, params["W_dec"])
    new["W_enc"] = jnp.where(dead[None, None], jnp.transpose(v_FCD, (1, 2, 0)) * enc_norm * config.resample_enc_scale,
                             params["W_enc"])
    new["b_enc"] = jnp.where(dead, 0.0, params["b_enc"])
    opt_state = tuple(s._replace(mu=_mask_features(s.mu, dead), nu=_mask_features(s.nu, dead))
                      if hasattr(s, "mu") else s for s in state["opt_state"])
    out = {**state, "params": new, "opt_state": opt_state, "since_fired": jnp.where(dead, 0, state["since_fired"])}
    return out, dead.sum()


@functools.lru_cache(maxsize=32)
def make_resample(config: CrosscoderConfig, n_members: int | None = None):
    fn = lambda state, x, key, hp: resample_dead(state, x, key, hp, config)
    if n_members is None:
        return jax.jit(fn, donate_argnums=0)
    return jax.jit(jax.vmap(fn, in_axes=(0, None, 0, 0)), donate_argnums=0)


def resample_steps(config: CrosscoderConfig) -> list[int]:
    """Steps at which dead features are resampled: multiples of resample_every before the decay."""
    if not config.resample_every:
        return []
    end = int((1 - config.decay) * config.steps)
    return list(range(config.resample_every, end, config.resample_every))



# ----------------------------------------------------------------------------- the loop
def train(config: CrosscoderConfig, hps: list[dict], seeds: list[int], next_batch, *, callback=None,
          progress: bool = False, checkpoints: Checkpoints | None = None, stop_vote=None):
    """Train len(hps) crosscoders together (one vmapped program) on a shared stream, through
    `dynamics.loop.run_loop`.

    `next_batch(i) -> x_NCD` gives batch i (batch 0 also sets the init). Returns the stacked
    final state (leading member axis) and the list of per-step metrics (numpy, [K] each): every
    50th step, the last, and every step when `callback(i, metrics)` is given; a resampling step
    adds a row {"step", "resampled"}.

    With `checkpoints` (a `dynamics.loop.Checkpoints`), SIGINT/SIGTERM save the state and the
    metrics so far as its resume point and raise `Interrupted`; the next call with the same
    checkpoints continues from there. The batches before that step are drawn again and
    discarded, so a stateful stream (a `ShuffleBuffer`) is where it was and the result equals an
    uninterrupted run's; a stream marked `stateless` (batch i a function of i alone)
    is not replayed. `stop_vote` makes the processes of a multi-process job agree on the stop.
    (Its length is the loop's hooks: resampling inside the step, the metrics history, the resume point.)
    """
    require(len(hps) == len(seeds) >= 1, "give one seed per crosscoder hyperparameter set")
    K = len(hps)
    hp = stack_hps(hps)
    x0 = jnp.asarray(next_batch(0))
    state = make_init(config, K)(jnp.stack([jax.random.PRNGKey(s) for s in seeds]), x0, hp)
    start, history = 0, []
    if checkpoints is not None:
        state, start, meta = checkpoints.restore_latest(state)
        history = [{k: np.asarray(v) for k, v in row.items()} for row in meta.get("history", [])]
        if not getattr(next_batch, "stateless", False):
            for i in range(1, start):  # replay the stream's draws (and refreshes) up to `start`
                next_batch(i)
    step = make_train_step(config, K)
    resample_at = set(resample_steps(config))
    resample = make_resample(config, K) if resample_at else None
    resample_key = jax.random.PRNGKey(seeds[0] + 7919)

    def step_fn(state, batch):
        i, x = batch
        n_resampled = {}
        if i in resample_at:
            keys_i = jax.random.split(jax.random.fold_in(resample_key, i), K)
            state, n = resample(state, x, keys_i, hp)
            n_resampled = {"resampled": n}
        state, metrics = step(state, x, hp)
        return state, {**metrics, **n_resampled}

    def on_sync(s, metrics, tps):
        i = s - 1
        if "resampled" in metrics:
            history.append({"step": i, "resampled": np.asarray(metrics.pop("resampled"))})
        if callback is not None or i == config.steps - 1 or i % 50 == 0:
            history.append({"step": i, **{k: np.asarray(v) for k, v in metrics.items()}})
            if callback is not None:
                callback(i, metrics)

    def on_interrupt(s, state):
        rows = [{k: np.asarray(v).tolist() for k, v in row.items()} for row in history]
        checkpoints.save_resume(s, jax.device_get(state), {"history": rows})

    state = run_loop(state, step_fn, lambda i: (i, x0 if i == 0 else jnp.asarray(next_batch(i))),
                     steps=config.steps, start=start, desc="crosscoder", sync_every=1 if callback else 0,
                     sync_at={i + 1 for i in range(0, config.steps, 50)} | {i + 1 for i in resample_at},
                     diverged_hint=lambda s: "lower the crosscoder lr", on_sync=on_sync,
                     on_interrupt=on_interrupt if checkpoints is not None else None, stop_vote=stop_vote,
                     progress=progress, mininterval=2.0)
    return state, history


def member(tree, index: int):
    return jax.tree.map(lambda x: x[index], tree)


# ----------------------------------------------------------------------------- shuffling buffer
class ShuffleBuffer:
    """Streams activation rows [C, D] through a shuffled in-memory buffer.

    `source(i) -> rows [n, C, D]` produces fresh activations (e.g. one batch of token windows
    through all snapshots). The buffer holds `size` rows; every `refresh_every` batches the
    oldest `refresh_rows` rows are replaced by fresh ones, so each row is used about
    size / refresh_rows * refresh_every * batch / size times (the reuse factor) and no full
    dataset is ever stored.
    """

    def __init__(self, source, size: int, batch_size: int, refresh_rows: int, refresh_every: int, seed: int = 0,
                 scale_C=None):
        self.source, self.size, self.batch_size = source, size, batch_size
        self.refresh_rows, self.refresh_every = refresh_rows, refresh_every
        self.rng = np.random.default_rng(seed)
        self.calls = 0
        self.rows = self._fetch(size)
        self.scale_C = normaliser(self.rows) if scale_C is None else np.asarray(scale_C, np.float32)
        self.oldest = 0

    def _fetch(self, n: int) -> np.ndarray:
        parts, have = [], 0
        while have < n:
            part = np.asarray(self.source(self.calls), np.float32)
            self.calls += 1
            parts.append(part)
            have += len(part)
        return np.concatenate(parts)[:n]

    def __call__(self, i: int) -> np.ndarray:
        if i > 0 and self.refresh_every and i % self.refresh_every == 0:
            fresh = self._fetch(self.refresh_rows)
            index = (self.oldest + np.arange(self.refresh_rows)) % self.size
            self.rows[index] = fresh
            self.oldest = (self.oldest + self.refresh_rows) % self.size
        pick = self.rng.integers(0, self.size, self.batch_size)
        return self.rows[pick] * self.scale_C[None, :, None]
