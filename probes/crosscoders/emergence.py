"""When crosscoder features form: each feature's strength at each snapshot (its decoder norm,
Ge et al.'s; its contribution; its part along its final direction), the emergence rules read
from it, direction turns, and what makes features look present at the first snapshot (the
snapshots' similarity to the first, the current token's share of their variance, each
feature's token purity).

Axis letters: N tokens, C snapshots (checkpoints), D width, F features, B windows, S positions.
"""
from __future__ import annotations

import numpy as np

from probes.crosscoders.metrics import per_snapshot_f


EMERGENCE_RULES = ("half_max", "relative_mean", "steepest")


def emergence(norms_FC: np.ndarray, frac: float = 0.5, rule: str = "half_max", alive_F=None) -> np.ndarray:
    """[F] snapshot index at which each feature emerges, from its decoder norms n_fc [F, C]:

      half_max       first c with n_fc >= frac x max_c n_fc (Ge et al.'s rule, as reconstructed:
                     frac = 0.5); blind to how strong the feature is next to the others
      relative_mean  first c with n_fc >= frac x the mean norm of the alive features at snapshot c
                     (a feature counts once it is as strong as a typical feature there); one that
                     never gets there emerges where n_fc / mean_c is largest [choice]
      steepest       argmax_c (n_fc - n_f,c-1) with n_f,-1 = 0: the snapshot of steepest growth
                     (per snapshot, not per training step [choice])
    """
    norms = np.asarray(norms_FC, np.float64)
    if rule == "half_max":
        return (norms >= frac * norms.max(1, keepdims=True)).argmax(1)
    if rule == "relative_mean":
        alive = np.ones(len(norms), bool) if alive_F is None else np.asarray(alive_F, bool)
        rel = norms / np.maximum(norms[alive].mean(0) if alive.any() else norms.mean(0), 1e-12)[None]
        above = rel >= frac
        return np.where(above.any(1), above.argmax(1), rel.argmax(1))
    if rule == "steepest":
        return np.diff(norms, axis=1, prepend=0.0).argmax(1)
    raise ValueError(f"emergence rule {rule!r}; choose one of {', '.join(EMERGENCE_RULES)}")


def consecutive_cosines(w_dec_FCD: np.ndarray) -> np.ndarray:
    """[F, C-1] cosine of each feature's decoder vectors at consecutive snapshots."""
    w = w_dec_FCD / np.maximum(np.linalg.norm(w_dec_FCD, axis=-1, keepdims=True), 1e-12)
    return np.sum(w[:, 1:] * w[:, :-1], axis=-1)


def snapshot_activity(f, n_snapshots: int) -> tuple[np.ndarray, np.ndarray]:
    """(fire rate [F, C], mean activation [F, C]) of each feature at each snapshot over the
    tokens of f (f_NF shared or f_NFC gated per snapshot)."""
    per = per_snapshot_f(np.asarray(f), n_snapshots)                           # [C, N, F]
    return (per > 0).mean(1).T, per.mean(1).T


def contribution(norms_FC, mean_act_FC) -> np.ndarray:
    """[F, C] a feature's mean contribution to each snapshot's reconstruction, E_n[f_nc] ||d_c||:
    its strength where it is used. For latents shared by the snapshots (relu, batchtopk) this is
    the decoder norm times one constant, so every emergence rule reads it as the norm; for
    JumpReLU's per-snapshot gates a decoder that never fires at a snapshot counts 0 there,
    whatever norm its initialisation left it."""
    return np.asarray(norms_FC) * np.asarray(mean_act_FC)


def aligned(norms_FC, cos_to_final_FC) -> np.ndarray:
    """[F, C] the part of each decoder vector along the feature's final direction,
    ||d_c|| max(0, cos(d_c, d_final)) [ours], d_final the decoder at the last snapshot where its
    norm is at least half its maximum (the last snapshot where the feature is strong; a decoder
    its gate left at ~0 there points nowhere). A decoder that is strong at a snapshot but points
    elsewhere (an untrained network's random token lookup, say) counts 0 there, so emergence read
    from it is when the final feature's direction forms. A feature that turns by more than 60
    degrees on its way counts as not yet formed until it is within 60 degrees (under half_max)."""
    return np.asarray(norms_FC) * np.maximum(np.asarray(cos_to_final_FC), 0.0)


def decoder_features(w_dec_FCD, alive_F, steps_C, emergence_frac: float, init_fade: float,
                     rule: str = "half_max", strength_FC=None) -> dict:
    """Decoder norms [F, C], emergence index and step [F] (`emergence` by `rule` of
    `strength_FC`, default the decoder norms), initialisation features (emerged at snapshot 0,
    alive, ending below `init_fade` x their maximum strength), direction cosines at consecutive
    snapshots [F, C-1], to the final direction (`aligned`) [F, C] and between the first and the
    last snapshot [F]."""
    norms = np.linalg.norm(w_dec_FCD, axis=-1)
    strength = norms if strength_FC is None else np.asarray(strength_FC, np.float64)
    emerge_idx = emergence(strength, emergence_frac, rule, alive_F)
    unit = w_dec_FCD / np.maximum(norms[..., None], 1e-12)
    final = norms.shape[1] - 1 - (norms[:, ::-1] >= 0.5 * norms.max(1, keepdims=True)).argmax(1)
    cos_to_final = np.sum(unit * unit[np.arange(len(unit)), final][:, None], -1)
    return {"norms": norms, "strength": strength, "emerge_idx": emerge_idx,
            "emerge_step": np.asarray(steps_C)[emerge_idx],
            "init_feature": (emerge_idx == 0) & (strength[:, -1] <= init_fade * strength.max(1)) & alive_F,
            "cos": consecutive_cosines(w_dec_FCD), "cos_to_final": cos_to_final,
            "cos_first_last": np.sum(unit[:, 0] * unit[:, -1], -1)}


def similarity_to_first(x_NCD) -> np.ndarray:
    """[C] linear CKA between each snapshot's activations and the first's on the same tokens
    (Kornblith et al. 2019): ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on centred X = x_0,
    Y = x_c. 1 = the same representation up to rotation and scale; a random one of the same
    width gives about D / N. The value of `probes.development.cka.cka`, computed here in the
    feature form ([D, D] products, float64) rather than from [N, N] Gram matrices: the held-out
    tokens number ~10^4 against a width of ~10^2 (a float32 Gram of 16384 tokens takes 1 GiB)."""
    x = np.asarray(x_NCD, np.float64)
    x = x - x.mean(0)
    first = x[:, 0]
    gram0 = np.linalg.norm(first.T @ first)
    return np.array([np.linalg.norm(x[:, c].T @ first) ** 2 / (gram0 * np.linalg.norm(x[:, c].T @ x[:, c]))
                     for c in range(x.shape[1])])


def token_r2(tokens_BS, x_BSCD) -> np.ndarray:
    """[C] fraction of each snapshot's activation variance that the current token alone explains:
    1 - sum ||x - mean_x[token]||^2 / sum ||x - mean x||^2, the per-token means fitted on the even
    windows and scored on the odd ones (a token unseen there is predicted by the overall mean).
    A step-0 model's residual is close to a token lookup, so features selective for tokens already
    have strong decoders there."""
    tokens = np.asarray(tokens_BS)
    x = np.asarray(x_BSCD, np.float64)
    fit, test = np.arange(0, len(tokens), 2), np.arange(1, len(tokens), 2)
    t_fit, x_fit = tokens[fit].ravel(), x[fit].reshape(-1, *x.shape[2:])
    t_test, x_test = tokens[test].ravel(), x[test].reshape(-1, *x.shape[2:])
    overall = x_fit.mean(0)
    V = int(tokens.max()) + 1
    counts = np.bincount(t_fit, minlength=V)
    sums = np.zeros((V,) + x.shape[2:])
    np.add.at(sums, t_fit, x_fit)
    means = np.where(counts[:, None, None] > 0, sums / np.maximum(counts, 1)[:, None, None], overall[None])
    sse = ((x_test - means[t_test]) ** 2).sum((0, 2))
    sst = ((x_test - overall[None]) ** 2).sum((0, 2))
    return 1.0 - sse / sst


def token_purity(tokens_N, f_NF) -> np.ndarray:
    """[F] share of each feature's activation mass on its most frequent current token:
    max_t sum_{n: token_n = t} f_nf / sum_n f_nf (0 for a feature that never fires). 1 = a
    token-identity feature, which a step-0 model (a token lookup) already separates."""
    tokens = np.asarray(tokens_N).ravel()
    f = np.maximum(np.asarray(f_NF, np.float64), 0.0)
    V = int(tokens.max()) + 1
    mass = np.zeros((V, f.shape[1]))
    np.add.at(mass, tokens, f)
    total = mass.sum(0)
    return np.where(total > 0, mass.max(0) / np.maximum(total, 1e-300), 0.0)
