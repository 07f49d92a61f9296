"""The Newton machinery behind `probes.linear`'s logistic probes, for one fit (vmapped by the caller).

A problem is four functions of the free parameters theta [D+1, K'] and the logits z: the logits,
the loss, the (gradient, Hessian) system and the gradient. `newton` runs `fit_logistic`'s
damped, safeguarded Newton iterations on one from theta = 0. Binary problems keep the intercept
apart and use sigmoids of +-z; multinomial ones work in K-1 free columns (`gauge_basis`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg  # noqa: F401  (cho_solve)
import numpy as np


def with_intercept(X):
    """Append the constant feature: [N, D] -> [N, D+1] (the intercept is the last weight row)."""
    return jnp.concatenate([X, jnp.ones((X.shape[0], 1), X.dtype)], axis=1)


def softmax_parts(logits_NK, Y_NK):
    """(sum of log-losses, P, Q = 1 - P, R = P - Y), each accurate in float32 where P is near 1.

    The log-loss of a row whose label holds the largest logit is log1p(sum_j exp(z_j - z_y)), so
    a loss of 1e-12 is still represented (lse - z_y would round it to 0); Q sums the other
    classes' probabilities instead of computing 1 - P, so Hessian weights P Q and the residual of
    the labelled class keep their digits on (nearly) separable data.
    """
    logp = jax.nn.log_softmax(logits_NK, axis=-1)
    P = jnp.exp(logp)
    K = logits_NK.shape[-1]
    Q = P @ (1.0 - jnp.eye(K, dtype=P.dtype))
    z_y = jnp.sum(Y_NK * logits_NK, -1, keepdims=True)
    others = jnp.where(Y_NK > 0, -jnp.inf, logits_NK - z_y)
    top = jnp.max(others, -1)
    tail = jnp.log1p(jnp.sum(jnp.exp(jnp.minimum(others, 0.0)), -1))      # valid where top <= 0
    loss_N = jnp.where(top <= 0.0, tail, -jnp.sum(Y_NK * logp, -1))
    R = jnp.where(Y_NK > 0, -Q, P)
    return loss_N.sum(), P, Q, R


def gauge_basis(n_classes: int) -> np.ndarray:
    """V [K, K'] mapping the K' free parameter columns to the K logit columns.

    Binary: V = e_0 (one column of log-odds against a zero column), which is scikit-learn's binary
    problem and its penalty ||w||^2. Multinomial: an orthonormal basis of the sum-zero subspace.
    The softmax loss is unchanged by adding one vector to every column, and the symmetric penalty
    is smallest when the columns sum to zero, so W = Theta V^T loses nothing and removes the
    redundant direction exactly: the Hessian in Theta is non-singular whenever C is finite, and
    ||W||^2 = ||Theta||^2 keeps scikit-learn's multinomial objective.
    """
    if n_classes == 2:
        return np.array([[1.0], [0.0]])
    q, _ = np.linalg.qr(np.concatenate([np.ones((n_classes, 1)), np.eye(n_classes)[:, :-1]], axis=1))
    return q[:, 1:]


def newton_system(theta, z, X1, Y, V, pen_D1, stride: int = 1):
    """Gradient [D1, K'] and Hessian [D1 K', D1 K'] of the objective in the free parameters
    (z = X1 theta V^T, the logits at theta); with `stride` > 1 the Hessian is sketched from
    every stride-th row, scaled to all N."""
    D1, Kf = theta.shape
    _, P, Q, R = softmax_parts(z, Y)
    grad = X1.T @ (R @ V) + pen_D1[:, None] * theta
    if stride > 1:
        X1, (_, P, Q, _) = X1[::stride], softmax_parts(z[::stride], Y[::stride])
    # per-row curvature V^T (diag(p) - p p^T) V, its diagonal taken as p q (no 1 - p cancellation)
    eye = jnp.eye(P.shape[-1], dtype=P.dtype)
    M_NKK = jnp.where(eye > 0, (P * Q)[:, :, None], -P[:, :, None] * P[:, None, :])
    A_NKK = jnp.einsum("ka,nkl,lb->nab", V, M_NKK, V)
    H = jnp.einsum("nab,ni,nj->iajb", A_NKK, X1, X1).reshape(D1 * Kf, D1 * Kf)
    if stride > 1:
        H = H * (len(z) / X1.shape[0])
    return grad, H + jnp.diag(jnp.repeat(pen_D1, Kf))


def damped_factor(H, damping):
    """Cholesky factor of the Jacobi-scaled, relatively damped Hessian, and the scaling.

    [choice] Relative damping on the unit-diagonal scaled matrix keeps the float32 solve
    well-posed on every CPU (a singular direction, C = inf on separable data) while changing the
    Newton step by ~damping where H is well conditioned.
    """
    d = jnp.sqrt(jnp.maximum(jnp.diag(H), jnp.finfo(H.dtype).tiny))
    Hs = H / d[:, None] / d[None, :]
    Hs = 0.5 * (Hs + Hs.T) + damping * jnp.eye(H.shape[0], dtype=H.dtype)
    return jnp.linalg.cholesky(Hs), d


def damped_solve(factor, g):
    """Newton step from `damped_factor`; if the factor is not finite, the Jacobi-scaled
    gradient, which is always a descent direction."""
    L, d = factor
    s = jax.scipy.linalg.cho_solve((L, True), g / d) / d
    return jnp.where(jnp.all(jnp.isfinite(s)), s, g / (d * d))


def newton(problem, pen_D1, shape, n_iter: int, tol: float, damping: float, reuse: int, first_apart: bool,
            sketch: int):
    """(theta [D+1, K'], converged, Hessians used): `fit_logistic`'s damped, safeguarded Newton
    loop on a (logits_of, loss_of, system, gradient) problem from theta = 0."""
    logits_of, loss_of, system, gradient = problem
    penalty = lambda th: 0.5 * jnp.sum(pen_D1[:, None] * th ** 2)
    sizes = jnp.asarray([2.0 ** -i for i in range(7)] + [0.0], jnp.float32)

    def line_search(theta, z, step):
        dz = logits_of(step)  # the logits are linear in the step: one matmul serves every size
        values = jax.vmap(lambda s: loss_of(z - s * dz) + penalty(theta - s * step))(sizes)
        values = jnp.where(jnp.isfinite(values), values, jnp.inf)
        s = sizes[jnp.argmin(values)]
        return theta - s * step, z - s * dz, jnp.min(values)

    def iterate(carry, grad, H):
        theta, z, f, _, i = carry
        factor = damped_factor(H, damping)
        for _ in range(1 + reuse):  # Shamanskii: each factorised Hessian serves 1 + reuse steps
            step = damped_solve(factor, grad.reshape(-1)).reshape(shape)
            done = 0.5 * jnp.abs(jnp.vdot(grad, step)) <= tol * jnp.maximum(f, 1.0)
            theta, z, f = line_search(theta, z, step)
            if reuse:
                grad = gradient(theta, z)
        return theta, z, f, done, i + 1

    theta0 = jnp.zeros(shape, jnp.float32)
    z0 = logits_of(theta0)
    carry = (theta0, z0, loss_of(z0), jnp.asarray(False), jnp.asarray(0))
    if n_iter >= 1 and first_apart:
        # the first iteration outside the loop: at theta = 0 every row has the same curvature, so
        # its Hessian depends on the features alone and vmap computes it (and its factor) once for
        # fits that share them (the classes of one-vs-rest, a grid of labels); optionally sketched
        grad, H = system(theta0, z0, sketch)
        carry = iterate(carry, grad, H)
        if sketch > 1:  # a sketched Hessian counts as none; its decrement is no stopping test
            carry = (*carry[:3], jnp.asarray(False), jnp.asarray(0))
    body = lambda c: iterate(c, *system(c[0], c[1]))
    theta, _, _, done, iters = jax.lax.while_loop(lambda c: (c[4] < n_iter) & ~c[3], body, carry)
    return theta, done, iters


def binary_problem(Xc, y, pen_D1):
    """(logits_of, loss_of, system) of binary logistic regression in its one free column.

    Written with the intercept apart (no [N, D+1] copy of the data) and sigmoids of +-z, so every
    quantity keeps its digits when probabilities approach 0 or 1: the loss of a row is
    softplus(-s z), its residual -s sigmoid(-s z), its curvature sigmoid(z) sigmoid(-z), where
    s = +1 for class 0 (whose logit is z) and -1 for class 1.
    """
    sign = jnp.where(y == 0, 1.0, -1.0).astype(jnp.float32)
    logits_of = lambda th: Xc @ th[:-1, 0] + th[-1, 0]
    loss_of = lambda z: jnp.sum(jax.nn.softplus(-sign * z))

    def gradient(theta, z):
        r = -sign * jax.nn.sigmoid(-sign * z)
        return jnp.concatenate([Xc.T @ r, jnp.sum(r)[None]])[:, None] + pen_D1[:, None] * theta

    def system(theta, z, stride: int = 1):
        X, zs = (Xc, z) if stride == 1 else (Xc[::stride], z[::stride])
        c = jax.nn.sigmoid(zs) * jax.nn.sigmoid(-zs)
        u = X.T @ c
        H = jnp.block([[(X * c[:, None]).T @ X, u[:, None]], [u[None, :], jnp.sum(c)[None, None]]])
        if stride > 1:
            H = H * (len(z) / X.shape[0])
        return gradient(theta, z), H + jnp.diag(pen_D1)

    return logits_of, loss_of, system, gradient


def multinomial_problem(Xc, y, n_classes, V, pen_D1):
    """(logits_of, loss_of, system) of multinomial logistic regression in K-1 free columns."""
    X1 = with_intercept(Xc)
    Y = jax.nn.one_hot(y, n_classes, dtype=jnp.float32)
    logits_of = lambda th: X1 @ (th @ V.T)
    loss_of = lambda z: softmax_parts(z, Y)[0]
    system = lambda theta, z, stride=1: newton_system(theta, z, X1, Y, V, pen_D1, stride)
    gradient = lambda theta, z: X1.T @ (softmax_parts(z, Y)[3] @ V) + pen_D1[:, None] * theta
    return logits_of, loss_of, system, gradient
