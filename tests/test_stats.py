import numpy as np
import pytest
from scipy import stats as sps

from dynamics import stats


def test_bootstrap_ci_agrees_with_scipy_percentile_bootstrap():
    x = np.random.default_rng(0).normal(1.0, 2.0, size=200)
    ours = stats.bootstrap_ci(x, n_boot=4000)
    ref = sps.bootstrap((x,), np.mean, n_resamples=4000, method="percentile", random_state=1).confidence_interval
    assert abs(ours[0] - ref.low) < 0.05 and abs(ours[1] - ref.high) < 0.05
    assert ours[0] < x.mean() < ours[1]


def test_bootstrap_refuses_non_finite_and_paired_keeps_pairs():
    with pytest.raises(ValueError):
        stats.bootstrap_ci([1.0, np.nan])
    a = np.random.default_rng(1).normal(size=100)
    # b = a + 1 exactly: the paired difference has no spread at all
    lo, hi = stats.paired_bootstrap_ci(a, a + 1.0)
    assert lo == pytest.approx(1.0) and hi == pytest.approx(1.0)


def test_wilson_matches_published_values_and_t_interval_scipy():
    lo, hi = stats.wilson_ci(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)   # the textbook 0/10 bound
    lo, hi = stats.wilson_ci(10, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.7225, abs=1e-4)
    v = np.array([0.4, 0.5, 0.55, 0.45])
    ref = sps.t.interval(0.95, 3, loc=v.mean(), scale=sps.sem(v))
    np.testing.assert_allclose(stats.t_ci(v), ref, rtol=1e-10)
    assert stats.excludes([0.1, 0.3]) and not stats.excludes([-0.1, 0.3])
    assert stats.format_ci(0.456, [0.3, 0.6]) == "0.46 [0.30, 0.60]"


def test_vectorised_mean_and_ratio_intervals_equal_the_loop_bootstrap():
    rng = np.random.default_rng(2)
    x = rng.binomial(1, 0.4, size=48).astype(float)            # one question right or wrong
    assert stats.mean_ci(x) == pytest.approx(stats.bootstrap_ci(x), abs=1e-12)
    counts = stats.resample_counts(48, 2000, 0)
    assert counts.shape == (2000, 48) and (counts.sum(1) == 48).all()
    k, n = rng.integers(0, 8, size=30).astype(float), rng.integers(8, 12, size=30).astype(float)
    loop = stats.bootstrap_ci(np.stack([k, n], 1), lambda r: r[:, 0].sum() / r[:, 1].sum())
    assert stats.ratio_ci(k, n) == pytest.approx(loop, abs=1e-12)
    lo, hi = stats.ratio_ci(k, n)
    assert lo < k.sum() / n.sum() < hi


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_correlation_ci_equals_scipy_on_the_same_resamples(method):
    rng = np.random.default_rng(3)
    x = rng.normal(size=25)
    y = 0.6 * x + rng.normal(size=25)
    draws = stats.correlation_draws(x, y, method, n_boot=300, seed=5)
    idx = np.random.default_rng(5).integers(0, 25, size=(300, 25))
    fn = sps.pearsonr if method == "pearson" else sps.spearmanr
    ref = np.array([fn(x[i], y[i])[0] for i in idx])
    np.testing.assert_allclose(draws, ref, atol=1e-10)
    lo, hi = stats.correlation_ci(x, y, method)
    assert lo < fn(x, y)[0] < hi and lo > 0                     # a real positive correlation


def test_undefined_resamples_are_dropped_and_a_dead_statistic_gives_none():
    x = np.r_[np.zeros(19), 1.0]                                # ~36% of resamples lack the one 1
    draws = stats.correlation_draws(x, np.arange(20.0))
    assert 0.3 < np.isnan(draws).mean() < 0.42 and stats.correlation_ci(x, np.arange(20.0)) is not None
    assert stats.correlation_ci(np.ones(20), np.arange(20.0)) is None   # no spread: never defined
    assert stats.quantile_ci([np.nan, 1.0, 2.0, 3.0]) == pytest.approx([1.05, 2.95])
    assert stats.ci_text({"a": 0.5, "a_ci": [0.4, 0.6]}, "a") == "0.50 [0.40, 0.60]"
    assert stats.ci_text({"a": 0.5}, "a") == "0.50 (no interval)"
    assert stats.ci_text({"a": None}, "a") == stats.ci_text({"a": np.nan}, "a") == "undefined"
    assert stats.ci_text({"a": 0.25, "a_ci": [-0.1, 0.5]}, "a", signed=True) == "+0.25 [-0.10, +0.50]"
    assert stats.format_ci(-0.0004, [-0.001, 0.002]) == "0.00 [0.00, 0.00]"   # never "-0.00"
