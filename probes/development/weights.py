"""Weight statistics of one checkpoint, matrix by matrix: Frobenius norm, spectral norm,
stable rank and the singular value spectrum.

Stable rank (e.g. Rudelson and Vershynin 2007): |W|_F^2 / |W|_2^2 = sum_i s_i^2 / s_1^2, a
continuous count of the directions that carry the matrix's energy (between 1 and its rank).

The matrices, for every family alike (`models.families.weight_matrices`): per layer the query,
key and value projections (the thirds of w_qkv [D, H*E]; [choice] for grouped-query LLaMA the
K/V columns repeated per query head, the weights each head uses), the attention output
[H*E, D], the MLP input [D, F] (LLaMA: the up projection) and output [F, D]; once, the token
embedding [V, D] (every family stores it as `wte`) and, when it is a separate matrix, the
unembedding [V, D].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from models import families

LAYER_MATRICES = ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out")


def matrices(params, config) -> dict:
    """{name: [L or 1, m, n]}: every weight matrix of one checkpoint (see the module docstring)."""
    w = families.weight_matrices(params, config)["blocks"]
    q, k, v = jnp.split(jnp.asarray(w["attn"]["w_qkv"]), 3, axis=-1)
    out = {"W_Q": q, "W_K": k, "W_V": v, "W_O": w["attn"]["w_out"], "W_in": w["mlp"]["w_in"],
           "W_out": w["mlp"]["w_out"], "embed": params["wte"][None]}
    if "lm_head" in params:  # every family names a separate output head lm_head
        out["unembed"] = families.unembedding_matrix(params, config)[None]
    return {name: jnp.asarray(m, jnp.float32) for name, m in out.items()}


def matrix_stats(w_KMN: jax.Array) -> dict:
    """Statistics of a stack of matrices [K, m, n]: "frobenius" [K], "spectral" [K],
    "stable_rank" [K] (0 for a zero matrix), "sv" [K, min(m, n)] singular values, largest first."""
    sv = jnp.linalg.svd(w_KMN, compute_uv=False)
    top = sv[:, 0]
    energy = jnp.square(sv).sum(-1)
    stable = jnp.where(top > 0, energy / jnp.where(top > 0, top, 1.0) ** 2, 0.0)
    return {"frobenius": jnp.sqrt(energy), "spectral": top, "stable_rank": stable, "sv": sv}


def weight_stats(params, config) -> dict:
    """{matrix name: matrix_stats} of one checkpoint, any family; lift over a series with
    `map_stack(lambda p: weight_stats(p, config), stack)`."""
    return {name: matrix_stats(m) for name, m in matrices(params, config).items()}
