"""The studies' benchmark sections of `python -m experiments bench` (`probes`, `crosscoder`):
each measured in one run, printed, and returned as a dict of figures.

- `bench_probes`: the cognition study's logistic probes, vmapped Newton over checkpoints x
  layers against a scikit-learn loop on the same data, binary and multinomial.
- `bench_crosscoder`: crosscoder training tokens/s, one crosscoder, K vmapped, K in turn.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from models.errors import OntogenyError
from experiments.studies.crosscoders import study as crosscoders
from probes.crosscoders import model as cc
from probes import linear


def logistic_objective_np(W, X, y, inv_l2: float) -> float:
    """sum of binary log-losses + (1/2 inv_l2)||w||^2 (intercept unpenalised), in float64: W [D+1]."""
    z = X.astype(np.float64) @ W[:-1] + W[-1]
    return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 / inv_l2 * np.sum(W[:-1] ** 2))


def sklearn_logistic():
    """scikit-learn's LogisticRegression, or the one-line error naming the install."""
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise OntogenyError("bench probes compares against scikit-learn: pip install scikit-learn "
                            "(or the test extras, pip install -e '.[test]')") from None
    return LogisticRegression


def sklearn_logistic_loop(X_CLND, y_CLN, inv_l2: float):
    """scikit-learn's binary logistic regression fitted on every (checkpoint, layer) in turn:
    (weights with intercept last [C, L, D+1], seconds)."""
    LogisticRegression = sklearn_logistic()
    C, L, _, D = X_CLND.shape
    t0 = time.perf_counter()
    w_sk = np.zeros((C, L, D + 1))
    for c in range(C):
        for l in range(L):
            clf = LogisticRegression(C=inv_l2, max_iter=1000).fit(X_CLND[c, l], y_CLN[c, l])
            w_sk[c, l] = np.r_[clf.coef_[0], clf.intercept_[0]]
    return w_sk, time.perf_counter() - t0


def timed_grid_fit(X_CLND, y_CLN, n_classes: int, inv_l2: float, n_iter: int):
    """Every (checkpoint, layer) probe in one compiled call: (fits, compile s, run s after it)."""
    fit = jax.jit(jax.vmap(jax.vmap(lambda X_, y_: linear.fit_logistic(X_, y_, n_classes, inv_l2, n_iter))))
    Xj, yj = jnp.asarray(X_CLND), jnp.asarray(y_CLN)
    t0 = time.perf_counter()
    jax.block_until_ready(fit(Xj, yj))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fits = jax.block_until_ready(fit(Xj, yj))
    return fits, compile_s, time.perf_counter() - t0


def bench_probes(quick: bool = False) -> dict:
    """Logistic probes for C checkpoints x L layers on N examples of width D: vmapped Newton
    (`probes.linear.fit_logistic` under two vmaps) against a scikit-learn loop on the same data.

    Reports both wall times (ours after compilation; compile time apart), the speed ratio, and
    the objective gap (ours - scikit-learn's, per fit; <= 0 means ours is no worse). Data:
    standardised Gaussian states with a planted direction and 10% label noise.
    """
    sklearn_logistic()  # fail before the slow part
    C, L, N, D = (4, 2, 2048, 64) if quick else (16, 8, 8192, 128)
    inv_l2, n_iter = 1.0, 50
    rng = np.random.default_rng(0)
    X = rng.normal(size=(C, L, N, D)).astype(np.float32)
    w_true = rng.normal(size=(C, L, D)) / np.sqrt(D) * np.linspace(0.5, 3.0, L)[None, :, None]
    y = (np.einsum("clnd,cld->cln", X, w_true) + rng.logistic(size=(C, L, N)) > 0).astype(np.int32)
    y[:, :, 0] = 0
    y[:, :, 1] = 1  # every fit sees both classes

    fits, compile_s, ours_s = timed_grid_fit(X, y, 2, inv_l2, n_iter)
    W = np.asarray(fits.W)
    w_ours = W[..., 1] - W[..., 0]  # binary: log-odds of class 1 = logit 1 - logit 0
    w_sk, sklearn_s = sklearn_logistic_loop(X, y, inv_l2)

    objective = lambda w: np.array([[logistic_objective_np(w[c, l], X[c, l], y[c, l], inv_l2) for l in range(L)]
                                    for c in range(C)])
    obj_sk = objective(w_sk)
    gap = objective(w_ours) - obj_sk
    result = {"probes_shape": [C, L, N, D], "probes_newton_iters": n_iter, "probes_compile_s": compile_s,
              "probes_ours_s": ours_s, "probes_sklearn_s": sklearn_s, "probes_speedup": sklearn_s / ours_s,
              "probes_objective_gap_max": float(gap.max()), "probes_objective_gap_rel_max": float((gap / obj_sk).max()),
              "probes_objective_ours_le_sklearn": bool(np.all(gap <= 1e-6 * np.abs(obj_sk))),
              "probes_converged": int(np.asarray(fits.converged).sum()), "probes_total": C * L,
              "probes_newton_iters_max": int(np.asarray(fits.n_iter).max())}
    print(f"probes: C={C} checkpoints x L={L} logistic fits, N={N}, D={D}: ours {ours_s:.2f} s (compile "
          f"{compile_s:.1f} s), scikit-learn loop {sklearn_s:.2f} s, speed-up {result['probes_speedup']:.1f}x; "
          f"objective gap (ours - sklearn) max {gap.max():.3g} (relative {result['probes_objective_gap_rel_max']:.2g})",
          flush=True)
    return {**result, **bench_probes_multinomial(quick)}


def softmax_objective_np(W, X, y, inv_l2: float) -> float:
    """sum of multinomial log-losses + (1/2 inv_l2)||coef||^2 in float64: W [D+1, K]."""
    z = X.astype(np.float64) @ W[:-1] + W[-1]
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].sum() + 0.5 / inv_l2 * np.sum(W[:-1] ** 2))


def bench_probes_multinomial(quick: bool = False) -> dict:
    """Multinomial (softmax) probes: C x L fits of K classes on N examples of width D, vmapped
    Newton in K-1 free columns against scikit-learn's multinomial lbfgs loop on the same data."""
    LogisticRegression = sklearn_logistic()
    C, L, N, D, K = (2, 2, 1024, 32, 5) if quick else (4, 4, 4096, 64, 5)
    inv_l2 = 1.0
    rng = np.random.default_rng(1)
    X = rng.normal(size=(C, L, N, D)).astype(np.float32)
    W_true = rng.normal(size=(C, L, D, K)) / np.sqrt(D) * 2.0
    y = np.argmax(np.einsum("clnd,cldk->clnk", X, W_true) + rng.gumbel(size=(C, L, N, K)), -1).astype(np.int32)
    y[:, :, :K] = np.arange(K)  # every fit sees every class
    fits, compile_s, ours_s = timed_grid_fit(X, y, K, inv_l2, 50)
    t0 = time.perf_counter()
    W_sk = np.zeros((C, L, D + 1, K))
    for c in range(C):
        for l in range(L):
            m = LogisticRegression(C=inv_l2, max_iter=1000).fit(X[c, l], y[c, l])
            W_sk[c, l] = np.r_[m.coef_.T, m.intercept_[None]]
    sklearn_s = time.perf_counter() - t0
    obj = lambda W: np.array([[softmax_objective_np(W[c, l], X[c, l], y[c, l], inv_l2) for l in range(L)] for c in range(C)])
    obj_sk = obj(W_sk)
    gap = obj(np.asarray(fits.W, np.float64)) - obj_sk
    result = {"probes_mn_shape": [C, L, N, D, K], "probes_mn_compile_s": compile_s, "probes_mn_ours_s": ours_s,
              "probes_mn_sklearn_s": sklearn_s, "probes_mn_speedup": sklearn_s / ours_s,
              "probes_mn_objective_gap_rel_max": float((gap / obj_sk).max()),
              "probes_mn_converged": int(np.asarray(fits.converged).sum()), "probes_mn_total": C * L}
    print(f"multinomial probes: C={C} x L={L} fits, K={K}, N={N}, D={D}: ours {ours_s:.2f} s (compile "
          f"{compile_s:.1f} s), scikit-learn loop {sklearn_s:.2f} s, speed-up {result['probes_mn_speedup']:.1f}x; "
          f"objective gap relative max {result['probes_mn_objective_gap_rel_max']:.2g}; converged "
          f"{result['probes_mn_converged']}/{C * L}", flush=True)
    return result


def bench_crosscoder(quick: bool = False) -> dict:
    """Crosscoder training tokens/s (the tiny preset's architecture, random data): one crosscoder;
    K=4 in one vmapped program; and the same 4 trained one after another with the unvmapped
    step, in one run."""
    S, D, F, B = (4, 64, 256, 256) if quick else (16, 128, 512, 512)
    n_steps, K = (3 if quick else 10), 4
    rng = np.random.default_rng(0)
    data = jnp.asarray(rng.normal(size=(B, S, D)).astype(np.float32))
    arch = crosscoders.Config().crosscoder.arch
    ccfg = cc.CrosscoderConfig(n_snapshots=S, d_model=D, n_features=F, arch=arch, steps=1000, batch_size=B)
    hp1 = cc.one_hp({"k": 16, "l1": 0.3})
    init1, step1 = cc.make_init(ccfg), cc.make_train_step(ccfg)
    initK, stepK = cc.make_init(ccfg, K), cc.make_train_step(ccfg, K)
    hpK = cc.stack_hps([{"k": 16, "l1": 0.3}] * K)

    states = [init1(jax.random.PRNGKey(i), data, hp1) for i in range(K)]
    states = [step1(s, data, hp1)[0] for s in states]                       # compile + warm up
    jax.block_until_ready(states)
    t0 = time.perf_counter()
    for _ in range(n_steps):
        states[0], m = step1(states[0], data, hp1)
    jax.block_until_ready(m)
    one = (time.perf_counter() - t0) / n_steps
    t0 = time.perf_counter()
    for i in range(K):                                                     # K sequential trainings
        for _ in range(n_steps):
            states[i], m = step1(states[i], data, hp1)
        jax.block_until_ready(m)
    sequential = (time.perf_counter() - t0) / n_steps

    stateK = initK(jnp.stack([jax.random.PRNGKey(i) for i in range(K)]), data, hpK)
    stateK, m = stepK(stateK, data, hpK)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(n_steps):
        stateK, m = stepK(stateK, data, hpK)
    jax.block_until_ready(m)
    vmapped = (time.perf_counter() - t0) / n_steps
    result = {"crosscoder_shape": {"arch": arch, "snapshots": S, "d_model": D, "features": F, "batch": B,
                                   "members": K},
              "crosscoder_one_tokens_per_s": B / one, "crosscoder_vmapped4_tokens_per_s": K * B / vmapped,
              "crosscoder_sequential4_tokens_per_s": K * B / sequential, "crosscoder_vmap_speedup": sequential / vmapped}
    print(f"crosscoder ({arch}, S={S}, D={D}, F={F}, batch {B}): one {B / one:,.0f} tokens/s; K={K} vmapped "
          f"{K * B / vmapped:,.0f} tokens/s against {K * B / sequential:,.0f} sequential (speed-up "
          f"{sequential / vmapped:.2f}x)", flush=True)
    return result
