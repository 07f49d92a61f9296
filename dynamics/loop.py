"""One training loop, driven by every trainer in Ontogeny.

The GPT trainer (`dynamics.train.run_training`), the vmapped members (`dynamics.members`), the
latent-variable learner (`dynamics.latent_training`) and the crosscoder trainer
(`probes.crosscoders.model.train`) each supply a jitted step of (state, batch), a batch function of the
step and a few hooks. The loop gives all of them the same machinery:

- a progress bar and throughput;
- metrics read back to the host only at sync steps (the host waits for the device there anyway);
- the NaN stop: a loss with no finite entry raises `Diverged`, naming the step and the fix;
- SIGINT/SIGTERM turned into a flag checked between calls: the trainer's `on_interrupt` saves a
  resume point, then `Interrupted` is raised and the same command resumes;
- `Checkpoints`: orbax checkpoints of the scheduled steps and of the resume point, and the
  restore of whichever is newer. State is a dict with a "params" entry; every other entry is
  saved beside it.
"""
from __future__ import annotations

import contextlib
import math
import shutil
import signal
import time
from pathlib import Path
from typing import Callable, Iterable

import jax
import numpy as np
from tqdm.auto import tqdm

from dynamics import distributed
from dynamics.checkpoints import Series
from models.errors import OntogenyError


class Interrupted(Exception):
    """Training stopped by a signal (after saving a resume checkpoint when the trainer keeps one)."""

    def __init__(self, signum: int, step: int, saved: bool = True):
        what = ("checkpoint saved, run the same command again to resume" if saved else
                "nothing was saved (this trainer keeps no resume point); the same command starts it again")
        super().__init__(f"interrupted by signal {signum} at step {step}; {what}")
        self.signum, self.step = signum, step


class Diverged(OntogenyError):
    """The loss had no finite entry at a sync step."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


@contextlib.contextmanager
def stop_on_signals():
    """Turn SIGINT/SIGTERM into a flag the loop checks between steps."""
    flag = {"signal": None}
    handler = lambda signum, frame: flag.__setitem__("signal", signum)
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_loop(state, step_fn: Callable, batch_fn: Callable, *, steps: int, start: int = 0, desc: str = "train",
             sync_every: int = 1, sync_at: Iterable[int] = (), stride: Callable[[int], int] | None = None,
             loss_key: str | None = "loss", diverged_hint: Callable[[int], str] | None = None,
             on_sync: Callable | None = None, after_step: Callable | None = None,
             on_interrupt: Callable | None = None, stop_vote: Callable[[bool], bool] | None = None,
             tokens_per_step: int = 0, progress: bool = True, mininterval: float = 0.1):
    """Run `state, metrics = step_fn(state, batch_fn(step))` from `start` until `steps`; return the state.

    `stride(step)` is how many steps one call starting at `step` takes (default 1; the latent
    learner scans a whole segment between snapshots in one call). The step counter passed to the
    hooks is the number of steps taken after the call.

    Metrics reach the host at sync steps: multiples of `sync_every` (0: none), the steps in
    `sync_at`, and the last. There the loop checks `metrics[loss_key]`: when no entry is finite
    it raises `Diverged` (the message ends with `diverged_hint(step)`); otherwise
    `on_sync(step, metrics, tokens_per_s)` logs them and may return a progress-bar postfix dict.
    `after_step(step, state)` runs after every call (evaluations, scheduled checkpoints).
    On SIGINT/SIGTERM the loop stops after the current call, `on_interrupt(step, state)` saves a
    resume point and `Interrupted` is raised. `stop_vote(stop) -> bool` makes the processes of a
    multi-process job agree; it is asked at sync steps only (a collective there is cheap).
    """
    stride = stride or (lambda step: 1)
    sync_at = frozenset(sync_at)
    step = start
    bar = tqdm(total=steps, initial=step, desc=desc, unit="step", dynamic_ncols=True, leave=False,
               disable=not progress, mininterval=mininterval)
    t_last, n_last = time.perf_counter(), step
    try:
        with stop_on_signals() as flag:
            while step < steps:
                n = stride(step)
                state, metrics = step_fn(state, batch_fn(step))
                step += n
                synced = (sync_every and step % sync_every == 0) or step == steps or step in sync_at
                if synced:
                    metrics = distributed.to_host(metrics)
                    now = time.perf_counter()
                    tps = tokens_per_step * (step - n_last) / max(now - t_last, 1e-9)
                    t_last, n_last = now, step
                    if loss_key is not None:
                        check_finite(metrics[loss_key], step, desc, diverged_hint)
                    postfix = on_sync(step, metrics, tps) if on_sync else None
                    if postfix:
                        bar.set_postfix(postfix)
                bar.update(n)
                if after_step:
                    after_step(step, state)
                stop = flag["signal"] is not None
                if stop_vote is not None:
                    stop = bool(synced) and stop_vote(stop)
                if stop and step < steps:
                    if on_interrupt:
                        on_interrupt(step, state)
                    distributed.barrier(f"{desc}-interrupted")
                    raise Interrupted(flag["signal"] or signal.SIGTERM, step, saved=on_interrupt is not None)
    finally:
        bar.close()
    return state


def evaluate_and_save(evaluate: Callable | None, save: Callable, *, eval_every: int, schedule) -> Callable:
    """An `after_step` hook: `evaluate(step, state) -> record` every `eval_every` steps and at the
    scheduled steps, then `save(step, state, record or None)` at the scheduled steps."""
    def after_step(step, state):
        record = None
        if evaluate is not None and (step % eval_every == 0 or step in schedule):
            record = evaluate(step, state)
        if step in schedule:
            save(step, state, record)
    return after_step


def check_finite(loss, step: int, desc: str, hint: Callable[[int], str] | None = None) -> None:
    """Raise `Diverged` when no entry of `loss` (a scalar or one per member) is finite."""
    values = np.asarray(loss, np.float64).ravel()
    if not np.isfinite(values).any():
        value = float(values[0]) if values.size else math.nan
        raise Diverged(f"loss became {value} at step {step} of '{desc}'" + (f"; {hint(step)}" if hint else ""), step)


class Checkpoints:
    """A loop's orbax checkpoints in a run folder: the `schedule` steps in the stage's series
    (kept), and one resume point (replaced) under `_resume/<stage>` for a signal between them.

    State is a dict with "params"; the other entries are saved as the checkpoint's state and
    restored into the structure of a template state (optax NamedTuples included).
    """

    def __init__(self, root: str | Path, stage: str, schedule: Iterable[int] = (), meta: dict | None = None):
        self.series = Series(root, stage)
        self.root, self.stage = Path(root), stage
        self._resume: Series | None = None  # created at the first resume point
        self.schedule = frozenset(schedule)
        self.meta = dict(meta or {})

    @property
    def resume(self) -> Series | None:
        """The resume-point series, or None while no resume point was ever saved."""
        if self._resume is None and (self.root / "checkpoints" / "_resume" / self.stage).is_dir():
            self._resume = Series(self.root, f"_resume/{self.stage}")
        return self._resume

    def steps(self) -> list[int]:
        """Every step a checkpoint (scheduled or resume point) is complete for."""
        resume = self.resume.steps() if self.resume is not None else []
        return sorted(set(self.series.steps()) | set(resume))

    def latest(self) -> int | None:
        return max(self.steps(), default=None)

    def restore(self, step: int, template: dict) -> tuple[dict, dict]:
        """(state, meta) at `step`, the non-params entries in the structure of `template`."""
        source = self.series if step in self.series.steps() else self.resume
        target = jax.tree.map(np.asarray, _rest(template))
        params, rest, meta = source.restore(step, state_target=target)
        return {"params": params, **rest}, meta

    def restore_latest(self, template: dict) -> tuple[dict, int, dict]:
        """(state, step, meta) of the newest checkpoint, or (template, 0, {}) when there is none."""
        step = self.latest()
        if step is None:
            return template, 0, {}
        state, meta = self.restore(step, template)
        return state, step, meta

    def last_saved(self) -> int | None:
        """The newest scheduled step on disk (the last good checkpoint after a divergence)."""
        return max(self.series.steps(), default=None)

    def save(self, step: int, state: dict, extra: dict | None = None) -> None:
        """Save `state` (host arrays) as scheduled step `step`, unless that step is already on disk."""
        if step in self.series.steps():
            return
        self.series.save(step, state["params"], _rest(state), {**self.meta, **(extra or {})})

    def save_resume(self, step: int, state: dict, extra: dict | None = None) -> None:
        """Make `state` at `step` the resume point (a scheduled step needs none). The new point is
        written before the old one is removed, so a save that fails (a full disk) keeps the old."""
        if step in self.schedule:
            return
        if self._resume is None:
            self._resume = Series(self.root, f"_resume/{self.stage}")
        if step not in self._resume.steps():
            self._resume.save(step, state["params"], _rest(state), {**self.meta, **(extra or {})})
        if distributed.is_primary():
            for old in self._resume.steps():
                if old != step:
                    shutil.rmtree(self._resume.directory / str(old))

    def clear_resume(self) -> None:
        """Drop the resume point (a finished run needs none)."""
        if self.resume is not None and self.resume.steps():
            self.resume.delete_after(-1)


def _rest(state: dict) -> dict:
    return {k: v for k, v in state.items() if k != "params"}
