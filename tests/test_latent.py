"""The latent-concept generator against brute force and Monte Carlo; the learner and its optimizers."""
import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dynamics import latent_training
from models.errors import OntogenyError
from models import latent
from probes import geometry


def brute_force_joint(problem):
    """p(C) by looping over states and multiplying each node's CPT entry in topological order."""
    m = problem.n_concepts
    joint = {}
    for c in itertools.product([0, 1], repeat=m):
        p = 1.0
        for i in problem.order_M:
            logit = problem.bias_M[i] + sum(problem.weights_MM[i, j] * (2 * c[j] - 1) for j in range(m))
            p1 = 1.0 / (1.0 + np.exp(-logit))
            p *= p1 if c[i] == 1 else 1.0 - p1
        joint[c] = p
    return joint


def brute_force_conditional(joint, s):
    """p(C = c | C_S = s_S) for a partial assignment s (2 = unknown), as a dict over states."""
    ok = {c: p for c, p in joint.items() if all(si == 2 or si == ci for si, ci in zip(s, c))}
    z = sum(ok.values())
    return {c: p / z for c, p in ok.items()}


@pytest.fixture(scope="module")
def dependent():
    return latent.build_problem(latent.LatentConfig(n_concepts=3, edge_density=1.0, strength=1.5, seed=3))


def test_dag_is_acyclic_and_follows_its_order(dependent):
    rank = {int(node): r for r, node in enumerate(dependent.order_M)}
    children, parents = np.nonzero(dependent.weights_MM)
    assert len(children) == 3  # edge_density 1: all m(m-1)/2 edges
    assert all(rank[p] < rank[c] for c, p in zip(children, parents))


def test_exact_conditionals_equal_brute_force_enumeration(dependent):
    joint = brute_force_joint(dependent)
    bits = [tuple(b) for b in dependent.token_bits_YM]
    np.testing.assert_allclose(dependent.joint_Y, [joint[b] for b in bits], rtol=1e-12)
    for x, s in enumerate(dependent.contexts_XM):
        cond = brute_force_conditional(joint, tuple(s))
        np.testing.assert_allclose(dependent.cond_XY[x], [cond.get(b, 0.0) for b in bits], atol=1e-12)
    # context law: each concept fixed with prob p_fix, its value from p(C)
    p_fix, m = dependent.config.p_fix, 3
    for x, s in enumerate(dependent.contexts_XM):
        fixed = [i for i in range(m) if s[i] != 2]
        marg = sum(p for c, p in joint.items() if all(c[i] == s[i] for i in fixed))
        expected = p_fix ** len(fixed) * (1 - p_fix) ** (m - len(fixed)) * marg
        assert dependent.context_weight_X[x] == pytest.approx(expected)


def test_monte_carlo_ancestral_sampling_matches_exact_law(dependent):
    """Sample C node by node through the DAG, hide concepts with prob 1 - p_fix, redraw the hidden ones."""
    rng, n, m = np.random.default_rng(0), 60_000, 3
    C = np.zeros((n, m), int)
    for i in dependent.order_M:
        logit = dependent.bias_M[i] + (2 * C - 1) @ dependent.weights_MM[i]
        C[:, i] = rng.random(n) < 1 / (1 + np.exp(-logit))
    fixed = rng.random((n, m)) < dependent.config.p_fix
    x = (np.where(fixed, C, 2) * 3 ** np.arange(m)).sum(1)
    y = (C * 2 ** np.arange(m)).sum(1)  # the next token of context mask(C) may be C itself: same law
    empirical = latent.empirical_weight(x, y, 3 ** m, 2 ** m)
    np.testing.assert_allclose(empirical, dependent.weight_XY, atol=4 * np.sqrt(dependent.weight_XY.max() / n))
    # the library's own sampler draws from the same law
    xs, ys = latent.sample(dependent, jax.random.PRNGKey(1), n)
    np.testing.assert_allclose(latent.empirical_weight(xs, ys, 3 ** m, 2 ** m), dependent.weight_XY,
                               atol=4 * np.sqrt(dependent.weight_XY.max() / n))
    # a finite training set (n_samples > 0) is such an empirical law, not the exact one
    finite = latent_training.training_weight(dependent, latent_training.TrainConfig(n_samples=n, seed=0))
    assert finite.sum() == pytest.approx(1.0) and not np.allclose(finite, dependent.weight_XY, atol=1e-6)
    np.testing.assert_allclose(finite, dependent.weight_XY, atol=4 * np.sqrt(dependent.weight_XY.max() / n))


def test_pair_logodds_equal_brute_force(dependent):
    joint = brute_force_joint(dependent)
    logodds, finite = latent.pair_logodds(dependent)
    pairs = latent.token_pairs(3)
    for i, p, x in itertools.product(range(3), range(4), range(27)):
        s = tuple(dependent.contexts_XM[x])
        cond = brute_force_conditional(joint, s)
        y0, y1 = (tuple(dependent.token_bits_YM[y]) for y in pairs[i, p])
        assert y0[i] == 0 and y1[i] == 1 and sum(a != b for a, b in zip(y0, y1)) == 1
        if s[i] == 2 and y0 in cond:
            assert finite[i, p, x]
            assert logodds[i, p, x] == pytest.approx(np.log(cond[y1] / cond[y0]), abs=1e-10)
        else:
            assert not finite[i, p, x]


def test_independent_mode_factorises():
    problem = latent.build_problem(latent.LatentConfig(n_concepts=3, independent=True, strength=5.0))
    bits = problem.token_bits_YM
    p1 = (problem.joint_Y[:, None] * bits).sum(0)
    np.testing.assert_allclose(problem.joint_Y, np.prod(np.where(bits == 1, p1, 1 - p1), axis=1), rtol=1e-12)
    logodds, finite = latent.pair_logodds(problem)
    for i in range(3):  # independence: one log-odds per concept, whatever the context and the other concepts
        np.testing.assert_allclose(logodds[i][finite[i]], np.log(p1[i] / (1 - p1[i])), atol=1e-12)


def test_context_pairs_differ_in_one_fixed_concept():
    pairs, contexts = latent.context_pairs(3), latent.all_contexts(3)
    assert pairs.shape == (3, 9, 2)
    for i in range(3):
        a, b = contexts[pairs[i, :, 0]], contexts[pairs[i, :, 1]]
        assert (a[:, i] == 0).all() and (b[:, i] == 1).all()
        np.testing.assert_array_equal(np.delete(a, i, 1), np.delete(b, i, 1))


def direct_joint(problem):
    """p(C) as a product of each node's conditional, p(C_i = 0) computed as 1 / (1 + e^logit)
    directly (no 1 - p cancellation), so states of probability ~1e-300 or exactly 0 come out right."""
    bits = problem.token_bits_YM
    logit = problem.bias_M + (2 * bits - 1) @ problem.weights_MM.T
    with np.errstate(over="ignore"):
        p1, p0 = 1 / (1 + np.exp(-logit)), 1 / (1 + np.exp(logit))
    return np.prod(np.where(bits == 1, p1, p0), axis=1)


@pytest.mark.parametrize("m, density, strength", [(1, 0.0, 0.0), (2, 1.0, 1e6), (3, 0.0, 1e6), (3, 1.0, 1e6),
                                                  (4, 1.0, 60.0), (7, 1.0, 1e3), (7, 1.0, 8.0), (8, 0.5, 1e6)])
def test_generator_is_exact_at_the_ends_of_every_range(m, density, strength):
    """Strength 0 .. 1e6, density 0 .. 1, m 1 .. 8: every law is finite; a context of probability
    zero carries no data (weight 0, conditional row 0, no finite log-odds), never 0/0."""
    problem = latent.build_problem(latent.LatentConfig(n_concepts=m, independent=False, edge_density=density,
                                                       strength=strength, seed=1))
    joint, cond, weight = problem.joint_Y, problem.cond_XY, problem.context_weight_X
    assert np.all(np.isfinite(joint)) and np.all(np.isfinite(cond)) and np.all(np.isfinite(weight))
    np.testing.assert_allclose(joint, direct_joint(problem), rtol=1e-9, atol=1e-300)
    assert joint.sum() == pytest.approx(1.0, abs=1e-12) and weight.sum() == pytest.approx(1.0, abs=1e-12)
    consistent = latent.consistent(problem.contexts_XM, problem.token_bits_YM)
    has_data = (consistent & (joint > 0)).any(1)  # some possible token agrees with the context
    np.testing.assert_array_equal(weight > 0, has_data)
    np.testing.assert_allclose(cond[has_data].sum(1), 1.0, atol=1e-12)
    assert np.all(cond[~has_data] == 0) and np.all(cond[~consistent] == 0)
    if m <= 4:  # the conditional law against enumeration over the possible contexts
        for x in np.nonzero(has_data)[0]:
            mass = np.where(consistent[x], joint, 0.0)
            np.testing.assert_allclose(cond[x], mass / mass.sum(), rtol=1e-12, atol=1e-300)
    logodds, finite = latent.pair_logodds(problem)
    assert np.all(np.isfinite(logodds)) and not np.any(finite & ~has_data[None, None, :])
    tok_mask, ctx_mask = latent.pair_masks(problem)
    tp, cp = latent.token_pairs(m), latent.context_pairs(m)
    for i in range(m):
        assert [bool(joint[a] > 0 and joint[b] > 0) for a, b in tp[i]] == list(tok_mask[i])
        assert [bool(has_data[a] and has_data[b]) for a, b in cp[i]] == list(ctx_mask[i])
    if density == 1.0 and strength >= 1e6:  # the root is free, every other concept a function of it
        assert (joint > 0).sum() == 2 and not has_data.all()


def test_learner_trains_finitely_on_zero_probability_contexts():
    problem = latent.build_problem(latent.LatentConfig(n_concepts=3, independent=False, edge_density=1.0,
                                                       strength=1e6, seed=1))
    assert (problem.context_weight_X == 0).any()
    params, losses = latent_training.train_runs(3, latent.LearnerConfig(d=4, hidden=8), [0, 32], seeds=[0],
                                                lrs=[1.0], weight_decays=[0.0], optimizers=["gd"],
                                                weights_RXY=problem.weight_XY[None])
    assert np.all(np.isfinite(losses)) and all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))
    assert losses[0, 1] < losses[0, 0]
    x, y = latent.sample(problem, jax.random.PRNGKey(0), 2000)
    assert np.all(problem.context_weight_X[x] > 0) and np.all(problem.cond_XY[x, y] > 0)


def test_configs_reject_bad_values():
    with pytest.raises(OntogenyError):
        latent.LatentConfig(n_concepts=0)
    for strength in (-1.0, float("inf"), float("nan"), 1e7):
        with pytest.raises(OntogenyError, match="strength"):
            latent.LatentConfig(strength=strength)
    with pytest.raises(OntogenyError):
        latent.LearnerConfig(f_kind="rnn")
    with pytest.raises(OntogenyError):
        latent_training.TrainConfig(optimizer="lbfgs")


def test_learner_reaches_exact_logodds_on_a_tiny_problem():
    problem = latent.build_problem(latent.LatentConfig(n_concepts=2, independent=True, marginal_scale=1.0, p_fix=0.3))
    learner = latent.LearnerConfig(d=4, f_kind="table", init_scale=0.1)
    train = latent_training.TrainConfig(optimizer="adam", lr=0.05, steps=3000)
    params, losses = latent_training.train(problem, learner, train, [0, 3000])
    floor = latent.conditional_entropy(problem.weight_XY)
    assert losses[0] > floor + 0.3 and losses[-1] < floor + 0.02
    last = jax.tree.map(lambda x: jnp.asarray(x[-1]), params)
    logodds, finite = latent.pair_logodds(problem)
    F = latent.embed(last, jnp.asarray(latent.context_inputs(2)))
    learned = np.einsum("kpd,xd->kpx", np.asarray(geometry.pair_differences(last["g"], latent.token_pairs(2))), F)
    assert np.abs(learned - logodds)[finite].max() < 0.05


@partial(jax.jit, static_argnames=("kind", "n"))
def _optax_reference(kind, lr, wd, params, inputs, weight, n):
    if kind == "adam":
        opt = optax.adamw(lr, weight_decay=wd)
    else:
        opt = optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr))
    state = opt.init(params)
    for _ in range(n):  # unrolled: n is small
        grads = jax.grad(latent.loss_fn)(params, inputs, weight)
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


def test_unified_optimizer_equals_optax_and_runs_vmap_exactly():
    """One vmapped call with gd, adam (+ decay) and a narrower padded width equals separate optax runs."""
    m, n = 2, 5
    problem = latent.build_problem(latent.LatentConfig(n_concepts=m, independent=True))
    learner = latent.LearnerConfig(d=6, hidden=8)
    runs = [("gd", 0.5, 0.0, 6), ("gd", 0.3, 0.05, 6), ("adam", 0.01, 0.1, 6), ("adam", 0.02, 0.0, 3)]
    stacked, _ = latent_training.train_runs(m, learner, [n], seeds=[0, 1, 2, 3], lrs=[r[1] for r in runs],
                                            weight_decays=[r[2] for r in runs], optimizers=[r[0] for r in runs],
                                            widths=[r[3] for r in runs], weights_RXY=np.stack([problem.weight_XY] * 4))
    inputs, weight = jnp.asarray(latent.context_inputs(m)), jnp.asarray(problem.weight_XY, jnp.float32)
    for i, (kind, lr, wd, width) in enumerate(runs):
        init = latent.init_learner(learner, m, i, width)
        expected = _optax_reference(kind, lr, wd, init, inputs, weight, n)
        got = jax.tree.map(lambda x: x[i, -1], stacked)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    assert np.all(stacked["g"][3, -1][:, 3:] == 0)  # padded width stays exactly zero
    assert np.all(stacked["f"]["layer1"]["w"][3, -1][:, 3:] == 0)


def test_sgd_minibatches_follow_the_training_law():
    weight = jnp.asarray(np.random.default_rng(0).dirichlet(np.ones(12)).reshape(3, 4), jnp.float32)
    keys = jax.random.split(jax.random.PRNGKey(0), 400)
    mean = jax.vmap(lambda k: latent_training.minibatch_weight(k, weight, 50))(keys).mean(0)
    np.testing.assert_allclose(mean, weight, atol=0.01)


def test_sgd_with_a_huge_batch_follows_gd():
    m = 2
    problem = latent.build_problem(latent.LatentConfig(n_concepts=m, independent=True))
    learner = latent.LearnerConfig(d=4, hidden=8)
    stacked, _ = latent_training.train_runs(m, learner, [0, 20], seeds=[0, 0], lrs=[0.5, 0.5],
                                            weight_decays=[0.0, 0.0], optimizers=["sgd", "gd"],
                                            weights_RXY=np.stack([problem.weight_XY] * 2), batch_size=20_000)
    flat = lambda i, t: np.concatenate([x[i, t].ravel() for x in jax.tree.leaves(stacked)])
    moved = np.linalg.norm(flat(1, 1) - flat(1, 0))
    assert moved > 0.1
    assert np.linalg.norm(flat(0, 1) - flat(1, 1)) < 0.05 * moved
    assert np.linalg.norm(flat(0, 1) - flat(1, 1)) > 0  # but it is a different (sampled) trajectory


def test_training_loop_snapshots_equal_a_step_by_step_loop():
    """train_runs (dynamics.loop, one call per segment between snapshots) against single jitted
    steps applied one at a time, for snapshot lists with and without step 0, gd and sgd runs."""
    m = 2
    problem = latent.build_problem(latent.LatentConfig(n_concepts=m, independent=False, strength=1.0))
    learner = latent.LearnerConfig(d=4, hidden=8)
    inputs, weight = jnp.asarray(latent.context_inputs(m)), jnp.asarray(problem.weight_XY, jnp.float32)
    step = jax.jit(partial(latent_training.train_step, batch_size=16))
    for snapshots in ([0, 2, 5], [3, 5]):
        kw = dict(seeds=[0, 1], lrs=[0.5, 0.3], weight_decays=[0.0, 0.01], optimizers=["gd", "sgd"])
        stacked, losses = latent_training.train_runs(m, learner, snapshots, weights_RXY=np.stack([weight] * 2),
                                                     batch_size=16, **kw)
        assert losses.shape == (2, len(snapshots)) and stacked["g"].shape[:2] == (2, len(snapshots))
        states = latent_training.initial_states(m, learner, widths=[4, 4], init_scales=[0.01, 0.01], **kw)
        for r in range(2):
            state, t = jax.tree.map(lambda x: x[r], states), 0
            for c, target in enumerate(snapshots):
                for _ in range(target - t):
                    state = step(state, inputs, weight)[0]
                t = target
                got = jax.tree.map(lambda x: x[r, c], stacked)
                for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(state["params"])):
                    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
                assert losses[r, c] == pytest.approx(float(latent.loss_fn(state["params"], inputs, weight)), rel=1e-5)


def test_training_stops_when_every_run_diverges():
    from dynamics.loop import Diverged

    problem = latent.build_problem(latent.LatentConfig(n_concepts=2, independent=True))
    with pytest.raises(Diverged, match="at step 3 .*lower the learning rate"):
        latent_training.train_runs(2, latent.LearnerConfig(d=4, hidden=8), [0, 3, 6], seeds=[0, 1], lrs=[1e30, 1e30],
                                   weight_decays=[0.0, 0.0], optimizers=["gd", "gd"],
                                   weights_RXY=np.stack([problem.weight_XY] * 2))
