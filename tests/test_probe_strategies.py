"""The logistic probes' cheaper first iteration (shared across fits, or sketched from a subset of
rows) against scikit-learn's optimum, and the FLOP count `bench probes` reports against XLA's."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.bench.studies import logistic_fit_flops
from probes import linear
from tests.test_linear import KINDS, best_scikit_learn, objective_of, problem

CS = (1e-2, 1.0, 1e3)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("option", [{"shared_first": True}, {"sketch": 4}])
def test_a_shared_or_sketched_first_iteration_reaches_scikit_learns_optimum(k, option):
    """Every data kind x C (the C axis vmapped over shared features, so the first Hessian is
    shared): converged, and the objective within 1e-5 of scikit-learn's best, or below it."""
    problems = [problem(kind, k, seed=k) for kind in KINDS if kind != "raw"]
    X_GND = jnp.asarray(np.stack([X for X, _ in problems]))
    y_GN = jnp.asarray(np.stack([y for _, y in problems]))
    fit_C = lambda X, y, C: linear.fit_logistic(X, y, k, C, 100, **option)
    fits = jax.jit(jax.vmap(jax.vmap(fit_C, (None, None, 0)), (0, 0, None)))(X_GND, y_GN, jnp.asarray(CS, jnp.float32))
    assert np.all(np.asarray(fits.converged)) and np.all(np.isfinite(np.asarray(fits.W)))
    for g, (X, y) in enumerate(problems):
        for i, C in enumerate(CS):
            ours = objective_of(fits.W[g, i], X, y, C)
            theirs, _ = best_scikit_learn(X, y, C, k)
            assert ours <= theirs + 1e-5 * max(theirs, 1.0), (g, C, ours, theirs)


def test_sketching_the_first_hessian_saves_an_exact_one_on_bench_like_data():
    """On `bench probes`' kind of data (Gaussian states, planted direction, logistic noise) a
    first Newton step from an eighth of the rows leaves fewer exact Hessians to take."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, 2048, 32)).astype(np.float32)
    w = rng.normal(size=(8, 32)) / np.sqrt(32) * 2.0
    y = (np.einsum("gnd,gd->gn", X, w) + rng.logistic(size=(8, 2048)) > 0).astype(np.int32)
    grid = lambda **kw: jax.jit(jax.vmap(lambda X_, y_: linear.fit_logistic(X_, y_, 2, 1.0, 50, **kw)))(X, y)
    exact, sketched = grid(), grid(sketch=8)
    assert np.all(np.asarray(sketched.converged))
    assert np.asarray(sketched.n_iter).sum() < np.asarray(exact.n_iter).sum()
    np.testing.assert_allclose(np.asarray(sketched.W), np.asarray(exact.W), atol=2e-4)


def test_one_vs_rest_with_a_shared_first_hessian_equals_it_per_class():
    X, y = problem("correlated", 5, n=400, seed=7)
    per_class = linear.fit_one_vs_rest(jnp.asarray(X), jnp.asarray(y), 5, C=0.5)
    shared = linear.fit_one_vs_rest(jnp.asarray(X), jnp.asarray(y), 5, C=0.5, shared_first=True)
    assert bool(shared.converged) and int(shared.n_iter) <= int(per_class.n_iter)
    np.testing.assert_allclose(np.asarray(shared.W), np.asarray(per_class.W), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("k, sketch", [(2, 1), (2, 8), (5, 1), (5, 8)])
def test_the_flop_count_agrees_with_xlas_cost_analysis(k, sketch):
    """XLA counts a while loop's body once: with n_iter = 1 and the first iteration outside the
    loop, the program holds two iterations (or a sketched one and an exact one). XLA also counts
    the elementwise work our count leaves out, so it may be up to 20% higher, never lower."""
    N, D = 4096, 64
    X = jnp.asarray(np.random.default_rng(0).normal(size=(N, D)), jnp.float32)
    y = jnp.asarray(np.random.default_rng(1).integers(0, k, N))
    fit = lambda X, y: linear.fit_logistic(X, y, k, 1.0, n_iter=1, shared_first=True, sketch=sketch)
    xla = jax.jit(fit).lower(X, y).compile().cost_analysis()["flops"]
    ours = logistic_fit_flops(N, D, k, 2) if sketch == 1 else logistic_fit_flops(N, D, k, 1, sketch=sketch)
    assert 1.0 <= xla / ours <= 1.2, (xla, ours)
