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
