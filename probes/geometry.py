"""Geometry of concept directions (Jiang et al., ICML 2024): linearity and orthogonality.

Works on any matrix whose rows are vectors of items: a model's unembedding [V, D], the
latent-concept learner's g [Y, d] or f [X, d]. A concept is given by its counterfactual pairs
(a, b) of row indices that differ only in that concept (a = value 0, b = value 1).

Definitions [reconstructed: the paper states the ideas, these are our exact choices]:
- difference vectors delta_p = M[b_p] - M[a_p];
- within-concept cosine ("pairwise", default): cos(delta_p, delta_q) over all unordered pairs of
  distinct pairs p != q of one concept; per-concept mean, then the mean over concepts.
  "to_mean": cos(delta_p, mean of the other pairs' unit differences) instead.
  `within_min` is the smallest single value (the worst pair of pairs / worst pair);
- concept direction: the mean of the concept's unit difference vectors;
- cross-concept |cosine|: |cos| between directions of different concepts (off-diagonal mean);
- random-pair baseline: |cos| between difference vectors of random item pairs (pairwise mean).
All functions are jittable with fixed shapes (pairs padded to [K, P, 2] with a mask), so they
run vmapped over a stacked checkpoint series with `dynamics.checkpoints.map_stack`.
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np

from models import latent

_EPS = 1e-12


def pack_pairs(pairs_per_concept: Sequence[Sequence[tuple[int, int]]]):
    """Ragged lists of (a, b) pairs per concept -> (pairs [K, P, 2] int32, mask [K, P] bool)."""
    K = len(pairs_per_concept)
    P = max([len(p) for p in pairs_per_concept] + [1])
    pairs, mask = np.zeros((K, P, 2), np.int32), np.zeros((K, P), bool)
    for k, concept in enumerate(pairs_per_concept):
        if len(concept):
            pairs[k, :len(concept)] = np.asarray(concept, np.int32).reshape(-1, 2)
            mask[k, :len(concept)] = True
    return pairs, mask


def random_pairs(n_items: int, n_pairs: int, seed: int = 0) -> np.ndarray:
    """[R, 2] random pairs of distinct items (the baseline's pairs)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n_items, n_pairs)
    b = (a + rng.integers(1, n_items, n_pairs)) % n_items
    return np.stack([a, b], axis=1).astype(np.int32)


def unit(x, axis=-1):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), _EPS)


def pair_differences(M_ND, pairs_KP2):
    """M[b] - M[a] for every pair: [K, P, D]."""
    return M_ND[pairs_KP2[..., 1]] - M_ND[pairs_KP2[..., 0]]


def concept_directions(M_ND, pairs_KP2, mask_KP=None):
    """[K, D] unit directions: mean of each concept's unit difference vectors."""
    mask = jnp.ones(pairs_KP2.shape[:2], bool) if mask_KP is None else mask_KP
    u = unit(pair_differences(M_ND, pairs_KP2)) * mask[..., None]
    return unit(u.sum(1) / jnp.maximum(mask.sum(1), 1)[:, None])


def _masked_mean(x, m):
    return jnp.sum(jnp.where(m, x, 0.0)) / jnp.maximum(jnp.sum(m), 1)


def within_cosines(M_ND, pairs_KP2, mask_KP=None, mode: str = "pairwise"):
    """(cos values, valid mask): [K, P, P] for "pairwise", [K, P] for "to_mean"."""
    mask = jnp.ones(pairs_KP2.shape[:2], bool) if mask_KP is None else mask_KP
    u = unit(pair_differences(M_ND, pairs_KP2))                       # [K, P, D]
    if mode == "pairwise":
        P = pairs_KP2.shape[1]
        valid = mask[:, :, None] & mask[:, None, :] & ~jnp.eye(P, dtype=bool)[None]
        return jnp.einsum("kpd,kqd->kpq", u, u), valid
    if mode == "to_mean":
        total = jnp.sum(u * mask[..., None], axis=1, keepdims=True)   # leave-one-out mean direction
        others = unit(total - u)
        valid = mask & (jnp.sum(mask, axis=1, keepdims=True) > 1)
        return jnp.sum(u * others, -1), valid
    raise ValueError(f"mode={mode!r} must be pairwise or to_mean")


def geometry_measures(M_ND, pairs_KP2, mask_KP=None, random_R2=None, *, mode: str = "pairwise",
                      random_mask_R=None) -> dict:
    """Linearity / orthogonality measures of the rows of M for K concepts.

    Returns scalars within_mean, within_min, cross_abs_mean, cross_abs_max (NaN when K < 2),
    random_abs_mean (NaN without random pairs), and arrays within_per_concept [K], has [K]
    (the concept has a within value: two valid pairs), cross_per_concept [K] (mean |cos| to the
    other concepts with a direction) with cross_has [K], dir_has [K] (the concept has a valid
    pair, hence a direction), cross_cos [K, K] (signed), directions [K, D]. Masked-out
    pairs (`mask_KP`, `random_mask_R`: e.g. items of probability zero) carry no data.
    """
    mask = jnp.ones(pairs_KP2.shape[:2], bool) if mask_KP is None else jnp.asarray(mask_KP)
    cos, valid = within_cosines(M_ND, pairs_KP2, mask, mode)
    axes = tuple(range(1, cos.ndim))
    per_concept = jnp.sum(jnp.where(valid, cos, 0.0), axes) / jnp.maximum(jnp.sum(valid, axes), 1)
    has = jnp.any(valid, axis=axes)
    dirs = concept_directions(M_ND, pairs_KP2, mask)
    cross = dirs @ dirs.T
    K = pairs_KP2.shape[0]
    dir_ok = jnp.any(mask, axis=1)
    off = ~jnp.eye(K, dtype=bool) & dir_ok[:, None] & dir_ok[None, :]
    out = {
        "within_mean": _masked_mean(per_concept, has),
        "within_min": jnp.min(jnp.where(valid, cos, jnp.inf)),
        "within_per_concept": per_concept,
        "has": has,
        "cross_abs_mean": _masked_mean(jnp.abs(cross), off) if K > 1 else jnp.nan,
        "cross_abs_max": jnp.max(jnp.where(off, jnp.abs(cross), -jnp.inf)) if K > 1 else jnp.nan,
        "cross_per_concept": jnp.sum(jnp.where(off, jnp.abs(cross), 0.0), 1) / jnp.maximum(off.sum(1), 1),
        "cross_has": off.any(1),
        "dir_has": dir_ok,
        "cross_cos": cross,
        "directions": dirs,
        "random_abs_mean": jnp.nan,
    }
    if random_R2 is not None:
        r = unit(pair_differences(M_ND, jnp.asarray(random_R2)[None])[0])
        R = r.shape[0]
        ok = jnp.ones(R, bool) if random_mask_R is None else jnp.asarray(random_mask_R)
        out["random_abs_mean"] = _masked_mean(jnp.abs(r @ r.T), ~jnp.eye(R, dtype=bool) & ok[:, None] & ok[None, :])
    return out


def direction_alignment(dirs_a_KD, dirs_b_KD):
    """[K] cosine between two sets of concept directions, concept by concept."""
    return jnp.sum(unit(dirs_a_KD) * unit(dirs_b_KD), -1)


def logodds_error(F_XD, G_YD, pairs_KP2, true_KPX, finite_KPX):
    """Mean |f(x)^T (g(y1) - g(y0)) - exact log-odds| in nats over finite (context, pair) cells."""
    return logodds_errors(F_XD, G_YD, pairs_KP2, true_KPX, finite_KPX)[0]


def logodds_errors(F_XD, G_YD, pairs_KP2, true_KPX, finite_KPX):
    """(overall mean error, per-concept mean error [K], has [K]) over the finite cells."""
    err = jnp.abs(jnp.einsum("kpd,xd->kpx", pair_differences(G_YD, pairs_KP2), F_XD) - true_KPX)
    finite = jnp.asarray(finite_KPX)
    per = jnp.sum(jnp.where(finite, err, 0.0), (1, 2)) / jnp.maximum(finite.sum((1, 2)), 1)
    return _masked_mean(err, finite), per, finite.any((1, 2))


# ----------------------------------------------------------------------------- the latent model's checks
def latent_checks(params, inputs_XI, tok_pairs_KP2, ctx_pairs_KQ2, tok_random_R2, ctx_random_R2,
                  logodds_KPX, finite_KPX, masks=None, *, mode: str = "pairwise") -> dict:
    """Every measure of the theory for one learner checkpoint (jittable; map_stack over T).

    Unembedding side on g [Y, d] with counterfactual token pairs; embedding side on f [X, d]
    with context pairs (concept fixed to 0 vs 1); alignment = cos between the embedding and
    unembedding direction of the same concept; log-odds error against the exact log-odds.
    Also returns the embedding matrix f [X, d] itself (small; the histograms use it).
    """
    F = latent.embed(params, inputs_XI)
    return latent_checks_matrices(F, params["g"], tok_pairs_KP2, ctx_pairs_KQ2, tok_random_R2, ctx_random_R2,
                                  logodds_KPX, finite_KPX, masks, mode=mode)


def latent_checks_matrices(F_XD, G_YD, tok_pairs_KP2, ctx_pairs_KQ2, tok_random_R2, ctx_random_R2,
                           logodds_KPX, finite_KPX, masks=None, *, mode: str = "pairwise") -> dict:
    """`latent_checks` on given matrices f [X, d] and g [Y, d] (the random-direction baseline
    calls it directly). `masks` = {"tok" [K, P], "ctx" [K, Q], "tok_random" [R], "ctx_random" [R]}
    marks the pairs whose items have nonzero probability; masked pairs carry no data. The
    per-concept arrays (`*_per_concept`, with `*_has` [K] saying where they are defined) are the
    units of the verdicts' intervals."""
    masks = masks or {}
    un = geometry_measures(G_YD, tok_pairs_KP2, masks.get("tok"), tok_random_R2, mode=mode,
                           random_mask_R=masks.get("tok_random"))
    em = geometry_measures(F_XD, ctx_pairs_KQ2, masks.get("ctx"), ctx_random_R2, mode=mode,
                           random_mask_R=masks.get("ctx_random"))
    align = direction_alignment(em["directions"], un["directions"])
    err, err_per, err_has = logodds_errors(F_XD, G_YD, tok_pairs_KP2, logodds_KPX, finite_KPX)
    return {
        "within_cos_mean": un["within_mean"], "within_cos_min": un["within_min"],
        "within_per_concept": un["within_per_concept"], "within_has": un["has"],
        "cross_abs_cos_mean": un["cross_abs_mean"], "cross_abs_cos_max": un["cross_abs_max"],
        "cross_per_concept": un["cross_per_concept"], "cross_has": un["cross_has"],
        "cross_cos": un["cross_cos"], "random_abs_cos_mean": un["random_abs_mean"],
        "emb_within_cos_mean": em["within_mean"], "emb_within_cos_min": em["within_min"],
        "emb_within_per_concept": em["within_per_concept"], "emb_within_has": em["has"],
        "emb_cross_abs_cos_mean": em["cross_abs_mean"], "emb_random_abs_cos_mean": em["random_abs_mean"],
        "emb_cross_per_concept": em["cross_per_concept"], "emb_cross_has": em["cross_has"],
        "alignment_mean": _masked_mean(align, em["dir_has"] & un["dir_has"]),
        "alignment_per_concept": align,
        "logodds_error": err, "logodds_per_concept": err_per, "logodds_has": err_has,
        "g_norm_mean": jnp.mean(jnp.linalg.norm(G_YD, axis=-1)),
        "embedding": F_XD,
    }


def cosine_samples(M_ND, pairs_KP2, random_R2=None) -> dict:
    """Value lists for histograms, in numpy on the host: within (pairwise, each unordered pair of
    pairs once), cross (signed, between concept directions), random (pairwise, signed)."""
    def unit_np(x):
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _EPS)

    M, pairs = np.asarray(M_ND, np.float64), np.asarray(pairs_KP2)
    u = unit_np(M[pairs[..., 1]] - M[pairs[..., 0]])                 # [K, P, D]
    iu = np.triu_indices(pairs.shape[1], 1)
    dirs = unit_np(u.mean(1))
    out = {"within": np.concatenate([(uk @ uk.T)[iu] for uk in u]),
           "cross": (dirs @ dirs.T)[np.triu_indices(len(dirs), 1)]}
    if random_R2 is not None:
        r = unit_np(M[random_R2[:, 1]] - M[random_R2[:, 0]])
        out["random"] = (r @ r.T)[np.triu_indices(len(r), 1)]
    return out


# ----------------------------------------------------------------------------- character models
def case_pairs(chars: str) -> list[tuple[int, int]]:
    """(lower, upper) id pairs for letters whose both cases are in the vocabulary `chars`.

    Case is a binary concept and the pair differs in nothing else: the counterfactual pair of
    the paper's LLaMA-2 check at character level.
    """
    index = {c: i for i, c in enumerate(chars)}
    return [(index[c], index[c.upper()]) for c in chars
            if c.isalpha() and c.islower() and c.upper() != c and c.upper() in index]
