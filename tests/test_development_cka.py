"""CKA against a numpy implementation of the definitions: linear CKA from the feature form
|Y^T X|_F^2 / (|X^T X|_F |Y^T Y|_F) (Kornblith et al. 2019), and the unbiased HSIC of Song et
al. (2012) as the U-statistic it estimates, summed by brute force over every ordered 4-tuple of
distinct examples; the invariances the definition promises, and the one it does not."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from probes.development import cka as ck


def numpy_linear_cka(x, y):
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def brute_hsic_u(k, l):
    """(1/(n)_4) sum over distinct (i, j, q, r) of k_ij l_ij + k_ij l_qr - 2 k_ij l_iq."""
    n = len(k)
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
        count += 1
    return total / count


def numpy_debiased_cka(x, y):
    k, l = x @ x.T, y @ y.T
    return brute_hsic_u(k, l) / np.sqrt(brute_hsic_u(k, k) * brute_hsic_u(l, l))


@pytest.fixture
def xy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6))
    y = x @ rng.normal(size=(6, 9)) + 0.8 * rng.normal(size=(40, 9))
    return x.astype(np.float32), y.astype(np.float32)


def test_linear_cka_equals_the_feature_form(xy):
    x, y = xy
    np.testing.assert_allclose(float(ck.cka(x, y)), numpy_linear_cka(x.astype(np.float64), y.astype(np.float64)),
                               rtol=1e-5)


def test_debiased_cka_equals_the_brute_force_u_statistic():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 3))
    y = x[:, :2] @ rng.normal(size=(2, 4)) + 0.5 * rng.normal(size=(8, 4))
    want = numpy_debiased_cka(x, y)
    np.testing.assert_allclose(float(ck.cka(x.astype(np.float32), y.astype(np.float32), debiased=True)), want,
                               rtol=1e-4, atol=1e-5)
    assert abs(want - numpy_linear_cka(x, y)) > 0.02     # the two estimators differ at this n


@pytest.mark.parametrize("debiased", [False, True])
def test_invariances(xy, debiased):
    x, y = xy
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.normal(size=(9, 9)))
    base = float(ck.cka(x, y, debiased))
    np.testing.assert_allclose(float(ck.cka(x, x, debiased)), 1.0, atol=1e-5)
    np.testing.assert_allclose(float(ck.cka(x, (y @ q).astype(np.float32), debiased)), base, atol=1e-5)   # rotation
    np.testing.assert_allclose(float(ck.cka(x, 7.5 * y, debiased)), base, atol=1e-5)                     # isotropic scale
    np.testing.assert_allclose(float(ck.cka(x, y + 3.0, debiased)), base, atol=1e-4)                     # translation
    stretch = np.diag(np.geomspace(0.05, 20.0, 9)) @ q                                                  # invertible, not orthogonal
    assert abs(float(ck.cka(x, (y @ stretch).astype(np.float32), debiased)) - base) > 0.05


def test_unrelated_representations_debiased_is_near_zero():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(64, 200)).astype(np.float32), rng.normal(size=(64, 200)).astype(np.float32)
    assert float(ck.cka(x, y)) > 0.5                        # linear CKA's bias when width >> n
    assert abs(float(ck.cka(x, y, debiased=True))) < 0.05


def test_map_is_every_pairwise_cka_and_a_constant_gives_zero(xy):
    x, y = xy
    reps = [x, y[:, :6], np.tanh(x), np.zeros_like(x)]
    feats = np.stack([np.asarray(ck.gram_features(r)) for r in reps])
    m = np.asarray(ck.cka_map(feats))
    for i, j in itertools.product(range(3), range(3)):
        np.testing.assert_allclose(m[i, j], numpy_linear_cka(reps[i].astype(np.float64), reps[j].astype(np.float64)),
                                   rtol=1e-4)
    assert np.all(m[3] == 0) and np.isfinite(m).all()
