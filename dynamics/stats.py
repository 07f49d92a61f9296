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
    lo = 0.0 if successes == 0 else max(0.0, centre - half)      # exact ends, not rounding residue
    hi = 1.0 if successes == trials else min(1.0, centre + half)
    return [float(lo), float(hi)]


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


def format_ci(x: float, ci, digits: int = 2, signed: bool = False) -> str:
    """'0.46 [0.32, 0.60]' for prose and the report ('+0.46 [+0.32, +0.60]' when signed)."""
    f = f"+.{digits}f" if signed else f".{digits}f"
    x, lo, hi = (round(float(v), digits) + 0.0 for v in (x, ci[0], ci[1]))   # + 0.0: no "-0.00"
    return f"{x:{f}} [{lo:{f}}, {hi:{f}}]"


# ------------------------------------------------------------------ vectorised bootstrap
def resample_counts(n: int, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """[n_boot, n] how often each of n units is drawn in each bootstrap resample (the same
    draws as `bootstrap_ci` with this seed). A statistic built from per-unit sums, s = sum_i
    c_i v_i, is then one matrix product over all resamples."""
    if n <= 0:
        raise ValueError("resampling needs at least one unit")
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    counts = np.zeros((n_boot, n))
    np.add.at(counts, (np.arange(n_boot)[:, None], idx), 1.0)
    return counts


def quantile_ci(draws, level: float = 0.95) -> list[float] | None:
    """Percentile interval of bootstrap draws; draws where the statistic is undefined (NaN, e.g.
    a correlation of a resample with no spread) are left out. None when over half are undefined."""
    draws = np.asarray(draws, np.float64)
    ok = np.isfinite(draws)
    if ok.sum() < max(1, draws.size // 2):
        return None
    alpha = (1.0 - level) / 2.0
    return [float(np.quantile(draws[ok], alpha)), float(np.quantile(draws[ok], 1.0 - alpha))]


def mean_ci(values, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> list[float]:
    """`bootstrap_ci(values)` of the mean of rows, vectorised (one matrix product)."""
    v = np.asarray(values, np.float64).reshape(len(values), -1).mean(1)
    if not np.all(np.isfinite(v)):
        raise ValueError("mean_ci got non-finite values")
    return quantile_ci(resample_counts(len(v), n_boot, seed) @ v / len(v), level)


def ratio_draws(num, den, *, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """[n_boot] sum(num) / sum(den) over resamples of units i, (num_i, den_i) kept together."""
    counts = resample_counts(len(num), n_boot, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (counts @ np.asarray(num, np.float64)) / (counts @ np.asarray(den, np.float64))


def ratio_ci(num, den, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> list[float] | None:
    """Interval of sum(num) / sum(den) resampling units i with their (num_i, den_i) together
    (e.g. correct words over all words, samples as the unit)."""
    return quantile_ci(ratio_draws(num, den, n_boot=n_boot, seed=seed), level)


def correlation_draws(x, y, method: str = "pearson", *, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """[n_boot] Pearson or Spearman correlation of (x, y) pairs resampled together (the units
    are the pairs, e.g. checkpoints); NaN for a resample with no spread in x or y."""
    from scipy.stats import rankdata

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))
    xb, yb = x[idx], y[idx]
    if method == "spearman":
        xb, yb = rankdata(xb, axis=1), rankdata(yb, axis=1)   # average ranks: ties from repeats
    elif method != "pearson":
        raise ValueError(f"method={method!r}: choose pearson or spearman")
    xb = xb - xb.mean(1, keepdims=True)
    yb = yb - yb.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xb * yb).sum(1) / np.sqrt((xb ** 2).sum(1) * (yb ** 2).sum(1))
    return np.where(np.isfinite(r), np.clip(r, -1.0, 1.0), np.nan)


def correlation_ci(x, y, method: str = "pearson", *, n_boot: int = 2000, level: float = 0.95,
                   seed: int = 0) -> list[float] | None:
    """Percentile bootstrap interval of a correlation over its pairs (None if undefined).
    Checkpoints of one run are not independent (both curves trend with training), so over
    checkpoints this interval understates the uncertainty; read it as a lower bound."""
    return quantile_ci(correlation_draws(x, y, method, n_boot=n_boot, seed=seed), level)


def ci_text(summary: dict, key: str, digits: int = 2, signed: bool = False) -> str:
    """'0.46 [0.32, 0.60]' from summary[key] and summary[key + '_ci'], or '0.46 (no interval)'."""
    ci = summary.get(f"{key}_ci")
    x = summary[key]
    if x is None or not np.isfinite(x):          # NaN is stored as null: the study found it undefined
        return "undefined"
    return format_ci(x, ci, digits, signed) if ci is not None else f"{x:{'+' if signed else ''}.{digits}f} (no interval)"


def verdict_above_zero(summary: dict, key: str, above: str, otherwise: str, missing: str) -> str:
    """The sentence a finding states about a difference: `above` when summary[key + '_ci'] lies
    wholly above 0, `missing` when there is no interval, else `otherwise`."""
    ci = summary.get(f"{key}_ci")
    if ci is None:
        return missing
    return above if ci[0] > 0 else otherwise


def defined(x):
    """A statistic as a summary value: float when defined, None (JSON null) when the data leave
    it undefined (a rank correlation of a constant series). Only for statistics that can be
    legitimately undefined: a NaN anywhere else in a summary is a bug and stops the run."""
    x = float(x)
    return x if np.isfinite(x) else None
