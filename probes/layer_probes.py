"""Linear probes on every layer of one checkpoint of any family, lifted over checkpoints by
`map_stack` (so a streamed suite is probed chunk by chunk, the features never leaving the device).

For one checkpoint, `make_probe_fn` returns fn(params, data):
- features [L+1, N, D] (`hidden_features`): the embedding output (layer 0, before block 0) and the
  residual stream after every block, read at each text's last token, or averaged over its tokens
  ([choice] `feature` = "last" | "mean"; texts are right-padded, so causal attention keeps the
  padding out of every real position);
- per layer, two L2 logistic probes (`probes.linear.fit_logistic`, the Newton solver; binary, or
  one-vs-rest for K > 2 classes so every Hessian stays (D+1)^2): one on the real labels of the
  fit split, one on the same labels shuffled (the control, [choice] Hewitt and Liang's idea with
  a permutation rather than per-type labels, so any feature set gets one);
- which held-out examples (validation and test splits) each probe gets right, and whether each
  fit converged.

`word_end_task` builds the built-in labelled set: does the word end after the last token?

Axis letters: L layers (here L+1 with the embedding), N examples, S positions, D width, V
vocabulary, K classes, C checkpoints.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import models
from probes import linear


def pad_tokens(ids_list, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [N, S] int32 right-padded with 0, lengths [N]): each text's last `window` tokens
    ([choice] the end is kept: the last-token feature reads it), S the longest kept length."""
    kept = [np.asarray(ids, np.int32)[-window:] for ids in ids_list]
    S = max(len(k) for k in kept)
    tokens = np.zeros((len(kept), S), np.int32)
    for i, k in enumerate(kept):
        tokens[i, :len(k)] = k
    return tokens, np.array([len(k) for k in kept], np.int32)


def map_rows(fn, arrays, batch_size: int):
    """fn(*batch) over `arrays` (leading axis N) in batches of `batch_size` rows, by lax.map, so
    memory holds one batch's activations; the outputs (leading axis the batch's rows) concatenated
    back to N rows (the last batch padded with copies of row 0)."""
    N = arrays[0].shape[0]
    B = min(batch_size, N)
    n_batches = -(-N // B)
    pad = n_batches * B - N
    stacked = [jnp.concatenate([a, jnp.repeat(a[:1], pad, 0)]).reshape(n_batches, B, *a.shape[1:]) for a in arrays]
    out = jax.lax.map(lambda xs: fn(*xs), tuple(stacked))
    return jax.tree.map(lambda y: y.reshape(n_batches * B, *y.shape[2:])[:N], out)


def hidden_features(params, tokens_NS, lengths_N, config, feature: str = "last", batch_size: int = 64):
    """[L+1, N, D]: the embedding output and every block's residual, at the last token of each
    text (`feature="last"`) or averaged over its tokens ("mean"); forward passes of
    `batch_size` texts at a time (`map_rows`), so activations stay [L+1, batch, S, D]."""
    S = tokens_NS.shape[1]

    def one(tok_BS, len_B):
        _, acts = models.apply(params, tok_BS, config, capture=("embed", "resid"))
        h_LBSD = jnp.concatenate([acts["embed"][None], acts["resid"]], axis=0)
        if feature == "last":
            h_LBD = h_LBSD[:, jnp.arange(tok_BS.shape[0]), len_B - 1]
        else:
            mask_BS = (jnp.arange(S)[None, :] < len_B[:, None]).astype(h_LBSD.dtype)
            h_LBD = jnp.einsum("lbsd,bs->lbd", h_LBSD, mask_BS) / len_B[None, :, None]
        return jnp.moveaxis(h_LBD, 1, 0)                                            # [B, L+1, D]

    return jnp.moveaxis(map_rows(one, (tokens_NS, lengths_N), batch_size), 1, 0)


def fit_and_score(X_fit, y_fit, X_eval, y_eval, n_classes: int, C: float, n_iter: int):
    """One probe: (right [N_eval] bool, converged, Newton iterations)."""
    if n_classes == 2:
        fit = linear.fit_logistic(X_fit, y_fit, 2, C, n_iter)
    else:
        fit = linear.fit_one_vs_rest(X_fit, y_fit, n_classes, C, n_iter)
    return linear.predict_logistic(fit.W, X_eval) == y_eval, fit.converged, fit.n_iter


def make_probe_fn(config, *, feature: str, batch_size: int, n_classes: int, C: float, n_iter: int):
    """fn(params, data) -> {"right_val" [L+1, 2, N_val], "right_test" [L+1, 2, N_test],
    "converged" [L+1, 2], "n_iter" [L+1, 2]}; axis 2 is (real labels, shuffled control).
    `data`: tokens [N, S], lengths [N], y [N], fit / val / test indices, y_control [N_fit]."""

    def fn(params, data):
        X = hidden_features(params, data["tokens"], data["lengths"], config, feature, batch_size)
        y = data["y"]
        labels_2F = jnp.stack([y[data["fit"]], data["y_control"]])
        evaluate = jnp.concatenate([data["val"], data["test"]])

        def one(X_ND, y_F):
            return fit_and_score(X_ND[data["fit"]], y_F, X_ND[evaluate], y[evaluate], n_classes, C, n_iter)

        per_label = jax.vmap(one, in_axes=(None, 0))
        right, converged, iters = jax.vmap(per_label, in_axes=(0, None))(X, labels_2F)
        n_val = data["val"].shape[0]
        return {"right_val": right[..., :n_val], "right_test": right[..., n_val:], "converged": converged,
                "n_iter": iters}

    return fn


def split_indices(n: int, test_fraction: float, val_fraction: float, seed: int, groups=None):
    """(fit, val, test) index arrays of a random permutation of n examples; with `groups` [n],
    whole groups go to one split (the built-in task's balanced pairs: a pair split across fit and
    test would make every split's per-token label balance anti-correlated with the others')."""
    groups = np.arange(n) if groups is None else np.asarray(groups)
    ids = np.unique(groups)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_test, n_val = int(round(len(ids) * test_fraction)), int(round(len(ids) * val_fraction))
    part = lambda chosen: np.sort(np.flatnonzero(np.isin(groups, ids[chosen])))
    return part(order[n_test + n_val:]), part(order[n_test:n_test + n_val]), part(order[:n_test])


def word_end_task(ids, strings: list[str], n_examples: int, window: int, seed: int = 0):
    """The built-in task: windows of `window` tokens of a text, each ending in a token whose last
    character is a letter, labelled 1 if the word ends there (the next token starts with a
    non-letter: a space, punctuation, a newline; BPE's leading space) and 0 if it goes on.
    [choice] Balanced within every last-token id (as many of each label per id, the rest
    dropped), so the label's rate is 1/2 given the last token alone: its embedding carries no
    information, and decoding the label needs the context (which letters came before).
    Returns (windows [N, window] int32, labels [N]), N <= n_examples, even; rows 2i and 2i+1 are
    a pair (label 1, label 0) with the same last token, to be kept in one split (`split_indices`)."""
    ids = np.asarray(ids, np.int64)
    ends_letter = np.array([s[-1:].isalpha() for s in strings])
    starts = np.array([s[:1] != "" for s in strings])
    boundary = np.array([s[:1] != "" and not s[:1].isalpha() for s in strings])
    t = np.arange(window - 1, len(ids) - 1)
    t = t[ends_letter[ids[t]] & starts[ids[t + 1]]]
    label = boundary[ids[t + 1]].astype(np.int64)
    rng = np.random.default_rng(seed)
    t, label = t[(order := rng.permutation(len(t)))], label[order]
    pairs = []
    for v in np.unique(ids[t]):
        same = ids[t] == v
        ones, zeros = t[same & (label == 1)], t[same & (label == 0)]
        pairs += list(zip(ones[:len(zeros)], zeros[:len(ones)]))
    keep = [pairs[i] for i in rng.permutation(len(pairs))[:n_examples // 2]]
    ends = np.array([e for pair in keep for e in pair], np.int64).reshape(-1)
    labels = np.tile([1, 0], len(keep))
    windows = ids[ends[:, None] + np.arange(1 - window, 1)[None, :]] if len(ends) else np.zeros((0, window))
    return windows.astype(np.int32), labels


def emergence_index(right_CN, control_CN, level: float = 0.95):
    """The first checkpoint whose Wilson interval of accuracy lies above the control's (None: never)."""
    from dynamics import stats

    n = right_CN.shape[1]
    for c in range(right_CN.shape[0]):
        if stats.wilson_ci(int(right_CN[c].sum()), n, level)[0] > stats.wilson_ci(int(control_CN[c].sum()), n, level)[1]:
            return c
    return None
