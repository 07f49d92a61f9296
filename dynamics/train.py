"""Training: a pure jitted step of (state, batch), and the loop around it.

State is a plain dict {"params", "opt_state", "step", "rng"}. The step is a pure function:
dropout keys come from `fold_in(rng, step)`, batches from (seed, step), so a run resumed
from any checkpoint continues bit for bit (on CPU) as if it had never stopped.

The loop saves the checkpoint schedule of `dynamics.schedule` into the run folder's series
for its stage. SIGINT/SIGTERM save a resume checkpoint (kept apart from the schedule, under
checkpoints/_resume/<stage>) and exit; the same command resumes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from tqdm.auto import tqdm

from dynamics import distributed, sharding
from dynamics.checkpoints import Series
from dynamics.errors import OntogenyError
from dynamics.runlog import RunFolder
from dynamics.schedule import checkpoint_steps
from dynamics.errors import require
from models import gpt

DECAYED = ("w_qkv", "w_out", "w_in", "lm_head")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000                   # optimizer steps of this stage
    batch_size: int = 32                # sequences per step
    lr: float = 1e-3                    # peak learning rate (after warmup; cosine decay to min_lr)
    min_lr: float = 1e-4                # learning rate at the last step
    warmup: int = 100                   # linear warmup steps from 0 to lr
    weight_decay: float = 0.1           # AdamW decoupled decay on matmul weights only
    beta1: float = 0.9                  # Adam first-moment decay
    beta2: float = 0.99                 # Adam second-moment decay
    grad_clip: float = 1.0              # clip the global gradient norm to this (0 = off)
    seed: int = 0                       # init and batch-order seed
    eval_every: int = 250               # validation loss every this many steps (and at checkpoints)
    eval_batches: int = 8               # validation batches per evaluation
    log_every: int = 10                 # log loss / lr / throughput every this many steps
    log_checkpoints_until: int = 512    # checkpoints at 0, 1, 2, 4, ... up to this step (Pythia-style)
    checkpoint_every: int = 1000        # then a checkpoint every this many steps (0 = only the log-spaced ones)
    data_parallel: bool = True          # split each batch over the local devices when there are several

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_every", "eval_batches", "log_every"):
            require(getattr(self, name) >= 1, f"train.{name}={getattr(self, name)} must be a positive integer")
        require(self.lr > 0 and self.min_lr >= 0, f"train.lr={self.lr} must be > 0 and train.min_lr >= 0")
        require(0 <= self.warmup <= self.steps, f"train.warmup={self.warmup} must lie in [0, train.steps]")
        require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "train.beta1 and train.beta2 must lie in [0, 1)")
        require(self.weight_decay >= 0 and self.grad_clip >= 0, "train.weight_decay and train.grad_clip must be >= 0")

    def checkpoint_schedule(self) -> list[int]:
        return checkpoint_steps(self.steps, self.log_checkpoints_until, self.checkpoint_every)


def optimizer_settings(config: TrainConfig) -> dict:
    """The fields `make_optimizer` (and its schedule) read: a study's resolved run lists these."""
    return {k: getattr(config, k) for k in ("steps", "lr", "min_lr", "warmup", "weight_decay", "beta1", "beta2",
                                            "grad_clip")}


def loop_settings(config: TrainConfig, evaluated: bool) -> dict:
    """The fields `run_training` and `training_mesh` read (eval_every only when an eval_fn is given).
    batch_size, seed and eval_batches are read by the caller's batch, init and eval functions."""
    names = ("steps", "log_every", "log_checkpoints_until", "checkpoint_every", "data_parallel")
    return {k: getattr(config, k) for k in names + (("eval_every",) if evaluated else ())}


def decay_mask(params):
    """Weight decay on matmul weights only: no decay on norms, biases or embeddings (the issue's rule;
    nanoGPT also decays embeddings). With tied embeddings the shared matrix is not decayed."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: k[-1] in DECAYED for k in flat})


def lr_schedule(config: TrainConfig):
    return optax.warmup_cosine_decay_schedule(0.0, config.lr, config.warmup, max(config.steps, config.warmup + 1),
                                              end_value=config.min_lr)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    adamw = optax.adamw(lr_schedule(config), b1=config.beta1, b2=config.beta2,
                        weight_decay=config.weight_decay, mask=decay_mask)
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), adamw) if config.grad_clip > 0 else adamw


def init_state(params, optimizer, seed: int) -> dict:
    """Fresh training state. Params are copied: the train step donates its state, and the
    caller's arrays (e.g. a frozen reference model) must survive that."""
    params = jax.tree.map(jnp.array, params)
    return {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(jax.random.PRNGKey(seed))}


def lm_loss(model_config: gpt.GPTConfig):
    """Next-token loss of a batch {"inputs", "targets", optional "mask"} (mask: which targets count)."""
    def loss(params, batch, key):
        logits, _ = gpt.apply(params, batch["inputs"], model_config, dropout_key=key)
        return gpt.cross_entropy(logits, batch["targets"], batch.get("mask"))
    return loss


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, *, dropout: bool = True):
    """Pure `train_step(state, batch) -> (state, metrics)`, jitted, state donated."""
    def train_step(state, batch):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"]) if dropout else None
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch, key)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new_state = {**state, "params": params, "opt_state": opt_state, "step": state["step"] + 1}
        return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}
    return jax.jit(train_step, donate_argnums=0)


def make_eval_fn(loss_fn: Callable):
    return jax.jit(lambda params, batch: loss_fn(params, batch, None))


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


class Interrupted(Exception):
    """Training stopped by a signal after saving a resume checkpoint."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"interrupted by signal {signum} at step {step}; checkpoint saved, "
                         f"run the same command again to resume")
        self.signum, self.step = signum, step


def _latest(series: Series, resume: Series) -> tuple[int, Series] | None:
    candidates = [(s, series) for s in series.steps()] + [(s, resume) for s in resume.steps()]
    return max(candidates, key=lambda c: c[0]) if candidates else None


def run_training(folder: RunFolder, stage: str, state: dict, train_step: Callable, batch_fn: Callable,
                 config: TrainConfig, *, eval_fn: Callable | None = None, tokens_per_step: int = 0,
                 meta: dict | None = None, mesh=None, on_policy: bool = False) -> dict:
    """Run (or resume) `config.steps` steps of one stage, saving its checkpoint schedule.

    `batch_fn(step) -> batch` must be a pure function of the step (with `on_policy`,
    `batch_fn(step, params)`, a pure function of both, e.g. samples from the current policy).
    A batch may carry host figures under "log" (e.g. mean reward), which are logged, not trained on.
    `eval_fn(params) -> dict` is evaluated at checkpoints and every `eval_every` steps.
    Returns the final state.

    With a `mesh` each global batch is split over its devices. In a multi-process job every
    process runs this with the same arguments: `batch_fn` returns the whole global batch (a pure
    function, so every process derives the same one) and each process keeps its own rows; a
    signal on any process stops all of them at the same step; process 0 writes, and the
    checkpoints are on disk for every process when this returns.
    """
    series = Series(folder.root, stage)
    resume = Series(folder.root, f"_resume/{stage}")
    schedule = set(config.checkpoint_schedule())
    latest = _latest(series, resume)
    if latest is not None:
        step0, source = latest
        target = jax.tree.map(np.asarray, {k: state[k] for k in ("opt_state", "step", "rng")})
        params, rest, _ = source.restore(step0, state_target=target)
        state = {"params": params, **rest}
        if step0 > config.steps:
            raise OntogenyError(f"{folder.root} already holds step {step0} of '{stage}', beyond train.steps="
                                f"{config.steps}; use a new --out")
    # rows this stage logged past its resume point are replayed below: drop them so each step is logged once
    resumed_at = latest[0] if latest is not None else -1
    folder.drop_metrics(lambda row: row.get("stage") == stage and row.get("step", -1) > resumed_at)
    step = int(state["step"])
    multi = jax.process_count() > 1
    if multi and mesh is None:
        raise OntogenyError("a multi-process job needs a mesh over every process's devices; "
                            "pass mesh=dynamics.train.training_mesh(config)")
    if mesh is not None:
        state = sharding.replicate(state, mesh)
    distributed.barrier(f"{stage}-start")  # every process has read the series before process 0 writes to it

    def evaluate(s, params):
        record = {"stage": stage, "step": s, **(eval_fn(params) if eval_fn else {})}
        folder.log(record)
        return record

    def save(s, state, extra):
        host = distributed.to_host(state)
        series.save(s, host["params"], {k: host[k] for k in ("opt_state", "step", "rng")}, {**(meta or {}), **extra})

    if step == 0 and 0 in schedule and 0 not in series.steps():
        save(0, state, evaluate(0, state["params"]))
    bar = tqdm(total=config.steps, initial=step, desc=stage, unit="step", dynamic_ncols=True, leave=False)
    t_last, n_last, last_good = time.perf_counter(), step, max([s for s in series.steps()], default=None)
    with stop_on_signals() as flag:
        while step < config.steps:
            if on_policy:  # a policy replicated over processes is read back from this process's copy
                batch = dict(batch_fn(step, distributed.to_host(state["params"]) if multi else state["params"]))
            else:
                batch = dict(batch_fn(step))
            host_log = batch.pop("log", {})
            if multi:  # each process holds its own rows of the global batch
                rows = distributed.local_batch(len(jax.tree.leaves(batch)[0]))
                batch = distributed.global_batch(jax.tree.map(lambda x: np.asarray(x)[rows], batch), mesh)
            elif mesh is not None:
                batch = sharding.shard_batch(batch, mesh)
            state, metrics = train_step(state, batch)
            step += 1
            synced = step % config.log_every == 0 or step == config.steps or step in schedule
            if synced:  # the host waits for the step here anyway
                metrics = distributed.to_host(metrics)
                loss = float(metrics["loss"])
                if not math.isfinite(loss):
                    raise OntogenyError(
                        f"loss became {loss} at step {step} of '{stage}'; the last good checkpoint is step "
                        f"{last_good} in {series.directory} (kept intact); lower train.lr or raise train.warmup")
                now = time.perf_counter()
                tps = tokens_per_step * (step - n_last) / max(now - t_last, 1e-9)
                t_last, n_last = now, step
                folder.log({"stage": stage, "step": step, "loss": loss, "grad_norm": float(metrics["grad_norm"]),
                            "lr": float(lr_schedule(config)(step - 1)), "tokens_per_s": tps, **host_log})
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}")
            bar.update(1)
            evaluated = None
            if eval_fn and (step % config.eval_every == 0 or step in schedule):
                evaluated = evaluate(step, state["params"])
            if step in schedule:
                save(step, state, evaluated or {})
                last_good = step
            stop = flag["signal"] is not None
            if multi:  # signals reach processes at different steps; all stop at the same (logged) one
                stop = synced and distributed.any_process(stop)
            if stop and step < config.steps:
                if step not in schedule:
                    save_resume = distributed.to_host(state)
                    for old in resume.steps():
                        resume.delete_after(old - 1)
                    resume.save(step, save_resume["params"],
                                {k: save_resume[k] for k in ("opt_state", "step", "rng")}, meta)
                bar.close()
                distributed.barrier(f"{stage}-interrupted")
                raise Interrupted(flag["signal"] or signal.SIGTERM, step)
    bar.close()
    distributed.barrier(f"{stage}-end")
    return state


def training_mesh(config: TrainConfig, batch_sizes: tuple[int, ...] | None = None):
    """The data mesh a stage trains on: every device of every process in a multi-process job,
    the local devices when `config.data_parallel` is set and there are several, else None.
    `batch_sizes` (default config.batch_size) are checked to split over its devices."""
    if not (jax.process_count() > 1 or (config.data_parallel and len(jax.devices()) > 1)):
        return None
    mesh = sharding.data_mesh()
    for size in batch_sizes or (config.batch_size,):
        sharding.check_divisible(size, mesh)
    return mesh
