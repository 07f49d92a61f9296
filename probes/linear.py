"""Linear probes, written for one (checkpoint, layer) and vmapped over both.

Every fit is a pure function of arrays with static shapes, so
`fit_grid(fit, X_CLND, y_N)` fits all C x L probes (checkpoints x layers) in one compiled call.

- Logistic regression (binary and multinomial) with an L2 penalty, solved by Newton's method
  (IRLS): the objective is scikit-learn's, sum of log-losses + (1 / 2C) ||W||^2 with an
  unpenalised intercept, so `C` means the same thing as in `sklearn.linear_model.LogisticRegression`.
  Newton runs in K-1 free columns (the softmax's redundant direction removed exactly), with a
  damped Cholesky solve and a NaN-proof step-halving safeguard; every fit returns its weights, a
  converged flag and its final gradient norm (`LogisticFit`), so studies can count converged probes.
- Ridge regression in closed form.
- The PCA-direction probe of Yan et al.: the first principal direction of (correct - incorrect)
  hidden-state differences, sign fixed on the training split; a multiple-choice item is
  answered by argmax_k v . h(q, a_k).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from probes import newton
from probes.newton import gauge_basis, with_intercept


def full_precision(fn):
    """Trace `fn` with float32 matmuls at full precision. [choice] On a GPU jax's default lets
    float32 matmuls round their inputs to TF32 (10-bit mantissa), which would stop Newton's
    convergence test (relative 1e-7) from ever passing and move ridge solutions by ~1e-3; a CPU
    computes in full float32 either way, so its results are unchanged."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.default_matmul_precision("highest"):
            return fn(*args, **kwargs)
    return wrapped


def standardize(X_train, X_test, eps: float = 1e-6):
    """Scale features by the training split's mean and std (the test split never leaks in)."""
    mean = X_train.mean(0)
    std = X_train.std(0) + eps
    return (X_train - mean) / std, (X_test - mean) / std


class LogisticFit(NamedTuple):
    """A fitted logistic probe. W: [D+1, K] logit weights (argmax of [x, 1] @ W predicts);
    converged: the Newton decrement fell below tolerance; grad_norm: max |gradient| of the
    objective at the solution, in the standardised features the fit is solved in; n_iter: Newton
    iterations (Hessians) taken. A NamedTuple, so fits vmap."""
    W: jax.Array
    converged: jax.Array
    grad_norm: jax.Array
    n_iter: jax.Array


@full_precision
def logistic_objective(W, X1, Y_onehot, inv_C):
    """Sum of softmax log-losses + (1/2C)||W without intercept row||^2. W: [D+1, K]."""
    return newton.softmax_parts(X1 @ W, Y_onehot)[0] + 0.5 * inv_C * jnp.sum(W[:-1] ** 2)


@full_precision
def fit_logistic(X, y, n_classes: int = 2, C=1.0, n_iter: int = 50, tol: float = 1e-7,
                 damping: float = 1e-6, reuse: int = 2, shared_first: bool = False, sketch: int = 1) -> LogisticFit:
    """L2 logistic regression (binary or multinomial) by damped, safeguarded Newton steps.

    Objective: scikit-learn's, sum of log-losses + (1/2C)||W||^2 with the intercept unpenalised,
    so `C` means what it means in `sklearn.linear_model.LogisticRegression`; `C = inf` is the
    unpenalised fit. `C` may be traced (a vmap over a grid of C compiles once).
    - Exact reparametrisations for float32: features are centred and scaled internally (the
      penalty carries 1/scale^2, the intercept absorbs the centring), and the free parameters are
      K' = 1 (binary) or K - 1 (multinomial) columns (`gauge_basis`).
    - Each iteration: Cholesky of the Jacobi-scaled, relatively damped Hessian, which then serves
      1 + `reuse` steps (Shamanskii's method: with reuse=1, cubic local convergence for one
      Hessian, the dominant cost at N >> D). [choice] reuse=2, the fastest on `bench probes`
      with the objective still within float32 rounding of scikit-learn's (figures in
      docs/benchmarks/2026-11-30-xeon.md). Each step
      takes the best finite objective among step sizes 1, 1/2, ..., 1/64 and no step
      (non-finite candidates count as +inf, so a NaN can never be chosen). `n_iter` counts
      Hessians.
    - `shared_first`: the first iteration runs before the loop, where its Hessian (at theta = 0
      every row has the same curvature) depends on the features alone, so fits vmapped over
      shared features (the classes of one-vs-rest, a grid of labels or of `C`) compute it and its
      factor once. Fits with their own features give bit-identical results either way; shared
      ones agree to float32 rounding (a batched and an unbatched solve round differently), so
      [choice] it is off by default and existing results stay bit for bit what they were.
    - `sketch` > 1 (Newton sketch; implies `shared_first`): that first Hessian is estimated from
      every sketch-th row (scaled to N) and does not count in `n_iter` nor stop the fit; the
      later Hessians are exact, so the optimum and the stopping test are unchanged.
    - Stops when half the Newton decrement g^T H^-1 g is below tol * max(objective, 1), or after
      n_iter steps; `converged` says which. On separable data with C = inf the optimum is at
      infinity: the objective is driven towards 0 until the decrement is below tol.
    """
    Xc, mean, scale, pen_D1 = _standardized(X, C)
    D1 = X.shape[1] + 1
    V = jnp.asarray(gauge_basis(n_classes), jnp.float32)
    if n_classes == 2:
        problem = newton.binary_problem(Xc, y, pen_D1)
    else:
        problem = newton.multinomial_problem(Xc, y, n_classes, V, pen_D1)
    theta, done, iters = newton.newton(problem, pen_D1, (D1, V.shape[1]), n_iter, tol, damping, reuse,
                                       shared_first or sketch > 1, sketch)
    # back to the caller's features: w = w~ / scale, b = b~ - mean . w
    W_s = theta @ V.T
    coef = W_s[:-1] / scale[:, None]
    W = jnp.concatenate([coef, (W_s[-1] - mean @ coef)[None]], axis=0)
    # the gradient where the fit was solved (standardised features, free columns): no second
    # [N, D+1] copy of the data just to report it
    logits_of, _, _, gradient = problem
    return LogisticFit(W, done, jnp.max(jnp.abs(gradient(theta, logits_of(theta)))), iters)


def _standardized(X, C):
    """(Xc, mean, scale, pen_D1): the features centred and scaled, and the L2 weights of the
    [D+1] parameter rows in that scale (1/(C scale^2); 0 for the intercept and for C = inf)."""
    X = jnp.asarray(X, jnp.float32)
    mean = X.mean(0)
    scale = X.std(0)
    scale = jnp.where(scale > 0, scale, 1.0)
    Xc = (X - mean) / scale
    inv_C = jnp.where(jnp.isinf(C), 0.0, 1.0 / jnp.asarray(C, jnp.float32)).astype(jnp.float32)
    pen_D1 = inv_C * jnp.concatenate([1.0 / scale ** 2, jnp.zeros((1,), jnp.float32)])
    return Xc, mean, scale, pen_D1


def fit_one_vs_rest(X, y, n_classes: int, C=1.0, n_iter: int = 50, tol: float = 1e-7,
                    shared_first: bool = False) -> LogisticFit:
    """One binary L2 logistic regression per class (class c against the rest), vmapped:
    log-odds weights [D+1, n_classes]. Each fit has a (D+1)^2 Hessian, where a multinomial
    Newton step would need ((D+1) n_classes)^2, so many classes stay cheap. Same objective per
    class as scikit-learn's `OneVsRestClassifier(LogisticRegression(C=C))`. `converged` is true
    only when every class's fit converged; `grad_norm` is the largest of theirs.
    `shared_first` computes the classes' first Hessian once (`fit_logistic`)."""
    fit = lambda c: fit_logistic(X, (y == c).astype(jnp.int32), 2, C, n_iter, tol, shared_first=shared_first)
    fits = jax.vmap(fit)(jnp.arange(n_classes))                        # W: [n_classes, D+1, 2]
    return LogisticFit((fits.W[..., 1] - fits.W[..., 0]).T, jnp.all(fits.converged),
                       jnp.max(fits.grad_norm), jnp.max(fits.n_iter))


def predict_logistic(W, X):
    return jnp.argmax(with_intercept(X) @ W, axis=-1)


@full_precision
def fit_ridge(X, Y, alpha: float = 1.0):
    """Ridge regression weights [D+1, ...] (intercept unpenalised), in closed form.

    Solved on centred data, where the intercept separates out exactly (it is the mean residual),
    so the system is alpha I + Xc^T Xc: positive definite for alpha > 0 on any CPU. alpha = 0
    (ordinary least squares, possibly rank-deficient) goes through a least-squares solve.
    """
    X, Y = jnp.asarray(X, jnp.float32), jnp.asarray(Y, jnp.float32)
    x_mean, y_mean = X.mean(0), Y.mean(0)
    Xc, Yc = X - x_mean, Y - y_mean
    if alpha > 0:
        coef = jnp.linalg.solve(Xc.T @ Xc + alpha * jnp.eye(X.shape[1], dtype=X.dtype), Xc.T @ Yc)
    else:
        coef = jnp.linalg.lstsq(Xc, Yc)[0]
    intercept = y_mean - x_mean @ coef
    return jnp.concatenate([coef, intercept[None]], axis=0)


def predict_ridge(W, X):
    return with_intercept(X) @ W


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


def logistic_probe(X_train, y_train, X_test, y_test, n_classes: int = 2, C=1.0, n_iter: int = 50):
    """Standardise on train, fit, and return (fit, train accuracy, test accuracy)."""
    X_train, X_test = standardize(X_train, X_test)
    fit = fit_logistic(X_train, y_train, n_classes, C, n_iter)
    acc = lambda X, y: jnp.mean(predict_logistic(fit.W, X) == y)
    return fit, acc(X_train, y_train), acc(X_test, y_test)


def fit_grid(fn, *arrays, grid_axes: int = 2, chunk: int | None = None, mapped: int = 1):
    """Vmap `fn` over the leading `grid_axes` axes of the first `mapped` arrays (e.g. checkpoint,
    layer); the remaining arrays (labels, ...) are shared. The compiled program is cached per
    (fn, number of arrays, grid_axes, chunk, mapped): calling again with the same `fn` (a
    module-level function or one `functools.partial` kept by the caller) and the same shapes does
    not re-trace.

    `chunk`: fit that many grid cells at a time (a `lax.map` over the flattened grid, each step
    vmapped) instead of all at once; results agree to float32 rounding. [choice] Off by default:
    on a CPU a few fits at a time keep each step's data in cache, which measured 1.2-1.5x faster
    for fits whose Newton passes over the data dominate (N >> D, D <= 128), but 15% slower where
    the D^2 Hessians dominate (D = 512) (2-core Intel Xeon, AVX-512, 2026-12-07;
    docs/benchmarks/2026-12-07-xeon.md), and an accelerator wants the whole grid.
    """
    return _grid_program(fn, len(arrays), grid_axes, chunk, mapped)(*arrays)


@functools.lru_cache(maxsize=64)
def _grid_program(fn, n_arrays: int, grid_axes: int, chunk: int | None = None, mapped: int = 1):
    if chunk is not None:
        def chunked(*arrays):
            grid = arrays[0].shape[:grid_axes]
            flat = tuple(a.reshape((-1,) + a.shape[grid_axes:]) for a in arrays[:mapped])
            out = jax.lax.map(lambda cell: fn(*cell, *arrays[mapped:]), flat, batch_size=chunk)
            return jax.tree.map(lambda o: o.reshape(grid + o.shape[1:]), out)

        return jax.jit(chunked)
    mapped_fn = fn
    for _ in range(grid_axes):
        mapped_fn = jax.vmap(mapped_fn, in_axes=(0,) * mapped + (None,) * (n_arrays - mapped))
    return jax.jit(mapped_fn)


def control_labels(token_ids_N, n_classes: int, seed: int = 0):
    """Hewitt & Liang control task: each token type gets a fixed random label."""
    token_ids_N = np.asarray(token_ids_N)
    rng = np.random.default_rng(seed)
    table = rng.integers(0, n_classes, int(token_ids_N.max()) + 1)
    return table[token_ids_N]


def selectivity(task_accuracy, control_accuracy):
    """Task accuracy minus control-task accuracy (high = the probe reads, not memorises)."""
    return task_accuracy - control_accuracy
