"""NeuroMFA box growing and spectra against hand computation, a monofractal, and a numpy loop."""
import math
from collections import Counter

import numpy as np
import pytest
import scipy.sparse.csgraph
import scipy.stats

from probes.neuromfa import network as neunet
from probes.neuromfa import spectrum as mf

INF = np.inf


def run(dist, **kw):
    cfg = mf.MFAConfig(**kw)
    return {k: np.asarray(v) for k, v in mf.analyze_jit(np.asarray(dist, np.float32), cfg=cfg).items()}, cfg


def slope(xs, ys):
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def spectrum_by_hand(tau, qs):
    alpha = [(tau[j + 1] - tau[j]) / (qs[j + 1] - qs[j]) for j in range(len(qs) - 1)]
    f = [qs[j] * alpha[j] - tau[j] for j in range(len(qs) - 1)]
    first_max = next(j for j in range(len(f)) if f[j] >= max(f) - 1e-4)  # ties broken as documented
    return alpha[first_max], max(alpha) - min(alpha)


def test_five_node_example_by_hand():
    # Weights w_ij (0 = no edge); d = 1/|w|. Node 0: d = 2, 4, 3.2 (rounds to 3). Node 1: d = 2, 2, 4.
    # Node 2: d = 4 and 0.5 (below the lower cut): one kept edge, so unused with min_degree=1.
    # Node 3: d = 200 (beyond the threshold) and 2: one kept edge, unused. Node 4: no out-edges.
    W = np.zeros((5, 5))
    W[0, 1], W[0, 2], W[0, 3] = 0.5, 0.25, -1 / 3.2
    W[1, 2], W[1, 3], W[1, 4] = 0.5, -0.5, 0.25
    W[2, 3], W[2, 4] = 0.25, 2.0
    W[3, 4], W[3, 0] = 0.005, 0.5
    dist = np.where(W != 0, 1 / np.where(W != 0, np.abs(W), 1), INF)
    out, cfg = run(dist, min_degree=1)
    assert int(out["n_used"]) == 2 and int(out["n_radii"]) == 3
    # Radii {2, 3, 4}, D = 4. N_0(r) = 2, 3, 4; N_1(r) = 3, 3, 4 (each counts itself).
    xs = [math.log(2 / 4), math.log(3 / 4), math.log(4 / 4)]
    qs = [float(q) for q in cfg.q]
    tau = []
    for q in qs:
        Z = [(2 / 4) ** q + (3 / 4) ** q, (3 / 4) ** q + (3 / 4) ** q, 1.0 + 1.0]
        tau.append(slope(xs, [math.log(z) for z in Z]))
    np.testing.assert_allclose(out["tau"], tau, atol=2e-5)
    assert abs(tau[qs.index(0.0)]) < 1e-12  # Z_0 = number of used nodes at every radius
    alpha0, width = spectrum_by_hand(tau, qs)
    np.testing.assert_allclose([out["alpha0"], out["width"]], [alpha0, width], atol=2e-4)
    # Strength baseline: mean over used nodes of sum |w| over kept edges.
    np.testing.assert_allclose(out["strength"], ((0.5 + 0.25 + 1 / 3.2) + (0.5 + 0.5 + 0.25)) / 2, rtol=1e-5)
    # With the default min_degree=10 no node qualifies: everything is NaN, not a silent number.
    out, _ = run(dist)
    assert int(out["n_used"]) == 0 and np.isnan(out["tau"]).all() and np.isnan(out["width"])


def test_same_distance_multiset_is_monofractal():
    # Every node holds a permutation of one multiset of distances with several distinct radii.
    rng = np.random.default_rng(0)
    base = np.array([2, 2, 3, 5, 5, 5, 8, 13, 13, 21, 40, 70, 120, 300, INF, 0.4], float)
    dist = np.stack([rng.permutation(base) for _ in range(12)])
    out, cfg = run(dist)
    assert int(out["n_used"]) == 12 and int(out["n_radii"]) == 9
    assert abs(out["width"]) < 1e-4
    # tau is linear in q through 0: tau(q) = q tau(1).
    np.testing.assert_allclose(out["tau"], cfg.q * out["tau"][list(cfg.q).index(1.0)], atol=1e-4)
    # Control: making one node different gives a strictly positive width.
    dist[0] = np.where(dist[0] < 10, dist[0] * 9, dist[0])
    assert run(dist)[0]["width"] > 0.05


def test_single_weight_ring_shortest_paths_is_monofractal():
    # A directed ring where every edge has the same weight 0.1 (d = 10). Direct edges give one radius
    # (degenerate: no slope, NaN); shortest paths give radii 10, 20, ..., 150 for every node alike.
    n = 40
    W = np.zeros((n, n))
    W[np.arange(n), (np.arange(n) + 1) % n] = 0.1
    direct = np.where(W != 0, 10.0, INF)
    out, _ = run(direct, min_degree=0)
    assert int(out["n_radii"]) == 1 and np.isnan(out["width"])
    paths = np.asarray(neunet.all_pairs_shortest(direct.astype(np.float32)))
    out, cfg = run(paths)
    assert int(out["n_used"]) == n and int(out["n_radii"]) == 15
    assert abs(out["width"]) < 1e-4


def test_all_pairs_shortest_matches_scipy():
    rng = np.random.default_rng(1)
    n = 30
    W = rng.normal(0, 0.05, (n, n)) * (rng.random((n, n)) < 0.2)
    dist = np.where(W != 0, 1 / np.where(W != 0, np.abs(W), 1), INF)
    ours = np.asarray(neunet.all_pairs_shortest(dist.astype(np.float32)))
    ref = scipy.sparse.csgraph.shortest_path(np.where(np.isinf(dist), 0, dist), directed=True)
    np.fill_diagonal(ref, INF)
    assert np.isinf(ours).sum() == np.isinf(ref).sum() > 0
    np.testing.assert_allclose(ours, ref, rtol=1e-5)


def reference_tau(dist, qs, threshold=150.0, lower=1.0, min_degree=10, digits=0):
    """Brute force after the authors' `wnfd_llm`: Counters of rounded distances, loops, linregress."""
    counters, radii = [], set()
    for row in dist:
        grow = [float(m) for m in row if lower < m <= threshold]
        if len(grow) > min_degree:
            c = Counter(np.round(grow, digits).tolist())
            radii.update(c)
            counters.append(c)
    radii = sorted(radii)
    N = np.ones((len(counters), len(radii)))
    for i, c in enumerate(counters):
        for j, r in enumerate(radii):
            N[i, j] += sum(n for radius, n in c.items() if radius <= r)
    x = np.log(np.array(radii) / radii[-1])
    tau = [scipy.stats.linregress(x, np.log(np.sum((N / N[:, -1:]) ** q, axis=0))).slope for q in qs]
    return np.array(tau), len(counters), len(radii)


@pytest.mark.parametrize("seed,kw", [(0, {}), (1, {}), (2, {"digits": 1, "threshold": 60.0}),
                                     (3, {"min_degree": 3, "lower": 2.0})])
def test_tau_matches_bruteforce_numpy(seed, kw):
    rng = np.random.default_rng(seed)
    n, k = 40, 30
    # Heterogeneous nodes: per-node weight scales, some missing edges.
    w = rng.normal(0, 1, (n, k)) * rng.uniform(0.004, 0.06, (n, 1)) * (rng.random((n, k)) < 0.85)
    dist = np.where(w != 0, 1 / np.where(w != 0, np.abs(w), 1), INF).astype(np.float32)
    out, cfg = run(dist, **kw)
    tau, n_used, n_radii = reference_tau(dist.astype(np.float64), cfg.q.astype(np.float64), **kw)
    assert int(out["n_used"]) == n_used and int(out["n_radii"]) == n_radii and n_used > 5
    np.testing.assert_allclose(out["tau"], tau, atol=2e-4)
    alpha0, width = spectrum_by_hand(list(tau), [float(q) for q in cfg.q])
    np.testing.assert_allclose([out["alpha0"], out["width"]], [alpha0, width], atol=5e-3)
    assert width > 0.05  # a genuinely multifractal case, so the comparison is not trivial


def test_emergence_formula_and_config_validation():
    a0, w = np.array([2.0, 1.5, 1.0]), np.array([0.5, 1.0, 2.0])
    np.testing.assert_allclose(mf.emergence(a0, w), [0.0, 2 * math.log(2 / 1.5), 4 * math.log(2.0)])
    from models.errors import OntogenyError
    with pytest.raises(OntogenyError):
        mf.MFAConfig(threshold=0.5)
    with pytest.raises(OntogenyError):
        mf.MFAConfig(variant="bfs")
    assert len(mf.MFAConfig().q) == 61 and mf.MFAConfig().q[30] == 0.0
