import numpy as np
import pytest
from scipy import stats

from probes.waves import spelling


def test_words_vocabulary_and_cuts_by_hand():
    corpus = "KING. O, 'tis the King's men!\nWhat say'st thou?"
    assert spelling.extract_words(corpus) == ["KING", "O", "'tis", "the", "King's", "men", "What", "say'st", "thou"]
    vocab = spelling.build_vocabulary(corpus)
    assert {"king", "'tis", "king's", "say'st"} <= vocab and "KING" not in vocab
    assert "KING" in spelling.build_vocabulary(corpus, case_sensitive=True)
    sample = "the kign sayst thou, whatt"
    assert spelling.complete_words(sample) == ["the", "kign", "sayst", "thou"]  # 'whatt' was cut off
    assert spelling.complete_words(sample + " ") == ["the", "kign", "sayst", "thou", "whatt"]
    assert spelling.complete_words(sample, drop_partial_last=False)[-1] == "whatt"
    assert spelling.first_words(sample, 3) == ["the", "kign", "sayst"]
    assert spelling.first_words(sample, 5) is None  # only four complete words
    assert spelling.count_correct(["The", "kign", "THOU"], vocab) == (2, 1)
    k, m, dropped = spelling.sample_counts([sample, "O the", "what men "], vocab, n_words=2)
    np.testing.assert_array_equal(k, [1, 2])
    np.testing.assert_array_equal(m, [1, 0])
    assert dropped == 1
    k, m, _ = spelling.sample_counts([sample, "O the"], vocab)
    np.testing.assert_array_equal(k, [2, 1])
    np.testing.assert_array_equal(m, [2, 0])


def test_dispersion_matches_numpy():
    x = np.array([[3, 1, 4, 1, 5, 9, 2, 6], [0, 0, 0, 0, 0, 0, 0, 0]])
    mean, var, fano, q = spelling.dispersion(x)
    assert mean[0] == pytest.approx(np.mean(x[0])) and var[0] == pytest.approx(np.var(x[0], ddof=1))
    assert fano[0] == pytest.approx(np.var(x[0], ddof=1) / np.mean(x[0]))
    assert q[0] == pytest.approx(fano[0] - 1)
    assert np.isnan(q[1])  # no events: Q undefined


def test_poisson_counts_have_q_near_zero_and_pass_chi_square():
    rng = np.random.default_rng(0)
    k = rng.poisson(6.0, size=3000)
    m = rng.poisson(3.0, size=3000)  # independent Poisson counts: total is Poisson too
    s = spelling.spelling_statistics(k, m, n_boot=400, seed=1)
    for key in ("q_correct", "q_misspelled", "q_correct_excess", "q_misspelled_excess"):
        lo, hi = s[key + "_ci"]
        assert lo < 0 < hi, key
        assert abs(s[key]) < 0.1, key
    assert s["p"] == pytest.approx(6 / 9, abs=0.02)
    h = spelling.poisson_histogram(k)
    assert h["p_value"] > 0.01
    assert sum(h["observed_grouped"]) == pytest.approx(3000) and sum(h["expected_grouped"]) == pytest.approx(3000)
    assert min(h["expected_grouped"]) >= 5
    ref = stats.chisquare(h["observed_grouped"], h["expected_grouped"], ddof=1)
    assert h["chi2"] == pytest.approx(ref.statistic) and h["p_value"] == pytest.approx(ref.pvalue)
    assert h["dof"] == len(h["observed_grouped"]) - 2


def test_overdispersed_counts_fail_chi_square():
    rng = np.random.default_rng(2)
    x = rng.negative_binomial(3, 0.3, size=2000)  # mean 7, variance 23
    h = spelling.poisson_histogram(x)
    assert h["p_value"] < 1e-6
    assert spelling.mandel_q(x) == pytest.approx(1 / 0.3 - 1, abs=0.3)


def test_binomial_with_fixed_total_gives_q_minus_p_and_no_excess():
    rng = np.random.default_rng(3)
    N, p = 30, 0.8
    k = rng.binomial(N, p, size=4000)
    s = spelling.spelling_statistics(k, N - k, n_boot=400, seed=4)
    assert s["q_correct_baseline"] == pytest.approx(-s["p"])          # exact for a fixed total
    assert s["q_misspelled_baseline"] == pytest.approx(-(1 - s["p"]))
    assert s["q_correct"] == pytest.approx(-p, abs=0.03)
    assert s["q_misspelled"] == pytest.approx(-(1 - p), abs=0.1)
    for key in ("q_correct_excess", "q_misspelled_excess"):
        lo, hi = s[key + "_ci"]
        assert lo < 0 < hi, key


def test_binomial_thinning_of_varying_totals_matches_baseline():
    rng = np.random.default_rng(5)
    p = 0.35
    for n in (rng.binomial(40, 0.5, size=6000), rng.negative_binomial(4, 0.25, size=6000)):
        k = rng.binomial(n, p)
        s = spelling.spelling_statistics(k, n - k, n_boot=300, seed=6)
        q_n = spelling.mandel_q(n)
        assert s["q_correct_baseline"] == pytest.approx(s["p"] * q_n)
        assert s["q_correct"] == pytest.approx(p * q_n, abs=0.06)
        assert s["q_misspelled"] == pytest.approx((1 - p) * q_n, abs=0.1)
        for key in ("q_correct_excess", "q_misspelled_excess"):
            lo, hi = s[key + "_ci"]
            assert lo < 0 < hi, key
    # and a count more regular than binomial shows a negative excess
    n = np.full(3000, 20)
    k = np.where(rng.random(3000) < 0.5, 14, 15)
    s = spelling.spelling_statistics(k, n - k, n_boot=300, seed=7)
    assert s["q_correct_excess_ci"][1] < 0


def test_claim_rule_rejects_pure_binomial_and_accepts_regular_correct_counts():
    rng = np.random.default_rng(8)
    M, kw = 3000, dict(n_boot=300, keep_draws=True)

    def both(k_len, m_len, k_words, n_words, seed):
        return {"fixed_length": spelling.spelling_statistics(k_len, m_len, seed=seed, **kw),
                "fixed_words": spelling.spelling_statistics(k_words, n_words - k_words, seed=seed + 1, **kw)}

    # pure binomial: raw Q_correct falls from about -0.1 to -0.9 over "training", excess stays 0
    n = rng.binomial(40, 0.95, size=M)  # nearly fixed totals, as in fixed-length samples
    first = both(*(lambda k: (k, n - k))(rng.binomial(n, 0.1)), rng.binomial(20, 0.1, size=M), 20, 0)
    last = both(*(lambda k: (k, n - k))(rng.binomial(n, 0.9)), rng.binomial(20, 0.9, size=M), 20, 2)
    assert last["fixed_length"]["q_correct"] < first["fixed_length"]["q_correct"] - 0.5
    verdict, checks = spelling.claim_survives_baseline(first, last)
    assert verdict is False
    assert not checks["fixed_length/excess_correct_last_below_0"]["holds"]

    # the paper's picture beyond the baseline: early, correct words are rare Poisson events and
    # misspellings fixed; late, correct counts are fixed and misspellings are Poisson events
    poisson = rng.poisson(2, size=M)
    first = both(poisson, np.full(M, 18), rng.binomial(20, 0.1, size=M), 20, 4)
    last = both(np.full(M, 18), poisson, np.where(rng.random(M) < 0.5, 17, 18), 20, 6)
    verdict, checks = spelling.claim_survives_baseline(first, last)
    assert all(c["holds"] for c in checks.values()), checks
    assert verdict is True and len(checks) == 5
