"""Training the latent-concept learner (models/latent.py) of Jiang et al. (ICML 2024).

The learner softmax_y f(x)^T g(y) is trained on a weight matrix W[x, y]: the exact population
law w(x) p(y|x), or the empirical law of a fixed finite sample. Optimizers: full-batch gradient
descent ("gd"), minibatch SGD ("sgd", a batch drawn from W each step) or Adam, each with optional
decoupled weight decay. Every entry point is vmapped over runs R (seed, lr, weight decay,
optimizer, width d, data): a sweep trains all runs of one m in one compiled call; the optimizer
is a per-run code, so different optimizers share that compile.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dynamics.loop import run_loop
from models.errors import require
from models.latent import (LatentProblem, LearnerConfig, context_inputs, empirical_weight, init_learner, loss_fn,
                           sample)

OPTIMIZERS = ("gd", "sgd", "adam")
OPTIMIZER_CODE = {name: i for i, name in enumerate(OPTIMIZERS)}
ADAM = optax.scale_by_adam()  # optax defaults: b1 0.9, b2 0.999, eps 1e-8


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    optimizer: str = "gd"  # gd (full batch), sgd (minibatch of batch_size) or adam (full batch)
    lr: float = 1.0  # learning rate
    weight_decay: float = 0.0  # decoupled weight decay (AdamW); for gd/sgd it equals an L2 penalty
    steps: int = 4096  # training steps
    batch_size: int = 64  # sgd: minibatch size
    n_samples: int = 0  # 0: exact population law; >0: a fixed sample of this size
    seed: int = 0  # learner init and sampling seed

    def __post_init__(self):
        require(self.optimizer in OPTIMIZERS, f"optimizer={self.optimizer!r} must be one of {', '.join(OPTIMIZERS)}")
        require(self.lr > 0, f"lr={self.lr} must be > 0")
        require(self.weight_decay >= 0, f"weight_decay={self.weight_decay} must be >= 0")
        require(self.steps >= 1, f"steps={self.steps} must be >= 1")
        require(self.batch_size >= 1, f"batch_size={self.batch_size} must be >= 1")
        require(self.n_samples >= 0, f"n_samples={self.n_samples} must be >= 0 (0 = exact law)")


def init_state(params, lr, weight_decay, kind_code, seed):
    """One run's state; lr, weight decay, optimizer code and seed are per-run values (traceable)."""
    hyper = {"lr": jnp.asarray(lr, jnp.float32), "weight_decay": jnp.asarray(weight_decay, jnp.float32),
             "kind": jnp.asarray(kind_code, jnp.int32)}
    return {"params": params, "adam": ADAM.init(params), "key": jax.random.PRNGKey(seed),
            "step": jnp.zeros((), jnp.int32), "hyper": hyper}


def minibatch_weight(key, weight_XY, batch_size: int):
    """Empirical law of `batch_size` (x, y) draws from `weight_XY`."""
    flat = weight_XY.reshape(-1)
    cdf = jnp.cumsum(flat)  # inverse-CDF sampling: O(B log XY), unlike Gumbel's O(B XY)
    idx = jnp.minimum(jnp.searchsorted(cdf, jax.random.uniform(key, (batch_size,)) * cdf[-1], side="right"),
                      flat.size - 1)
    return (jnp.zeros_like(flat).at[idx].add(1.0) / batch_size).reshape(weight_XY.shape)


def train_step(state, inputs_XI, weight_XY, *, batch_size: int):
    """One update, the optimizer chosen by the run's code so different optimizers share a compile.

    gd / sgd: p -= lr (grad + wd p); adam: p -= lr (adam(grad) + wd p), i.e. optax.adamw. sgd
    takes the gradient on a minibatch of `batch_size` draws from `weight_XY`, gd and adam on all of it
    (`batch_size` 0: no run is sgd).
    """
    h, key, batch = state["hyper"], state["key"], weight_XY
    if batch_size:  # static: 0 when no run of the call uses sgd, so gd/adam calls skip the sampling
        key, sub = jax.random.split(key)
        batch = jnp.where(h["kind"] == OPTIMIZER_CODE["sgd"], minibatch_weight(sub, weight_XY, batch_size), weight_XY)
    loss, grads = jax.value_and_grad(loss_fn)(state["params"], inputs_XI, batch)
    adam_dir, adam_state = ADAM.update(grads, state["adam"])
    use_adam = h["kind"] == OPTIMIZER_CODE["adam"]
    params = jax.tree.map(lambda p, g, a: p - h["lr"] * (jnp.where(use_adam, a, g) + h["weight_decay"] * p),
                          state["params"], grads, adam_dir)
    return {**state, "params": params, "adam": adam_state, "key": key, "step": state["step"] + 1}, loss


@partial(jax.jit, static_argnames=("batch_size",))
def run_steps(states_R, n_steps, inputs_XI, weights_RXY, *, batch_size: int):
    """Advance every run R by `n_steps` (a traced count: one compilation for every segment).

    Returns (states, full-law loss [R] of the new parameters)."""
    def one(state, weight_XY):
        body = lambda _, s: train_step(s, inputs_XI, weight_XY, batch_size=batch_size)[0]
        state = jax.lax.fori_loop(0, n_steps, body, state)
        return state, loss_fn(state["params"], inputs_XI, weight_XY)
    return jax.vmap(one)(states_R, weights_RXY)


@jax.jit
def init_states(params_R, seeds_R, lrs_R, weight_decays_R, kinds_R):
    """Initial states of R runs from their stacked initial parameters."""
    return jax.vmap(init_state)(params_R, lrs_R, weight_decays_R, kinds_R, seeds_R)


def initial_states(m: int, learner: LearnerConfig, *, seeds, lrs, weight_decays, optimizers, widths, init_scales):
    """Stacked states of R runs, each learner drawn on the host by `init_learner` (see there)."""
    inits = [init_learner(dataclasses.replace(learner, init_scale=c), m, s, w)
             for s, w, c in zip(seeds, widths, init_scales)]
    params = jax.tree.map(lambda *xs: np.stack(xs), *inits)
    return init_states(params, jnp.asarray(seeds, jnp.uint32), jnp.asarray(lrs, jnp.float32),
                       jnp.asarray(weight_decays, jnp.float32),
                       jnp.asarray([OPTIMIZER_CODE[o] for o in optimizers], jnp.int32))


def train_runs(m: int, learner: LearnerConfig, snapshot_steps, *, seeds, lrs, weight_decays, optimizers, widths=None,
               weights_RXY, batch_size: int = 64, progress: bool = False, init_scales=None):
    """Train R runs of one m together in one compiled, vmapped loop; snapshot at `snapshot_steps`.

    Per run: seed, lr, weight decay, optimizer name, width (<= learner.d; default learner.d),
    training law weights_RXY [R, X, Y] and optional init scale (default learner.init_scale).
    Returns (params with leaves [R, C, ...] of width learner.d, zero-padded beyond each run's
    width; losses [R, C]) as numpy, C = the distinct snapshot steps in increasing order.

    `dynamics.loop.run_loop` drives it: one call is the segment up to the next snapshot (its
    steps in one jitted, vmapped `run_steps`), `after_step` records the snapshot's parameters and
    `on_sync` its losses (every call ends at a snapshot, so every call syncs). A snapshot at step
    0 is taken before the loop by a zero-length `run_steps` (a loop call advances >= 1 step).
    """
    steps = sorted(set(int(s) for s in snapshot_steps))
    require(steps[0] >= 0, "snapshot steps must be >= 0")
    widths = [learner.d] * len(seeds) if widths is None else list(widths)
    require(all(1 <= w <= learner.d for w in widths), f"run widths {widths} must be in 1..{learner.d}")
    scales = [learner.init_scale] * len(seeds) if init_scales is None else list(init_scales)
    states = initial_states(m, learner, seeds=seeds, lrs=lrs, weight_decays=weight_decays, optimizers=optimizers,
                            widths=widths, init_scales=scales)
    inputs, weights = jnp.asarray(context_inputs(m)), jnp.asarray(weights_RXY, jnp.float32)
    batch_size = batch_size if "sgd" in optimizers else 0
    snaps, losses = [], []

    def segment(states_R, n_steps):
        states_R, loss_R = run_steps(states_R, n_steps, inputs, weights, batch_size=batch_size)
        return states_R, {"loss": loss_R}

    if steps[0] == 0:
        states, metrics = segment(states, jnp.asarray(0, jnp.int32))
        snaps.append(jax.device_get(states["params"]))
        losses.append(np.asarray(metrics["loss"]))
    stride = lambda step: next(s for s in steps if s > step) - step  # steps to the next snapshot
    run_loop(states, segment, lambda step: jnp.asarray(stride(step), jnp.int32), steps=steps[-1], stride=stride,
             sync_every=0, sync_at=steps, desc="latent learner", progress=progress,
             diverged_hint=lambda step: "every run diverged; lower the learning rate",
             on_sync=lambda step, metrics, _: losses.append(np.asarray(metrics["loss"])),
             after_step=lambda step, states_R: snaps.append(jax.device_get(states_R["params"])))
    stacked = jax.tree.map(lambda *xs: np.stack(xs, axis=1), *snaps)
    return stacked, np.stack(losses, axis=1)


def training_weight(problem: LatentProblem, train: TrainConfig) -> np.ndarray:
    """The (x, y) law a run trains on: exact, or the empirical law of a fixed sample."""
    if train.n_samples == 0:
        return problem.weight_XY
    x, y = sample(problem, jax.random.PRNGKey(10_000 + train.seed), train.n_samples)
    return empirical_weight(x, y, len(problem.contexts_XM), len(problem.token_bits_YM))


def train(problem: LatentProblem, learner: LearnerConfig, train_config: TrainConfig, snapshot_steps,
          progress: bool = False):
    """One run: (params with leaves [C, ...], losses [C])."""
    t = train_config
    stacked, losses = train_runs(problem.n_concepts, learner, snapshot_steps, seeds=[t.seed], lrs=[t.lr],
                                 weight_decays=[t.weight_decay], optimizers=[t.optimizer],
                                 weights_RXY=training_weight(problem, t)[None], batch_size=t.batch_size,
                                 progress=progress)
    return jax.tree.map(lambda x: x[0], stacked), losses[0]
