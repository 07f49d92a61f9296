"""The local learning coefficient (LLC) of one checkpoint, estimated by SGLD chains.

Definition (Lau et al. 2023, "Quantifying degeneracy in singular models via the learning
coefficient"; devinterp; Hoogland et al. 2024 on the developmental stages of transformers): at
a checkpoint w*,

    lambda_hat(w*) = n beta (E_w[L_n(w)] - L_n(w*)),

the expectation over the tempered posterior localised at w*,
p(w) ~ exp(-n beta L_n(w) - gamma/2 |w - w*|^2), with beta = 1 / log n by default. It is
sampled by SGLD started at w*:

    w <- w - (eps/2) (n beta grad L_m(w) + gamma (w - w*)) + N(0, eps),

L_m the mean loss of a minibatch, and E[L_n(w)] is the mean minibatch loss over the draws after
burn-in. Every chain gives its own estimate; their spread is the estimator's own uncertainty
(devinterp's users report that repeated calls disagree), so the traces and the per-chain
values are returned, not only the mean.

Choices, each a field of `SGLDConfig`:
- [choice] `nbeta` = n / log n with n the minibatch size in examples (devinterp's
  `default_nbeta(batch_size)`), when left at 0. The n of L_n in the formula is the number of
  examples a loss averages; devinterp takes the minibatch, and so does this default.
- [choice] The chains see the same minibatches in the same order (devinterp's default
  `match_sampling_input_ids_across_chains=True`): they differ only in their noise, so their
  spread is the sampler's, not the data's. Minibatches are consecutive slices of one random
  permutation of the examples per epoch, as a shuffled loader without replacement gives.
- [choice] L_n(w*) is the mean loss over all the examples given (devinterp averages
  `num_init_loss_batches` minibatches; with as many as one epoch holds, the two agree).
- The draw at step t is the minibatch loss evaluated before step t's update (as devinterp
  records it); draws are steps burnin, burnin + thin, ... . devinterp 2.0.1's `compute_llc`
  averages over every step, burn-in included: equal to this estimate with burnin = 0, thin = 1.

Chains are a second vmapped axis (beside the checkpoint axis of `map_stack`); all randomness
comes from the key passed in.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

import models
from models.errors import require
from models.gpt import cross_entropy


@dataclasses.dataclass(frozen=True)
class SGLDConfig:
    eps: float = 1e-3          # SGLD step size epsilon (devinterp's lr)
    gamma: float = 100.0       # localisation strength gamma: pull towards the checkpoint
    nbeta: float = 0.0         # inverse temperature n*beta; 0 = n / log n with n = batch_size (devinterp's default)
    chains: int = 4            # independent SGLD chains (their spread is shown)
    draws: int = 200           # draws per chain after burn-in
    burnin: int = 0            # SGLD steps before the first draw
    thin: int = 1              # SGLD steps between draws
    batch_size: int = 16       # examples per SGLD minibatch

    def __post_init__(self):
        require(self.eps > 0, f"llc.eps={self.eps} must be > 0")
        require(self.gamma >= 0, f"llc.gamma={self.gamma} must be >= 0 (0: no localisation)")
        require(self.nbeta >= 0, f"llc.nbeta={self.nbeta} must be >= 0 (0: n / log n of the batch size)")
        require(self.chains >= 2, f"llc.chains={self.chains} must be >= 2 (the spread needs two chains)")
        require(self.draws >= 1 and self.burnin >= 0 and self.thin >= 1,
                "llc.draws and llc.thin must be >= 1 and llc.burnin >= 0")
        require(self.batch_size >= 2, f"llc.batch_size={self.batch_size} must be >= 2 (n / log n needs n > 1)")

    @property
    def steps(self) -> int:
        return self.burnin + (self.draws - 1) * self.thin + 1

    def inverse_temperature(self) -> float:
        """n beta: the configured value, or n / log n of the minibatch size."""
        return self.nbeta or self.batch_size / math.log(self.batch_size)


def batch_order(key, n_examples: int, batch_size: int, steps: int) -> jax.Array:
    """[T, batch_size] example indices of every SGLD step: one permutation per epoch, cut into
    consecutive minibatches (a remainder that fills no minibatch is skipped, as `drop_last`)."""
    per_epoch = n_examples // batch_size
    require(per_epoch >= 1, f"{n_examples} examples hold no minibatch of {batch_size}; give more data "
                            f"or lower llc.batch_size")
    epochs = -(-steps // per_epoch)
    perms = jax.vmap(lambda k: jax.random.permutation(k, n_examples)[: per_epoch * batch_size])(
        jax.random.split(key, epochs))
    return perms.reshape(epochs * per_epoch, batch_size)[:steps]


def mean_loss(loss_fn: Callable, params, data, batch_size: int) -> jax.Array:
    """The mean of `loss_fn` over all of `data` (leading axis N), minibatch by minibatch
    (`lax.map`, so memory holds one minibatch); a remainder is weighted by its size."""
    n = jax.tree.leaves(data)[0].shape[0]
    full = n // batch_size
    take = lambda i, size: jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, i * batch_size, size), data)
    total = jax.lax.map(lambda i: loss_fn(params, take(i, batch_size)), jnp.arange(full)).sum() * batch_size
    rest = n - full * batch_size
    if rest:
        total = total + loss_fn(params, jax.tree.map(lambda x: x[full * batch_size:], data)) * rest
    return total / n


def sgld_chains(loss_fn: Callable, params, data, key, config: SGLDConfig = SGLDConfig()) -> dict:
    """Run `config.chains` SGLD chains from `params` and return the LLC of each.

    `loss_fn(params, batch) -> scalar` is the mean loss of a minibatch (a pytree whose leaves
    have a leading example axis, sliced from `data`). Returns arrays only (so that it vmaps
    over checkpoints): `llc_K` [K] per chain, `trace_KT` [K, T] the minibatch loss at every
    step, `init_loss` L_n(w*) over all of `data`, `nbeta`. K chains, T = burnin + (draws - 1)
    * thin + 1 steps.
    """
    nbeta = config.inverse_temperature()
    n = jax.tree.leaves(data)[0].shape[0]
    k_data, k_noise = jax.random.split(key)
    order_TB = batch_order(k_data, n, config.batch_size, config.steps)
    init = mean_loss(loss_fn, params, data, config.batch_size)
    leaves, treedef = jax.tree.flatten(params)
    grad_fn = jax.value_and_grad(loss_fn)

    def chain(chain_key):
        def step(w, inputs):
            idx, t = inputs
            loss, g = grad_fn(w, jax.tree.map(lambda x: x[idx], data))
            noise_keys = jax.random.split(jax.random.fold_in(chain_key, t), len(leaves))
            noise = jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape, x.dtype)
                                                 for k, x in zip(noise_keys, leaves)])
            w = jax.tree.map(lambda w_, g_, w0, z: w_ - 0.5 * config.eps * (nbeta * g_ + config.gamma * (w_ - w0))
                             + math.sqrt(config.eps) * z, w, g, params, noise)
            return w, loss

        _, trace = jax.lax.scan(step, params, (order_TB, jnp.arange(config.steps)))
        return trace

    trace_KT = jax.vmap(chain)(jax.random.split(k_noise, config.chains))
    draws_KT = trace_KT[:, config.burnin::config.thin]
    return {"llc_K": nbeta * (draws_KT.mean(-1) - init), "trace_KT": trace_KT, "init_loss": init,
            "nbeta": jnp.float32(nbeta)}


def estimate_llc(loss_fn: Callable, params, data, key, config: SGLDConfig = SGLDConfig()) -> dict:
    """`sgld_chains` with its summary for a notebook: adds `llc_mean` and `llc_std` (over chains,
    ddof 1) as floats. For a checkpoint series, lift `sgld_chains` with `map_stack` instead."""
    out = jax.tree.map(np.asarray, jax.jit(sgld_chains, static_argnums=(0, 4))(loss_fn, params, data, key, config))
    out["llc_mean"], out["llc_std"] = float(out["llc_K"].mean()), float(out["llc_K"].std(ddof=1))
    return out


def next_token_loss(config) -> Callable:
    """`loss_fn(params, tokens_BS1)`: the mean next-token cross-entropy of a model of any family
    (`models.apply`) on windows of S + 1 tokens (positions 0..S-1 predict 1..S)."""
    def loss_fn(params, tokens_BS1):
        logits, _ = models.apply(params, tokens_BS1[:, :-1], config)
        return cross_entropy(logits, tokens_BS1[:, 1:])

    return loss_fn
