"""The crosscoders study's activation streams and its resumable training on a run.

Activations never touch the disk: `activation_buffer` runs training windows through every
snapshot into a shuffled in-memory buffer, `DirectStream` feeds each step's windows straight
from one vmapped forward, and `train_resumable` trains on either through the one loop with an
orbax resume point. `config` is the study's `experiments.crosscoders.Config`.
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
from probes import crosscoder as cc
from probes import crosscoder_training as cct


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
    through every snapshot in one vmapped forward (`map_stack`, streamed chunks of snapshots when
    they do not all fit), straight into the step: no buffer, no activation store. [choice] The
    per-snapshot normaliser comes from batch 0. `seconds` accumulates the forward time."""

    def __init__(self, config, train_ids, stacked, site, n_snapshots: int, d_model: int, context: int):
        self.train_ids, self.stacked, self.site, self.seed = train_ids, stacked, site, config.seed + 17
        self.shape = (n_snapshots, d_model, context, config.crosscoder.batch_size)
        self.seconds = 0.0
        self.first = self._rows(0)
        self.scale_S = cc.normaliser(self.first)

    def _rows(self, i: int) -> np.ndarray:
        C, D, S, N = self.shape
        t0 = time.perf_counter()
        tokens, _ = data_lib.get_batch(self.train_ids, self.seed, i, -(-N // S), S)
        acts = map_stack(self.site, self.stacked, tokens)                          # [C, B, S, D]
        self.seconds += time.perf_counter() - t0
        return np.moveaxis(acts.reshape(C, -1, D), 0, 1)[:N]                     # [N, C, D]

    def __call__(self, i: int) -> np.ndarray:
        rows = self.first if i == 0 else self._rows(i)
        return rows * self.scale_S[None, :, None]
