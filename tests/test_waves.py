import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from probes.waves import stats as wave_stats
from probes.waves import channels as waves


def _noise(T=200, D=6, seed=0):
    return np.random.default_rng(seed).normal(size=(T, D)).astype(np.float32)


def test_correlation_matrix_matches_numpy_and_handles_constant_channels():
    x = _noise()
    x[:, 1] = 0.7 * x[:, 0] + 0.3 * x[:, 1]
    C = np.asarray(wave_stats.correlation_matrix(jnp.asarray(x)))
    np.testing.assert_allclose(C, np.corrcoef(x.T), atol=1e-5)
    x[:, 2] = 3.0  # constant: zero correlation with everything, 1 on the diagonal
    C = np.asarray(wave_stats.correlation_matrix(jnp.asarray(x)))
    assert np.all(np.isfinite(C))
    np.testing.assert_allclose(C[2, [0, 1, 3]], 0.0, atol=1e-6)
    assert C[2, 2] == 1.0


def test_coherence_scalars_against_numpy():
    rng = np.random.default_rng(1)
    s = rng.normal(size=(300, 1))
    x = np.concatenate([s * rng.choice([-1, 1], size=(1, 5)) + 0.5 * rng.normal(size=(300, 5)),
                        rng.normal(size=(300, 3))], axis=1).astype(np.float32)
    C = np.corrcoef(x.T)
    mean_abs, ratio, mode = wave_stats.coherence_scalars(jnp.asarray(C, jnp.float32))
    D = C.shape[0]
    loop = np.mean([abs(C[i, j]) for i in range(D) for j in range(D) if i != j])
    evals, evecs = np.linalg.eigh(C)
    assert float(mean_abs) == pytest.approx(loop, rel=1e-5)
    assert float(ratio) == pytest.approx(evals[-1] / np.trace(C), rel=1e-5)
    assert abs(float(np.dot(np.asarray(mode), evecs[:, -1]))) == pytest.approx(1.0, abs=1e-4)
    # independent channels: ratio near 1/D; one shared mode: ratio near 1
    _, r_ind, _ = wave_stats.coherence_scalars(wave_stats.correlation_matrix(jnp.asarray(_noise(2000, 8))))
    assert float(r_ind) < 0.25
    _, r_one, _ = wave_stats.coherence_scalars(wave_stats.correlation_matrix(jnp.asarray(np.repeat(s, 8, 1), jnp.float32)))
    assert float(r_one) == pytest.approx(1.0, abs=1e-4)


def test_autocorrelation_and_coherence_time_match_loops():
    rng = np.random.default_rng(2)
    T, D, L = 150, 4, 64
    # AR(1) channels with different memories
    phi = np.array([0.0, 0.5, 0.9, 0.97])
    x = np.zeros((T, D))
    for t in range(1, T):
        x[t] = phi * x[t - 1] + rng.normal(size=D)
    A = np.asarray(wave_stats.autocorrelation(jnp.asarray(x, jnp.float32), L))
    xc = x - x.mean(0)
    loop = np.array([[np.sum(xc[: T - k, d] * xc[k:, d]) / np.sum(xc[:, d] ** 2) for d in range(D)]
                     for k in range(L + 1)])
    np.testing.assert_allclose(A, loop, atol=1e-5)
    tau = np.asarray(wave_stats.coherence_time(jnp.asarray(A)))
    expected = [next((k for k in range(L + 1) if abs(loop[k, d]) < 1 / math.e), L + 1) for d in range(D)]
    np.testing.assert_array_equal(tau, expected)
    assert tau[0] <= tau[1] <= tau[2] <= tau[3]
    with pytest.raises(ValueError):
        wave_stats.autocorrelation(jnp.asarray(x, jnp.float32), T)


def test_dominant_period_recovers_known_periods():
    T = 512
    t = np.arange(T)[:, None]
    rng = np.random.default_rng(3)
    periods = np.array([5.12, 8.0, 16.0, 32.0])  # T/k with integer k
    x = np.sin(2 * np.pi * t / periods + rng.uniform(0, 6, size=4)) + 0.3 * rng.normal(size=(T, 4))
    stats = wave_stats.wave_statistics(jnp.asarray(x, jnp.float32), max_lag=64)
    np.testing.assert_allclose(np.asarray(stats["channel_period"]), periods, rtol=1e-5)
    # a slow drift is outside the search window and must not win over the period-6 wave
    y = np.sin(2 * np.pi * t / 6.0) + 5 * np.sin(2 * np.pi * t / 256.0)
    s = wave_stats.wave_statistics(jnp.asarray(np.repeat(y, 4, 1), jnp.float32), max_lag=64)
    assert float(s["period"]) == pytest.approx(6.0, rel=0.02)


def test_block_structured_channels_cluster_correctly_and_get_class_labels():
    rng = np.random.default_rng(4)
    text = "".join(rng.choice(list("abcde fghij\n.,AEI"), size=400))
    ind, names = waves.class_indicators(text, offsets=(0,))
    T = ind.shape[0]
    latents = np.stack([ind[:, names.index("space@t")], ind[:, names.index("vowel@t")],
                        rng.normal(size=T)], 1)
    truth = np.repeat(np.arange(3), [5, 4, 6])
    signs = rng.choice([-1, 1], size=truth.size)  # clustering on |C| must ignore sign
    x = latents[:, truth] * signs + 0.08 * rng.normal(size=(T, truth.size))
    x = rng.normal(size=truth.size) * 0.1 + x  # channel offsets are irrelevant
    perm = rng.permutation(truth.size)
    x, truth = x[:, perm], truth[perm]
    s = wave_stats.wave_statistics(jnp.asarray(x, jnp.float32), jnp.asarray(ind), max_lag=32)
    labels, order = waves.cluster_channels(s["corr"], n_clusters=3)
    assert adjusted_rand_score(truth, labels) == 1.0
    assert sorted(order.tolist()) == list(range(truth.size))
    assert np.count_nonzero(np.diff(labels[order])) == 2  # each cluster contiguous in leaf order
    clusters = waves.label_clusters(s["class_corr"], labels, names)
    by_truth = {int(truth[labels == c["cluster"]][0]): c for c in clusters}
    assert by_truth[0]["label"] == "space@t" and by_truth[0]["strength"] > 0.8
    assert by_truth[1]["label"] == "vowel@t"
    assert by_truth[2]["strength"] < 0.3
    assert set(waves.top_channels(s["class_corr"], names.index("space@t"), k=5)) == set(np.flatnonzero(truth == 0))


def test_class_indicators_by_hand():
    ind, names = waves.class_indicators("Ab ,\ne", classes=("space", "newline", "punctuation", "vowel", "capital"))
    assert names[:5] == ["space@t", "newline@t", "punctuation@t", "vowel@t", "capital@t"]
    assert names[5] == "space@t+1" and ind.shape == (5, 10)
    np.testing.assert_array_equal(ind[:, 0], [0, 0, 1, 0, 0])       # spaces at t
    np.testing.assert_array_equal(ind[:, 3], [1, 0, 0, 0, 0])       # 'A' is a vowel
    np.testing.assert_array_equal(ind[:, 4], [1, 0, 0, 0, 0])       # capital
    np.testing.assert_array_equal(ind[:, 2], [0, 0, 0, 1, 0])       # ','
    np.testing.assert_array_equal(ind[:, 6], [0, 0, 0, 1, 0])       # newline at t+1
    np.testing.assert_array_equal(ind[:, 8], [0, 0, 0, 0, 1])       # 'e' at t+1


def test_vmapped_statistics_equal_a_loop():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 2, 100, 5)).cumsum(axis=2).astype(np.float32)
    ind = (rng.random(size=(3, 2, 100, 4)) < 0.3).astype(np.float32)
    stacked = wave_stats.stack_wave_statistics(jnp.asarray(x), jnp.asarray(ind), n_lead=2, max_lag=20)
    for k in range(3):
        for p in range(2):
            one = wave_stats.wave_statistics(jnp.asarray(x[k, p]), jnp.asarray(ind[k, p]), max_lag=20)
            for key, value in one.items():
                if key == "top_mode":  # eigenvectors are defined up to sign
                    value, other = np.abs(value), np.abs(stacked[key][k, p])
                else:
                    other = stacked[key][k, p]
                np.testing.assert_allclose(np.asarray(other), np.asarray(value), atol=1e-4, err_msg=key)
    rep = jax.vmap(waves.repeatability)(stacked["corr"], stacked["top_mode"])
    loop = [waves.repeatability(stacked["corr"][k], stacked["top_mode"][k]) for k in range(3)]
    np.testing.assert_allclose(np.asarray(rep[0]), [float(r[0]) for r in loop], atol=1e-5)


def test_adjusted_rand_matches_scikit_learn():
    rng = np.random.default_rng(3)
    for _ in range(20):
        a, b = rng.integers(0, rng.integers(1, 6), 40), rng.integers(0, rng.integers(1, 6), 40)
        assert waves.adjusted_rand_score(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)
    assert waves.adjusted_rand_score([0, 0, 1, 1], [5, 5, 2, 2]) == 1.0
    assert waves.adjusted_rand_score([0, 0, 0], [1, 1, 1]) == adjusted_rand_score([0, 0, 0], [1, 1, 1]) == 1.0


def test_repeatability_and_cluster_agreement():
    rng = np.random.default_rng(6)
    base = rng.normal(size=(400, 1)) * np.array([1, -1, 1, 0, 0, 0]) + rng.normal(size=(400, 6)) * 0.5
    same = np.stack([base, base])
    C = jax.vmap(wave_stats.correlation_matrix)(jnp.asarray(same, jnp.float32))
    modes = jnp.stack([wave_stats.coherence_scalars(c)[2] for c in C])
    r, overlap = waves.repeatability(C, modes)
    assert float(r) == pytest.approx(1.0, abs=1e-5) and float(overlap) == pytest.approx(1.0, abs=1e-5)
    indep = jax.vmap(wave_stats.correlation_matrix)(jnp.asarray(rng.normal(size=(3, 400, 12)), jnp.float32))
    modes = jnp.stack([wave_stats.coherence_scalars(c)[2] for c in indep])
    r, _ = waves.repeatability(indep, modes)
    offs = np.asarray(indep)[:, np.triu_indices(12, 1)[0], np.triu_indices(12, 1)[1]]
    loop = np.mean([np.corrcoef(offs[i], offs[j])[0, 1] for i in range(3) for j in range(3) if i != j])
    assert float(r) == pytest.approx(loop, abs=1e-5) and abs(float(r)) < 0.3
    labels = np.array([[0, 0, 1, 1, 2], [5, 5, 3, 3, 4], [0, 1, 0, 1, 2]])
    expected = np.mean([adjusted_rand_score(labels[i], labels[j]) for i, j in [(0, 1), (0, 2), (1, 2)]])
    assert waves.cluster_agreement(labels) == pytest.approx(expected)
    assert waves.cluster_agreement(labels[:2]) == 1.0


def test_passage_hidden_is_the_state_generation_used_also_beyond_the_context():
    from probes.waves.channels import passage_hidden
    from models import gpt
    from models.sample import generate

    cfg = gpt.GPTConfig(vocab_size=11, context=8, n_layer=1, n_head=2, d_model=16)
    params = jax.jit(gpt.init_params, static_argnums=0)(cfg, jax.random.PRNGKey(0))
    params["wte"] = params["wte"] * 50  # a peaked model, so greedy choices are far from ties
    tokens = generate(params, cfg, jnp.array([[1, 2], [3, 4]]), 12, jax.random.PRNGKey(1), temperature=0.0)
    h = jax.jit(passage_hidden, static_argnums=(2, 3))(params, tokens, cfg, -1)
    chex.assert_shape(h, (2, 14, 16))
    # greedy generation picked argmax of the logits read from exactly these states
    picked = np.argmax(np.asarray(gpt.unembed(params, h)), axis=-1)
    np.testing.assert_array_equal(picked[:, 1:-1], np.asarray(tokens)[:, 2:])
    # brute force: each position from its own window of at most `context` tokens
    read = jax.jit(lambda w: gpt.apply(params, w, cfg, capture=("final_hidden",))[1]["final_hidden"])
    for t in (7, 8, 13):
        np.testing.assert_allclose(np.asarray(h[:, t]), np.asarray(read(tokens[:, t - 7: t + 1])[:, -1]), atol=1e-4)

