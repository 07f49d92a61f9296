"""Post-training stages: SFT, DPO and GRPO, each a pure jitted step of (state, batch).

All three continue a run's checkpoint series under their own stage tag ("sft", "dpo", "rl")
and step counter, through `dynamics.train.run_training`.

- SFT: next-token loss on prompt+response sequences, masked to the response tokens.
- DPO (Rafailov et al., 2023): -log sigmoid(beta [(log pi(y_w|x) - log ref(y_w|x)) -
  (log pi(y_l|x) - log ref(y_l|x))]). The reference is frozen, so its sequence log-probs
  are computed once for the whole preference set and travel in the batch.
- RL: GRPO (Shao et al., 2024). Chosen over PPO because rewards here are verifiable and
  per-sequence: the group of G samples per prompt gives the baseline, so no value network
  (a second model as large as the policy) has to be trained on a few thousand steps. Loss per
  token: -min(r A, clip(r, 1-eps, 1+eps) A) + beta * KL_k3(pi || ref), with r the ratio to the
  sampling policy and A = (R - mean_group R) / (std_group R + 1e-6).

Sequences are right-padded to a fixed length with `mask` marking the tokens that count, so
every batch has one shape and each step compiles once.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from models.errors import require
from models import gpt, sample


def pack(prompts: Sequence[np.ndarray], responses: Sequence[np.ndarray], length: int, pad: int = 0):
    """Right-padded token rows [N, length+1] and a response mask over *targets* [N, length].

    Row n is prompt_n + response_n; targets are the tokens shifted by one, and the mask is 1
    exactly where the target is a response token.
    """
    N = len(prompts)
    tokens = np.full((N, length + 1), pad, np.int32)
    mask = np.zeros((N, length), np.float32)
    for n, (p, r) in enumerate(zip(prompts, responses)):
        seq = np.concatenate([p, r])
        require(len(seq) <= length + 1, f"a prompt+response of {len(seq)} tokens exceeds the context {length + 1}; "
                                        f"shorten the items or raise model.context")
        tokens[n, : len(seq)] = seq
        mask[n, len(p) - 1: len(seq) - 1] = 1.0
    return tokens, mask


def as_batch(tokens, mask):
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": mask}


def sequence_logprob(params, tokens_BT1, mask_BT, config: gpt.GPTConfig):
    """Sum of log p(target) over masked positions, per row: [B]."""
    logits, _ = gpt.apply(params, tokens_BT1[:, :-1], config)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    token_logp = jnp.take_along_axis(logp, tokens_BT1[:, 1:, None], axis=-1)[..., 0]
    return (token_logp * mask_BT).sum(-1)


def token_logprobs(params, tokens_BT1, config: gpt.GPTConfig):
    logits, _ = gpt.apply(params, tokens_BT1[:, :-1], config)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, tokens_BT1[:, 1:, None], axis=-1)[..., 0]


# ------------------------------------------------------------------------------------ DPO
def dpo_loss(config: gpt.GPTConfig, beta: float):
    """Loss of a batch {chosen, chosen_mask, rejected, rejected_mask, ref_chosen, ref_rejected}."""
    def loss(params, batch, key):
        chosen = sequence_logprob(params, batch["chosen"], batch["chosen_mask"], config)
        rejected = sequence_logprob(params, batch["rejected"], batch["rejected_mask"], config)
        margin = (chosen - batch["ref_chosen"]) - (rejected - batch["ref_rejected"])
        return -jax.nn.log_sigmoid(beta * margin).mean()
    return loss


def reference_logprobs(ref_params, tokens, mask, config: gpt.GPTConfig, batch_size: int = 64) -> np.ndarray:
    """Sequence log-probs of the frozen reference for a whole data set (computed once)."""
    fn = jax.jit(lambda p, t, m: sequence_logprob(p, t, m, config))
    out = [fn(ref_params, tokens[i: i + batch_size], mask[i: i + batch_size]) for i in range(0, len(tokens), batch_size)]
    return np.concatenate([np.asarray(o) for o in out])


# ----------------------------------------------------------------------------------- GRPO
@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    group_size: int = 8          # samples per prompt
    prompts_per_step: int = 8    # prompts per GRPO step (the step's batch is prompts x group_size)
    max_new_tokens: int = 4      # tokens sampled per completion
    temperature: float = 1.0     # sampling temperature of the rollouts
    clip_eps: float = 0.2        # PPO-style ratio clipping epsilon
    kl_beta: float = 0.05        # weight of the KL penalty to the reference (SFT) model

    def __post_init__(self):
        require(self.group_size >= 2, f"rl.group_size={self.group_size} must be >= 2 (the group is the baseline)")
        require(self.prompts_per_step >= 1 and self.max_new_tokens >= 1, "rl.prompts_per_step and "
                                                                         "rl.max_new_tokens must be positive")
        require(self.temperature > 0, f"rl.temperature={self.temperature} must be > 0 for exploration")


def group_advantages(rewards_PG):
    """(R - group mean) / (group std + 1e-6), per prompt group: [P, G]."""
    rewards_PG = jnp.asarray(rewards_PG, jnp.float32)
    return (rewards_PG - rewards_PG.mean(-1, keepdims=True)) / (rewards_PG.std(-1, keepdims=True) + 1e-6)


def grpo_loss(config: gpt.GPTConfig, rl: GRPOConfig):
    """Loss of a batch {tokens [N, T+1], mask [N, T], advantages [N], old_logp [N, T], ref_logp [N, T]}."""
    def loss(params, batch, key):
        logp = token_logprobs(params, batch["tokens"], config)
        ratio = jnp.exp(logp - batch["old_logp"])
        adv = batch["advantages"][:, None]
        surrogate = jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - rl.clip_eps, 1 + rl.clip_eps) * adv)
        log_ref_ratio = batch["ref_logp"] - logp
        kl = jnp.exp(log_ref_ratio) - log_ref_ratio - 1.0  # k3: unbiased, always >= 0
        per_token = -surrogate + rl.kl_beta * kl
        mask = batch["mask"]
        return ((per_token * mask).sum(-1) / jnp.maximum(mask.sum(-1), 1.0)).mean()
    return loss


def make_rollout(config: gpt.GPTConfig, rl: GRPOConfig, reward_fn: Callable, prompt_fn: Callable, seed: int):
    """`rollout(step, params, ref_params) -> batch`: sample a group per prompt and score it.

    `prompt_fn(step) -> (prompts [P, T0] int32, answers)` must be a pure function of the step;
    `reward_fn(completions [P*G, n_new], answers repeated G times) -> rewards [P*G]` runs on host.
    The sampling key is fold_in(seed, step), so a resumed run draws the same samples.
    """
    logp_fn = jax.jit(lambda p, t: token_logprobs(p, t, config))

    def rollout(step, params, ref_params):
        prompts, answers = prompt_fn(step)
        P, T0 = prompts.shape
        repeated = np.repeat(prompts, rl.group_size, axis=0)
        key = jax.random.fold_in(jax.random.PRNGKey(seed), step)
        out = np.asarray(sample.generate(params, config, repeated, rl.max_new_tokens, key,
                                         temperature=rl.temperature))
        completions = out[:, T0:]
        rewards = np.asarray(reward_fn(completions, np.repeat(np.asarray(answers), rl.group_size, axis=0)),
                             np.float32)
        tokens = out.astype(np.int32)
        mask = np.zeros((len(tokens), tokens.shape[1] - 1), np.float32)
        mask[:, T0 - 1:] = 1.0
        return {"tokens": tokens, "mask": mask,
                "advantages": np.asarray(group_advantages(rewards.reshape(P, rl.group_size))).reshape(-1),
                "old_logp": np.asarray(logp_fn(params, tokens)), "ref_logp": np.asarray(logp_fn(ref_params, tokens)),
                "log": {"reward_mean": float(rewards.mean())}}
    return rollout
