"""Concept-direction geometry against numpy loops and matrices of known geometry."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamics import latent_training
from dynamics.checkpoints import map_stack
from models import latent
from probes import geometry


measures = jax.jit(geometry.geometry_measures)


def cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def loop_measures(M, pairs_per_concept, random_pairs):
    """Reference: the documented definitions, written as plain loops."""
    diffs = [[M[b] - M[a] for a, b in concept] for concept in pairs_per_concept]
    per_concept, all_within = [], []
    for ds in diffs:
        values = [cos(ds[p], ds[q]) for p, q in itertools.permutations(range(len(ds)), 2)]
        if values:
            per_concept.append(np.mean(values))
            all_within += values
    dirs = []
    for ds in diffs:
        mean_unit = np.mean([d / np.linalg.norm(d) for d in ds], axis=0)
        dirs.append(mean_unit / np.linalg.norm(mean_unit))
    cross = [abs(cos(dirs[i], dirs[j])) for i, j in itertools.permutations(range(len(dirs)), 2)]
    rd = [M[b] - M[a] for a, b in random_pairs]
    rand = [abs(cos(rd[i], rd[j])) for i, j in itertools.permutations(range(len(rd)), 2)]
    to_mean = []
    for ds in diffs:
        units = [d / np.linalg.norm(d) for d in ds]
        to_mean += [cos(units[p], np.sum(units, 0) - units[p]) for p in range(len(ds))] if len(ds) > 1 else []
    return {"within_mean": np.mean(per_concept), "within_min": min(all_within),
            "cross_abs_mean": np.mean(cross) if cross else np.nan, "cross_abs_max": max(cross, default=np.nan),
            "random_abs_mean": np.mean(rand) if rand else np.nan, "directions": np.array(dirs),
            "to_mean": to_mean}


def test_measures_equal_numpy_loops_on_ragged_pairs():
    rng = np.random.default_rng(0)
    M = rng.standard_normal((20, 7))
    concepts = [[(0, 1), (2, 3), (4, 5)], [(6, 7), (8, 9)], [(10, 11), (12, 13), (14, 15), (16, 17)]]
    rand = geometry.random_pairs(20, 10, seed=3)
    assert np.all(rand[:, 0] != rand[:, 1])
    pairs, mask = geometry.pack_pairs(concepts)
    assert pairs.shape == (3, 4, 2) and mask.sum() == 9
    got = measures(jnp.asarray(M), pairs, mask, rand)
    ref = loop_measures(M, concepts, rand)
    for key in ("within_mean", "within_min", "cross_abs_mean", "cross_abs_max", "random_abs_mean"):
        assert float(got[key]) == pytest.approx(ref[key], abs=1e-5), key
    np.testing.assert_allclose(got["directions"], ref["directions"], atol=1e-5)
    c, valid = geometry.within_cosines(jnp.asarray(M), pairs, mask, mode="to_mean")
    np.testing.assert_allclose(np.sort(np.asarray(c)[np.asarray(valid)]), np.sort(ref["to_mean"]), atol=1e-5)
    samples = geometry.cosine_samples(M, pairs[:1, :3], rand)  # numpy histogram values, first concept
    pw = loop_measures(M, concepts[:1], rand)
    assert samples["within"].mean() == pytest.approx(pw["within_mean"], abs=1e-9)
    assert np.abs(samples["random"]).mean() == pytest.approx(pw["random_abs_mean"], abs=1e-9)


def test_masked_pairs_carry_no_data():
    """Masked pairs (items of probability zero) drop out of every measure, as if never given;
    per-concept cross |cos| and per-concept log-odds errors equal loops."""
    rng = np.random.default_rng(4)
    M = rng.standard_normal((20, 6))
    concepts = [[(0, 1), (2, 3), (4, 5)], [(6, 7), (8, 9), (18, 19)], [(10, 11), (12, 13), (14, 15)]]
    pairs, _ = geometry.pack_pairs(concepts)
    mask = np.array([[True, False, True], [True, True, False], [False, False, True]])  # concept 2: one pair
    rand = geometry.random_pairs(20, 12, seed=5)
    rmask = rng.random(12) < 0.6
    M_bad = M.copy()
    M_bad[[2, 3, 18, 19, 10, 11, 12, 13]] = 1e6  # masked items: their values must not matter
    got = measures(jnp.asarray(M_bad), pairs, mask, rand, random_mask_R=rmask)
    kept = [[p for p, ok in zip(c, row) if ok] for c, row in zip(concepts, mask)]
    ref = loop_measures(M, kept, [tuple(r) for r, ok in zip(rand, rmask) if ok])
    assert float(got["within_mean"]) == pytest.approx(np.mean([
        np.mean([cos(M[b1] - M[a1], M[b2] - M[a2]) for (a1, b1), (a2, b2) in itertools.permutations(c, 2)])
        for c in kept if len(c) > 1]), abs=1e-5)
    assert list(np.asarray(got["has"])) == [True, True, False]  # one pair: no within-concept value
    assert float(got["cross_abs_mean"]) == pytest.approx(ref["cross_abs_mean"], abs=1e-5)
    got_random = measures(jnp.asarray(M), pairs, mask, rand, random_mask_R=rmask)["random_abs_mean"]
    assert float(got_random) == pytest.approx(ref["random_abs_mean"], abs=1e-5)
    dirs = ref["directions"]
    per = [np.mean([abs(dirs[k] @ dirs[j]) for j in range(3) if j != k]) for k in range(3)]
    np.testing.assert_allclose(got["cross_per_concept"], per, atol=1e-5)
    # no pair at all: the concept has no direction and leaves the cross measure
    none = measures(jnp.asarray(M), pairs, mask & np.array([[True], [True], [False]]))
    assert list(np.asarray(none["cross_has"])) == [True, True, False]
    assert float(none["cross_abs_mean"]) == pytest.approx(abs(dirs[0] @ dirs[1]), abs=1e-5)
    F, true = rng.standard_normal((7, 6)), rng.standard_normal((3, 3, 7))
    finite = rng.random((3, 3, 7)) < 0.5
    finite[2] = False
    _, per_err, has = geometry.logodds_errors(jnp.asarray(F), jnp.asarray(M), pairs, true, finite)
    for k in range(2):
        cells = [abs(F[x] @ (M[pairs[k, p, 1]] - M[pairs[k, p, 0]]) - true[k, p, x]) for p, x in zip(*np.nonzero(finite[k]))]
        assert float(per_err[k]) == pytest.approx(np.mean(cells), rel=1e-5)
    assert list(np.asarray(has)) == [True, True, False] and np.all(np.isfinite(per_err))


def test_planted_linear_orthogonal_geometry():
    """Rows = base + sum_i bit_i * direction_i: within = 1, cross = 0 exactly; noise lowers within."""
    rng, m, D = np.random.default_rng(1), 4, 32
    dirs = np.linalg.qr(rng.standard_normal((D, m)))[0].T
    bits = latent.token_bits(m)
    base = np.tile(rng.standard_normal(D), (2 ** m, 1))
    U = base + bits @ (3.0 * dirs)
    out = measures(jnp.asarray(U), latent.token_pairs(m), None, geometry.random_pairs(2 ** m, 32))
    assert float(out["within_mean"]) == pytest.approx(1.0, abs=1e-5)
    assert float(out["within_min"]) == pytest.approx(1.0, abs=1e-5)
    assert float(out["cross_abs_mean"]) == pytest.approx(0.0, abs=1e-5)
    np.testing.assert_allclose(np.abs(np.asarray(out["directions"]) @ dirs.T), np.eye(m), atol=1e-5)
    noisy = U + 0.3 * rng.standard_normal(U.shape)  # E cos ~ s^2 / (s^2 + 2 sigma^2 D) = 9 / 14.76
    out2 = measures(jnp.asarray(noisy), latent.token_pairs(m))
    assert float(out2["within_mean"]) == pytest.approx(9 / 14.76, abs=0.12)
    # skewed concepts: direction 1 = direction 0 rotated by 60 degrees -> cross |cos| = 0.5
    skew = dirs.copy()
    skew[1] = 0.5 * dirs[0] + np.sqrt(0.75) * dirs[1]
    out3 = measures(jnp.asarray(base + bits @ skew), latent.token_pairs(m))
    assert float(out3["cross_cos"][0, 1]) == pytest.approx(0.5, abs=1e-5)


def test_logodds_error_and_alignment_equal_loops():
    rng = np.random.default_rng(2)
    F, G = rng.standard_normal((9, 5)), rng.standard_normal((4, 5))
    pairs = latent.token_pairs(2)
    true = rng.standard_normal((2, 2, 9))
    finite = rng.random((2, 2, 9)) < 0.6
    ref = np.mean([abs(F[x] @ (G[pairs[k, p, 1]] - G[pairs[k, p, 0]]) - true[k, p, x])
                   for k, p, x in zip(*np.nonzero(finite))])
    got = geometry.logodds_error(jnp.asarray(F), jnp.asarray(G), pairs, true, finite)
    assert float(got) == pytest.approx(ref, rel=1e-5)
    a, b = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    np.testing.assert_allclose(geometry.direction_alignment(a, b), [cos(a[i], b[i]) for i in range(3)], atol=1e-6)


def test_latent_checks_vmapped_over_checkpoints_equal_a_loop():
    m = 3
    problem = latent.build_problem(latent.LatentConfig(n_concepts=m, independent=True))
    learner = latent.LearnerConfig(d=5, hidden=8)
    stacked, _ = latent_training.train_runs(m, learner, [0, 3, 10], seeds=[0], lrs=[0.5], weight_decays=[0.0],
                                            optimizers=["gd"], weights_RXY=problem.weight_XY[None])
    series = jax.tree.map(lambda x: x[0], stacked)
    logodds, finite = latent.pair_logodds(problem)
    args = (jnp.asarray(latent.context_inputs(m)), latent.token_pairs(m), latent.context_pairs(m),
            geometry.random_pairs(2 ** m, 16), geometry.random_pairs(3 ** m, 16), jnp.asarray(logodds, jnp.float32),
            finite)
    vmapped = map_stack(geometry.latent_checks, series, *args, chunk_size=2)
    checks = jax.jit(geometry.latent_checks)
    for t in range(3):
        one = checks(jax.tree.map(lambda x: x[t], series), *args)
        for key, value in one.items():
            np.testing.assert_allclose(vmapped[key][t], value, rtol=1e-5, atol=1e-6, err_msg=key)
    # and the embedding side against the loop reference on f
    F = np.asarray(vmapped["embedding"][2], np.float64)
    ref = loop_measures(F, [list(map(tuple, p)) for p in latent.context_pairs(m)], [])
    assert vmapped["emb_within_cos_mean"][2] == pytest.approx(ref["within_mean"], abs=1e-5)


def test_case_pairs():
    chars = "\n !',.?ABCDEZabcdexyz"
    pairs = geometry.case_pairs(chars)
    assert [(chars[a], chars[b]) for a, b in pairs] == [("a", "A"), ("b", "B"), ("c", "C"), ("d", "D"), ("e", "E"),
                                                        ("z", "Z")]
