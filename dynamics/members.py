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
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from dynamics import train as train_lib
from dynamics.checkpoints import Series
from dynamics.runlog import RunFolder
from dynamics.errors import require

VMAP_KEYS = ("train.seed", "train.lr", "train.min_lr", "train.weight_decay")
SHARED_FIELDS = ("steps", "batch_size", "warmup", "beta1", "beta2", "grad_clip", "eval_every", "eval_batches",
                 "log_every", "log_checkpoints_until", "checkpoint_every")


def cosine_lr(t, lr, min_lr, warmup: int, steps: int):
    """`train.lr_schedule` written with traced peak and end values (linear warmup, cosine decay)."""
    decay_steps = max(steps, warmup + 1) - warmup
    frac = jnp.clip((t - warmup) / decay_steps, 0.0, 1.0)
    cosine = (lr - min_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac)) + min_lr
    return jnp.where(t < warmup, lr * t / max(warmup, 1), cosine)


def make_optimizer(config: train_lib.TrainConfig) -> optax.GradientTransformation:
    """AdamW (decay mask as in `train.make_optimizer`) with injected learning rate and weight decay."""
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
    optimizer = make_optimizer(config)

    def step(state, batch, hp):
        lr = cosine_lr(state["step"], hp["lr"], hp["min_lr"], config.warmup, config.steps)
        opt_state = _set_hyperparams(state["opt_state"], learning_rate=lr, weight_decay=hp["weight_decay"])
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"]) if dropout else None
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch, key)
        updates, opt_state = optimizer.update(grads, opt_state, state["params"])
        params = optax.apply_updates(state["params"], updates)
        return ({**state, "params": params, "opt_state": opt_state, "step": state["step"] + 1},
                {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": lr})
    return jax.jit(jax.vmap(step), donate_argnums=0)


def init_states(init_params_fn, configs: list[train_lib.TrainConfig]) -> dict:
    """Stacked fresh states: member k starts from `init_params_fn(seed_k)`."""
    optimizer = make_optimizer(configs[0])
    states = [train_lib.init_state(init_params_fn(c.seed), optimizer, c.seed) for c in configs]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def _shard(tree, n_members: int):
    """Shard the leading member axis over the devices when it divides evenly (else leave it)."""
    devices = jax.devices()
    if len(devices) < 2 or n_members % len(devices):
        return tree
    mesh = jax.sharding.Mesh(np.array(devices), ("member",), axis_types=(jax.sharding.AxisType.Auto,))
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("member"))
    return jax.device_put(tree, spec)


def _restore_common(folders: list[RunFolder], states: dict, stage: str):
    """States at the latest step every member's series holds (or the fresh states)."""
    series = [Series(f.root, stage) for f in folders]
    common = set.intersection(*(set(s.steps()) for s in series))
    if not common:
        return states, 0
    step0 = max(common)
    members = []
    for k, s in enumerate(series):
        target = jax.tree.map(lambda x: np.asarray(x[k]), {n: states[n] for n in ("opt_state", "step", "rng")})
        params, rest, _ = s.restore(step0, state_target=target)
        members.append({"params": params, **rest})
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *members), step0


def run_members(folders: list[RunFolder], stage: str, states: dict, step_fn, batch_fn, hp: dict,
                config: train_lib.TrainConfig, *, eval_fn=None, tokens_per_step: int = 0, progress: bool = True):
    """Train K members `config.steps` steps, saving each member's checkpoint schedule in its folder.

    `batch_fn(k, step)` gives member k's batch; `eval_fn(stacked_params) -> {name: [K]}`.
    Returns (final states, failures {k: message}).
    """
    K = len(folders)
    schedule = set(config.checkpoint_schedule())
    states, step = _restore_common(folders, states, stage)
    series = [Series(f.root, stage) for f in folders]
    resumed_at = step if step > 0 else -1  # from step 0 the loop logs step 0 again
    for f in folders:  # as in train.run_training: rows past the resume point are replayed, keep them once
        f.drop_metrics(lambda row: row.get("stage") == stage and row.get("step", -1) > resumed_at)
    failures: dict[int, str] = {}
    states = _shard(states, K)

    def log_eval(s, params):
        values = {name: np.asarray(v) for name, v in (eval_fn(params) if eval_fn else {}).items()}
        records = [{"stage": stage, "step": s, **{n: float(v[k]) for n, v in values.items()}} for k in range(K)]
        for k, r in enumerate(records):
            folders[k].log(r)
        return records

    def save(s, records):
        host = jax.device_get(states)
        for k in range(K):
            if k in failures or s in series[k].steps():
                continue
            member = jax.tree.map(lambda x: x[k], host)
            series[k].save(s, member["params"], {n: member[n] for n in ("opt_state", "step", "rng")}, records[k])

    if step == 0 and 0 in schedule:
        save(0, log_eval(0, states["params"]))
    bar = tqdm(total=config.steps, initial=step, desc=f"{stage} x{K}", unit="step", dynamic_ncols=True,
               leave=False, disable=not progress)
    t_last, n_last = time.perf_counter(), step
    with train_lib.stop_on_signals() as flag:
        while step < config.steps:
            batch = jax.tree.map(lambda *xs: np.stack(xs), *[batch_fn(k, step) for k in range(K)])
            states, metrics = step_fn(states, _shard(batch, K), hp)
            step += 1
            if step % config.log_every == 0 or step == config.steps or step in schedule:
                m = jax.device_get(metrics)
                now = time.perf_counter()
                tps = tokens_per_step * K * (step - n_last) / max(now - t_last, 1e-9)
                t_last, n_last = now, step
                for k in range(K):
                    loss = float(m["loss"][k])
                    if not math.isfinite(loss) and k not in failures:
                        last = max([s for s in series[k].steps()], default=None)
                        failures[k] = (f"loss became {loss} at step {step}; the last good checkpoint is step {last} "
                                       f"in {series[k].directory} (kept intact); lower train.lr")
                    if k not in failures:
                        folders[k].log({"stage": stage, "step": step, "loss": loss, "grad_norm": float(m["grad_norm"][k]),
                                        "lr": float(m["lr"][k]), "tokens_per_s": tps / K})
                bar.set_postfix(loss=f"{np.nanmean(m['loss']):.3f}", tok_s=f"{tps:,.0f}")
            bar.update(1)
            records = None
            if eval_fn and (step % config.eval_every == 0 or step in schedule):
                records = log_eval(step, states["params"])
            if step in schedule:
                save(step, records or [{}] * K)
            if flag["signal"] is not None and step < config.steps:
                bar.close()
                raise train_lib.Interrupted(flag["signal"], step)
            if len(failures) == K:
                break
    bar.close()
    return states, failures
