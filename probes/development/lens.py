"""The logit lens (nostalgebraist 2020): read the residual stream after each layer through the
model's final normalisation and unembedding, as if the remaining layers were skipped, and
score that prediction of the next token.

For layer l (0 = the embedding, l = 1..L after block l - 1) the lens logits are
final_norm(resid_l) @ U^T, U the unembedding [V, D] (`models.families.final_norm`,
`unembedding_matrix`), and the lens loss is their next-token cross-entropy. After the last block
the lens is the model itself, so its loss is the model's own loss. (The tuned lens of Belrose
et al. 2023 would add one learned affine map per layer; this is the plain lens.)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

import models
from models import families


def token_nll(logits_BSV: jax.Array, targets_BS: jax.Array) -> jax.Array:
    """[B, S] next-token negative log-likelihood in nats."""
    logp = jax.nn.log_softmax(logits_BSV.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, targets_BS[..., None], axis=-1)[..., 0]


def lens_nll(params, config, tokens_BS1: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-token lens losses [L+1, B, S] of one checkpoint, any family, on windows of S + 1
    tokens (positions 0..S-1 predict 1..S), and the residual stream they read [L+1, B, S, D]
    (the embedding output and every block's), which other measures of the same forward pass
    reuse. One layer's logits [B, S, V] are held at a time."""
    inputs, targets = tokens_BS1[:, :-1], tokens_BS1[:, 1:]
    _, caps = models.apply(params, inputs, config, capture=("embed", "resid"))
    resid_LBSD = jnp.concatenate([caps["embed"][None], caps["resid"]], axis=0)
    unembed_VD = families.unembedding_matrix(params, config).astype(jnp.float32)
    nll = jax.lax.map(lambda r: token_nll(families.final_norm(params, r, config) @ unembed_VD.T, targets),
                      resid_LBSD)
    return nll, resid_LBSD
