"""Uncertainty of headline numbers: bootstrap and binomial intervals, in numpy.

The convention everywhere: a headline number `x` in a summary carries `x_ci = [lo, hi]`, a
two-sided interval at `level` (95% unless stated). Intervals are percentile bootstrap over the
study's natural unit (questions, features, passages, concepts), or Wilson for a proportion of
independent trials, or Student-t over seeds when a study repeats itself.
[choice] Percentile bootstrap with 2000 resamples and a fixed seed: stable to ~0.005 on the
bounds for the sizes used here, and the same numbers on every run.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import stats as _scipy_stats


def bootstrap_ci(values, statistic: Callable = np.mean, *, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0, axis_unit: int = 0) -> list[float]:
    """Percentile bootstrap interval of `statistic(values)` resampling rows along `axis_unit`.

    `values` may be [N] or [N, ...] (rows are the resampled unit, e.g. questions); `statistic`
    maps such an array to a scalar. Non-finite rows are an error, not silently dropped.
    """
    values = np.asarray(values, dtype=np.float64)
    values = np.moveaxis(values, axis_unit, 0)
    if values.shape[0] == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not np.all(np.isfinite(values)):
        raise ValueError("bootstrap_ci got non-finite values")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.shape[0], size=(n_boot, values.shape[0]))
    draws = np.array([statistic(values[i]) for i in idx])
    alpha = (1.0 - level) / 2.0
    return [float(np.quantile(draws, alpha)), float(np.quantile(draws, 1.0 - alpha))]


def paired_bootstrap_ci(a, b, statistic: Callable = np.mean, **kw) -> list[float]:
    """Interval of statistic(b) - statistic(a) when a[i] and b[i] belong to the same unit i
    (the same question scored at two checkpoints): resample units, keep the pairing."""
    ab = np.stack([np.asarray(a, np.float64), np.asarray(b, np.float64)], axis=1)
    return bootstrap_ci(ab, lambda x: statistic(x[:, 1]) - statistic(x[:, 0]), **kw)


def wilson_ci(successes: int, trials: int, level: float = 0.95) -> list[float]:
    """Wilson score interval of a proportion (exact at 0 and at n, unlike the normal one)."""
    if trials <= 0:
        raise ValueError("wilson_ci needs trials >= 1")
    z = float(_scipy_stats.norm.ppf(0.5 + level / 2.0))
    p = successes / trials
    denom = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]


def t_ci(values, level: float = 0.95) -> list[float]:
    """Student-t interval of the mean of a few independent repeats (seeds)."""
    values = np.asarray(values, np.float64)
    if values.size < 2:
        raise ValueError("t_ci needs at least two repeats")
    half = float(_scipy_stats.t.ppf(0.5 + level / 2.0, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size))
    return [float(values.mean() - half), float(values.mean() + half)]


def excludes(ci, value: float = 0.0) -> bool:
    """True when the interval lies wholly above or wholly below `value`."""
    return bool(ci[0] > value or ci[1] < value)


def format_ci(x: float, ci, digits: int = 2) -> str:
    """'0.46 [0.32, 0.60]' for prose and the report."""
    return f"{x:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
