"""The linear-origins theory checks as verdicts against baselines measured in the same run.

Every check reduces to one value per concept (the unit of its interval):
  linearity        within-concept cos of g(y1) - g(y0), mean over the concept's pairs of pairs
  orthogonality    mean |cos| between the concept's direction and the other concepts' directions
  concept-specific the concept's within cos minus the random-pair |cos| of the same matrix
  embedding side   within-concept cos of f(x1) - f(x0)
  log-odds match   mean |f(x)^T (g(y1) - g(y0)) - exact log-odds| over the concept's finite cells
and is measured three times at the run's own width d:
  trained  the run's final checkpoint;
  step-0   the same run's untrained step-0 checkpoint, concept by concept (the MLP's f is already
           ~linear in the context code at init, so the embedding check is ~0.8 before training);
  random   [choice] the trained f and g with every row's direction replaced by a uniform random
           one in R^d (norms kept), averaged over `n_random_draws` draws: what geometry alone
           gives at this d (two random directions: mean |cos| ~ sqrt(2 / (pi d)), 0.20 at d = 16;
           a measure built from them, e.g. concept directions from pairs that share rows, has its
           own value, hence measured rather than assumed).
A check PASSES only when (1) the trained mean over concepts meets the theory's threshold and
(2) the 95% percentile-bootstrap interval over concepts (`dynamics.stats.mean_ci`, 2000 draws,
paired by concept) of the mean trained-minus-baseline difference lies beyond the margin, on the
right side, for BOTH baselines. Concepts without data (every pair has an item of probability
zero) are left out; a check with no concept left cannot be judged and raises OntogenyError.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from dynamics.checkpoints import map_stack
from models.errors import OntogenyError
from dynamics.stats import mean_ci
from models import latent
from probes import geometry


@dataclasses.dataclass(frozen=True)
class Check:
    key: str          # column suffix in sweep.csv (pass_<key>)
    name: str
    unit: str         # per-concept measure (see `per_concept`)
    higher: bool      # True: the theory predicts a large value
    threshold: str    # Config field of the absolute threshold
    margin: str       # Config field of the margin over the baselines


CHECKS = (
    Check("linearity", "linearity: within-concept cos(g(y1)-g(y0))", "within", True, "within_threshold", "margin_cos"),
    Check("orthogonality", "orthogonality: cross-concept |cos|", "cross", False, "cross_threshold", "margin_cos"),
    Check("concept_specific", "concept-specific: within minus random-pair |cos|", "specific", True, "random_margin",
          "margin_cos"),
    Check("embedding", "embedding side: within-concept cos(f(x1)-f(x0))", "emb_within", True, "embedding_threshold",
          "margin_cos"),
    Check("logodds", "log-odds matching: mean |error| (nats)", "logodds", False, "logodds_threshold",
          "margin_logodds"),
)
PREDICTION_KEYS = tuple(c.key for c in CHECKS)
# the scalar measures logged per checkpoint and per sweep run
SCALARS = ("within_cos_mean", "within_cos_min", "cross_abs_cos_mean", "cross_abs_cos_max", "random_abs_cos_mean",
           "emb_within_cos_mean", "emb_within_cos_min", "emb_cross_abs_cos_mean", "emb_random_abs_cos_mean",
           "alignment_mean", "logodds_error", "g_norm_mean")


# ----------------------------------------------------------------------------- measures
def problem_data(problem: latent.LatentProblem, n_random_pairs: int) -> dict:
    """Per-run inputs of the measures: exact log-odds and the masks of items with data."""
    m = problem.n_concepts
    logodds, finite = latent.pair_logodds(problem)
    tok, ctx = latent.pair_masks(problem)
    tok_r, ctx_r = random_pairs(m, n_random_pairs)
    return {"logodds": np.asarray(logodds, np.float32), "finite": finite,
            "masks": {"tok": tok, "ctx": ctx, "tok_random": (problem.joint_Y > 0)[tok_r].all(-1),
                      "ctx_random": (problem.context_weight_X > 0)[ctx_r].all(-1)}}


def random_pairs(m: int, n: int):
    return geometry.random_pairs(2 ** m, n, seed=0), geometry.random_pairs(3 ** m, n, seed=1)


def stack_data(items: list[dict]) -> dict:
    return jax.tree.map(lambda *xs: np.stack(xs), *items)


def _shared(m: int, n_random_pairs: int):
    return (jnp.asarray(latent.context_inputs(m)), latent.token_pairs(m), latent.context_pairs(m),
            *random_pairs(m, n_random_pairs))


def _params_checks(mode):
    def fn(b, inputs, tok, ctx, tok_r, ctx_r):
        return geometry.latent_checks(b["params"], inputs, tok, ctx, tok_r, ctx_r, b["logodds"], b["finite"],
                                      b["masks"], mode=mode)
    return fn


def _matrix_checks(mode):
    def fn(b, inputs, tok, ctx, tok_r, ctx_r):
        return geometry.latent_checks_matrices(b["F"], b["G"], tok, ctx, tok_r, ctx_r, b["logodds"], b["finite"],
                                               b["masks"], mode=mode)
    return fn


_FNS = {(kind, mode): make(mode) for kind, make in (("params", _params_checks), ("matrices", _matrix_checks))
        for mode in ("pairwise", "to_mean")}  # one function object each: compiled once per shape
CHUNK = 32


def _map(kind: str, bundle: dict, m: int, config) -> dict:
    """map_stack of one checks function, the stack padded to whole chunks (repeating its last
    item) so that every call of one m has one shape and compiles once."""
    T = jax.tree.leaves(bundle)[0].shape[0]
    chunk = max(2, CHUNK >> max(0, m - 4))  # an item grows as 3^m (contexts): keep a chunk's bytes flat
    pad = -T % chunk
    if pad:
        bundle = jax.tree.map(lambda x: np.concatenate([np.asarray(x), np.repeat(np.asarray(x)[-1:], pad, 0)]), bundle)
    res = map_stack(_FNS[kind, config.within_mode], bundle, *_shared(m, config.n_random_pairs), chunk_size=chunk)
    return {k: v[:T] for k, v in res.items()}


def measure(params_T, data_T: dict, m: int, config) -> dict:
    """Every measure for a stack of learners (leading axis T: checkpoints or runs) via map_stack;
    `data_T` is `stack_data` of `problem_data` (one per item, or broadcast)."""
    return _map("params", {"params": params_T, **data_T}, m, config)


def random_directions(M_TND, widths_T, n_draws: int, seed: int = 0) -> np.ndarray:
    """[T * n_draws, N, D]: each row of M with its norm kept and a uniform random direction in
    the first `width` coordinates (the rest stay zero, as in the learner)."""
    rng = np.random.default_rng(seed)
    M = np.asarray(M_TND, np.float64)
    T, N, D = M.shape
    z = rng.standard_normal((T, n_draws, N, D)) * (np.arange(D) < np.asarray(widths_T)[:, None, None, None])
    z /= np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-30)
    return (z * np.linalg.norm(M, axis=-1)[:, None, :, None]).reshape(T * n_draws, N, D).astype(np.float32)


def measure_random(F_TXD, G_TYD, widths_T, data_T: dict, m: int, config) -> dict:
    """The measures of `n_random_draws` random-direction copies of each item, averaged over draws."""
    n = config.n_random_draws
    F = random_directions(F_TXD, widths_T, n, seed=1)
    G = random_directions(G_TYD, widths_T, n, seed=2)
    data = jax.tree.map(lambda x: np.repeat(np.asarray(x), n, axis=0), data_T)
    return _mean_over_draws(_map("matrices", {"F": F, "G": G, **data}, m, config), n)


def _mean_over_draws(res: dict, n: int) -> dict:
    """Per-concept measures of run-major draws [R * n] averaged to [R] (masks: the same per draw)."""
    mean = {k: np.asarray(res[k], np.float64).reshape((-1, n) + res[k].shape[1:]).mean(1)
            for k in res if k.endswith("_per_concept") or k == "random_abs_cos_mean"}
    return {**mean, **{k: np.asarray(res[k])[::n] for k in res if k.endswith("_has")}}  # masks: same each draw


def per_concept(res: dict, i: int) -> dict:
    """{unit: (values [K], has [K])} of item i of a measured stack."""
    get = lambda k: np.asarray(res[k][i])
    within = get("within_per_concept").astype(np.float64)
    out = {"within": (within, get("within_has")), "cross": (get("cross_per_concept"), get("cross_has")),
           "specific": (within - float(res["random_abs_cos_mean"][i]), get("within_has")),
           "emb_within": (get("emb_within_per_concept"), get("emb_within_has")),
           "logodds": (get("logodds_per_concept"), get("logodds_has"))}
    return {k: (np.asarray(v, np.float64), np.asarray(h, bool)) for k, (v, h) in out.items()}


# ----------------------------------------------------------------------------- verdicts
def judge(trained: dict, step0: dict, random: dict, config, *, label: str = "") -> list[dict]:
    """One verdict per check from per-concept values of the trained run and its two baselines
    (each {unit: (values, has)}, `per_concept`). Raises OntogenyError on an undefined or
    non-finite value, naming the metric: such a number must never be printed as a verdict."""
    out = []
    for c in CHECKS:
        t, has = trained[c.unit]
        s, r = step0[c.unit][0], random[c.unit][0]
        if not has.any():
            raise OntogenyError(f"linear-origins{label}: {c.key} is undefined: no concept has two pairs of items with "
                                f"nonzero probability; lower strength or edge_density, or raise n_concepts")
        t, s, r = t[has], s[has], r[has]
        for what, v in (("trained", t), ("step-0", s), ("random-direction", r)):
            if not np.all(np.isfinite(v)):
                raise OntogenyError(f"linear-origins{label}: the {what} value of {c.key} is not finite; "
                                    f"lower lr or strength (it would print as a verdict of NaN)")
        threshold, margin = float(getattr(config, c.threshold)), float(getattr(config, c.margin))
        measured = float(t.mean())
        vs_random, vs_step0 = mean_ci(t - r), mean_ci(t - s)
        beats = (lambda ci: ci[0] >= margin) if c.higher else (lambda ci: ci[1] <= -margin)
        meets = measured >= threshold if c.higher else measured <= threshold
        out.append({"key": c.key, "name": c.name, "measured": measured, "ci": mean_ci(t),
                    "relation": ">=" if c.higher else "<=", "threshold": threshold, "margin": margin,
                    "random": float(r.mean()), "step0": float(s.mean()), "vs_random_ci": vs_random,
                    "vs_step0_ci": vs_step0, "meets_threshold": bool(meets), "beats_random": bool(beats(vs_random)),
                    "beats_step0": bool(beats(vs_step0)), "n_concepts": int(has.sum()),
                    "passed": bool(meets and beats(vs_random) and beats(vs_step0))})
    return out


def format_verdict(v: dict) -> str:
    """'PASS  orthogonality ... 0.048 [0.03, 0.06] <= 0.2; random 0.20, step-0 0.19 (margin 0.05: ...)'."""
    sign = "+" if v["relation"] == ">=" else "-"
    why = [w for w, ok in (("threshold", v["meets_threshold"]), ("random", v["beats_random"]),
                           ("step-0", v["beats_step0"])) if not ok]
    return (f"{'PASS' if v['passed'] else 'FAIL'}  {v['name']:<50} {v['measured']:.3f} "
            f"[{v['ci'][0]:.3f}, {v['ci'][1]:.3f}] {v['relation']} {v['threshold']:g}; "
            f"random {v['random']:.3f}, step-0 {v['step0']:.3f}; diff vs random "
            f"[{v['vs_random_ci'][0]:+.3f}, {v['vs_random_ci'][1]:+.3f}], vs step-0 "
            f"[{v['vs_step0_ci'][0]:+.3f}, {v['vs_step0_ci'][1]:+.3f}] (need {sign}{v['margin']:g})"
            + (f"; fails on {', '.join(why)}" if why else ""))


def untrained_draws(learner: latent.LearnerConfig, m: int, seeds, widths, init_scales, n_draws: int):
    """[R * n_draws] untrained learners, run-major: draw 0 of run r is its own step-0 checkpoint
    (`latent.init_learner` with its seed), draws 1.. use seeds seed + 7919 j."""
    inits = [latent.init_learner(dataclasses.replace(learner, init_scale=c), m, s + 7919 * j, w)
             for s, w, c in zip(seeds, widths, init_scales) for j in range(n_draws)]
    return jax.tree.map(lambda *xs: np.stack(xs), *inits)


def measure_step0(learner, seeds, widths, init_scales, data_R: dict, m: int, config) -> dict:
    """Per-concept measures of each run's own untrained learner (its step-0 checkpoint), paired
    with the trained run concept by concept. [choice] Not an average over other inits: a lucky
    init (cross |cos| 0.07 where inits average 0.18) would then pass as 'trained'."""
    n = 1
    # runs that share seed, width, init scale and generator share their untrained baseline
    leaves = jax.tree.leaves(data_R)
    keys = [(s, w, c, hash(b"".join(np.ascontiguousarray(x[i]).tobytes() for x in leaves)))
            for i, (s, w, c) in enumerate(zip(seeds, widths, init_scales))]
    first = {k: i for i, k in reversed(list(enumerate(keys)))}
    uniq = sorted(first.values())
    data = jax.tree.map(lambda x: np.repeat(np.asarray(x)[uniq], n, axis=0), data_R)
    draws = untrained_draws(learner, m, [seeds[i] for i in uniq], [widths[i] for i in uniq],
                            [init_scales[i] for i in uniq], n)
    res = _mean_over_draws(measure(draws, data, m, config), n)
    back = np.asarray([uniq.index(first[k]) for k in keys])
    return {k: v[back] for k, v in res.items()}


def evaluate(params_final, runs: dict, data_R: dict, m: int, config, *, labels=None, lenient: bool = False):
    """(final measures, verdict lists [R]) for R runs of one m; `runs` holds the runs' learner
    config and lists seeds, widths, init_scales (to draw their untrained baselines). `lenient`
    (the sweep): a run whose checks cannot be judged (diverged, no data) gets None, not an error."""
    final = measure(params_final, data_R, m, config)
    step0 = measure_step0(runs["learner"], runs["seeds"], runs["widths"], runs["init_scales"], data_R, m, config)
    rand = measure_random(final["embedding"], np.asarray(params_final["g"]), runs["widths"], data_R, m, config)
    labels = labels or [""] * len(runs["seeds"])
    verdicts = []
    for i in range(len(labels)):
        try:
            verdicts.append(judge(per_concept(final, i), per_concept(step0, i), per_concept(rand, i), config,
                                  label=labels[i]))
        except OntogenyError:
            if not lenient:
                raise
            verdicts.append(None)
    return final, verdicts
