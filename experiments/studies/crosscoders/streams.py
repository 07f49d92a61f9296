"""The crosscoders study's activation streams and its resumable training on a run.

Activations never touch the disk: `activation_buffer` runs training windows through every
snapshot into a shuffled in-memory buffer, `DirectStream` feeds each step's windows straight
from one vmapped forward, and `train_resumable` trains on either through the one loop with an
orbax resume point. `config` is the study's `experiments.studies.crosscoders.study.Config`.
"""
from __future__ import annotations

import time

import jax
import numpy as np

from dynamics import data as data_lib
from dynamics import distributed
from dynamics.checkpoints import map_stack
from dynamics.loop import Checkpoints
from dynamics.runlog import RunFolder
from probes.crosscoders import model as cc
from probes.crosscoders import training as cct


def train_resumable(ccfg: cc.CrosscoderConfig, hps: list[dict], seeds: list[int], buffer, folder: RunFolder):
    """`cct.train` that survives SIGINT/SIGTERM: it stops after the current step, saves the state
    and the metrics so far as the resume point OUT/checkpoints/_resume/crosscoder (orbax) and
    raises `Interrupted`; the same command continues from there (the shuffle buffer replays its
    draws) to the result of an uninterrupted run. In a multi-process job the processes agree on
    the stop step at the metric sync steps (every 50), where the buffer's refreshes are collective."""
    ckpt = Checkpoints(folder.root, "crosscoder")
    vote = distributed.any_process if jax.process_count() > 1 else None
    state, history = cct.train(ccfg, hps, seeds, buffer, progress=True, checkpoints=ckpt, stop_vote=vote)
    if distributed.is_primary():
        ckpt.clear_resume()
    return state, history


def activation_buffer(config, train_ids, stacked, site, n_snapshots: int, d_model: int, context: int):
    """Training-text windows through every snapshot into a `cct.ShuffleBuffer` of rows [N, C, D]
    (each row drawn about `reuse` times): (buffer, seconds to fill it)."""
    def source(i):
        tokens, _ = data_lib.get_batch(train_ids, config.seed + 17, i, config.windows_per_fetch, context)
        acts = map_stack(site, stacked, tokens)                                 # [C, B, S, D]
        return np.moveaxis(acts.reshape(n_snapshots, -1, d_model), 0, 1)        # [B*S, C, D]

    fetch = config.windows_per_fetch * context
    refresh_every = max(1, int(round(config.reuse * fetch / config.crosscoder.batch_size)))
    t0 = time.perf_counter()
    buffer = cct.ShuffleBuffer(source, config.buffer_tokens, config.crosscoder.batch_size, fetch, refresh_every, config.seed)
    return buffer, time.perf_counter() - t0


class DirectStream:
    """Batch i of the crosscoder: fresh training windows (ceil(batch_size / context) of them)
    through every snapshot, straight into the step: no shuffle buffer, no activation store.

    The windows of `sweep` consecutive batches go through the series in one vmapped pass
    (`map_stack`, chunks of snapshots streamed from disk when they do not all fit), so each
    snapshot is read once per `sweep` batches rather than once per batch; their activations wait
    in memory (sweep x N x C x D floats) until the steps take them. Batch i's windows depend on i
    alone, whatever `sweep` is. [choice] The per-snapshot normaliser comes from batch 0.
    `seconds` accumulates the forward time, disk reads included, over `passes` passes that
    covered `tokens` tokens."""

    stateless = True  # batch i is a function of i: a resume need not replay the batches before it

    def __init__(self, config, train_ids, stacked, site, n_snapshots: int, d_model: int, context: int,
                 sweep: int = 1):
        self.train_ids, self.stacked, self.site, self.seed = train_ids, stacked, site, config.seed + 17
        self.shape = (n_snapshots, d_model, context, config.crosscoder.batch_size)
        self.sweep, self.steps = max(1, int(sweep)), config.crosscoder.steps
        self.seconds, self.passes, self.tokens = 0.0, 0, 0
        self._block, self._acts = -1, None
        self.scale_C = cc.normaliser(self._rows(0))

    def _fill(self, block: int) -> None:
        C, D, S, N = self.shape
        windows = -(-N // S)
        batches = range(block * self.sweep, min((block + 1) * self.sweep, max(self.steps, 1)))
        t0 = time.perf_counter()
        tokens = np.concatenate([data_lib.get_batch(self.train_ids, self.seed, i, windows, S)[0] for i in batches])
        self._acts = None  # the previous pass's activations go before the next pass's arrive
        acts = map_stack(self.site, self.stacked, tokens)                      # [C, K*W, S, D]
        self._acts = acts.reshape(C, len(batches), windows * S, D)[:, :, :N]    # [C, K, N, D]
        self._block = block
        self.seconds += time.perf_counter() - t0
        self.passes += 1
        self.tokens += len(batches) * N

    def _rows(self, i: int) -> np.ndarray:
        if i // self.sweep != self._block:
            self._fill(i // self.sweep)
        return np.moveaxis(self._acts[:, i % self.sweep], 0, 1)                  # [N, C, D]

    def __call__(self, i: int) -> np.ndarray:
        return self._rows(i) * self.scale_C[None, :, None]


def direct_sweep(config, n_snapshots: int, d_model: int, budget_bytes: int) -> int:
    """Batches per pass of `DirectStream`: `config.direct_sweep`, or (0) as many as fit an eighth
    of the memory budget ([choice]: `map_stack` counts each pass's outputs about four times over,
    and the snapshots streamed take the rest), at least 1, at most the steps."""
    if config.direct_sweep:
        return min(config.direct_sweep, config.crosscoder.steps)
    per_batch = config.crosscoder.batch_size * n_snapshots * d_model * 4
    return int(max(1, min(config.crosscoder.steps, budget_bytes // 8 // per_batch)))
