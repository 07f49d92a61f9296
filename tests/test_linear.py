import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, Ridge

from probes import linear


def data(n=600, d=12, k=2, seed=0, noise=1.5):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(d, k))
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = np.argmax(X @ W + noise * rng.gumbel(size=(n, k)), axis=1)
    return X, y


def sk_objective(X, y, coef, intercept, C, k):
    """scikit-learn's objective written out: sum of log-losses + ||coef||^2 / (2C)."""
    logits = X @ coef.T + intercept
    if k == 2:
        logits = np.concatenate([np.zeros((len(X), 1)), logits], axis=1)
    logits = logits - logits.max(1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -logp[np.arange(len(y)), y].sum() + 0.5 / C * (coef ** 2).sum()


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("C", [0.1, 1.0])
def test_logistic_matches_scikit_learn(k, C):
    X, y = data(k=k, seed=k)
    Xtr, ytr, Xte, yte = X[:400], y[:400], X[400:], y[400:]
    W = linear.fit_logistic(jnp.asarray(Xtr), jnp.asarray(ytr), n_classes=k, C=C)
    ours = float(linear.logistic_objective(W, linear._with_intercept(jnp.asarray(Xtr)), jax.nn.one_hot(ytr, k), 1 / C))
    sk = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(Xtr, ytr)
    theirs = sk_objective(Xtr.astype(np.float64), ytr, sk.coef_, sk.intercept_, C, k)
    assert ours <= theirs * (1 + 1e-4), (ours, theirs)  # objective no worse than scikit-learn's
    assert abs(ours - theirs) / theirs < 1e-4
    acc_ours = float(jnp.mean(linear.predict_logistic(W, jnp.asarray(Xte)) == yte))
    acc_sk = sk.score(Xte, yte)
    assert abs(acc_ours - acc_sk) <= 0.005 + 1e-9


def test_one_vs_rest_matches_scikit_learn():
    from sklearn.multiclass import OneVsRestClassifier
    X, y = data(n=500, d=10, k=5, seed=3)
    W = np.asarray(linear.fit_one_vs_rest(jnp.asarray(X[:300]), jnp.asarray(y[:300]), 5, C=0.5))
    sk = OneVsRestClassifier(LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000)).fit(X[:300], y[:300])
    theirs = np.stack([np.r_[e.coef_[0], e.intercept_[0]] for e in sk.estimators_], axis=1)  # [D+1, K]
    np.testing.assert_allclose(W, theirs, rtol=2e-3, atol=2e-3)
    scores = linear._with_intercept(jnp.asarray(X[300:])) @ W
    assert np.mean(np.argmax(scores, 1) == sk.predict(X[300:])) >= 0.99


def test_ridge_matches_scikit_learn():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 6))
    Y = X @ rng.normal(size=(6, 3)) + 0.1 * rng.normal(size=(200, 3)) + 2.0
    W = np.asarray(linear.fit_ridge(jnp.asarray(X), jnp.asarray(Y), alpha=3.0))
    sk = Ridge(alpha=3.0).fit(X, Y)
    np.testing.assert_allclose(W[:-1], sk.coef_.T, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(W[-1], sk.intercept_, rtol=1e-3, atol=1e-4)


def test_pca_direction_recovers_the_planted_direction():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=16)
    truth /= np.linalg.norm(truth)
    N, K = 300, 4
    H = rng.normal(size=(N, K, 16))
    answer = rng.integers(0, K, N)
    H[np.arange(N), answer] += 1.5 * truth  # the correct option sits further along `truth`
    v, acc = linear.pca_probe(jnp.asarray(H[:200]), jnp.asarray(answer[:200]),
                              jnp.asarray(H[200:]), jnp.asarray(answer[200:]))
    assert float(np.dot(v, truth)) > 0.9  # right direction and right sign
    brute = np.mean(np.argmax(H[200:] @ np.asarray(v), 1) == answer[200:])
    assert abs(float(acc) - brute) < 1e-6 and brute > 0.6


def test_grid_fit_equals_a_loop_over_checkpoints_and_layers():
    X, y = data(n=200, d=6)
    rng = np.random.default_rng(1)
    X_TLND = np.stack([np.stack([X * (1 + t) + rng.normal(size=X.shape) * l for l in range(2)]) for t in range(3)])
    X_TLND = jnp.asarray(X_TLND, jnp.float32)
    fit = lambda Xs, y: linear.fit_logistic(Xs, y, 2, 1.0, 15)
    grid = linear.fit_grid(fit, X_TLND, jnp.asarray(y))
    for t in range(3):
        for l in range(2):
            np.testing.assert_allclose(grid[t, l], fit(X_TLND[t, l], jnp.asarray(y)), rtol=2e-3, atol=2e-4)


def test_control_task_and_selectivity():
    tokens = np.array([3, 1, 3, 2, 1, 3])
    labels = linear.control_labels(tokens, n_classes=5, seed=0)
    assert labels[0] == labels[2] == labels[5] and labels[1] == labels[4]  # tied to token identity
    assert linear.selectivity(0.9, 0.6) == pytest.approx(0.3)
