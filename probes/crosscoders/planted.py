"""A planted snapshot series: activations built from known features that switch on at known
snapshots, so a crosscoder's emergence steps can be checked against the truth.

Shapes: N tokens, C snapshots, D width, F planted features (P of them), R dense rank.

Each planted feature j has a unit direction u_jc and a strength s_jc >= 0 at every snapshot c;
its onset is the first snapshot with s_jc > 0. Groups (in this order of j):

  init      s = 1 from snapshot 0 on
  fading    s falls linearly from 1 at snapshot 0 to `fade` at the last (Ge et al.'s
            initialisation features)
  turning   s = 1 from snapshot 0; the direction turns by `turn_degrees` in even steps from the
            first snapshot to the last (a direction change the decoder cosines should show)
  middle    s = 0 before snapshot `middle`, then 1
  late      s = 0 before snapshot `late`, then 1
  nested    switch on at `middle` like the middle group, but fire only on tokens where an init
            feature (its parent) fires: the hierarchical case in which a later feature can absorb
            its parent's direction at the snapshots before its own onset

Before its onset a feature is not absent from the tokens it fires on: an untrained network
already maps those tokens somewhere (its random token lookup), so each feature with a later
onset carries, at the snapshots before it, a random direction r_j orthogonal to u_j (as random
directions nearly are in a wide model [choice]) with strength `lookup` (0 = truly absent). A
decoder norm alone cannot tell that from the feature.

On a token, feature j fires with probability `per_token` / P (a nested feature with probability
`nested_given_parent` when its parent fires) with amplitude a = 0.5 + Exponential(1), the same
amplitude at every snapshot (the crosscoder's premise: one latent shared by the snapshots). The
activation is

    x_c = g_c (sum_j a_j s_jc u_jc + dense_c + noise_c) + m_c

with a global scale g_c growing geometrically by `scale_growth` from the first snapshot to the
last (residual norms grow in training), a dense component dense_c = B_c z (z ~ N(0, I_R) per
token, shared by the snapshots) whose basis B_c [D, R] turns by `dense_drift_degrees` per
snapshot and whose power relative to the planted features' falls linearly from `dense_start`
to `dense_end` (a step-0 model is dense noise), isotropic noise of relative power `noise`, and a
mean m_c drifting as a random walk of step `offset_drift` x g_c x the planted features' rms
norm. [choice] every number here is ours: a series with the shape the real ones have, not a fit
to one.

`all_at_zero` is the control: every group switches on at snapshot 0 (same directions, same
tokens), so a method that reports late emergence regardless of the data fails it.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from models.errors import require

GROUPS = ("init", "fading", "turning", "middle", "late", "nested")


@dataclasses.dataclass(frozen=True)
class PlantedConfig:
    n_snapshots: int = 8             # snapshots of the planted series
    d_model: int = 32                # width of the planted activations
    n_init: int = 8                  # features at full strength from snapshot 0
    n_fading: int = 4                # features at snapshot 0 that fade to `fade` x their strength by the last
    n_turning: int = 4               # features from snapshot 0 whose direction turns by `turn_degrees`
    n_middle: int = 8                # features that switch on at snapshot `middle`
    n_late: int = 8                  # features that switch on at snapshot `late`
    n_nested: int = 0                # features that switch on at `middle` and fire only inside an init feature
    middle: int = -1                 # onset of the middle and nested groups (-1 = n_snapshots // 2)
    late: int = -1                   # onset of the late group (-1 = n_snapshots - 2)
    all_at_zero: bool = False        # control: every group switches on at snapshot 0
    per_token: float = 3.0           # expected planted features firing per token
    nested_given_parent: float = 0.5  # probability a nested feature fires when its parent fires
    fade: float = 0.2                # strength of a fading feature at the last snapshot
    turn_degrees: float = 40.0       # total turn of a turning feature's direction, first to last snapshot
    lookup: float = 1.0              # strength of a random direction on a feature's tokens before its onset
    scale_growth: float = 4.0        # global scale at the last snapshot / at the first
    dense_rank: int = 4              # rank of the dense component (0 = none)
    dense_start: float = 1.0         # dense power / planted-feature power at the first snapshot
    dense_end: float = 0.2           # dense power / planted-feature power at the last snapshot
    dense_drift_degrees: float = 20.0  # rotation of the dense subspace between consecutive snapshots
    noise: float = 0.02              # isotropic noise power / planted-feature power
    offset_drift: float = 0.3        # step of the mean's random walk / the planted features' rms norm
    seed: int = 0                    # directions, dense bases and mean (tokens are drawn per batch)
    eval_tokens: int = 8192          # held-out tokens drawn from the series to score the crosscoder on

    def __post_init__(self):
        C = self.n_snapshots
        require(C >= 3, f"planted.n_snapshots={C} must be >= 3 (a middle and a late onset need room)")
        require(self.d_model >= 2 and min(self.n_init, self.n_fading, self.n_turning, self.n_middle, self.n_late,
                                          self.n_nested) >= 0 and self.n_features >= 1,
                "planted.d_model must be >= 2, group sizes >= 0 and at least one planted feature")
        require(self.n_nested == 0 or self.n_init >= 1, "planted.n_nested > 0 needs init features as parents")
        require(1 <= self.onset_middle < C and 1 <= self.onset_late < C,
                f"planted.middle and planted.late must lie in [1, {C - 1}] (or -1 for the defaults)")
        require(self.per_token > 0 and self.per_token <= self.n_features and 0 < self.nested_given_parent <= 1,
                "planted.per_token must lie in (0, n_features] and nested_given_parent in (0, 1]")
        require(0 <= self.fade <= 1 and self.scale_growth > 0 and self.dense_rank >= 0 and self.dense_rank <= self.d_model,
                "planted.fade lies in [0, 1], scale_growth > 0, 0 <= dense_rank <= d_model")
        require(min(self.dense_start, self.dense_end, self.noise, self.offset_drift) >= 0,
                "planted dense powers, noise and offset_drift must be >= 0")
        require(self.eval_tokens >= 64, f"planted.eval_tokens={self.eval_tokens} must be >= 64")
        require(self.lookup >= 0, f"planted.lookup={self.lookup} must be >= 0 (0 = a feature is absent before its onset)")

    @property
    def n_features(self) -> int:
        return self.n_init + self.n_fading + self.n_turning + self.n_middle + self.n_late + self.n_nested

    @property
    def onset_middle(self) -> int:
        return self.n_snapshots // 2 if self.middle < 0 else self.middle

    @property
    def onset_late(self) -> int:
        return self.n_snapshots - 2 if self.late < 0 else self.late

    def unused(self) -> dict[str, str]:
        keys = {}
        if not self.n_nested:
            keys["nested_given_parent"] = "n_nested=0 plants no nested features"
        if not self.n_fading:
            keys["fade"] = "n_fading=0 plants no fading features"
        if not self.n_turning:
            keys["turn_degrees"] = "n_turning=0 plants no turning features"
        if not self.dense_rank:
            for k in ("dense_start", "dense_end", "dense_drift_degrees"):
                keys[k] = "dense_rank=0 has no dense component"
        if self.all_at_zero:
            keys["middle"] = keys["late"] = "all_at_zero=true switches every group on at snapshot 0"
            keys["lookup"] = "all_at_zero=true leaves no snapshot before an onset"
        return keys


def _unit(v, axis=-1):
    return v / np.linalg.norm(v, axis=axis, keepdims=True)


def _rotation_step(rng, D: int, degrees: float) -> np.ndarray:
    """[D, D] orthogonal map turning vectors by about `degrees` (a random plane rotation per pair
    of a random basis)."""
    Q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    t = math.radians(degrees)
    block = np.eye(D)
    for i in range(0, D - 1, 2):
        block[i:i + 2, i:i + 2] = [[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]]
    return Q @ block @ Q.T


def truth(config: PlantedConfig) -> dict:
    """The series' ground truth: directions [P, C, D] (unit; the lookup direction before the
    onset), strength [P, C] (`lookup` before the onset), onset [P], group [P] (names), parent [P]
    (-1 or the init feature a nested one fires inside), scale [C], dense basis [C, D, R] (scaled
    to its power), mean [C, D], and the per-token power of the planted features at full
    strength."""
    C, D = config.n_snapshots, config.d_model
    rng = np.random.default_rng(config.seed)
    sizes = dict(zip(GROUPS, (config.n_init, config.n_fading, config.n_turning, config.n_middle, config.n_late,
                              config.n_nested)))
    group = np.array([g for g in GROUPS for _ in range(sizes[g])])
    P = len(group)
    base = _unit(rng.normal(size=(P, D)))
    other = _unit(rng.normal(size=(P, D)))
    other = _unit(other - np.sum(other * base, -1, keepdims=True) * base)   # orthogonal partner of each direction
    angle = np.where(group == "turning", math.radians(config.turn_degrees), 0.0)[:, None] * np.linspace(0, 1, C)[None]
    directions = np.cos(angle)[..., None] * base[:, None] + np.sin(angle)[..., None] * other[:, None]
    onset = np.zeros(P, int)
    if not config.all_at_zero:
        onset[np.isin(group, ("middle", "nested"))] = config.onset_middle
        onset[group == "late"] = config.onset_late
    present = np.arange(C)[None] >= onset[:, None]
    strength = np.where(present, 1.0, config.lookup)
    lookup_dir = rng.normal(size=(P, D))   # orthogonal to the feature, as random directions nearly are in a wide model
    lookup_dir = _unit(lookup_dir - np.sum(lookup_dir * directions[:, -1], -1, keepdims=True) * directions[:, -1])
    directions = np.where(present[..., None], directions, lookup_dir[:, None])
    fading = group == "fading"
    strength[fading] *= np.linspace(1.0, config.fade, C)[None]
    parent = np.full(P, -1)
    parent[group == "nested"] = rng.integers(0, config.n_init, int(np.sum(group == "nested"))) if config.n_nested else []
    feature_power = config.per_token * 3.25                       # E[(0.5 + Exp(1))^2] = 3.25
    scale = config.scale_growth ** np.linspace(0, 1, C)
    R = config.dense_rank
    basis = np.zeros((C, D, R))
    if R:
        turn = _rotation_step(rng, D, config.dense_drift_degrees)
        b = np.linalg.qr(rng.normal(size=(D, R)))[0]
        power = np.linspace(config.dense_start, config.dense_end, C) * feature_power
        for c in range(C):
            basis[c] = b * math.sqrt(power[c] / R)
            b = turn @ b
    steps = rng.normal(size=(C, D)) / math.sqrt(D) * config.offset_drift * math.sqrt(feature_power)
    mean = np.cumsum(steps, 0) * scale[:, None]
    return {"directions": directions, "strength": strength, "onset": onset, "group": group, "parent": parent,
            "scale": scale, "basis": basis, "mean": mean, "feature_power": feature_power}


def sample(config: PlantedConfig, planted: dict, seed: int, index: int, n: int) -> np.ndarray:
    """Batch `index` of n tokens, x [N, C, D] float32: a pure function of (seed, index)."""
    rng = np.random.default_rng([config.seed, seed, index])
    P = len(planted["group"])
    nested = planted["group"] == "nested"
    p = np.where(nested, config.nested_given_parent, config.per_token / P)
    fire = rng.random((n, P)) < p[None]
    if nested.any():
        fire[:, nested] &= fire[:, planted["parent"][nested]]
    amp = np.where(fire, 0.5 + rng.exponential(1.0, (n, P)), 0.0)
    vectors = planted["strength"][..., None] * planted["directions"]                        # [P, C, D]
    x = np.einsum("np,pcd->ncd", amp, vectors)
    R = planted["basis"].shape[-1]
    if R:
        x += np.einsum("nr,cdr->ncd", rng.normal(size=(n, R)), planted["basis"])
    if config.noise:
        x += rng.normal(size=x.shape) * math.sqrt(config.noise * planted["feature_power"] / config.d_model)
    x = x * planted["scale"][None, :, None] + planted["mean"][None]
    return x.astype(np.float32)


def stream(config: PlantedConfig, planted: dict, seed: int, batch_size: int):
    """next_batch(i) -> x [batch_size, C, D] for `probes.crosscoders.training.train`; batch i is a
    function of i alone (`stateless`)."""
    def next_batch(i: int) -> np.ndarray:
        return sample(config, planted, seed, i, batch_size)
    next_batch.stateless = True
    return next_batch


def planted_vectors(planted: dict, scale_C) -> np.ndarray:
    """[P, C, D] the planted features' vectors in the crosscoder's units (inputs times scale_C)."""
    return (planted["strength"][..., None] * planted["directions"] * planted["scale"][None, :, None]
            * np.asarray(scale_C)[None, :, None])


def recovery(planted: dict, w_dec_FCD, scale_C, alive_F, emerge_idx_F, min_cos: float = 0.8) -> dict:
    """How well a crosscoder recovered the planted features and their emergence.

    Each planted feature j is matched to the alive learned feature f of highest cosine between
    the planted vectors and f's decoder vectors over the snapshots from j's onset on (its
    support: a decoder that is strong before the onset, on the lookup direction or any other,
    still matches, and its emergence is then judged wrong, not hidden). j is recovered when that
    cosine is >= `min_cos`. Returns per planted feature: match [P], cos [P], recovered [P],
    estimated onset [P], error [P] (estimate - truth); and `within_one` (fraction of recovered features whose emergence is
    within one snapshot of the truth, None if none), `late_as_init` (recovered features with
    onset >= 2 reported at snapshot 0), `recovered_fraction` and the same per group."""
    support = (np.arange(planted["strength"].shape[1])[None] >= planted["onset"][:, None]).astype(float)   # [P, C]
    target = planted_vectors(planted, scale_C) * support[..., None]               # the feature itself, not its lookup
    learned = np.asarray(w_dec_FCD, np.float64)
    num = np.einsum("pcd,fcd->pf", target, learned)
    den = np.sqrt(support @ (learned ** 2).sum(-1).T) * np.linalg.norm(target.reshape(len(target), -1), axis=1)[:, None]
    cos = np.where(np.asarray(alive_F)[None], num / np.maximum(den, 1e-12), -np.inf)
    match = cos.argmax(1)
    best = cos[np.arange(len(match)), match]
    recovered = best >= min_cos
    estimate = np.asarray(emerge_idx_F)[match]
    error = estimate - planted["onset"]
    good = np.abs(error) <= 1
    late_as_init = recovered & (planted["onset"] >= 2) & (estimate == 0)
    out = {"match": match, "cos": best, "recovered": recovered, "estimate": estimate, "error": error,
           "within_one": float(good[recovered].mean()) if recovered.any() else None,
           "late_as_init": int(late_as_init.sum()), "recovered_fraction": float(recovered.mean()), "groups": {}}
    for g in GROUPS:
        sel = planted["group"] == g
        if sel.any():
            rec = sel & recovered
            out["groups"][g] = {"n": int(sel.sum()), "recovered": int(rec.sum()),
                                "within_one": float(good[rec].mean()) if rec.any() else None,
                                "mean_abs_error": float(np.abs(error[rec]).mean()) if rec.any() else None,
                                "late_as_init": int(late_as_init[sel].sum())}
    return out
