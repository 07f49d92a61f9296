"""Training: a pure jitted step of (state, batch), and the loop around it.

State is a plain dict {"params", "opt_state", "step", "rng"}. The step is a pure function:
dropout keys come from `fold_in(rng, step)`, batches from (seed, step), so a run resumed
from any checkpoint continues bit for bit (on CPU) as if it had never stopped.

The loop saves the checkpoint schedule of `dynamics.schedule` into the run folder's series
for its stage. SIGINT/SIGTERM save a resume checkpoint (kept apart from the schedule, under
checkpoints/_resume/<stage>) and exit; the same command resumes.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from jax.flatten_util import ravel_pytree

from dynamics import distributed, sharding
from dynamics.loop import Checkpoints, evaluate_and_save, run_loop
from models.errors import OntogenyError
from dynamics.runlog import RunFolder
from dynamics.schedule import checkpoint_steps
from models.errors import require
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
    """The fields `scheduled_adamw` (and its schedule) read: a study's resolved run lists these."""
    return {k: getattr(config, k) for k in ("steps", "lr", "min_lr", "warmup", "weight_decay", "beta1", "beta2",
                                            "grad_clip")}


def loop_settings(config: TrainConfig, evaluated: bool) -> dict:
    """The fields `run_training` and `training_mesh` read (eval_every only when an eval_fn is given).
    batch_size, seed and eval_batches are read by the caller's batch, init and eval functions."""
    names = ("steps", "log_every", "log_checkpoints_until", "checkpoint_every", "data_parallel")
    return {k: getattr(config, k) for k in names + (("eval_every",) if evaluated else ())}


def decay_mask(params):
    """Weight decay on matmul weights only: no decay on norms, biases or embeddings ([choice];
    nanoGPT also decays embeddings). With tied embeddings the shared matrix is not decayed."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: k[-1] in DECAYED for k in flat})


def lr_schedule(config: TrainConfig):
    return optax.warmup_cosine_decay_schedule(0.0, config.lr, config.warmup, max(config.steps, config.warmup + 1),
                                              end_value=config.min_lr)


def scheduled_adamw(config: TrainConfig) -> optax.GradientTransformation:
    """AdamW on the warmup-cosine schedule of `lr_schedule`, decay on `decay_mask`'s weights,
    after clipping the global gradient norm to `grad_clip` (when > 0)."""
    adamw = optax.adamw(lr_schedule(config), b1=config.beta1, b2=config.beta2,
                        weight_decay=config.weight_decay, mask=decay_mask)
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), adamw) if config.grad_clip > 0 else adamw


class FlatAdamState(NamedTuple):
    """`flat_adamw`'s state: steps taken and Adam's two moments, each one vector [P] over every
    parameter (in `jax.flatten_util.ravel_pytree`'s order)."""
    count: jax.Array
    mu: jax.Array
    nu: jax.Array


def flat_adamw(config: TrainConfig, eps: float = 1e-8) -> optax.GradientTransformation:
    """`scheduled_adamw` over one flat buffer: the moments are single vectors, and a step ravels
    the gradients, clips, updates the moments and forms the update in one elementwise pass over
    all P parameters, then unravels it (one loop where optax runs one per leaf and transform).
    Element by element it is optax's arithmetic in optax's order (the global norm summed leaf by
    leaf as `optax.tree.norm` does), so its updates equal `scheduled_adamw`'s
    (tests/test_fused_backward.py). Its state is not optax's: a run keeps one optimizer for life."""
    schedule, b1, b2 = lr_schedule(config), config.beta1, config.beta2

    def init(params):
        flat = ravel_pytree(params)[0]
        return FlatAdamState(jnp.zeros([], jnp.int32), jnp.zeros_like(flat), jnp.zeros_like(flat))

    def update(grads, state, params):
        g, unravel = ravel_pytree(grads)
        p = ravel_pytree(params)[0]
        decayed = ravel_pytree(jax.tree.map(lambda m, x: jnp.full(x.shape, m), decay_mask(params), params))[0]
        if config.grad_clip > 0:
            norm = optax.tree.norm(grads)
            g = jax.lax.select(jnp.squeeze(norm < config.grad_clip), g, (g / norm) * config.grad_clip)
        count = optax.safe_increment(state.count)
        mu = (1 - b1) * (g ** 1) + b1 * state.mu
        nu = (1 - b2) * (g ** 2) + b2 * state.nu
        mu_hat = mu / (1 - b1 ** count).astype(mu.dtype)
        nu_hat = nu / (1 - b2 ** count).astype(nu.dtype)
        u = mu_hat / (jnp.sqrt(nu_hat + 0.0) + eps)
        u = jnp.where(decayed, u + config.weight_decay * p, u)
        u = u * -schedule(state.count)
        return unravel(u), FlatAdamState(count, mu, nu)

    return optax.GradientTransformation(init, update)


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


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, *, dropout: bool = True,
                    recompute_backward: bool = True):
    """Pure `train_step(state, batch) -> (state, metrics)`, jitted, state donated. The gradients
    are traced with the model's recomputing layer-norm and GELU backward unless
    `recompute_backward` is False (`models.gpt.recomputing_backward`)."""
    def train_step(state, batch):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"]) if dropout else None
        with gpt.recomputing_backward(recompute_backward):
            loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch, key)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new_state = {**state, "params": params, "opt_state": opt_state, "step": state["step"] + 1}
        return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}
    return jax.jit(train_step, donate_argnums=0)


def make_eval_fn(loss_fn: Callable):
    return jax.jit(lambda params, batch: loss_fn(params, batch, None))


def run_training(folder: RunFolder, stage: str, state: dict, train_step: Callable, batch_fn: Callable,
                 config: TrainConfig, *, eval_fn: Callable | None = None, tokens_per_step: int = 0,
                 meta: dict | None = None, mesh=None, on_policy: bool = False) -> dict:
    """Run (or resume) `config.steps` steps of one stage through `dynamics.loop.run_loop`, saving
    its checkpoint schedule in the run folder's series for `stage`.

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

    (Its length is the loop's hooks, closures over this stage's folder and checkpoints.)
    """
    ckpt = Checkpoints(folder.root, stage, config.checkpoint_schedule(), meta)
    latest = ckpt.latest()
    if latest is not None:
        state, _ = ckpt.restore(latest, state)
    step0 = latest or 0
    if step0 > config.steps:
        raise OntogenyError(f"{folder.root} already holds step {step0} of '{stage}', beyond train.steps="
                            f"{config.steps}; use a new --out")
    # rows this stage logged past its resume point are replayed below: drop them so each step is logged once
    resumed_at = -1 if latest is None else latest
    folder.drop_metrics(lambda row: row.get("stage") == stage and row.get("step", -1) > resumed_at)
    multi = jax.process_count() > 1
    if multi and mesh is None:
        raise OntogenyError("a multi-process job needs a mesh over every process's devices; "
                            "pass mesh=dynamics.train.training_mesh(config)")
    if mesh is not None:
        state = sharding.replicate(state, mesh)
    distributed.barrier(f"{stage}-start")  # every process has read the series before process 0 writes to it
    schedule, host_log = ckpt.schedule, {}

    def evaluate(s, params):
        record = {"stage": stage, "step": s, **(eval_fn(params) if eval_fn else {})}
        folder.log(record)
        return record

    def step_fn(state, batch):
        state, metrics = train_step(state, batch)
        current["state"] = state
        return state, metrics

    def on_sync(step, metrics, tps):
        loss = float(metrics["loss"])
        folder.log({"stage": stage, "step": step, "loss": loss, "grad_norm": float(metrics["grad_norm"]),
                    "lr": float(lr_schedule(config)(step - 1)), "tokens_per_s": tps, **host_log})
        return {"loss": f"{loss:.3f}", "tok_s": f"{tps:,.0f}"}

    current = {"state": state}
    batch_at = stage_batches(batch_fn, current, host_log, on_policy=on_policy, mesh=mesh)
    if step0 == 0 and 0 in schedule and 0 not in ckpt.series.steps():
        ckpt.save(0, distributed.to_host(state), evaluate(0, state["params"]))
    hint = lambda step: (f"the last good checkpoint is step {ckpt.last_saved()} in {ckpt.series.directory} "
                         f"(kept intact); lower train.lr or raise train.warmup")
    state = run_loop(state, step_fn, batch_at, steps=config.steps, start=int(state["step"]), desc=stage,
                     sync_every=config.log_every, sync_at=schedule, diverged_hint=hint, on_sync=on_sync,
                     after_step=evaluate_and_save(
                         (lambda s, st: evaluate(s, st["params"])) if eval_fn else None,
                         lambda s, st, record: ckpt.save(s, distributed.to_host(st), record or {}),
                         eval_every=config.eval_every, schedule=schedule),
                     on_interrupt=lambda s, st: ckpt.save_resume(s, distributed.to_host(st)),
                     stop_vote=distributed.any_process if multi else None, tokens_per_step=tokens_per_step)
    distributed.barrier(f"{stage}-end")
    return state


def stage_batches(batch_fn: Callable, current: dict, host_log: dict, *, on_policy: bool, mesh) -> Callable:
    """`run_training`'s batch function of the step: `batch_fn(step)` (or `batch_fn(step, params)`
    of the current policy `current["state"]`), its host figures moved into `host_log`, and the
    batch split over the mesh (in a multi-process job, this process's rows of the global batch)."""
    multi = jax.process_count() > 1

    def batch_at(step):
        if on_policy:  # a policy replicated over processes is read back from this process's copy
            params = current["state"]["params"]
            batch = dict(batch_fn(step, distributed.to_host(params) if multi else params))
        else:
            batch = dict(batch_fn(step))
        host_log.clear()
        host_log.update(batch.pop("log", {}))
        if multi:  # each process holds its own rows of the global batch
            rows = distributed.local_batch(len(jax.tree.leaves(batch)[0]))
            return distributed.global_batch(jax.tree.map(lambda x: np.asarray(x)[rows], batch), mesh)
        return sharding.shard_batch(batch, mesh) if mesh is not None else batch

    return batch_at


def training_mesh(config: TrainConfig, batch_sizes: tuple[int, ...] | None = None):
    """The data mesh a stage trains on: every device of every process in a multi-process job,
    the local devices when `config.data_parallel` is set and there are several, else None.
    `batch_sizes` (default config.batch_size) must split over its devices: a multi-process job
    refuses one that does not; one process uses the largest number of its devices that splits
    them all (one line on stderr says so), and no mesh when that is 1."""
    if not (jax.process_count() > 1 or (config.data_parallel and len(jax.devices()) > 1)):
        return None
    sizes = batch_sizes or (config.batch_size,)
    if jax.process_count() == 1:  # one process: fall back to the most devices that split every batch
        import sys

        n_all = len(jax.devices())
        n = max(k for k in range(1, n_all + 1) if all(size % k == 0 for size in sizes))
        if n < n_all:
            print(f"note: batch size {', '.join(map(str, sizes))} does not split over {n_all} devices; "
                  f"training on {n}", file=sys.stderr)
        if n == 1:
            return None
        return sharding.data_mesh(jax.devices()[:n])
    mesh = sharding.data_mesh()
    for size in sizes:
        sharding.check_divisible(size, mesh)
    return mesh
