"""Centred kernel alignment (CKA): how alike two representations of the same N examples are.

Linear CKA (Kornblith et al. 2019, "Similarity of neural network representations revisited"):
with the columns of X [N, P] and Y [N, Q] centred,

    CKA(X, Y) = |Y^T X|_F^2 / (|X^T X|_F |Y^T Y|_F) = <K_c, L_c>_F / (|K_c|_F |L_c|_F),

K = X X^T and L = Y Y^T the linear Gram matrices, K_c = H K H their double centring
(H = I - 11^T / N). It is 1 for a representation with itself, invariant to orthogonal maps
and isotropic scaling of either side, and not to general invertible maps.

Debiased CKA: HSIC(K, L) = <K_c, L_c> / (N - 1)^2 is a biased estimator, which inflates the
similarity of unrelated representations at small N relative to their width; the debiased
form replaces it by the unbiased estimator of Song et al. (2012),

    HSIC_u(K, L) = [tr(K~ L~) + 1^T K~ 1 1^T L~ 1 / ((N-1)(N-2)) - 2/(N-2) 1^T K~ L~ 1] / (N (N-3)),

K~, L~ the Gram matrices with their diagonals set to 0 (as in Nguyen et al. 2021). It equals
<U(K), U(L)>_F / (N (N-3)) with U the U-centring of Szekely and Rizzo (2014) (diagonal zeroed,
then rows and columns centred with 1/(N-2) and the grand mean added back with 1/((N-1)(N-2)),
diagonal zeroed again), so both forms are cosines of transformed Gram matrices: `gram_features`
makes the transformed, unit-norm Gram of one representation once, and every CKA of a map is
then one inner product. Debiased CKA can be slightly negative for unrelated representations.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from models.errors import require


def centre_gram(k_NN: jax.Array, keep_N: jax.Array | None = None) -> jax.Array:
    """[N, N] the double centring H K H of a Gram matrix; with `keep_N` (0/1 per example) the
    centring of the kept examples' Gram, zero elsewhere (a leave-out without reshaping)."""
    keep = jnp.ones(k_NN.shape[0], k_NN.dtype) if keep_N is None else keep_N.astype(k_NN.dtype)
    mask = keep[:, None] * keep[None, :]
    k, n = k_NN * mask, keep.sum()
    rows = k.sum(0) / n
    return (k - rows[:, None] - rows[None, :] + k.sum() / n ** 2) * mask


def u_centre_gram(k_NN: jax.Array, keep_N: jax.Array | None = None) -> jax.Array:
    """[N, N] the U-centring of a Gram matrix (Szekely and Rizzo 2014; needs N >= 4 kept)."""
    keep = jnp.ones(k_NN.shape[0], k_NN.dtype) if keep_N is None else keep_N.astype(k_NN.dtype)
    mask = keep[:, None] * keep[None, :] * (1.0 - jnp.eye(k_NN.shape[0], dtype=k_NN.dtype))
    k, n = k_NN * mask, keep.sum()
    rows = k.sum(0) / (n - 2)
    return (k - rows[:, None] - rows[None, :] + k.sum() / ((n - 1) * (n - 2))) * mask


def features_from_gram(k_NN: jax.Array, debiased: bool = False, keep_N: jax.Array | None = None) -> jax.Array:
    """[N, N] the centred (or U-centred) Gram scaled to unit Frobenius norm: the inner product of
    two such matrices is their CKA. A representation with no spread (a constant) gives zeros,
    so its CKA with anything is 0 rather than NaN ([choice])."""
    g = u_centre_gram(k_NN, keep_N) if debiased else centre_gram(k_NN, keep_N)
    norm = jnp.sqrt((g * g).sum())
    return jnp.where(norm > 0, g / jnp.where(norm > 0, norm, 1.0), 0.0)


def gram_features(x_ND: jax.Array, debiased: bool = False) -> jax.Array:
    """[N, N] `features_from_gram` of the linear Gram X X^T of one representation [N, D]:
    `(gram_features(X) * gram_features(Y)).sum()` is CKA(X, Y)."""
    x_ND = jnp.asarray(x_ND, jnp.float32)
    require(not debiased or x_ND.shape[0] >= 4, "debiased CKA needs at least 4 examples")
    return features_from_gram(x_ND @ x_ND.T, debiased)


def cka(x_ND: jax.Array, y_NQ: jax.Array, debiased: bool = False) -> jax.Array:
    """CKA of two representations [N, P] and [N, Q] of the same N examples (linear kernel;
    `debiased` uses the unbiased HSIC of Song et al. 2012)."""
    require(x_ND.shape[0] == y_NQ.shape[0], f"cka needs the same examples on both sides "
                                            f"({x_ND.shape[0]} != {y_NQ.shape[0]} rows)")
    return (gram_features(x_ND, debiased) * gram_features(y_NQ, debiased)).sum()


def cka_map(feats_ANN: jax.Array, feats_BNN: jax.Array | None = None) -> jax.Array:
    """[A, B] CKA between every pair of representations given as `gram_features` stacks
    [A, N, N] and [B, N, N] (the same stack twice when the second is omitted)."""
    a = feats_ANN.reshape(feats_ANN.shape[0], -1)
    b = a if feats_BNN is None else feats_BNN.reshape(feats_BNN.shape[0], -1)
    return a @ b.T
