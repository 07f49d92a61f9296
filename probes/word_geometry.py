"""Word-pair geometry of a language model's unembedding, Euclidean and causal (Park et al. 2024;
the LLaMA-2 check of Jiang et al. 2024), for one checkpoint of any family.

gamma(y) is row y of the unembedding [V, D] (`models.families.unembedding_matrix`; [choice] the
raw rows, with no final-norm gain folded in: the causal inner product below does not depend on
such a per-coordinate scale, the Euclidean one does). A concept is a list of counterfactual word
pairs (`probes.word_pairs`); a word's vector is its token's row, or the mean of its tokens' rows.

Two inner products:
- Euclidean: <a, b> = a^T b.
- causal: <a, b>_C = a^T Cov(gamma)^{-1} b, with Cov over the vocabulary's rows, each row weighted
  alike (Park et al.'s estimate). Computed as the Euclidean measures of A gamma with
  A = Cov(gamma)^{-1/2} (`causal_transform`).

Measures per inner product (`probes.geometry.geometry_measures`, the latent study's definitions):
within-concept cosine of the pair differences, concept directions (mean unit difference) and
their cross-concept cosine matrix [K, K]; baselines in the same checkpoint:
- shuffled pairs: each concept's pairs re-matched at random (word 0 of pair p with word 1 of
  pair sigma(p), sigma a derangement; `n_draws` draws averaged): the same two word sets, the
  pairing broken. A within-concept cosine that survives this is about the pairs, not the sets;
- random pairs: differences of random token pairs, |cos| with each other (the alignment any two
  differences have in this geometry, e.g. from anisotropy).
Everything is jittable with fixed shapes, so `map_stack` runs it over a streamed series.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from models.families import unembedding_matrix
from probes import geometry

_TINY = 1e-30  # [choice] the scale floor of a covariance that is zero (all rows equal): no NaN, differences 0


def causal_transform(G_VD, floor: float = 1e-6):
    """A [D, D] = Cov(gamma)^{-1/2}, symmetric, Cov = (1/V) sum_y (gamma_y - mean)(gamma_y - mean)^T.

    [choice] Guarded for float32: the eigenpairs come from the SVD of the centred rows (through
    their R factor, `qr(mode="r")`), not from eigh of the covariance, so the small eigenvalues
    keep relative accuracy (squaring the matrix would square its condition number); eigenvalues
    below `floor` x the largest are raised to it (a rank-deficient Cov, e.g. V < D, gets a finite
    A). Tested against a float64 numpy inverse square root.
    """
    V, D = G_VD.shape
    X = G_VD.astype(jnp.float32)
    X = X - X.mean(0)
    R = jnp.linalg.qr(X, mode="r") if V > D else X             # same singular values, [min(V, D), D]
    _, s, Wt = jnp.linalg.svd(R, full_matrices=True)           # s [min(V, D)], Wt [D, D]
    lam = jnp.zeros(D, jnp.float32).at[:s.shape[0]].set(s * s / V)
    lam = jnp.maximum(lam, floor * jnp.maximum(lam[0], _TINY))
    return (Wt.T * jax.lax.rsqrt(lam)[None, :]) @ Wt


def item_vectors(G_VD, items_IT, mask_IT):
    """[I, D]: each item's mean row over its (masked) tokens."""
    m = mask_IT.astype(G_VD.dtype)[..., None]
    return (G_VD[items_IT] * m).sum(1) / jnp.maximum(m.sum(1), 1.0)


def pack_items(items) -> tuple[np.ndarray, np.ndarray]:
    """Ragged token-id tuples -> (items [I, T] int32, mask [I, T] bool)."""
    T = max(len(t) for t in items)
    out, mask = np.zeros((len(items), T), np.int32), np.zeros((len(items), T), bool)
    for i, ids in enumerate(items):
        out[i, :len(ids)], mask[i, :len(ids)] = ids, True
    return out, mask


def shuffled_pairs(pairs_KP2: np.ndarray, mask_KP: np.ndarray, n_draws: int, seed: int = 0) -> np.ndarray:
    """[S, K, P, 2]: per draw and concept, word 0 of pair p with word 1 of pair sigma(p), sigma a
    uniform random derangement of the concept's valid pairs (padding left as is)."""
    rng = np.random.default_rng(seed)
    out = np.repeat(np.asarray(pairs_KP2)[None], n_draws, axis=0).copy()
    for s in range(n_draws):
        for k in range(pairs_KP2.shape[0]):
            n = int(mask_KP[k].sum())
            sigma = rng.permutation(n)
            while n > 1 and np.any(sigma == np.arange(n)):  # rejection: about e tries
                sigma = rng.permutation(n)
            out[s, k, :n, 1] = pairs_KP2[k, :n, 1][sigma]
    return out


def random_pair_abs_cos(M_ND, random_R2):
    """[R]: each random pair's mean |cos| to the other random pairs' differences."""
    r = geometry.unit(geometry.pair_differences(M_ND, random_R2[None])[0])
    R = r.shape[0]
    off = ~jnp.eye(R, dtype=bool)
    return jnp.sum(jnp.where(off, jnp.abs(r @ r.T), 0.0), 1) / max(R - 1, 1)


def pair_measures(M_ND, data: dict, mode: str = "pairwise") -> dict:
    """One inner product's measures on item vectors M [N, D] (Euclidean: the rows; causal: A rows).
    Returns within_per_concept [K], within_min, cross_cos [K, K], shuffled_per_concept [K] (mean
    over the draws) and random_per_pair [R]."""
    pairs, mask, shuffled = data["pairs"], data["mask"], data["shuffled"]
    out = geometry.geometry_measures(M_ND, pairs, mask, mode=mode)
    S, K, P, _ = shuffled.shape
    sh = geometry.geometry_measures(M_ND, shuffled.reshape(S * K, P, 2), jnp.tile(mask, (S, 1)), mode=mode)
    return {"within_per_concept": out["within_per_concept"], "within_min": out["within_min"],
            "cross_cos": out["cross_cos"], "shuffled_per_concept": sh["within_per_concept"].reshape(S, K).mean(0),
            "random_per_pair": random_pair_abs_cos(M_ND, data["random"])}


def checkpoint_measures(G_VD, data: dict, *, floor: float = 1e-6, mode: str = "pairwise") -> dict:
    """{"euclid": ..., "causal": ...} (`pair_measures`) for one unembedding G [V, D] (the rows the
    tokenizer names). `data`: items [I, T] and item_mask [I, T] (`pack_items`), pairs [K, P, 2]
    and mask [K, P] (item indices, `geometry.pack_pairs`), shuffled [S, K, P, 2]
    (`shuffled_pairs`), random [R, 2] (item indices of random token pairs)."""
    G = G_VD.astype(jnp.float32)
    M = item_vectors(G, data["items"], data["item_mask"])
    A = causal_transform(G, floor)
    return {"euclid": pair_measures(M, data, mode), "causal": pair_measures(M @ A, data, mode)}


@functools.lru_cache(maxsize=None)
def unembedding_fn(model_config, n_vocab: int, floor: float, mode: str):
    """fn(params, data) -> `checkpoint_measures` of a checkpoint's first `n_vocab` unembedding
    rows ([choice] the tokenizer's tokens: padded rows, e.g. Pythia's 50277 -> 50304, are never
    a target and stay out of Cov), any family. One object per setting, so `map_stack` compiles once."""
    def fn(params, data):
        return checkpoint_measures(unembedding_matrix(params, model_config)[:n_vocab], data, floor=floor, mode=mode)
    return fn


# ----------------------------------------------------------------------------- host statistics
def cross_abs_draws(cross_KK, counts_BK) -> np.ndarray:
    """[B] mean |cos| between directions of distinct concepts for each concept resample (counts
    [B, K], `dynamics.stats.resample_counts`): sum_{i != j} c_i c_j |C_ij| / sum_{i != j} c_i c_j.
    A resample drawing one concept only has no cross pair: NaN (left out by `quantile_ci`)."""
    C = np.abs(np.asarray(cross_KK, np.float64))
    np.fill_diagonal(C, 0.0)
    c = np.asarray(counts_BK, np.float64)
    num = np.einsum("bi,ij,bj->b", c, C, c)
    den = c.sum(1) ** 2 - (c * c).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def cross_abs_mean(cross_KK) -> float:
    """Mean |cos| over the off-diagonal of a [K, K] cosine matrix."""
    return float(cross_abs_draws(cross_KK, np.ones((1, np.shape(cross_KK)[0])))[0])
