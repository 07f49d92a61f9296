"""Attribution of a downstream metric to crosscoder features, ablation, and feature complexity.

Splicing keeps the clean forward pass exact: at snapshot c the residual is replaced by
decode_c(f) + err_c with err_c = x_c - decode_c(f_clean) held fixed (an error node), so
m(f_clean) is the clean metric and attr_i = sum_tokens f_i dm/df_i (gradient x activation) is
the first-order effect of removing feature i; ablation sets the chosen features' f to 0.

Complexity proxy [ours]: the n-gram order that best predicts a feature's activation, i.e.
argmax_n of the held-out R^2 of E[f | last n tokens] (group means fitted on one half of the
tokens, unseen contexts predicted by the global mean).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse


def spliced_metric(f_NF, snapshot: dict, tokens_BS, metric_fn, logits_fn):
    """m at one snapshot with the residual rebuilt from features f_NF (or the snapshot's f_NF slice).

    snapshot: {"W_dec" [F, D], "b_dec" [D], "err" [N, D], "scale" [], "model": params}, all in
    normalised units except the model; `logits_fn(model, resid_BSD)` finishes the forward pass.
    """
    B, S = tokens_BS.shape
    x_hat = f_NF @ snapshot["W_dec"] + snapshot["b_dec"] + snapshot["err"]
    logits = logits_fn(snapshot["model"], (x_hat / snapshot["scale"]).reshape(B, S, -1))
    return metric_fn(logits, tokens_BS)


def attribution_fn(metric_fn, logits_fn):
    """fn(snapshot, tokens) -> (m_clean, attr_F) for `map_stack` (snapshot fields stacked over C;
    snapshot["f"] is that snapshot's f_NF)."""
    def fn(snapshot, tokens_BS):
        f = snapshot["f"]
        m, grad = jax.value_and_grad(lambda g: spliced_metric(g, snapshot, tokens_BS, metric_fn, logits_fn))(f)
        attr = (f * grad).sum(0)
        return m, attr
    return fn


def ablation_fn(metric_fn, logits_fn):
    """fn(snapshot, tokens) -> m with the features in snapshot["mask"] ([F], 1 = ablate) zeroed."""
    def fn(snapshot, tokens_BS):
        f = snapshot["f"] * (1.0 - snapshot["mask"])[None]
        return spliced_metric(f, snapshot, tokens_BS, metric_fn, logits_fn)
    return fn


def induction_tokens(rng: np.random.Generator, n: int, half: int, vocab: np.ndarray) -> np.ndarray:
    """[n, 2*half] sequences r r of random tokens drawn from `vocab` (an induction task)."""
    r = rng.choice(vocab, size=(n, half))
    return np.concatenate([r, r], axis=1).astype(np.int32)


def induction_metric(half: int, per_sequence: bool = False):
    """Mean log-probability of the correct next token over the repeated half (per sequence [B]
    with per_sequence, whose mean is the scalar metric: every sequence has the same length)."""
    def metric(logits_BSV, tokens_BS):
        logp = jax.nn.log_softmax(logits_BSV[:, half:-1].astype(jnp.float32), -1)
        target = tokens_BS[:, half + 1:]
        lp = jnp.take_along_axis(logp, target[..., None], -1)[..., 0]
        return lp.mean(-1) if per_sequence else lp.mean()
    return metric


# ----------------------------------------------------------------------------- complexity
def context_ids(windows_BS: np.ndarray, n: int, start: int) -> np.ndarray:
    """[B, S - start] integer id of the n tokens ending at each position >= start."""
    B, S = windows_BS.shape
    keys = np.zeros((B, S - start), np.int64)
    for j in range(n):
        keys = keys * 1_000_003 + windows_BS[:, start - j: S - j].astype(np.int64)
    return keys


def ngram_r2(windows_BS: np.ndarray, f_BSF: np.ndarray, max_order: int, train_rows: np.ndarray) -> np.ndarray:
    """[max_order, F] held-out R^2 of E[f | last n tokens], n = 1..max_order.

    Positions before max_order - 1 are skipped so every order sees the same tokens; rows of
    `train_rows` (window indices) fit the group means, the other windows are scored.
    """
    start = max_order - 1
    f = f_BSF[:, start:].astype(np.float64)
    is_train = np.zeros(len(windows_BS), bool)
    is_train[train_rows] = True
    f_tr, f_te = f[is_train].reshape(-1, f.shape[-1]), f[~is_train].reshape(-1, f.shape[-1])
    mean = f_tr.mean(0)
    sst = ((f_te - mean) ** 2).sum(0)
    out = np.zeros((max_order, f.shape[-1]))
    for n in range(1, max_order + 1):
        keys = context_ids(windows_BS, n, start)
        uniq, inv = np.unique(keys, return_inverse=True)
        inv = inv.reshape(keys.shape)
        g_tr, g_te = inv[is_train].ravel(), inv[~is_train].ravel()
        G = len(uniq)
        onehot = scipy.sparse.csr_matrix((np.ones(len(g_tr)), (g_tr, np.arange(len(g_tr)))), shape=(G, len(g_tr)))
        counts = np.asarray(onehot.sum(1)).ravel()
        sums = onehot @ f_tr
        group_mean = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], mean[None])
        pred = group_mean[g_te]
        out[n - 1] = 1.0 - ((f_te - pred) ** 2).sum(0) / np.maximum(sst, 1e-12)
    return out


def best_order(r2_OF: np.ndarray, tolerance: float = 0.0) -> np.ndarray:
    """[F] smallest n whose held-out R^2 is within `tolerance` of the best order's."""
    best = r2_OF.max(0)
    return (r2_OF >= best[None] - tolerance).argmax(0) + 1
