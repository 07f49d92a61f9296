"""Linear probes, written for one (checkpoint, layer) and vmapped over both.

Every fit is a pure function of arrays with static shapes, so
`fit_grid(fit, X_TLND, y_N)` fits all T x L probes in one compiled call.

- Logistic regression (binary and multinomial) with an L2 penalty, solved by Newton's method
  (IRLS): the objective is scikit-learn's, sum of log-losses + (1 / 2C) ||W||^2 with an
  unpenalised intercept, so `C` means the same thing as in `sklearn.linear_model.LogisticRegression`.
  Each Newton step is safeguarded: the full step is taken only if it lowers the objective,
  otherwise the best of a few halved steps.
- Ridge regression in closed form.
- The PCA-direction probe of Yan et al.: the first principal direction of (correct - incorrect)
  hidden-state differences, sign fixed on the training split; a multiple-choice item is
  answered by argmax_k v . h(q, a_k).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def standardize(X_train, X_test, eps: float = 1e-6):
    """Scale features by the training split's mean and std (the test split never leaks in)."""
    mean = X_train.mean(0)
    std = X_train.std(0) + eps
    return (X_train - mean) / std, (X_test - mean) / std


def _with_intercept(X):
    return jnp.concatenate([X, jnp.ones((X.shape[0], 1), X.dtype)], axis=1)


def logistic_objective(W, X1, Y_onehot, inv_C):
    """Sum of softmax log-losses + (1/2C)||W without intercept row||^2. W: [D+1, K]."""
    logits = X1 @ W
    loss = -(Y_onehot * jax.nn.log_softmax(logits, axis=-1)).sum()
    return loss + 0.5 * inv_C * jnp.sum(W[:-1] ** 2)


def fit_logistic(X, y, n_classes: int = 2, C: float = 1.0, n_iter: int = 25):
    """Weights [D+1, K'] of an L2 logistic regression by safeguarded Newton steps.

    Binary problems (n_classes == 2) use one logit column against a zero column, which is
    exactly binary logistic regression; multinomial problems use K columns with the
    intercept free, as scikit-learn's multinomial solver does. The Hessian is dense:
    (D+1)K' squared, fine for widths of a few hundred.
    """
    X1 = _with_intercept(X.astype(jnp.float32))
    N, D1 = X1.shape
    K = 1 if n_classes == 2 else n_classes
    Y = jax.nn.one_hot(y, n_classes, dtype=X1.dtype)
    inv_C = 1.0 / C
    penalty = jnp.concatenate([jnp.full((D1 - 1,), inv_C), jnp.zeros((1,))])

    def full(W):  # binary: logits [x.w, 0]
        return jnp.concatenate([W, jnp.zeros((D1, 1), W.dtype)], axis=1) if K == 1 else W

    objective = lambda W: logistic_objective(full(W), X1, Y, inv_C)

    def newton(W, _):
        grad = jax.grad(objective)(W).reshape(-1)
        probs = jax.nn.softmax(X1 @ full(W), axis=-1)[:, :K]
        # Hessian of the softmax loss: sum_n (diag(p) - p p^T) kron x x^T, plus the penalty.
        if K == 1:  # binary: X^T diag(p (1 - p)) X, one matmul
            H = (X1 * (probs * (1.0 - probs))).T @ X1
        else:
            weights = jnp.einsum("nk,kl->nkl", probs, jnp.eye(K)) - jnp.einsum("nk,nl->nkl", probs, probs)
            H = jnp.einsum("nkl,ni,nj->ikjl", weights, X1, X1).reshape(D1 * K, D1 * K)
        H = H + jnp.diag(jnp.repeat(penalty, K)) + 1e-8 * jnp.eye(D1 * K)
        step = jnp.linalg.solve(H, grad).reshape(D1, K)
        candidates = jnp.stack([W - s * step for s in (1.0, 0.5, 0.25, 0.125)] + [W])
        values = jax.vmap(objective)(candidates)
        return candidates[jnp.argmin(values)], None

    W, _ = jax.lax.scan(newton, jnp.zeros((D1, K), X1.dtype), None, length=n_iter)
    return full(W)


def fit_one_vs_rest(X, y, n_classes: int, C: float = 1.0, n_iter: int = 25):
    """One binary L2 logistic regression per class (class c against the rest), vmapped:
    log-odds weights [D+1, n_classes]. Each fit has a (D+1)^2 Hessian, where a multinomial
    Newton step would need ((D+1) n_classes)^2, so many classes stay cheap. Same objective per
    class as scikit-learn's `OneVsRestClassifier(LogisticRegression(C=C))`."""
    fit = lambda c: fit_logistic(X, (y == c).astype(jnp.int32), 2, C, n_iter)
    W = jax.vmap(fit)(jnp.arange(n_classes))                          # [n_classes, D+1, 2]
    return (W[..., 1] - W[..., 0]).T


def predict_logistic(W, X):
    return jnp.argmax(_with_intercept(X) @ W, axis=-1)


def fit_ridge(X, Y, alpha: float = 1.0):
    """Ridge regression weights [D+1, ...] (intercept unpenalised) in closed form."""
    X1 = _with_intercept(X)
    penalty = jnp.diag(jnp.concatenate([jnp.full((X.shape[1],), alpha), jnp.zeros((1,))]))
    return jnp.linalg.solve(X1.T @ X1 + penalty, X1.T @ Y)


def predict_ridge(W, X):
    return _with_intercept(X) @ W


def pca_direction(diffs_ND, center: bool = False):
    """First principal direction of difference vectors, sign chosen so mean projection > 0.

    [reconstructed] Yan et al. take PCA of (correct - incorrect) differences; by default we
    do not centre them, since the mean difference *is* the signal (centring removes exactly the
    consistent direction when all differences agree). `center=True` gives textbook PCA.
    """
    X = diffs_ND - diffs_ND.mean(0) if center else diffs_ND
    _, _, Vt = jnp.linalg.svd(X, full_matrices=False)
    v = Vt[0]
    return v * jnp.sign(jnp.sum(diffs_ND @ v) + 1e-12)


def multiple_choice_accuracy(v_D, H_NKD, answer_N):
    """Accuracy of argmax_k v . h(q, a_k) against the correct option index."""
    return jnp.mean(jnp.argmax(H_NKD @ v_D, axis=-1) == answer_N)


def pca_probe(H_train_NKD, answer_train_N, H_test_NKD, answer_test_N, center: bool = False):
    """Fit the PCA direction on train (correct minus each incorrect option); test accuracy."""
    N, K, D = H_train_NKD.shape
    correct = jnp.take_along_axis(H_train_NKD, answer_train_N[:, None, None], axis=1)  # [N, 1, D]
    wrong = jnp.arange(K)[None, :] != answer_train_N[:, None]
    diffs = jnp.where(wrong[..., None], correct - H_train_NKD, 0.0).reshape(N * K, D)
    # rows of zeros (the correct option against itself) add nothing to the uncentred SVD
    v = pca_direction(diffs, center=center)
    return v, multiple_choice_accuracy(v, H_test_NKD, answer_test_N)


def logistic_probe(X_train, y_train, X_test, y_test, n_classes: int = 2, C: float = 1.0, n_iter: int = 25):
    """Standardise on train, fit, and return (weights, train accuracy, test accuracy)."""
    X_train, X_test = standardize(X_train, X_test)
    W = fit_logistic(X_train, y_train, n_classes, C, n_iter)
    acc = lambda X, y: jnp.mean(predict_logistic(W, X) == y)
    return W, acc(X_train, y_train), acc(X_test, y_test)


def fit_grid(fn, *arrays, grid_axes: int = 2):
    """Vmap `fn` over the leading `grid_axes` axes of the first array (e.g. checkpoint, layer);
    the remaining arrays (labels, ...) are shared."""
    mapped = fn
    for _ in range(grid_axes):
        mapped = jax.vmap(mapped, in_axes=(0,) + (None,) * (len(arrays) - 1))
    return jax.jit(mapped)(*arrays)


def control_labels(token_ids_N, n_classes: int, seed: int = 0):
    """Hewitt & Liang control task: each token type gets a fixed random label."""
    token_ids_N = np.asarray(token_ids_N)
    rng = np.random.default_rng(seed)
    table = rng.integers(0, n_classes, int(token_ids_N.max()) + 1)
    return table[token_ids_N]


def selectivity(task_accuracy, control_accuracy):
    """Task accuracy minus control-task accuracy (high = the probe reads, not memorises)."""
    return task_accuracy - control_accuracy
