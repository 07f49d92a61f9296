"""The measures of one checkpoint gathered into one function for `map_stack`, and what is read
off a whole series afterwards: CKA maps with jackknife intervals, intervals of a max over
heads, the interval where a curve changes fastest, and turns of a curve that its intervals
support.

`forward_measures_fn` is written for ONE checkpoint: the logit lens, the model's per-token loss,
the Gram matrices CKA needs and the head scores, from forward passes of held-out windows and
repeated random tokens. `map_stack(fn, stack, data)` lifts it over the
checkpoint axis (vmapped, in memory-bounded chunks, streamed from disk when the stack is).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from dynamics import stats
from models.errors import require
from probes.development import cka as cka_lib
from probes.development import heads, lens


def forward_measures_fn(model_config, batch_size: int):
    """`fn(params, data) -> dict` for one checkpoint, any family. `data` holds "windows" [N, S+1]
    held-out tokens (N a multiple of batch_size), "positions" [N, M_w] the positions of each
    window whose residuals CKA compares, "repeated" and "control" [B, 2P] (`heads`). Returns
    "lens_nll" [L+1, N, S], "gram" [L+1, N*M_w, N*M_w] (uncentred linear Gram of the chosen
    residuals, window-major) and "prev_token" / "induction" / "induction_control" [B, L, H].

    [choice] The weight statistics (`weights.weight_stats`) are a pass of their own: in one
    program with these forward passes, XLA's CPU runtime (jax 0.10.2) never finished the
    SVD's LAPACK call (every thread idle), while each program alone runs."""

    def one_batch(params, windows_BS1, positions_BM):
        nll, resid = lens.lens_nll(params, model_config, windows_BS1)                 # resid [L+1, B, S, D]
        picked = jax.vmap(lambda r_BSD: jnp.take_along_axis(r_BSD, positions_BM[..., None], axis=1))(resid)
        return nll, picked                                                             # [L+1, B, S], [L+1, B, M, D]

    def fn(params, data):
        windows, positions = data["windows"], data["positions"]
        n = windows.shape[0]
        nb = n // batch_size
        nll, picked = jax.lax.map(lambda xs: one_batch(params, *xs),
                                  (windows.reshape(nb, batch_size, -1), positions.reshape(nb, batch_size, -1)))
        L1 = nll.shape[1]
        nll = jnp.moveaxis(nll, 1, 0).reshape(L1, n, -1)
        reps = jnp.moveaxis(picked, 1, 0).reshape(L1, n * positions.shape[1], -1).astype(jnp.float32)
        return {"lens_nll": nll, "gram": jnp.einsum("lmd,lnd->lmn", reps, reps),
                **heads.head_scores(params, model_config, data["repeated"], data["control"])}

    return fn


# ----------------------------------------------------------------------------- CKA over a series
def cka_series(gram_CLMM, groups_M, debiased: bool, level: float = 0.95) -> dict:
    """CKA read off a series' Gram matrices [C, L, M, M] (`forward_measures_fn`):
    "maps" [L, C, C] every pair of checkpoints per layer, "adjacent" [C-1, L] consecutive
    checkpoints, "adjacent_ci" [C-1, L, 2] a jackknife interval leaving out one group of
    examples at a time (`groups_M`, e.g. the window each position came from; normal
    approximation at `level`, clipped to [-1, 1]), "last_layers" [L, L] between layers at the
    last checkpoint. [choice] The jackknife, not the bootstrap: a resample with repeated
    examples changes the U-statistic the debiased form is."""
    gram = jnp.asarray(gram_CLMM, jnp.float32)
    C, L, M, _ = gram.shape
    feats = jax.vmap(jax.vmap(lambda g: cka_lib.features_from_gram(g, debiased)))(gram)                 # [C, L, M, M]
    flat = feats.reshape(C, L, M * M)
    maps = jnp.einsum("cla,dla->lcd", flat, flat)
    adjacent = jnp.einsum("cla,cla->cl", flat[:-1], flat[1:])
    groups = np.asarray(groups_M)
    ids = np.unique(groups)
    require(len(ids) >= 2, "CKA intervals need examples from at least 2 groups (windows)")

    def leave_out(keep_M):
        f = jax.vmap(jax.vmap(lambda g: cka_lib.features_from_gram(g, debiased, keep_M)))(gram).reshape(C, L, M * M)
        return jnp.einsum("cla,cla->cl", f[:-1], f[1:])

    keeps = jnp.asarray(groups[None, :] != ids[:, None], jnp.float32)                 # [G, M]
    jack = np.asarray(jax.lax.map(jax.jit(leave_out), keeps), np.float64)             # [G, C-1, L]
    G = len(ids)
    se = np.sqrt((G - 1) / G * ((jack - jack.mean(0)) ** 2).sum(0))
    z = float(scipy.stats.norm.ppf(0.5 + level / 2))
    adj = np.asarray(adjacent, np.float64)
    ci = np.clip(np.stack([adj - z * se, adj + z * se], -1), -1.0, 1.0)
    last = flat[-1]
    return {"maps": np.asarray(maps), "adjacent": adj, "adjacent_ci": ci, "last_layers": np.asarray(last @ last.T)}


# ----------------------------------------------------------------------------- curves over a series
def max_head_ci(scores_BLH, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, list, tuple]:
    """The largest mean score over heads, its percentile bootstrap interval resampling the
    sequences (the max is taken inside every resample), and the (layer, head) that attains it."""
    s = np.asarray(scores_BLH, np.float64)
    B, L, H = s.shape
    flat = s.reshape(B, L * H)
    mean = flat.mean(0)
    draws = (stats.resample_counts(B, n_boot, seed) @ flat / B).max(1)
    best = int(mean.argmax())
    return float(mean[best]), stats.quantile_ci(draws, level), (best // H, best % H)


def change_axis(steps, axis: str) -> np.ndarray:
    """Where checkpoints sit on the axis a rate of change is measured along: the step, or
    log(1 + step) ([choice] suites space early checkpoints logarithmically)."""
    s = np.asarray(steps, np.float64)
    require(axis in ("step", "log_step"), f"change_axis={axis!r} must be step or log_step")
    return np.log1p(s) if axis == "log_step" else s


def spaced_pairs(steps, axis: str = "log_step", min_gap: float = 0.05) -> list[tuple[int, int]]:
    """Consecutive pairs (i, j) of checkpoints thinned so that each pair lies at least `min_gap`
    of the series' span apart on `axis` (the last checkpoint always kept). [choice] Without
    thinning, two checkpoints a few steps apart (Pythia's 500 and 512) turn noise into the
    fastest rate of the series."""
    x = change_axis(steps, axis)
    if len(x) < 2:
        return []
    gap = min_gap * (x[-1] - x[0])
    kept = [0]
    for c in range(1, len(x)):
        if x[c] - x[kept[-1]] >= gap:
            kept.append(c)
    last = len(x) - 1
    if kept[-1] != last:          # too close to the last one kept: the final checkpoint replaces it
        if len(kept) > 1:
            kept[-1] = last
        else:
            kept.append(last)
    return list(zip(kept[:-1], kept[1:]))


def fastest_change(steps, change: Callable[[int, int], float], axis: str = "log_step",
                   min_gap: float = 0.05) -> list[int] | None:
    """[step_a, step_b]: the pair of `spaced_pairs` across which a curve changes fastest,
    |change(i, j)| / distance on `axis` (`change(i, j)` compares checkpoints i and j: a
    difference of values, or 1 - a similarity). None with fewer than two checkpoints."""
    pairs = spaced_pairs(steps, axis, min_gap)
    if not pairs:
        return None
    x = change_axis(steps, axis)
    rates = [abs(float(change(i, j))) / max(x[j] - x[i], 1e-12) for i, j in pairs]
    i, j = pairs[int(np.argmax(rates))]
    return [int(steps[i]), int(steps[j])]


def value_change(values) -> Callable[[int, int], float]:
    """`change(i, j)` of a curve: values[j] - values[i]."""
    v = np.asarray(values, np.float64)
    return lambda i, j: v[j] - v[i]


def supported_turns(steps, mean_C, ci_C2) -> dict:
    """Turns of a curve (interior local maxima and minima of its mean) and those its intervals
    support. [choice] A turn at checkpoint c is supported when, within the monotone stretch on
    each side of c, some checkpoint's interval lies wholly on the far side of c's interval (below
    it for a maximum, above it for a minimum): the curve rises and then falls (or the reverse)
    by more than its uncertainty. Returns {"candidates": [steps], "supported": [steps]}."""
    m, ci = np.asarray(mean_C, np.float64), np.asarray(ci_C2, np.float64)
    d = np.sign(np.diff(m))
    candidates, supported = [], []
    for c in range(1, len(m) - 1):
        if d[c - 1] == 0 or d[c] == 0 or d[c - 1] == d[c]:
            continue
        is_max = d[c - 1] > 0
        a = c - 1
        while a > 0 and d[a - 1] == d[c - 1]:
            a -= 1
        b = c + 1
        while b < len(m) - 1 and d[b] == d[c]:
            b += 1
        beyond = (lambda j: ci[j, 1] < ci[c, 0]) if is_max else (lambda j: ci[j, 0] > ci[c, 1])
        candidates.append(int(steps[c]))
        if any(beyond(j) for j in range(a, c)) and any(beyond(j) for j in range(c + 1, b + 1)):
            supported.append(int(steps[c]))
    return {"candidates": candidates, "supported": supported}
