"""NeuroMFA: multifractal spectrum of a neuron-interaction network, and the degree of emergence.

Follows the authors' code (`wnfd_llm`, `calculate_multifractal_spectrum`), in static shapes so
that it jits and vmaps over samples and checkpoints. For a distance array d [N, O] (row i = node
i's out-edge distances, +inf = no edge):

  kept_ik  = lower < d_ik <= threshold                (paper: 1 < d <= 150)
  node i used iff #kept_i > min_degree                 (paper: more than 10 kept edges)
  rounded distances r = round(d, digits); radius set = distinct rounded kept distances of used
  nodes; D = the largest; N_i(r) = 1 + #{k kept : round(d_ik) <= r}  (so N_i(D) = 1 + #kept_i)
  Z_q(r)   = sum_{i used} (N_i(r) / N_i(D))^q
  tau(q)   = least-squares slope of ln Z_q(r) against ln(r / D) over the radius set
  alpha_j  = (tau_{j+1} - tau_j) / (q_{j+1} - q_j)   (forward differences, Q-1 values)
  f_j      = q_j alpha_j - tau_j                        (the authors' pairing)
  alpha0   = alpha at argmax f (first within 1e-4 of the max);  width = max alpha - min alpha
  E(t)     = (w(t) / w(0)) ln(alpha0(0) / alpha0(t))    on sample-averaged alpha0 and width

Static shapes: rounded distances become integer bins on the fixed grid 0, 10^-digits, ...,
threshold; "which radii occur" is a mask, and the fit is a masked least-squares fit. A graph
with no used node or fewer than two distinct radii (e.g. every edge one weight, direct edges)
has no slope to fit: tau, alpha0 and width are NaN there.

Scale: distances are 1/|w| against a fixed threshold, so alpha0 (and, less, the width) move
when every weight is simply scaled up. `gaussian_like` builds the control that separates this
from structure: the same per-matrix std, no structure.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from dynamics.checkpoints import map_stack
from probes.neuromfa import network as neunet
from models.errors import require


@dataclasses.dataclass(frozen=True)
class MFAConfig:
    threshold: float = 150.0     # keep edges with d <= threshold
    lower: float = 1.0           # ... and d > lower (edge distance window)
    min_degree: int = 10         # use nodes with more than this many kept edges
    digits: int = 0              # distances rounded to this many decimals
    q_min: float = -3.0          # lowest moment order q of tau(q)
    q_max: float = 3.0           # highest moment order q
    q_step: float = 0.1          # spacing of the q grid
    variant: str = "direct"      # "direct" edges (authors' code) or "shortest_path" (paper's text)

    def __post_init__(self):
        require(self.threshold > self.lower, f"mfa.threshold={self.threshold} must exceed mfa.lower={self.lower}")
        require(self.lower >= 0.5 * 10.0 ** -self.digits,
                f"mfa.lower={self.lower} must be >= {0.5 * 10.0 ** -self.digits} so no distance rounds to radius 0")
        require(0 <= self.digits <= 2, f"mfa.digits={self.digits} must be in 0..2 (the radius grid has "
                                       f"threshold x 10^digits bins)")
        require(self.min_degree >= 0, f"mfa.min_degree={self.min_degree} must be >= 0")
        require(self.q_step > 0 and self.q_max > self.q_min,
                f"q grid [{self.q_min}, {self.q_max}] step {self.q_step} is empty; use q_min < q_max, q_step > 0")
        require(self.variant in ("direct", "shortest_path"),
                f"mfa.variant={self.variant!r} is unknown; choose direct or shortest_path")

    @property
    def q(self) -> np.ndarray:
        n = int(round((self.q_max - self.q_min) / self.q_step)) + 1
        return np.round(self.q_min + self.q_step * np.arange(n), 10).astype(np.float32)

    @property
    def n_bins(self) -> int:
        return int(round(self.threshold * 10 ** self.digits)) + 1

    @property
    def radii(self) -> np.ndarray:
        return (np.arange(self.n_bins) / 10 ** self.digits).astype(np.float32)


def box_counts(dist_NO: jax.Array, cfg: MFAConfig):
    """Box growing. Returns (N_i(r) [N, R] on the radius grid, used [N], present [R], kept [N, O])."""
    d = dist_NO.astype(jnp.float32)
    kept = (d > cfg.lower) & (d <= cfg.threshold)
    used = kept.sum(1) > cfg.min_degree
    bins = jnp.clip(jnp.round(jnp.where(kept, d, 0.0) * 10 ** cfg.digits), 0, cfg.n_bins - 1).astype(jnp.int32)
    hist = jax.vmap(lambda b, m: jnp.zeros(cfg.n_bins, jnp.float32).at[b].add(m))(bins, kept.astype(jnp.float32))
    present = ((hist > 0) & used[:, None]).any(0)
    return 1.0 + jnp.cumsum(hist, axis=1), used, present, kept


def mass_exponents(counts_NR, used_N, present_R, cfg: MFAConfig):
    """tau(q) [Q]: masked least-squares slope of ln Z_q(r) on ln(r / D) over the radii present."""
    q = jnp.asarray(cfg.q)
    log_ratio = jnp.log(counts_NR) - jnp.log(counts_NR[:, -1:])          # ln(N_i(r) / N_i(D)) <= 0
    terms = jnp.where(used_N[None, :, None], q[:, None, None] * log_ratio[None], -jnp.inf)
    lnZ = jax.nn.logsumexp(terms, axis=1)                                 # [Q, R]
    radii = jnp.asarray(cfg.radii)
    k = jnp.arange(cfg.n_bins)
    diameter = radii[jnp.max(jnp.where(present_R, k, 0))]
    w = present_R.astype(jnp.float32)
    n = w.sum()
    x = jnp.where(present_R, jnp.log(jnp.where(present_R, radii, 1.0) / diameter), 0.0)
    y = jnp.where(present_R[None], lnZ, 0.0)
    xc = (x - (w * x).sum() / jnp.maximum(n, 1.0)) * w
    yc = (y - (w * y).sum(1, keepdims=True) / jnp.maximum(n, 1.0)) * w
    sxx = (xc * xc).sum()
    slope = (yc * xc).sum(1) / jnp.where(sxx > 0, sxx, 1.0)
    ok = (n >= 2) & (sxx > 0) & used_N.any()
    return jnp.where(ok, slope, jnp.nan)


def spectrum(tau_Q: jax.Array, q_Q, tie_tol: float = 1e-4) -> dict:
    """alpha [Q-1], f(alpha) [Q-1], alpha0 and width from tau(q) (authors' finite differences)."""
    q_Q = jnp.asarray(q_Q, jnp.float32)
    alpha = jnp.diff(tau_Q) / jnp.diff(q_Q)
    f = q_Q[:-1] * alpha - tau_Q[:-1]
    # Ties: analytically f = 0 at both q = -step and q = 0 (tau(0) = 0), so a plain argmax would
    # be decided by rounding error; take the first index within `tie_tol` of the maximum.
    f_ok = jnp.where(jnp.isnan(f), -jnp.inf, f)
    alpha0 = alpha[jnp.argmax(f_ok >= f_ok.max() - tie_tol)]
    bad = jnp.isnan(alpha).any()
    return {"alpha": alpha, "f": f, "alpha0": jnp.where(bad, jnp.nan, alpha0),
            "width": jnp.where(bad, jnp.nan, alpha.max() - alpha.min())}


def analyze(dist_NO: jax.Array, cfg: MFAConfig = MFAConfig()) -> dict:
    """The whole spectrum of one network. Keys: tau [Q], alpha [Q-1], f [Q-1], alpha0, width,
    n_used (nodes used), n_radii (distinct radii), strength (mean over used nodes of the sum of
    1/d = |w| over kept edges: the weighted out-degree of the thresholded network)."""
    counts, used, present, kept = box_counts(dist_NO, cfg)
    tau = mass_exponents(counts, used, present, cfg)
    inv = jnp.where(kept, 1.0 / jnp.where(kept, dist_NO, 1.0), 0.0).sum(1)
    n_used = used.sum()
    strength = jnp.where(n_used > 0, (inv * used).sum() / jnp.maximum(n_used, 1), jnp.nan)
    return {"tau": tau, **spectrum(tau, cfg.q), "n_used": n_used, "n_radii": present.sum(),
            "strength": strength}


analyze_jit = jax.jit(analyze, static_argnames="cfg")


def emergence(alpha0_C, width_C) -> np.ndarray:
    """Degree of emergence E(t) = (w(t) / w(0)) ln(alpha0(0) / alpha0(t)); E(0) = 0."""
    a, w = np.asarray(alpha0_C, np.float64), np.asarray(width_C, np.float64)
    return (w / w[0]) * np.log(a[0] / a)


# ----------------------------------------------------------------------------- checkpoints
def network_weights(params: dict) -> dict:
    """The four matrices the network uses (what a checkpoint series needs to carry)."""
    b = params["blocks"]
    return {"blocks": {"attn": {"w_qkv": b["attn"]["w_qkv"], "w_out": b["attn"]["w_out"]},
                       "mlp": {"w_in": b["mlp"]["w_in"], "w_out": b["mlp"]["w_out"]}}}


def checkpoint_network(params: dict, idx: dict, variant: str = "direct") -> dict:
    """One checkpoint's networks for every sample (idx leaves have a leading axis M):
    "dist" [M, N, O] distances and "mean_abs_w" [M] (mean |w| over the sampled weight edges,
    a baseline for E)."""
    def one(ix):
        blocks = neunet.edge_blocks(params, ix)
        total = sum(jnp.abs(blocks[k]).sum() for k in neunet.WEIGHT_KINDS)
        return {"dist": neunet.network_distances(params, ix, variant),
                "mean_abs_w": total / sum(blocks[k].size for k in neunet.WEIGHT_KINDS)}

    return jax.vmap(one)(idx)


def spectra_batch(dist_MNO: jax.Array, cfg: MFAConfig = MFAConfig()) -> dict:
    """`analyze` vmapped over a leading axis."""
    return jax.vmap(lambda d: analyze(d, cfg))(dist_MNO)


def checkpoint_spectra(params: dict, idx: dict, cfg: MFAConfig = MFAConfig()) -> dict:
    """Spectra of one checkpoint for every sample: leaves [M, ...] (see `analyze`, plus mean_abs_w)."""
    net = checkpoint_network(params, idx, cfg.variant)
    return {**spectra_batch(net["dist"], cfg), "mean_abs_w": net["mean_abs_w"]}


# One function object per setting, so map_stack reuses compilations across calls. The network
# and the analysis are two vmapped passes: the analysis sees [M, N, O] arrays whose shape does
# not depend on the model width, so models of several widths share one compiled analysis.
@functools.lru_cache(maxsize=None)
def _network_fn(variant: str):
    return lambda params, idx: checkpoint_network(params, idx, variant)


@functools.lru_cache(maxsize=None)
def spectra_fn(cfg: MFAConfig):
    """fn(dist) -> `spectra_batch(dist, cfg)`, one cached object per config, so `map_stack`
    reuses its compilation across calls (e.g. the real networks and the control's)."""
    return lambda dist: spectra_batch(dist, cfg)


def series_spectra(stacked_params: dict, idx: dict, cfg: MFAConfig = MFAConfig(), chunk_size: int | None = None):
    """Spectra for every checkpoint x sample of a stacked series: leaves [C, M, ...] (numpy).

    Vmapped over C (via `map_stack`, in memory-bounded chunks) and over the M samples.
    """
    idx = {k: jnp.asarray(v) for k, v in idx.items()}
    net = map_stack(_network_fn(cfg.variant), network_weights(stacked_params), idx, chunk_size=chunk_size)
    return {**map_stack(spectra_fn(cfg), net["dist"], chunk_size=chunk_size), "mean_abs_w": net["mean_abs_w"]}


def summarize(series: dict) -> dict:
    """Sample-averaged alpha0, width, baselines [C] and E [C] (the authors average, then form E)."""
    mean = lambda x: np.nanmean(np.asarray(x, np.float64), axis=1)
    alpha0, width = mean(series["alpha0"]), mean(series["width"])
    return {"alpha0": alpha0, "width": width, "emergence": emergence(alpha0, width),
            "mean_abs_w": mean(series["mean_abs_w"]), "strength": mean(series["strength"]),
            "n_used": mean(series["n_used"])}


def gaussian_like(params: dict, rng: np.random.Generator) -> dict:
    """Control: each matrix replaced by N(0, std of that matrix), network weights only.

    The std is taken over the last two axes, so any leading axes (layers [L], or a stacked
    series [C, L]) get one std per matrix. Host-side numpy noise: drawing it is data
    generation, not analysis, and numpy avoids compiling a random kernel per shape.
    """
    def noise(w):
        w = np.asarray(w, np.float32)
        std = w.std(axis=(-2, -1), keepdims=True)
        return (std * rng.standard_normal(w.shape, dtype=np.float32)).astype(np.float32)

    return jax.tree.map(noise, network_weights(params))
