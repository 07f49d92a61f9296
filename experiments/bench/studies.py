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
from experiments.bench.timing import matmul_peak_gflops

SKETCH = 8  # [choice] rows 1 in SKETCH estimate the first Hessian (the Newton-sketch variant)
CHUNK = 4  # [choice] fits at a time in the chunked variant: the fastest of 1-16 at the full shape
# (2-core Intel Xeon, AVX-512, 2026-12-07)


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


def timed_grid_fit(X_CLND, y_CLN, n_classes: int, inv_l2: float, n_iter: int, sketch: int = 1,
                   chunk: int | None = None):
    """Every (checkpoint, layer) probe in one compiled call (`probes.linear.fit_grid`, features
    and labels both per cell; `chunk` fits at a time, else all at once): (fits, compile s, run s
    after it)."""
    one = lambda X_, y_: linear.fit_logistic(X_, y_, n_classes, inv_l2, n_iter, sketch=sketch)
    fit = lambda X_, y_: linear.fit_grid(one, X_, y_, chunk=chunk, mapped=2)
    Xj, yj = jnp.asarray(X_CLND), jnp.asarray(y_CLN)
    t0 = time.perf_counter()
    jax.block_until_ready(fit(Xj, yj))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fits = jax.block_until_ready(fit(Xj, yj))
    return fits, compile_s, time.perf_counter() - t0


def logistic_fit_flops(N: int, D: int, n_classes: int, hessians: int, reuse: int = 2, sketch: int = 1) -> float:
    """Matmul FLOPs of one `probes.linear.fit_logistic` of N rows, D features and `hessians`
    Newton iterations (the elementwise work, a few percent, is left out). Each iteration builds
    the gradient and the Hessian at theta, then takes 1 + reuse steps, each one matrix-vector
    pass for the logits of the step and one for the gradient. Binary (K' = 1, intercept apart):
    Hessian 2 N D^2 + 2 N D, passes 2 N D. Multinomial (K' = K - 1 free columns on [X, 1]):
    Hessian 2 N (D+1)^2 K'^2, passes 2 N (D+1) K and 2 N (D+1) K'. A sketched first iteration
    (`sketch` > 1) adds one Hessian of N / sketch rows."""
    if n_classes == 2:
        hessian, logits_pass, grad_pass = 2 * N * D * D + 2 * N * D, 2 * N * D, 2 * N * D
    else:
        D1, Kf = D + 1, n_classes - 1
        hessian, logits_pass, grad_pass = 2 * N * D1 ** 2 * Kf ** 2, 2 * N * D1 * n_classes, 2 * N * D1 * Kf
    iteration = hessian + grad_pass + (1 + reuse) * (logits_pass + grad_pass)
    extra = 0.0 if sketch <= 1 else hessian / sketch + grad_pass + (1 + reuse) * (logits_pass + grad_pass)
    return hessians * iteration + extra + logits_pass + grad_pass  # + the logits at 0 and the reported gradient


def grid_figures(prefix: str, fits, seconds: float, shape: tuple, n_classes: int, peak_gflops: float,
                 sketch: int = 1, chunk: int | None = None) -> dict:
    """The fits' floating-point work (matmul FLOPs) over their wall time, as GFLOP/s and as a
    fraction of the matmul peak measured in the same run. Fits vmapped together (all of them, or
    each `chunk`) run as many iterations as the slowest among them, so that is the work counted."""
    C, L, N, D = shape
    iters = np.asarray(fits.n_iter).reshape(-1)
    size = chunk or len(iters)
    flops = sum(len(group) * logistic_fit_flops(N, D, n_classes, int(group.max()), sketch=sketch)
                for group in np.split(iters, range(size, len(iters), size)))
    return {f"{prefix}_gflop": flops / 1e9, f"{prefix}_gflops_per_s": flops / seconds / 1e9,
            f"{prefix}_peak_fraction": flops / seconds / 1e9 / peak_gflops}


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

    peak = matmul_peak_gflops(512 if quick else 2048, precision="highest")  # the fits' precision
    fits, compile_s, ours_s = timed_grid_fit(X, y, 2, inv_l2, n_iter)
    sketched, _, sketch_s = timed_grid_fit(X, y, 2, inv_l2, n_iter, sketch=SKETCH)
    best, _, best_s = timed_grid_fit(X, y, 2, inv_l2, n_iter, sketch=SKETCH, chunk=CHUNK)
    log_odds = lambda f: np.asarray(f.W)[..., 1] - np.asarray(f.W)[..., 0]  # binary: logit 1 - logit 0
    w_sk, sklearn_s = sklearn_logistic_loop(X, y, inv_l2)

    objective = lambda w: np.array([[logistic_objective_np(w[c, l], X[c, l], y[c, l], inv_l2) for l in range(L)]
                                    for c in range(C)])
    obj_sk = objective(w_sk)
    gap, gap_sketch = objective(log_odds(fits)) - obj_sk, objective(log_odds(sketched)) - obj_sk
    gap_best = objective(log_odds(best)) - obj_sk
    result = {"probes_shape": [C, L, N, D], "probes_newton_iters": n_iter, "probes_compile_s": compile_s,
              "probes_ours_s": ours_s, "probes_sklearn_s": sklearn_s, "probes_speedup": sklearn_s / ours_s,
              "probes_objective_gap_max": float(gap.max()), "probes_objective_gap_rel_max": float((gap / obj_sk).max()),
              "probes_objective_ours_le_sklearn": bool(np.all(gap <= 1e-6 * np.abs(obj_sk))),
              "probes_converged": int(np.asarray(fits.converged).sum()), "probes_total": C * L,
              "probes_newton_iters_max": int(np.asarray(fits.n_iter).max()), "probes_matmul_peak_gflops": peak,
              **grid_figures("probes", fits, ours_s, (C, L, N, D), 2, peak),
              "probes_sketch": SKETCH, "probes_sketch_s": sketch_s, "probes_sketch_speedup": sklearn_s / sketch_s,
              "probes_sketch_objective_gap_rel_max": float((gap_sketch / obj_sk).max()),
              "probes_sketch_converged": int(np.asarray(sketched.converged).sum()),
              "probes_sketch_newton_iters_max": int(np.asarray(sketched.n_iter).max()),
              **grid_figures("probes_sketch", sketched, sketch_s, (C, L, N, D), 2, peak, SKETCH),
              "probes_chunk": CHUNK, "probes_chunked_sketch_s": best_s,
              "probes_chunked_sketch_speedup": sklearn_s / best_s,
              "probes_chunked_sketch_objective_gap_rel_max": float((gap_best / obj_sk).max()),
              "probes_chunked_sketch_converged": int(np.asarray(best.converged).sum()),
              **grid_figures("probes_chunked_sketch", best, best_s, (C, L, N, D), 2, peak, SKETCH, CHUNK)}
    print(f"probes: C={C} checkpoints x L={L} logistic fits, N={N}, D={D}: ours {ours_s:.2f} s (compile "
          f"{compile_s:.1f} s), scikit-learn loop {sklearn_s:.2f} s, speed-up {result['probes_speedup']:.1f}x; "
          f"{result['probes_gflops_per_s']:.0f} GFLOP/s = {result['probes_peak_fraction']:.2f} of the {peak:.0f} "
          f"GFLOP/s matmul peak; objective gap (ours - sklearn) max {gap.max():.3g} (relative "
          f"{result['probes_objective_gap_rel_max']:.2g}); first Hessian sketched from 1/{SKETCH} of the rows: "
          f"{sketch_s:.2f} s ({result['probes_sketch_speedup']:.1f}x, {result['probes_sketch_peak_fraction']:.2f} of "
          f"the peak, {result['probes_sketch_newton_iters_max']} exact Hessians at most); and {CHUNK} fits at a "
          f"time: {best_s:.2f} s ({result['probes_chunked_sketch_speedup']:.1f}x, "
          f"{result['probes_chunked_sketch_peak_fraction']:.2f} of the peak, objective gap relative max "
          f"{result['probes_chunked_sketch_objective_gap_rel_max']:.2g})", flush=True)
    return {**result, **bench_probes_multinomial(quick, peak)}


def softmax_objective_np(W, X, y, inv_l2: float) -> float:
    """sum of multinomial log-losses + (1/2 inv_l2)||coef||^2 in float64: W [D+1, K]."""
    z = X.astype(np.float64) @ W[:-1] + W[-1]
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].sum() + 0.5 / inv_l2 * np.sum(W[:-1] ** 2))


def bench_probes_multinomial(quick: bool = False, peak_gflops: float | None = None) -> dict:
    """Multinomial (softmax) probes: C x L fits of K classes on N examples of width D, vmapped
    Newton in K-1 free columns against scikit-learn's multinomial lbfgs loop on the same data;
    their share of the matmul peak; and one-vs-rest probes on the same data, the classes' first
    Hessian computed per class or once (`shared_first`)."""
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
    peak = peak_gflops or matmul_peak_gflops(512 if quick else 2048, precision="highest")
    result = {**grid_figures("probes_mn", fits, ours_s, (C, L, N, D), K, peak), **one_vs_rest_shared(X, y, K, inv_l2),
              "probes_mn_shape": [C, L, N, D, K], "probes_mn_compile_s": compile_s, "probes_mn_ours_s": ours_s,
              "probes_mn_sklearn_s": sklearn_s, "probes_mn_speedup": sklearn_s / ours_s,
              "probes_mn_objective_gap_rel_max": float((gap / obj_sk).max()),
              "probes_mn_converged": int(np.asarray(fits.converged).sum()), "probes_mn_total": C * L}
    print(f"multinomial probes: C={C} x L={L} fits, K={K}, N={N}, D={D}: ours {ours_s:.2f} s (compile "
          f"{compile_s:.1f} s), scikit-learn loop {sklearn_s:.2f} s, speed-up {result['probes_mn_speedup']:.1f}x; "
          f"objective gap relative max {result['probes_mn_objective_gap_rel_max']:.2g}; converged "
          f"{result['probes_mn_converged']}/{C * L}; {result['probes_mn_peak_fraction']:.2f} of the matmul peak; "
          f"one-vs-rest {result['probes_ovr_s']:.2f} s, first Hessian shared {result['probes_ovr_shared_s']:.2f} s "
          f"(max weight difference {result['probes_ovr_shared_max_diff']:.1e})", flush=True)
    return result


def one_vs_rest_shared(X_CLND, y_CLN, n_classes: int, inv_l2: float) -> dict:
    """One-vs-rest probes on every (checkpoint, layer), the first Hessian per class and shared:
    seconds after compilation and the largest difference of their weights."""
    Xj, yj = jnp.asarray(X_CLND), jnp.asarray(y_CLN)
    weights, seconds = {}, {}
    for shared in (False, True):
        fit = jax.jit(jax.vmap(jax.vmap(lambda X_, y_: linear.fit_one_vs_rest(X_, y_, n_classes, inv_l2,
                                                                               shared_first=shared).W)))
        jax.block_until_ready(fit(Xj, yj))
        t0 = time.perf_counter()
        weights[shared] = np.asarray(jax.block_until_ready(fit(Xj, yj)))
        seconds[shared] = time.perf_counter() - t0
    return {"probes_ovr_s": seconds[False], "probes_ovr_shared_s": seconds[True],
            "probes_ovr_shared_max_diff": float(np.abs(weights[True] - weights[False]).max())}


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
