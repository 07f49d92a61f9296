"""The crosscoder metrics of Ge et al. (arXiv 2509.17196), each for one snapshot where it can be
(lifted over the snapshots by `map_stack` or computed on stacked arrays).

Axis letters: N tokens, C snapshots (checkpoints), D width, F features, B windows/sequences, S positions, V vocabulary.

- quality per snapshot: `explained_variance`, `l0`, `dead_fraction`, `fire_counts`
  (`evaluate` all at once), `loss_recovered` from the clean / spliced / ablated cross-entropy
  and the KL to corpus unigram and bigram statistics (`ce_fn` for one snapshot, `loss_and_kl`);
- decoder geometry and emergence: `probes.crosscoders.emergence`;
- attribution of an induction metric and top-vs-random ablation: `induction_ablation`;
- n-gram complexity against emergence: `complexity`;
- intervals: `window_intervals` (bootstrap over held-out windows), `feature_intervals`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from einops import rearrange

from dynamics import stats
from dynamics.checkpoints import map_stack
from models import gpt
from models.families import apply as models_apply, family_of, logits_from_resid
from probes.crosscoders import attribution as attr_lib
from probes.crosscoders import model as cc


# ------------------------------------------------------------------------ quality per snapshot
def explained_variance(x_NCD, x_hat_NCD) -> np.ndarray:
    """[C] aggregate explained variance 1 - sum ||x - x_hat||^2 / sum ||x - mean x||^2."""
    x = np.asarray(x_NCD, np.float64)
    err = np.sum((x - np.asarray(x_hat_NCD, np.float64)) ** 2, axis=(0, 2))
    total = np.sum((x - x.mean(0)) ** 2, axis=(0, 2))
    return 1.0 - err / total


def active(f, n_snapshots: int) -> np.ndarray:
    """Boolean [N, F, C] activity (shared f_NF counts in every snapshot)."""
    f = np.asarray(f)
    if f.ndim == 2:
        f = np.broadcast_to(f[:, :, None], f.shape + (n_snapshots,))
    return f > 0


def l0(f, n_snapshots: int) -> np.ndarray:
    """[C] mean number of active features per token."""
    return active(f, n_snapshots).sum(1).mean(0)


def dead_fraction(f, n_snapshots: int) -> np.ndarray:
    """[C] fraction of features that never fire on these tokens, per snapshot."""
    return 1.0 - active(f, n_snapshots).any(0).mean(0)


def fire_counts(f, n_snapshots: int) -> np.ndarray:
    """[F] tokens on which each feature fires in any snapshot."""
    return active(f, n_snapshots).any(2).sum(0)


def per_snapshot_f(f, n_snapshots: int) -> np.ndarray:
    """[C, N, F] latents per snapshot (shared latents repeated)."""
    return np.broadcast_to(f[None], (n_snapshots,) + f.shape) if f.ndim == 2 else np.moveaxis(f, 2, 0)


def loss_recovered(ce_clean, ce_spliced, ce_ablated) -> np.ndarray:
    """(CE_ablated - CE_spliced) / (CE_ablated - CE_clean), elementwise."""
    ce_clean, ce_spliced, ce_ablated = (np.asarray(v, np.float64) for v in (ce_clean, ce_spliced, ce_ablated))
    return (ce_ablated - ce_spliced) / (ce_ablated - ce_clean)


def encode_all(params, x_NCD, config: cc.CrosscoderConfig, threshold=None, chunk: int = 4096):
    """(f, x_hat) over many tokens in chunks (batchtopk uses the inference threshold when given)."""
    fn = jax.jit(lambda p, x, t: (lambda f: (f, cc.decode(p, f)))(cc.encode(p, x, config, threshold=t)))
    fs, xs = [], []
    for start in range(0, len(x_NCD), chunk):
        f, x_hat = fn(params, np.asarray(x_NCD[start:start + chunk]), threshold)
        fs.append(np.asarray(f))
        xs.append(np.asarray(x_hat))
    return np.concatenate(fs), np.concatenate(xs)


def evaluate(params, x_NCD, config: cc.CrosscoderConfig, threshold=None) -> dict:
    """Per-snapshot explained variance, L0 and dead fraction on held-out tokens (and f, x_hat)."""
    f, x_hat = encode_all(params, x_NCD, config, threshold)
    C = config.n_snapshots
    return {"explained_variance": explained_variance(x_NCD, x_hat), "l0": l0(f, C),
            "dead_fraction": dead_fraction(f, C), "f": f, "x_hat": x_hat}


# ------------------------------------------------------------------- forward on one snapshot
def site_fn(model_config: gpt.GPTConfig, layer: int):
    """fn(params, tokens_BS) -> residual after block `layer` [B, S, D] (stops the forward there).
    Any family: an imported one runs `models.apply` on blocks 0..layer (the unused logits are
    dropped by XLA under jit)."""
    if family_of(model_config) != "gpt":
        def any_family(params, tokens):
            head = {**params, "blocks": jax.tree.map(lambda a: a[: layer + 1], params["blocks"])}
            return models_apply(head, tokens, model_config, capture=("resid",))[1]["resid"][-1]
        return any_family

    def fn(params, tokens):
        x = gpt.embed(params, tokens, model_config)
        x, _ = gpt.run_blocks(gpt.layer_slice(params["blocks"], 0, layer + 1), x, model_config)
        return x
    return fn


def corpus_statistics(train_ids, vocab_size: int, dense_limit: int = 4096):
    """(token counts + 1 [V], log unigram [V], log bigram rows [V, V]), add-one smoothed. Above
    `dense_limit` tokens the bigram table is a function of the rows wanted, rows -> [R, V]
    ([choice]: a dense [V, V] table of a 50k vocabulary would take 20 GB)."""
    counts = np.bincount(train_ids, minlength=vocab_size).astype(np.float64) + 1.0
    if vocab_size > dense_limit:
        prev, nxt = np.asarray(train_ids[:-1]), np.asarray(train_ids[1:])

        def rows(present):
            bi = np.ones((len(present), vocab_size), np.float32)
            pos = np.searchsorted(present, prev)
            hit = (pos < len(present)) & (present[np.minimum(pos, len(present) - 1)] == prev)
            np.add.at(bi, (pos[hit], nxt[hit]), 1.0)
            return np.log(bi / bi.sum(1, keepdims=True))
        return counts, np.log(counts / counts.sum()), rows
    bi = np.ones((vocab_size, vocab_size))
    np.add.at(bi, (train_ids[:-1], train_ids[1:]), 1.0)
    return counts, np.log(counts / counts.sum()), np.log(bi / bi.sum(1, keepdims=True))


def ce_fn(model_config: gpt.GPTConfig, layer: int, ablation: str):
    """fn(snap, tokens, targets, log_uni, log_bi) for one snapshot, snap = {"model", "hat" (the
    reconstruction in model units), "mean" (the mean residual)}: clean CE, CE with the
    reconstruction spliced in, CE with the residual ablated ("zero" or "mean"), and the KL from
    the model's next-token distribution to the unigram and bigram statistics."""
    def fn(snap, tokens, targets, log_uni, log_bi, bi_rows=None):
        p, hat = snap["model"], snap["hat"]
        logits, _ = models_apply(p, tokens, model_config)
        ablated = jnp.zeros_like(hat) if ablation == "zero" else jnp.broadcast_to(snap["mean"], hat.shape)
        logp = jax.nn.log_softmax(logits, -1)
        prob = jnp.exp(logp)
        kl_uni = jnp.sum(prob * (logp - log_uni), -1).mean()
        kl_bi = jnp.sum(prob * (logp - log_bi[tokens if bi_rows is None else bi_rows]), -1).mean()
        return {"clean": gpt.cross_entropy(logits, targets),
                "spliced": gpt.cross_entropy(logits_from_resid(p, hat, layer, model_config), targets),
                "ablated": gpt.cross_entropy(logits_from_resid(p, ablated, layer, model_config), targets),
                "kl_unigram": kl_uni, "kl_bigram": kl_bi}
    return fn


def loss_and_kl(model_config, layer: int, ablation: str, stacked, hat_CBSD, raw_CBSD, tokens_BS, targets_BS,
                log_uni, log_bi):
    """`ce_fn` over every snapshot (the mean residual of `raw_CBSD` for "mean" ablation):
    ({clean, spliced, ablated, kl_unigram, kl_bigram}: [C] each, loss recovered [C])."""
    rows = None
    if callable(log_bi):  # a large vocabulary: only the bigram rows of the tokens present
        present, rows = np.unique(tokens_BS, return_inverse=True)
        log_bi, rows = log_bi(present), rows.reshape(tokens_BS.shape).astype(np.int32)
    ce = map_stack(ce_fn(model_config, layer, ablation),
                   {"model": stacked, "hat": hat_CBSD, "mean": raw_CBSD.mean(axis=(1, 2))}, tokens_BS, targets_BS,
                   jnp.asarray(log_uni, jnp.float32), jnp.asarray(log_bi, jnp.float32), rows)
    return ce, loss_recovered(ce["clean"], ce["spliced"], ce["ablated"])


# ------------------------------------------------------------------- attribution and ablation
def spliced_inputs(tokens_BS, stacked, site, params, threshold, config: cc.CrosscoderConfig, scale_C) -> dict:
    """Per-snapshot inputs of `probes.crosscoders.attribution` for these sequences: the model, the decoder,
    the error node (x - x_hat, normalised units), the scale and the features f [C, N, F]."""
    C, D = config.n_snapshots, config.d_model
    acts = map_stack(site, stacked, tokens_BS)
    x = rearrange(acts, "c ... d -> (...) c d", c=C, d=D) * scale_C[None, :, None]   # [N, C, D], N = B * S
    f, x_hat = encode_all(params, x, config, threshold)
    return {"model": stacked, "W_dec": np.moveaxis(np.asarray(params["W_dec"]), 1, 0),
            "b_dec": np.asarray(params["b_dec"]), "err": np.moveaxis(x - x_hat, 1, 0), "scale": scale_C,
            "f": per_snapshot_f(f, C)}


def induction_ablation(stacked, site, logits_fn, params, threshold, config: cc.CrosscoderConfig, scale_C,
                       counts_V, alive_F, context: int, seed: int, n_induction: int, n_ablate: int,
                       n_random: int) -> dict:
    """Attribution attr_i = f_i dm/df_i of an induction metric (log-prob on the repeated half of
    `n_induction` spans r r, r of length context // 2 drawn from the 40 most frequent tokens)
    on half the sequences; on the other half (selection and ablation use different sequences),
    the drop of the metric per sequence when the top-`n_ablate` features by attribution are
    ablated, against `n_random` draws of as many alive features. Returns attr [C, F], seq_top /
    seq_rand [C, B] (drops per test sequence) and m_clean [C, B]."""
    rng = np.random.default_rng(seed + 3)
    half, (C, F) = context // 2, (config.n_snapshots, config.n_features)
    common = np.argsort(-counts_V)[:min(40, len(counts_V))]
    induction = attr_lib.induction_tokens(rng, n_induction, half, common)
    select_tokens, test_tokens = induction[: n_induction // 2], induction[n_induction // 2:]
    sel = spliced_inputs(select_tokens, stacked, site, params, threshold, config, scale_C)
    _, attr = map_stack(attr_lib.attribution_fn(attr_lib.induction_metric(half), logits_fn), sel, select_tokens)
    test = spliced_inputs(test_tokens, stacked, site, params, threshold, config, scale_C)
    ablate = attr_lib.ablation_fn(attr_lib.induction_metric(half, per_sequence=True), logits_fn)
    zero_mask = np.zeros((C, F), np.float32)
    m_clean = map_stack(ablate, {**test, "mask": zero_mask}, test_tokens)
    top_mask = zero_mask.copy()
    np.put_along_axis(top_mask, np.argsort(-attr, axis=1)[:, :n_ablate], 1.0, axis=1)
    m_top = map_stack(ablate, {**test, "mask": top_mask}, test_tokens)
    alive_ids, m_rand = np.flatnonzero(alive_F), []
    for _ in range(n_random):
        mask = zero_mask.copy()
        for c in range(C):
            mask[c, rng.choice(alive_ids, size=min(n_ablate, len(alive_ids)), replace=False)] = 1.0
        m_rand.append(map_stack(ablate, {**test, "mask": mask}, test_tokens))
    return {"attr": np.asarray(attr), "m_clean": m_clean, "seq_top": m_clean - m_top,
            "seq_rand": m_clean - np.mean(m_rand, axis=0)}


# -------------------------------------------------------------------------------- complexity
def complexity(tokens_BS, f_BSF, max_order: int, alive_F, init_feature_F, emerge_idx_F) -> dict:
    """Best n-gram order of each feature (fitted on the even windows, R^2 on the odd ones) and
    its Spearman correlation with the emergence index over `usable` features (alive, not
    initialisation features, best R^2 > 0.05); NaN when fewer than 3 or either is constant."""
    r2 = attr_lib.ngram_r2(tokens_BS, f_BSF, max_order, np.arange(0, len(tokens_BS), 2))
    order = attr_lib.best_order(r2)
    usable = alive_F & (r2.max(0) > 0.05) & ~init_feature_F
    if usable.sum() >= 3 and np.ptp(order[usable]) > 0 and np.ptp(emerge_idx_F[usable]) > 0:
        rho, p_value = scipy.stats.spearmanr(order[usable], emerge_idx_F[usable])
    else:
        rho, p_value = float("nan"), float("nan")
    return {"order": order, "usable": usable, "rho": rho, "p_value": p_value}


# --------------------------------------------------------------------------------- intervals
def window_intervals(x_NCD, x_hat_NCD, f, n_snapshots: int, n_windows: int, skip_first: bool,
                     level: float = 0.95) -> dict:
    """Explained variance (min over snapshots) and L0, bootstrap over the held-out windows (the
    tokens of a window are correlated; windows are drawn apart): each is a ratio of per-window
    sums, so all resamples are one matrix product. [choice] Windows, not features, are the unit
    here: EV and L0 are properties of tokens."""
    N, C = len(x_NCD), n_snapshots
    x = np.asarray(x_NCD, np.float32).reshape(n_windows, N // n_windows, C, -1)
    err = ((x - np.asarray(x_hat_NCD, np.float32).reshape(x.shape)) ** 2).sum((1, 3), dtype=np.float64)  # [W, C]
    sq, total_x = (x ** 2).sum((1, 3), dtype=np.float64), x.sum(1, dtype=np.float64)                    # [W, C], [W, C, D]
    counts = stats.resample_counts(n_windows)
    n_tok = counts.sum(1)[:, None] * (N // n_windows)
    sums = (counts @ total_x.reshape(n_windows, -1)).reshape(len(counts), C, -1)                       # [R, C, D]
    total = counts @ sq - (sums ** 2).sum(-1) / n_tok
    ev = 1.0 - (counts @ err) / total                                                                   # [R, C]
    l0_w = active(f, C).sum(1).reshape(n_windows, -1).mean(1)                                          # [W]
    return {"explained_variance_min_ci": stats.quantile_ci(ev[:, 1:].min(1) if skip_first else ev.min(1), level),
            "l0_mean_ci": stats.mean_ci(l0_w, level=level), "n_eval_windows": int(n_windows)}


def feature_intervals(alive, init_feature, emerge_step, order, emerge_idx, usable, seq_top, seq_rand,
                      level: float = 0.95) -> dict:
    """Feature-level numbers over the dictionary's features: Wilson for the dead and initial
    fractions, bootstrap for the median emergence step and the complexity Spearman; ablation
    drops at the last snapshot over the test induction sequences (top vs random paired)."""
    n_alive = max(int(alive.sum()), 1)
    return {"dead_fraction_ci": stats.wilson_ci(int((~alive).sum()), len(alive), level),
            "frac_init_features_ci": stats.wilson_ci(int(init_feature.sum()), n_alive, level),
            "median_emergence_step_ci": stats.bootstrap_ci(emerge_step[alive], np.median, level=level)
            if alive.any() else None,
            "complexity_spearman_r_ci": stats.correlation_ci(order[usable], emerge_idx[usable], "spearman", level=level)
            if usable.sum() >= 3 else None,
            "ablation_drop_top_ci": stats.mean_ci(seq_top[-1], level=level),
            "ablation_drop_random_ci": stats.mean_ci(seq_rand[-1], level=level),
            "ablation_top_minus_random": float((seq_top[-1] - seq_rand[-1]).mean()),
            "ablation_top_minus_random_ci": stats.mean_ci(seq_top[-1] - seq_rand[-1], level=level),
            "n_ablation_sequences": int(seq_top.shape[-1])}
