"""The studies' interval code against brute-force loops and scipy on the same data (small, fast)."""
import numpy as np
import pytest
from scipy import stats as sps

from dynamics import stats
from probes.crosscoders import metrics as mt


def test_cognition_intervals_wilson_paired_and_correlation():
    from probes import cognition

    rng = np.random.default_rng(0)
    T, Q = 9, 48
    cog = rng.random((T, Q)) < np.linspace(0.3, 0.7, T)[:, None]
    expr = rng.random((T, Q)) < np.linspace(0.0, 0.6, T)[:, None]
    ends = {"pretrain": 2, "sft": 5, "rl": 8}
    out = cognition.intervals(cog, expr, ends, cog.mean(1), expr.mean(1))
    for s, i in ends.items():
        assert out[f"cognitive_{s}_ci"] == pytest.approx(stats.wilson_ci(int(cog[i].sum()), Q))
        loop = stats.paired_bootstrap_ci(expr[i].astype(float), cog[i].astype(float))   # loop over resamples
        assert out[f"cognitive_minus_expressive_{s}_ci"] == pytest.approx(loop, abs=1e-12)
    assert out["expressive_rl_minus_pretrain"] == pytest.approx(expr[8].mean() - expr[2].mean())
    idx = np.random.default_rng(0).integers(0, T, size=(2000, T))
    x, y = cog.mean(1), expr.mean(1)
    ref = [sps.spearmanr(x[i], y[i])[0] for i in idx]
    assert out["spearman_rho_ci"] == pytest.approx(stats.quantile_ci(np.array(ref)), abs=1e-9)


def test_crosscoder_window_intervals_equal_a_loop_over_resampled_windows():
    rng = np.random.default_rng(1)
    W, C, S, D, F = 6, 5, 3, 4, 7
    x = rng.normal(size=(W * C, S, D)) * np.arange(1, W * C + 1)[:, None, None] ** 0.5
    x_hat = x + rng.normal(scale=0.5, size=x.shape)
    f = np.maximum(rng.normal(size=(W * C, F)), 0)
    out = mt.window_intervals(x, x_hat, f, S, W, skip_first=True)
    idx = np.random.default_rng(0).integers(0, W, size=(2000, W))
    xw, hw = x.reshape(W, C, S, D), x_hat.reshape(W, C, S, D)
    ev_min = [mt.explained_variance(xw[i].reshape(-1, S, D), hw[i].reshape(-1, S, D))[1:].min() for i in idx]
    assert out["explained_variance_min_ci"] == pytest.approx(stats.quantile_ci(ev_min), rel=1e-5)
    l0_w = (f > 0).sum(1).reshape(W, C).mean(1)   # shared f: every snapshot has the same activity
    assert out["l0_mean_ci"] == pytest.approx(stats.bootstrap_ci(l0_w), abs=1e-9)


@pytest.mark.filterwarnings("ignore:Mean of empty slice")
def test_neuromfa_intervals_equal_a_loop_and_pair_the_checkpoints():
    from probes.neuromfa import measures as neuromfa
    from probes.neuromfa import spectrum as mf

    rng = np.random.default_rng(2)
    T, S = 4, 5
    alpha0 = 1.5 - 0.2 * np.arange(T)[:, None] + 0.05 * rng.normal(size=(T, S))
    width = 0.8 + 0.02 * np.arange(T)[:, None] + 0.03 * rng.normal(size=(T, S))
    alpha0[1, 2] = np.nan                                   # an undefined sample is left out of its mean
    res = {"spectra": {"alpha0": alpha0, "width": width},
           "summary": {**mf.summarize({"alpha0": alpha0, "width": width, "mean_abs_w": np.ones((T, S)),
                                       "strength": np.ones((T, S)), "n_used": np.ones((T, S))})},
           "control": {"emergence": np.zeros(T)}, "eval": {k: np.linspace(3, 2, T) for k in ("val_loss", "word_acc", "char_acc")}}
    res["summary"]["mean_abs_w"] = np.ones(T)
    out = neuromfa.intervals(res)
    idx = np.random.default_rng(0).integers(0, S, size=(2000, S))
    draws = []
    for i in idx:
        s = mf.summarize({"alpha0": alpha0[:, i], "width": width[:, i], "mean_abs_w": np.ones((T, S)),
                          "strength": np.ones((T, S)), "n_used": np.ones((T, S))})
        draws.append((s["alpha0"][0], s["alpha0"][-1] - s["alpha0"][0], s["emergence"][-1]))
    draws = np.array(draws)
    assert out["alpha0_first_ci"] == pytest.approx(stats.quantile_ci(draws[:, 0]), rel=1e-9)
    assert out["alpha0_change_ci"] == pytest.approx(stats.quantile_ci(draws[:, 1]), rel=1e-9)
    assert out["emergence_last_ci"] == pytest.approx(stats.quantile_ci(draws[:, 2]), rel=1e-9)


def test_waves_intervals_t_over_passages_and_ratio_over_samples():
    from experiments.studies.waves import study as waves

    rng = np.random.default_rng(3)
    coh = 0.15 + 0.05 * np.arange(3)[:, None] + 0.01 * rng.normal(size=(3, 4))
    k0, m0 = rng.integers(0, 5, 50), rng.integers(1, 5, 50)
    k1, m1 = rng.integers(2, 8, 50), rng.integers(0, 3, 50)
    fl = lambda k, m: {"p": k.sum() / (k + m).sum(), "p_ci": [0.0, 1.0], "counts_correct": k,
                       "counts_misspelled": m, "n_samples": len(k)}
    out = waves.intervals(coh, fl(k0, m0), fl(k1, m1))
    ref = sps.t.interval(0.95, 3, loc=(coh[-1] - coh[0]).mean(), scale=sps.sem(coh[-1] - coh[0]))
    assert out["coherence_change_ci"] == pytest.approx(ref, rel=1e-9) and out["coherence_change_ci"][0] > 0
    d = out["fraction_correct_change_ci"]
    assert d[0] < out["fraction_correct_change"] < d[1] and d[0] > 0   # 0.48 -> 0.82 of words: a clear rise


def test_value_probe_grid_scores_each_test_question():
    """The per-question record the intervals use averages to the reported accuracy, and a
    question's score is 1 exactly when the probe's best option is its answer."""
    from probes import cognition

    rng = np.random.default_rng(4)
    T, L, Q, M, D, K, n_classes = 2, 2, 12, 2, 6, 3, 4
    classes = np.arange(Q) % n_classes                 # every class in both the fit and the test questions
    H = rng.normal(size=(T, L, Q, M, D)) + 3.0 * np.eye(n_classes, D)[classes][None, None, :, None]
    option_classes = np.stack([classes, (classes + 1) % n_classes, (classes + 2) % n_classes], 1)
    answers = np.zeros(Q, int)
    out = cognition.value_probe_grid(H.astype(np.float32), classes, option_classes, answers, np.arange(8),
                                     np.arange(8, 12), n_classes, 1.0, 5)
    assert out["value_test_q"].shape == (T, L, 4) and set(np.unique(out["value_test_q"])) <= {0, 1}
    np.testing.assert_allclose(out["value_test_q"].mean(-1), out["value_test"])
    assert out["value_test"].mean() > 0.5          # separable classes: the probe reads most answers
