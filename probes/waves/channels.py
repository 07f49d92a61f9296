"""Hidden channels as waves along a passage (Hong, arXiv 2305.05061).

The wave of channel d is x_SD[:, d]: one hidden coordinate read along the S positions of
a passage (by default the final LayerNorm output; any layer's residual on request). From
a [S, D] array the method computes

- the cross-channel Pearson matrix C_DD and two coherence scalars: the mean off-diagonal
  |C| and the top eigenvalue of C over its trace (the share of variance in one mode);
- autocorrelation A_GD for lags 0..max_lag, coherence time (first lag with |A| < 1/e),
  and the dominant period from the power spectrum;
- Pearson correlation of every channel with character-class indicators (space, newline,
  punctuation, vowel, capital), used to label channel clusters;
- repeatability of the modes across passages (prompts / sampling seeds).

The per-passage statistics (C, coherence, autocorrelation, spectrum, class correlation) are
pure jnp on [S, D] in `probes.waves.stats` (`wave_statistics` vmaps over checkpoints C and passages
P); this module adds the character classes, clustering (scipy average linkage on 1 - |C|, on the
host, one matrix at a time), repeatability across passages and the model side.

For a model, one checkpoint at a time (lifted over checkpoints by `map_stack`):
`make_wave_fn` generates the passages, re-reads them (`passage_hidden`) and returns their
statistics; `checkpoint_structure` clusters and labels that checkpoint's channels on the host;
`coherence_intervals` gives the t intervals over passages.

Axis letters: C checkpoints, P passages, S positions, D channels (model width), K character
classes (indicator columns), G lags 0..max_lag, W frequency bins, V vocabulary.
"""
from __future__ import annotations

import string

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from dynamics import stats as dstats
from models import gpt
from models.sample import generate
from probes.waves.stats import dominant_period, wave_statistics

CHAR_CLASSES = ("space", "newline", "punctuation", "vowel", "capital")
_CLASS_TESTS = {
    "space": lambda c: c == " ",
    "newline": lambda c: c == "\n",
    "punctuation": lambda c: c in string.punctuation,
    "vowel": lambda c: c in "aeiouAEIOU",
    "capital": lambda c: c.isupper(),
}


# ---------------------------------------------------------------- character classes

def class_table(chars: str, classes=CHAR_CLASSES) -> np.ndarray:
    """[V, K] float32 membership of each vocabulary character in each class.

    Indexing it with token ids, `table[tokens_S]`, gives indicators inside jitted code.
    """
    unknown = set(classes) - set(_CLASS_TESTS)
    if unknown:
        raise ValueError(f"unknown character classes {sorted(unknown)}; choose from {CHAR_CLASSES}")
    return np.array([[_CLASS_TESTS[c](ch) for c in classes] for ch in chars], np.float32).reshape(len(chars), len(classes))


def class_names(classes=CHAR_CLASSES, offsets=(0, 1)) -> list[str]:
    return [f"{c}@t" + (f"+{off}" if off else "") for off in offsets for c in classes]


def class_indicators(text: str, classes=CHAR_CLASSES, offsets=(0, 1)):
    """Indicators of character classes at position t + offset, for t = 0..len - 1 - max(offset).

    Returns (ind_SK float32 [len(text) - max(offsets), len(classes) * len(offsets)], names).
    Offset 0 is the character the hidden state at t has just read; offset 1 the one it
    predicts. Names read "space@t", "space@t+1".
    """
    S = len(text) - max(offsets)
    table = class_table(text, classes)
    ind = np.concatenate([table[off: off + S] for off in offsets], axis=1)
    return ind, class_names(classes, offsets)


# ---------------------------------------------------------------- clustering (host)

def cluster_channels(C_DD, n_clusters: int = 6):
    """Average-linkage hierarchical clustering of channels on the distance 1 - |C|.

    Returns (labels [D] in 0..k-1, leaf order [D] for plotting C with clusters contiguous).
    """
    from scipy.cluster.hierarchy import fcluster, leaves_list, linkage
    from scipy.spatial.distance import squareform

    C = np.asarray(C_DD, np.float64)
    dist = np.clip(1.0 - np.abs(C), 0.0, None)
    dist = 0.5 * (dist + dist.T)
    np.fill_diagonal(dist, 0.0)
    Z = linkage(squareform(dist, checks=False), method="average")
    labels = fcluster(Z, t=n_clusters, criterion="maxclust") - 1
    return labels.astype(np.int64), leaves_list(Z).astype(np.int64)


def label_clusters(class_corr_DK, labels_D, class_names) -> list[dict]:
    """Name each cluster by the class its members correlate with most (mean |r| over members).

    Sign-blind because clusters are built on |C|: anti-correlated channels share a cluster.
    Returned largest cluster first: {cluster, size, label, strength, mean_abs_corr{name: r}}.
    """
    R = np.abs(np.asarray(class_corr_DK))
    labels_D = np.asarray(labels_D)
    out = []
    for g in np.unique(labels_D):
        members = labels_D == g
        mean = R[members].mean(axis=0)
        best = int(np.argmax(mean))
        out.append({"cluster": int(g), "size": int(members.sum()), "label": class_names[best],
                    "strength": float(mean[best]),
                    "mean_abs_corr": {n: float(v) for n, v in zip(class_names, mean)}})
    return sorted(out, key=lambda c: -c["size"])


def top_channels(class_corr_DK, class_index: int, k: int = 4):
    """The k channels with the largest |r| to one class (e.g. the space channels)."""
    r = np.abs(np.asarray(class_corr_DK)[:, class_index])
    return np.argsort(-r)[:k]


# ---------------------------------------------------------------- repeatability

def _offdiag(C_PDD):
    D = C_PDD.shape[-1]
    iu = np.triu_indices(D, 1)
    return C_PDD[..., iu[0], iu[1]]


@jax.jit
def repeatability(C_PDD, mode_PD):
    """How stable the modes are across P passages (prompts / seeds) of one checkpoint.

    Returns (mean pairwise Pearson r between the off-diagonal entries of the C matrices,
    mean pairwise |cos| between top eigenvectors). Pure jnp; vmaps over checkpoints.
    """
    P = C_PDD.shape[0]
    r = jnp.corrcoef(_offdiag(C_PDD))
    overlap = jnp.abs(mode_PD @ mode_PD.T)
    pairs = 1 - jnp.eye(P, dtype=r.dtype)
    denom = max(P * (P - 1), 1)
    return (r * pairs).sum() / denom, (overlap * pairs).sum() / denom


def adjusted_rand_score(a, b) -> float:
    """Adjusted Rand index of two labelings (Hubert and Arabie 1985; scikit-learn's definition,
    1.0 when both are the same trivial partition)."""
    _, ia = np.unique(np.asarray(a), return_inverse=True)
    _, ib = np.unique(np.asarray(b), return_inverse=True)
    table = np.zeros((ia.max() + 1, ib.max() + 1), np.int64)
    np.add.at(table, (ia, ib), 1)
    pairs = lambda n: n * (n - 1) / 2.0
    index = pairs(table).sum()
    rows, cols, total = pairs(table.sum(1)).sum(), pairs(table.sum(0)).sum(), pairs(len(ia))
    expected = rows * cols / total if total else 0.0
    best = (rows + cols) / 2.0
    return 1.0 if best == expected else float((index - expected) / (best - expected))


def cluster_agreement(labels_PD) -> float:
    """Mean pairwise adjusted Rand index between channel clusterings of P passages."""
    labels_PD = np.asarray(labels_PD)
    P = len(labels_PD)
    scores = [adjusted_rand_score(labels_PD[i], labels_PD[j]) for i in range(P) for j in range(i + 1, P)]
    return float(np.mean(scores)) if scores else float("nan")


# ---------------------------------------------------------------- one checkpoint of a model

def passage_hidden(params, tokens_PS, model: gpt.GPTConfig, layer: int = -1):
    """[P, S, D] hidden states as the generating model had them at every position.

    Positions s < X (the context) come from one causal pass over the first X tokens (equal
    to the KV-cached generation by causality). Positions s >= X come from the window of
    tokens s-X+1..s at positions 0..X-1, the window `generate` slides to produce token s+1.
    `layer` -1 is the final normalised hidden state, else the residual after that block.
    """
    P, S = tokens_PS.shape
    X = model.context
    capture = "final_hidden" if layer < 0 else "resid"

    def read(tokens_BS):
        _, acts = gpt.apply(params, tokens_BS, model, capture=(capture,))
        return acts["final_hidden"] if layer < 0 else acts["resid"][layer]

    head = read(tokens_PS[:, :min(S, X)])
    if S <= X:
        return head
    windows_PWX = tokens_PS[:, jnp.arange(X, S)[:, None] + jnp.arange(1 - X, 1)[None, :]]  # W = S - X windows
    tail = read(rearrange(windows_PWX, "p w x -> (p w) x"))[:, -1]
    return jnp.concatenate([head, rearrange(tail, "(p w) d -> p w d", p=P)], axis=1)


def sampled_passages(sample, prompts, keys, n_prompt_tokens: tuple[int, ...], seeds_per_prompt: int,
                     passage_length: int):
    """[P, S] tokens: `seeds_per_prompt` continuations of every prompt to `passage_length` tokens,
    `sample(batch, n_new, key)` drawing them (the cached GPT sampler or `generate_any`)."""
    tokens = []
    for prompt, key, n0 in zip(prompts, keys, n_prompt_tokens):
        tokens.append(sample(jnp.broadcast_to(prompt, (seeds_per_prompt, n0)), passage_length - n0, key))
    return jnp.concatenate(tokens, axis=0)


def passage_statistics(tokens_PS, x_PSD, ind_PSK, *, max_lag: int, min_period: float, max_period: float) -> dict:
    """`wave_statistics` per passage [P, ...], repeatability across passages, the tokens and waves."""
    out = jax.vmap(lambda x, i: wave_statistics(x, i, max_lag=max_lag, min_period=min_period,
                                                max_period=max_period))(x_PSD, ind_PSK)
    out["repeat_corr"], out["repeat_mode"] = repeatability(out["corr"], out["top_mode"])
    out["tokens"], out["waves"] = tokens_PS, x_PSD
    return out


def make_wave_fn(model: gpt.GPTConfig, n_prompt_tokens: tuple[int, ...], *, seeds_per_prompt: int,
                 passage_length: int, temperature: float, layer: int, max_lag: int, min_period: float,
                 max_period: float):
    """fn(params, prompts, keys, table_VK) -> one checkpoint's passages and statistics (jnp,
    vmappable): `seeds_per_prompt` passages of `passage_length` tokens per prompt, their waves on
    positions 0..S-2 (every position has a next character for the class indicators at s and
    s+1), `wave_statistics` per passage [P, ...], repeatability across passages, the tokens."""

    def fn(params, prompts, keys, table_VK):
        sample = lambda batch, n_new, key: generate(params, model, batch, n_new, key, temperature)
        tokens_PS = sampled_passages(sample, prompts, keys, n_prompt_tokens, seeds_per_prompt, passage_length)
        x_PSD = passage_hidden(params, tokens_PS, model, layer)[:, :-1]
        ind_PSK = jnp.concatenate([table_VK[tokens_PS[:, :-1]], table_VK[tokens_PS[:, 1:]]], axis=-1)
        return passage_statistics(tokens_PS, x_PSD, ind_PSK, max_lag=max_lag, min_period=min_period,
                                  max_period=max_period)

    return fn


def checkpoint_structure(waves_c: dict, names: list[str], n_clusters: int, min_period: float,
                         max_period: float) -> tuple[dict, list[dict], np.ndarray]:
    """Host work on one checkpoint's `make_wave_fn` output (leaves [P, ...]): channel clusters of
    the passage-mean C, labelled by class, their agreement across passages, and the period of the
    spectrum averaged over channels and passages (per-passage peaks are noisy).
    Returns (record of scalars, named clusters, leaf order of the channels)."""
    corr_PDD = np.asarray(waves_c["corr"])
    labels, order = cluster_channels(corr_PDD.mean(0), n_clusters)
    named = label_clusters(np.asarray(waves_c["class_corr"]).mean(0), labels, names)
    agreement = cluster_agreement([cluster_channels(c, n_clusters)[0] for c in corr_PDD])
    S = waves_c["waves"].shape[1]
    period = dominant_period(jnp.asarray(np.asarray(waves_c["spectrum"]).mean(0)), S, min_period, max_period)
    coherence = np.asarray(waves_c["coherence"])
    record = {"coherence": float(coherence.mean()), "coherence_sd": float(coherence.std()),
              "eig_ratio": float(np.asarray(waves_c["eig_ratio"]).mean()), "period": float(period),
              "coherence_time": float(np.median(waves_c["coherence_time"])),
              "repeat_corr": float(waves_c["repeat_corr"]), "repeat_mode": float(waves_c["repeat_mode"]),
              "cluster_agreement": agreement,
              "clusters": [(c["label"], c["size"], round(c["strength"], 3)) for c in named]}
    return record, named, order


def coherence_intervals(coherence_CP, level: float = 0.95) -> dict:
    """Coherence at the first and last checkpoint and its change, with intervals over the P
    passages, paired across checkpoints (the same prompts and keys at every checkpoint).
    [choice] Student t, not the bootstrap: P is a handful (4 at tiny), where percentile-bootstrap
    intervals come out too narrow."""
    c = np.asarray(coherence_CP, np.float64)
    t = (lambda v: dstats.t_ci(v, level)) if c.shape[1] >= 2 else (lambda v: None)
    return {"n_passages": int(c.shape[1]), "coherence_first_ci": t(c[0]), "coherence_last_ci": t(c[-1]),
            "coherence_change": float(c[-1].mean() - c[0].mean()), "coherence_change_ci": t(c[-1] - c[0])}
