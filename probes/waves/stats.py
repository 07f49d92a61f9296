"""Wave statistics of one passage's hidden states (Hong, arXiv 2305.05061): pure jnp on [S, D].

The wave of channel d is x_SD[:, d], one hidden coordinate read along the S positions of a
passage. From it: the cross-channel Pearson matrix C_DD and two coherence scalars (mean
off-diagonal |C|; top eigenvalue of C over its trace), autocorrelation A_GD for lags
0..max_lag, coherence time (first lag with |A| < 1/e), the power spectrum and its dominant
period, and (given indicators) every channel's correlation with character classes.
`wave_statistics` gathers them for one passage and vmaps over any leading axes
(`stack_wave_statistics`). The model side (generating passages, clustering, intervals) is in
`probes.waves.channels`.

Axis letters: S positions, D channels (model width), K indicator columns, G lags 0..max_lag,
W frequency bins.
"""
from __future__ import annotations

import math
from functools import lru_cache, partial

import jax
import jax.numpy as jnp


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
