"""Crosscoder quality per snapshot: explained variance, L0, dead fraction, loss recovered.

All take arrays over N tokens, S snapshots, D width, F features and return one number per
snapshot ([S]) where that makes sense.
"""
from __future__ import annotations

import numpy as np

from probes import crosscoder as cc


def explained_variance(x_NSD, x_hat_NSD) -> np.ndarray:
    """[S] aggregate explained variance 1 - sum ||x - x_hat||^2 / sum ||x - mean x||^2."""
    x = np.asarray(x_NSD, np.float64)
    err = np.sum((x - np.asarray(x_hat_NSD, np.float64)) ** 2, axis=(0, 2))
    total = np.sum((x - x.mean(0)) ** 2, axis=(0, 2))
    return 1.0 - err / total


def active(f, n_snapshots: int) -> np.ndarray:
    """Boolean [N, F, S] activity (shared f_NF counts in every snapshot)."""
    f = np.asarray(f)
    if f.ndim == 2:
        f = np.broadcast_to(f[:, :, None], f.shape + (n_snapshots,))
    return f > 0


def l0(f, n_snapshots: int) -> np.ndarray:
    """[S] mean number of active features per token."""
    return active(f, n_snapshots).sum(1).mean(0)


def dead_fraction(f, n_snapshots: int) -> np.ndarray:
    """[S] fraction of features that never fire on these tokens, per snapshot."""
    return 1.0 - active(f, n_snapshots).any(0).mean(0)


def fire_counts(f, n_snapshots: int) -> np.ndarray:
    """[F] tokens on which each feature fires in any snapshot."""
    return active(f, n_snapshots).any(2).sum(0)


def loss_recovered(ce_clean, ce_spliced, ce_ablated) -> np.ndarray:
    """(CE_ablated - CE_spliced) / (CE_ablated - CE_clean), elementwise."""
    ce_clean, ce_spliced, ce_ablated = (np.asarray(v, np.float64) for v in (ce_clean, ce_spliced, ce_ablated))
    return (ce_ablated - ce_spliced) / (ce_ablated - ce_clean)


def encode_all(params, x_NSD, config: cc.CrosscoderConfig, threshold=None, chunk: int = 4096):
    """(f, x_hat) over many tokens in chunks (batchtopk uses the inference threshold when given)."""
    import jax

    fn = jax.jit(lambda p, x, t: (lambda f: (f, cc.decode(p, f)))(cc.encode(p, x, config, threshold=t)))
    fs, xs = [], []
    for start in range(0, len(x_NSD), chunk):
        f, x_hat = fn(params, np.asarray(x_NSD[start:start + chunk]), threshold)
        fs.append(np.asarray(f))
        xs.append(np.asarray(x_hat))
    return np.concatenate(fs), np.concatenate(xs)


def evaluate(params, x_NSD, config: cc.CrosscoderConfig, threshold=None) -> dict:
    """Per-snapshot explained variance, L0 and dead fraction on held-out tokens."""
    f, x_hat = encode_all(params, x_NSD, config, threshold)
    S = config.n_snapshots
    return {"explained_variance": explained_variance(x_NSD, x_hat), "l0": l0(f, S),
            "dead_fraction": dead_fraction(f, S), "f": f, "x_hat": x_hat}
