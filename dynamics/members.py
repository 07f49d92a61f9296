"""Train K language models of one shape together: one compiled step vmapped over a member axis.

Members may differ in the values that keep shapes fixed: `train.seed` (init, dropout and data
order), `train.lr`, `train.min_lr` and `train.weight_decay`. The learning rate and weight decay
are traced hyperparameters (`optax.inject_hyperparams`, set every step from the member's own
cosine schedule), so each member follows exactly the run it would have had alone: its own
batches (stacked along the member axis), its own schedule, its own checkpoint series in its own
run folder. With several devices the member axis is sharded over them.

Resume: the group restarts from the latest checkpoint step that every member's series holds.
A member whose loss turns NaN/inf is marked failed (its last good checkpoint stays intact);
the others go on.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dynamics import sharding
from dynamics import train as train_lib
from dynamics.loop import Checkpoints, Diverged, evaluate_and_save, run_loop
from dynamics.runlog import RunFolder
from models import gpt
from models.errors import require

VMAP_KEYS = ("train.seed", "train.lr", "train.min_lr", "train.weight_decay")
SHARED_FIELDS = ("steps", "batch_size", "warmup", "beta1", "beta2", "grad_clip", "eval_every", "eval_batches",
                 "log_every", "log_checkpoints_until", "checkpoint_every")


def cosine_lr(t, lr, min_lr, warmup: int, steps: int):
    """`train.lr_schedule` written with traced peak and end values (linear warmup, cosine decay)."""
    decay_steps = max(steps, warmup + 1) - warmup
    frac = jnp.clip((t - warmup) / decay_steps, 0.0, 1.0)
    cosine = (lr - min_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac)) + min_lr
    return jnp.where(t < warmup, lr * t / max(warmup, 1), cosine)


def injected_adamw(config: train_lib.TrainConfig) -> optax.GradientTransformation:
    """`train.scheduled_adamw` with the learning rate and weight decay as injected (traced)
    hyperparameters, set every step from each member's own schedule (`make_step`)."""
    adamw = optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
        learning_rate=0.0, b1=config.beta1, b2=config.beta2, weight_decay=0.0, mask=train_lib.decay_mask)
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), adamw) if config.grad_clip > 0 else adamw


def _set_hyperparams(opt_state, **values):
    """Overwrite injected hyperparameters wherever an inject_hyperparams state sits in the chain."""
    if hasattr(opt_state, "hyperparams"):
        return opt_state._replace(hyperparams={**opt_state.hyperparams, **values})
    if isinstance(opt_state, tuple) and not hasattr(opt_state, "_fields"):
        return tuple(_set_hyperparams(s, **values) for s in opt_state)
    return opt_state


def hyperparams(configs: list[train_lib.TrainConfig]) -> dict:
    """Per-member traced values [K]."""
    return {"lr": jnp.asarray([c.lr for c in configs], jnp.float32),
            "min_lr": jnp.asarray([c.min_lr for c in configs], jnp.float32),
            "weight_decay": jnp.asarray([c.weight_decay for c in configs], jnp.float32)}


def check_compatible(configs: list[train_lib.TrainConfig]) -> None:
    for name in SHARED_FIELDS:
        values = {getattr(c, name) for c in configs}
        require(len(values) == 1, f"members of one vmapped group must share train.{name} (got {sorted(values)}); "
                                  f"sweep it with --sequential")


def make_step(loss_fn, config: train_lib.TrainConfig, *, dropout: bool):
    """Jitted `step(states, batches, hp) -> (states, metrics)`, vmapped over the member axis."""
    optimizer = injected_adamw(config)

    def step(state, batch, hp):
        lr = cosine_lr(state["step"], hp["lr"], hp["min_lr"], config.warmup, config.steps)
        opt_state = _set_hyperparams(state["opt_state"], learning_rate=lr, weight_decay=hp["weight_decay"])
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"]) if dropout else None
        with gpt.recomputing_backward():  # as dynamics.train's step
            loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch, key)
        updates, opt_state = optimizer.update(grads, opt_state, state["params"])
        params = optax.apply_updates(state["params"], updates)
        return ({**state, "params": params, "opt_state": opt_state, "step": state["step"] + 1},
                {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": lr})
    return jax.jit(jax.vmap(step), donate_argnums=0)


def init_states(init_params_fn, configs: list[train_lib.TrainConfig]) -> dict:
    """Stacked fresh states: member k starts from `init_params_fn(seed_k)`."""
    optimizer = injected_adamw(configs[0])
    states = [train_lib.init_state(init_params_fn(c.seed), optimizer, c.seed) for c in configs]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def shard_members(tree, n_members: int):
    """Shard the leading member axis over the devices when it divides evenly (else leave it)."""
    if len(jax.devices()) < 2 or n_members % len(jax.devices()):
        return tree
    return sharding.shard_batch(tree, sharding.mesh_1d("member"))


def _restore_common(ckpts: list[Checkpoints], states: dict):
    """States at the latest step every member's checkpoints hold (or the fresh states), and that step."""
    common = set.intersection(*(set(c.steps()) for c in ckpts))
    if not common:
        return states, 0
    step0 = max(common)
    members = [c.restore(step0, jax.tree.map(lambda x: np.asarray(x[k]), states))[0] for k, c in enumerate(ckpts)]
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *members), step0


def run_members(folders: list[RunFolder], stage: str, states: dict, step_fn, batch_fn, hp: dict,
                config: train_lib.TrainConfig, *, eval_fn=None, tokens_per_step: int = 0, progress: bool = True):
    """Train K members `config.steps` steps through `dynamics.loop.run_loop`, saving each member's
    checkpoint schedule in its folder (and, on SIGINT/SIGTERM, each member's resume point).

    `batch_fn(k, step)` gives member k's batch; `eval_fn(stacked_params) -> {name: [K]}`.
    Returns (final states, failures {k: message}). (Its length is the loop's hooks, closures over
    the members' folders and checkpoints.)
    """
    K = len(folders)
    ckpts = [Checkpoints(f.root, stage, config.checkpoint_schedule()) for f in folders]
    schedule = ckpts[0].schedule
    states, step = _restore_common(ckpts, states)
    resumed_at = step if step > 0 else -1  # from step 0 the loop logs step 0 again
    for f in folders:  # as in train.run_training: rows past the resume point are replayed, keep them once
        f.drop_metrics(lambda row: row.get("stage") == stage and row.get("step", -1) > resumed_at)
    failures: dict[int, str] = {}
    states = shard_members(states, K)

    def log_eval(s, params):
        values = {name: np.asarray(v) for name, v in (eval_fn(params) if eval_fn else {}).items()}
        records = [{"stage": stage, "step": s, **{n: float(v[k]) for n, v in values.items()}} for k in range(K)]
        for k, r in enumerate(records):
            folders[k].log(r)
        return records

    def save(s, states, records, resume=False):
        host = jax.device_get(states)
        for k in range(K):
            if k not in failures:
                member = jax.tree.map(lambda x: x[k], host)
                (ckpts[k].save_resume if resume else ckpts[k].save)(s, member, records[k])

    def batch_at(s):
        return shard_members(jax.tree.map(lambda *xs: np.stack(xs), *[batch_fn(k, s) for k in range(K)]), K)

    def on_sync(s, m, tps):
        for k in range(K):
            loss = float(m["loss"][k])
            if not math.isfinite(loss) and k not in failures:
                failures[k] = (f"loss became {loss} at step {s}; the last good checkpoint is step "
                               f"{ckpts[k].last_saved()} in {ckpts[k].series.directory} (kept intact); lower train.lr")
            if k not in failures:
                folders[k].log({"stage": stage, "step": s, "loss": loss, "grad_norm": float(m["grad_norm"][k]),
                                "lr": float(m["lr"][k]), "tokens_per_s": tps / K})
        return {"loss": f"{np.nanmean(m['loss']):.3f}", "tok_s": f"{tps:,.0f}"}

    if step == 0 and 0 in schedule:
        save(0, states, log_eval(0, states["params"]))
    try:
        states = run_loop(states, lambda st, b: step_fn(st, b, hp), batch_at, steps=config.steps, start=step,
                          desc=f"{stage} x{K}", sync_every=config.log_every, sync_at=schedule, on_sync=on_sync,
                          after_step=evaluate_and_save(
                              (lambda s, st: log_eval(s, st["params"])) if eval_fn else None,
                              lambda s, st, records: save(s, st, records or [{}] * K),
                              eval_every=config.eval_every, schedule=schedule),
                          on_interrupt=lambda s, st: save(s, st, [{}] * K, resume=True),
                          tokens_per_step=tokens_per_step * K, progress=progress)
    except Diverged as e:  # every member's loss is non-finite: each is marked failed, nothing is lost
        for k in range(K):
            failures.setdefault(k, f"{e}; the last good checkpoint is step {ckpts[k].last_saved()} in "
                                   f"{ckpts[k].series.directory} (kept intact); lower train.lr")
    return states, failures
