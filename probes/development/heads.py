"""Attention heads over training: previous-token and induction scores, the in-context learning
score (Olsson et al. 2022, "In-context learning and induction heads").

On a sequence of P random tokens repeated once (length S = 2P), for every layer and head:
- previous-token score: the mean attention from position t to t - 1, over t = 1 .. S-1;
- induction score: the mean attention from position t of the second copy to the position
  right after the previous occurrence of token t, t - P + 1, over t = P .. 2P-1.
Both are read from the model's own attention probabilities (`models.apply(...,
capture=("attn_probs",))`), so they serve every family.

Baselines, measured on the same sequences:
- chance: what uniform causal attention (1 / (t + 1) on every visible key) scores, the score
  of a head that ignores content and position;
- control: the same attention offsets (t - P + 1) on sequences of 2P random tokens that do
  not repeat ([choice]), which a head reaches by position alone.
An induction head is one whose induction score exceeds both.

In-context learning score: the loss at a late position minus the loss at an early one,
averaged over windows of text (Olsson et al. use the 500th and the 50th token); negative when
the model predicts better with more context. [choice] The positions are parameters, since
a small model's context may hold fewer than 500 tokens.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

import models
from models.errors import require


def repeated_random_tokens(key, n_sequences: int, period: int, vocab_size: int, repeat: bool = True) -> jax.Array:
    """[B, 2P] int32: P uniform random tokens followed by the same P again (`repeat`), or by P
    fresh ones (the control)."""
    k1, k2 = jax.random.split(key)
    first = jax.random.randint(k1, (n_sequences, period), 0, vocab_size, jnp.int32)
    second = first if repeat else jax.random.randint(k2, (n_sequences, period), 0, vocab_size, jnp.int32)
    return jnp.concatenate([first, second], axis=1)


def offset_attention(attn_LBHSS: jax.Array, offset: int, first: int) -> jax.Array:
    """[B, L, H] the mean over query positions t >= `first` of the attention to key t - offset
    (t - offset must be >= 0 for every t counted)."""
    S = attn_LBHSS.shape[-1]
    t = jnp.arange(first, S)
    picked = attn_LBHSS[..., t, t - offset]                      # [L, B, H, T]
    return jnp.moveaxis(picked.mean(-1), 1, 0)


def scores_from_attention(attn_LBHSS: jax.Array, period: int) -> dict:
    """Per-sequence head scores from attention probabilities [L, B, H, 2P, 2P]:
    {"prev_token": [B, L, H], "induction": [B, L, H]}."""
    require(attn_LBHSS.shape[-1] == 2 * period, f"attention over {attn_LBHSS.shape[-1]} positions is not two "
                                                f"copies of a period of {period}")
    return {"prev_token": offset_attention(attn_LBHSS, 1, 1),
            "induction": offset_attention(attn_LBHSS, period - 1, period)}


def chance_scores(period: int) -> dict:
    """What uniform causal attention scores: {"prev_token", "induction"} as floats."""
    t = jnp.arange(2 * period, dtype=jnp.float32)
    return {"prev_token": float((1.0 / (t[1:] + 1)).mean()), "induction": float((1.0 / (t[period:] + 1)).mean())}


def head_scores(params, config, tokens_BS: jax.Array, control_BS: jax.Array | None = None) -> dict:
    """Previous-token and induction scores [B, L, H] of every head of one checkpoint, any
    family, on repeated random sequences `tokens_BS` ([B, 2P], `repeated_random_tokens`);
    with `control_BS` (unrepeated sequences of the same shape) also "induction_control"
    [B, L, H], the same offsets' attention there."""
    period = tokens_BS.shape[1] // 2
    _, caps = models.apply(params, tokens_BS, config, capture=("attn_probs",))
    out = scores_from_attention(caps["attn_probs"], period)
    if control_BS is not None:
        _, caps = models.apply(params, control_BS, config, capture=("attn_probs",))
        out["induction_control"] = scores_from_attention(caps["attn_probs"], period)["induction"]
    return out


def icl_score(nll_BS: jax.Array, early: int, late: int) -> jax.Array:
    """[B] the in-context learning score of each window: loss at position `late` minus loss at
    position `early` (positions of the predicted token, from 0), from per-token losses [B, S]."""
    require(0 <= early < late < nll_BS.shape[1], f"need 0 <= early={early} < late={late} < {nll_BS.shape[1]} "
                                                 f"scored positions")
    return nll_BS[:, late] - nll_BS[:, early]
