"""Hidden channels as waves along a passage (Hong, arXiv 2305.05061).

The wave of channel d is x_SD[:, d]: one hidden coordinate read along the S positions of
a passage (by default the final LayerNorm output; any layer's residual on request). From
a [S, D] array this module computes

- the cross-channel Pearson matrix C_DD and two coherence scalars: the mean off-diagonal
  |C| and the top eigenvalue of C over its trace (the share of variance in one mode);
- autocorrelation A_GD for lags 0..max_lag, coherence time (first lag with |A| < 1/e),
  and the dominant period from the power spectrum;
- Pearson correlation of every channel with character-class indicators (space, newline,
  punctuation, vowel, capital), used to label channel clusters;
- repeatability of the modes across passages (prompts / sampling seeds).

Everything except clustering is jnp on the trailing [S, D] axes, so `wave_statistics`
vmaps over any leading axes (checkpoints C, passages P): `stack_wave_statistics`.
Clustering (scipy average linkage on 1 - |C|) runs on the host, one matrix at a time.

For a model, one checkpoint at a time (lifted over checkpoints by `map_stack`):
`make_wave_fn` generates the passages, re-reads them (`passage_hidden`) and returns their
statistics; `checkpoint_structure` clusters and labels that checkpoint's channels on the host;
`coherence_intervals` gives the t intervals over passages.

Axis letters: C checkpoints, P passages, S positions, D channels (model width), K character
classes (indicator columns), G lags 0..max_lag, W frequency bins, V vocabulary.
[choice] Longer than ~350 lines on purpose: the wave half of the method stays in one module.
"""
from __future__ import annotations

import math
import string
from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import stats as dstats
from models import gpt
from models.sample import generate

CHAR_CLASSES = ("space", "newline", "punctuation", "vowel", "capital")
_CLASS_TESTS = {
    "space": lambda c: c == " ",
    "newline": lambda c: c == "\n",
    "punctuation": lambda c: c in string.punctuation,
    "vowel": lambda c: c in "aeiouAEIOU",
    "capital": lambda c: c.isupper(),
}


def _zscore_columns(x_SD, eps=1e-8):
    """Centre each column and scale it to unit norm; constant columns become zero."""
    xc = x_SD - x_SD.mean(axis=0)
    norm = jnp.sqrt(jnp.sum(xc * xc, axis=0))
    return xc / jnp.where(norm > eps, norm, jnp.inf)


@jax.jit
def cross_correlation(x_SD, y_SK):
    """Pearson correlation of every column of x with every column of y: [D, K].

    A constant column (zero variance) correlates 0 with everything.
    """
    return _zscore_columns(x_SD).T @ _zscore_columns(y_SK)


@jax.jit
def correlation_matrix(x_SD):
    """C_DD: Pearson correlation between channels over positions; diagonal set to 1."""
    D = x_SD.shape[1]
    eye = jnp.eye(D, dtype=x_SD.dtype)
    C = cross_correlation(x_SD, x_SD)
    return C * (1 - eye) + eye


@jax.jit
def coherence_scalars(C_DD):
    """(mean off-diagonal |C|, top eigenvalue of C / trace C, top eigenvector [D]).

    The eigenvalue ratio is 1/D for independent channels and 1 when all channels move
    as one mode (up to sign).
    """
    D = C_DD.shape[-1]
    off = jnp.abs(C_DD) * (1 - jnp.eye(D, dtype=C_DD.dtype))
    mean_abs = off.sum() / (D * (D - 1))
    evals, evecs = jnp.linalg.eigh(C_DD)
    return mean_abs, evals[-1] / jnp.trace(C_DD), evecs[:, -1]


@partial(jax.jit, static_argnames="max_lag")
def autocorrelation(x_SD, max_lag: int = 64):
    """A_GD[tau, d] for tau = 0..max_lag: the standard (biased) estimator

        A(tau) = sum_{t<S-tau} (x_t - m)(x_{t+tau} - m) / sum_t (x_t - m)^2,

    computed with a zero-padded FFT (exact, no wrap-around). Constant channels give 0.
    """
    S = x_SD.shape[0]
    if not 0 <= max_lag < S:
        raise ValueError(f"max_lag={max_lag} must be in [0, S-1] for a passage of S={S} positions")
    n = 1 << int(math.ceil(math.log2(2 * S)))
    xc = x_SD - x_SD.mean(axis=0)
    f = jnp.fft.rfft(xc, n=n, axis=0)
    r = jnp.fft.irfft(f * jnp.conj(f), n=n, axis=0)[: max_lag + 1]
    r0 = r[0]
    return r / jnp.where(r0 > 1e-12 * S, r0, jnp.inf)


@partial(jax.jit, static_argnames="threshold")
def coherence_time(A_GD, threshold: float = 1 / math.e):
    """First lag at which |A| drops below `threshold`, per channel [D]; G (the number of lags) if it never does."""
    below = jnp.abs(A_GD) < threshold
    G = A_GD.shape[0]
    return jnp.where(below.any(axis=0), jnp.argmax(below, axis=0), G)


@jax.jit
def power_spectrum(x_SD):
    """|rfft|^2 / S of each standardised channel: [S//2 + 1, D] at frequencies k / S.

    By Wiener-Khinchin this is the Fourier transform of the (circular) autocorrelation.
    """
    S = x_SD.shape[0]
    z = _zscore_columns(x_SD) * math.sqrt(S)  # unit variance per channel
    f = jnp.fft.rfft(z, axis=0)
    return (f.real ** 2 + f.imag ** 2) / S


@partial(jax.jit, static_argnames=("S", "min_period", "max_period"))
def dominant_period(spectrum_W, S: int, min_period: float = 2.0, max_period: float = 64.0):
    """Period S/k (in positions) of the spectral peak, searching periods in [min, max].

    Works on the leading frequency axis of a [W] or [W, D] spectrum. The window excludes
    k = 0 (the mean) and the slow drifts of a passage (periods beyond `max_period`, by
    default the longest autocorrelation lag), which would otherwise dominate.
    """
    k = jnp.arange(spectrum_W.shape[0])
    period = S / jnp.maximum(k, 1)
    ok = (k >= 1) & (period >= min_period) & (period <= max_period)
    ok = ok.reshape(ok.shape + (1,) * (spectrum_W.ndim - 1))
    best = jnp.argmax(jnp.where(ok, spectrum_W, -jnp.inf), axis=0)
    return S / jnp.maximum(best, 1).astype(jnp.float32)


@partial(jax.jit, static_argnames=("max_lag", "threshold", "min_period", "max_period"))
def wave_statistics(x_SD, ind_SK=None, *, max_lag: int = 64, threshold: float = 1 / math.e,
                    min_period: float = 2.0, max_period: float | None = None) -> dict:
    """All per-passage wave measures of one [S, D] hidden-state array (pure jnp, vmappable).

    `ind_SK` (optional) are character-class indicators aligned with the positions; the
    result then holds `class_corr` [D, K]. `max_period` defaults to `max_lag`.
    Keys: corr [D,D], coherence (mean off-diagonal |C|), eig_ratio, top_mode [D],
    autocorr [G,D], mean_abs_autocorr [G], coherence_time [D], spectrum [W] (channel
    mean), period (of the channel-mean spectrum), channel_period [D], class_corr.
    """
    S = x_SD.shape[0]
    max_period = float(max_lag if max_period is None else max_period)
    C = correlation_matrix(x_SD)
    coherence, eig_ratio, mode = coherence_scalars(C)
    A = autocorrelation(x_SD, max_lag)
    power_WD = power_spectrum(x_SD)
    out = {
        "corr": C, "coherence": coherence, "eig_ratio": eig_ratio, "top_mode": mode,
        "autocorr": A, "mean_abs_autocorr": jnp.abs(A).mean(axis=1),
        "coherence_time": coherence_time(A, threshold),
        "spectrum": power_WD.mean(axis=1),
        "period": dominant_period(power_WD.mean(axis=1), S, min_period, max_period),
        "channel_period": dominant_period(power_WD, S, min_period, max_period),
    }
    if ind_SK is not None:
        out["class_corr"] = cross_correlation(x_SD, ind_SK.astype(x_SD.dtype))
    return out


def stack_wave_statistics(x_NSD, ind_NSK=None, *, n_lead: int = 1, **kwargs) -> dict:
    """`wave_statistics` vmapped over `n_lead` leading axes (e.g. [C, P, S, D]: n_lead=2)."""
    fn = _stacked(n_lead, ind_NSK is not None, tuple(sorted(kwargs.items())))
    return fn(x_NSD) if ind_NSK is None else fn(x_NSD, ind_NSK)


@lru_cache(maxsize=None)
def _stacked(n_lead: int, with_ind: bool, kwargs: tuple):
    """One jitted vmap per setting, so repeated calls reuse the compiled function."""
    kw = dict(kwargs)
    fn = (lambda x, i: wave_statistics(x, i, **kw)) if with_ind else (lambda x: wave_statistics(x, None, **kw))
    for _ in range(n_lead):
        fn = jax.vmap(fn)
    return jax.jit(fn)


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
    windows = tokens_PS[:, jnp.arange(X, S)[:, None] + jnp.arange(1 - X, 1)[None, :]]  # [P, S-X, X]
    tail = read(windows.reshape(P * (S - X), X))[:, -1]
    return jnp.concatenate([head, tail.reshape(P, S - X, -1)], axis=1)


def make_wave_fn(model: gpt.GPTConfig, n_prompt_tokens: tuple[int, ...], *, seeds_per_prompt: int,
                 passage_length: int, temperature: float, layer: int, max_lag: int, min_period: float,
                 max_period: float):
    """fn(params, prompts, keys, table_VK) -> one checkpoint's passages and statistics (jnp,
    vmappable): `seeds_per_prompt` passages of `passage_length` tokens per prompt, their waves on
    positions 0..S-2 (every position has a next character for the class indicators at s and
    s+1), `wave_statistics` per passage [P, ...], repeatability across passages, the tokens."""

    def fn(params, prompts, keys, table_VK):
        tokens = []
        for prompt, key, n0 in zip(prompts, keys, n_prompt_tokens):
            batch = jnp.broadcast_to(prompt, (seeds_per_prompt, n0))
            tokens.append(generate(params, model, batch, passage_length - n0, key, temperature))
        tokens_PS = jnp.concatenate(tokens, axis=0)
        x_PSD = passage_hidden(params, tokens_PS, model, layer)[:, :-1]
        ind_PSK = jnp.concatenate([table_VK[tokens_PS[:, :-1]], table_VK[tokens_PS[:, 1:]]], axis=-1)
        out = jax.vmap(lambda x, i: wave_statistics(x, i, max_lag=max_lag, min_period=min_period,
                                                    max_period=max_period))(x_PSD, ind_PSK)
        out["repeat_corr"], out["repeat_mode"] = repeatability(out["corr"], out["top_mode"])
        out["tokens"], out["waves"] = tokens_PS, x_PSD
        return out

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
