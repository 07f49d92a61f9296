"""Counting statistics of correct and misspelled words in samples (Hong, arXiv 2305.05061).

Words are maximal runs of `[A-Za-z']+`; a word is correct if it occurs in the training
corpus (compared lower-cased unless `case_sensitive`). Per sample i we count K_i correct
and M_i misspelled words, N_i = K_i + M_i. Dispersion of a count X over samples:
Fano F = s^2 / mean (s^2 with ddof=1) and Mandel Q = F - 1 (0 Poisson, < 0 sub-Poisson).

Binomial baseline. If each of the N_i words of a sample were independently correct with
probability p (pooled p = sum K / sum N), then given the observed totals
    E[mean K] = p mean(N),   E[s^2_K] = p(1-p) mean(N) + p^2 s^2_N   (exact, ddof=1),
so Q_K^base = (1-p) + p F_N - 1 = p Q_N and likewise Q_M^base = (1-p) Q_N (binomial
thinning scales Mandel Q by the keep probability). With a fixed total (the fixed-word-count
variant) Q_N = -1: Q_K^base = -p, Q_M^base = -(1-p). In fixed-length samples N varies only
a little (Q_N close to -1), so the near-constant total alone makes correct counts look
sub-Poissonian once p is large. We report excess = Q - Q^base with bootstrap CIs.

Fixed-word-count variant: a sample is cut after its n-th complete word, so N_i = n exactly
and the only randomness is which words are misspelled: Var K = Var M, hence the two
excesses are tied, excess_M = excess_K p / (1 - p); only over/under-dispersion of the
misspellings relative to independent words is measured there.

For a model, one checkpoint at a time: `make_sample_fn` draws the samples (vmapped over
checkpoints by `map_stack`), `checkpoint_spelling` gives both variants' statistics and Poisson
tests, `claim_verdict` judges the claim between the first and last checkpoint where Mandel Q
is defined, and `fraction_correct_intervals` the change in the fraction of correct words.
Axis letters: M samples, V vocabulary.
"""
from __future__ import annotations

import re

import numpy as np
from scipy import stats

from dynamics import stats as dstats
from models import gpt
from models.sample import generate

WORD_PATTERN = re.compile(r"[A-Za-z']+")


def extract_words(text: str) -> list[str]:
    return WORD_PATTERN.findall(text)


def build_vocabulary(text: str, case_sensitive: bool = False) -> frozenset[str]:
    """Every word of the training corpus (lower-cased unless case_sensitive)."""
    words = extract_words(text)
    return frozenset(words if case_sensitive else (w.lower() for w in words))


def complete_words(text: str, drop_partial_last: bool = True) -> list[str]:
    """Words of a sample; the last one is dropped if the sample ends inside it (cut mid-word)."""
    matches = list(WORD_PATTERN.finditer(text))
    if drop_partial_last and matches and matches[-1].end() == len(text):
        matches = matches[:-1]
    return [m.group() for m in matches]


def first_words(text: str, n_words: int) -> list[str] | None:
    """The first n complete words of a sample (fixed-word-count variant); None if it has fewer."""
    words = complete_words(text, drop_partial_last=True)
    return words[:n_words] if len(words) >= n_words else None


def count_correct(words: list[str], vocab, case_sensitive: bool = False) -> tuple[int, int]:
    """(correct, misspelled) among the words."""
    correct = sum((w if case_sensitive else w.lower()) in vocab for w in words)
    return correct, len(words) - correct


def sample_counts(texts, vocab, *, n_words: int | None = None, case_sensitive: bool = False,
                  drop_partial_last: bool = True):
    """Counts over samples: (correct [M], misspelled [M], n_dropped).

    n_words=None: fixed-length variant, all complete words of each sample. n_words=n:
    fixed-word-count variant, the first n complete words; samples with fewer are dropped
    (their number is returned so a study can report it).
    """
    correct, wrong, dropped = [], [], 0
    for text in texts:
        words = complete_words(text, drop_partial_last) if n_words is None else first_words(text, n_words)
        if words is None:
            dropped += 1
            continue
        k, m = count_correct(words, vocab, case_sensitive)
        correct.append(k)
        wrong.append(m)
    return np.array(correct, np.int64), np.array(wrong, np.int64), dropped


# ---------------------------------------------------------------- dispersion

def dispersion(counts):
    """(mean, variance (ddof=1), Fano, Mandel Q) along the last axis; NaN where mean is 0."""
    x = np.asarray(counts, np.float64)
    mean = x.mean(-1)
    var = x.var(-1, ddof=1) if x.shape[-1] > 1 else np.full(mean.shape, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        fano = np.where(mean > 0, var / mean, np.nan)
    return mean, var, fano, fano - 1


def mandel_q(counts):
    return dispersion(counts)[3]


def binomial_baseline(correct, misspelled):
    """(p, Q_K^base, Q_M^base) along the last axis: p Q_N and (1-p) Q_N (module docstring)."""
    k = np.asarray(correct, np.float64)
    n = k + np.asarray(misspelled, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(n.sum(-1) > 0, k.sum(-1) / n.sum(-1), np.nan)
    q_n = mandel_q(n)
    return p, p * q_n, (1 - p) * q_n


def _measures(correct, misspelled) -> dict:
    """All scalar measures along the last (sample) axis."""
    mk, vk, fk, qk = dispersion(correct)
    mm, vm, fm, qm = dispersion(misspelled)
    p, bk, bm = binomial_baseline(correct, misspelled)
    return {"p": p, "mean_correct": mk, "var_correct": vk, "fano_correct": fk, "q_correct": qk,
            "q_correct_baseline": bk, "q_correct_excess": qk - bk,
            "mean_misspelled": mm, "var_misspelled": vm, "fano_misspelled": fm, "q_misspelled": qm,
            "q_misspelled_baseline": bm, "q_misspelled_excess": qm - bm}


def bootstrap_draws(correct, misspelled, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Every measure of `_measures` on n_boot resamples of whole samples (pairs (K_i, M_i))."""
    correct, misspelled = np.asarray(correct), np.asarray(misspelled)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, correct.shape[-1], size=(n_boot, correct.shape[-1]))
    with np.errstate(divide="ignore", invalid="ignore"):
        return _measures(correct[..., idx], misspelled[..., idx])


def percentile_ci(draws, level: float = 0.95):
    """Percentile interval over the last axis, ignoring NaN draws (all NaN -> NaN)."""
    draws = np.asarray(draws, np.float64)
    a = (1 - level) / 2
    with np.errstate(invalid="ignore"):
        if np.all(np.isnan(draws)):
            return np.array([np.nan, np.nan])
        return np.nanquantile(draws, [a, 1 - a], axis=-1).T


def spelling_statistics(correct, misspelled, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                        keep_draws: bool = False) -> dict:
    """Measures of one set of samples with bootstrap CIs (key + "_ci" = [lo, hi]).

    With keep_draws the bootstrap draws of the excesses are kept (key "draws") for tests of
    differences between checkpoints.
    """
    correct, misspelled = np.asarray(correct), np.asarray(misspelled)
    if correct.ndim != 1 or correct.shape != misspelled.shape or correct.size < 2:
        raise ValueError("spelling_statistics needs two 1-d count arrays of equal length >= 2")
    with np.errstate(divide="ignore", invalid="ignore"):
        point = _measures(correct, misspelled)
    draws = bootstrap_draws(correct, misspelled, n_boot=n_boot, seed=seed)
    out = {"n_samples": int(correct.size), "mean_words": float((correct + misspelled).mean())}
    for key, value in point.items():
        out[key] = float(value)
        out[key + "_ci"] = percentile_ci(draws[key], level).tolist()
    if keep_draws:
        out["draws"] = {k: draws[k] for k in ("q_correct_excess", "q_misspelled_excess")}
    return out


# ---------------------------------------------------------------- Poisson histogram test

def poisson_histogram(counts, min_expected: float = 5.0) -> dict:
    """Histogram of counts against Poisson(mean) with a chi-square goodness-of-fit test.

    Bins are the values 0, 1, ..., with the last bin open (>= k) so expected counts sum to
    M; adjacent bins are merged left to right until each expects >= min_expected (the rest
    joins the last group). dof = groups - 2 (the mean is estimated). Returns the raw
    histogram (values, observed, expected) and the grouped test (edges = first value of
    each group, chi2, dof, p_value; NaN when fewer than 3 groups remain).
    """
    x = np.asarray(counts, np.int64)
    M, lam = x.size, float(x.mean())
    top = int(max(x.max(), np.ceil(lam + 6 * np.sqrt(lam) + 6)))
    values = np.arange(top + 1)
    observed = np.bincount(x, minlength=top + 1)[: top + 1].astype(np.float64)
    expected = M * stats.poisson.pmf(values, lam)
    expected[-1] = M * stats.poisson.sf(top - 1, lam)  # open last bin: P(X >= top)
    groups, obs_g, exp_g, acc_o, acc_e, start = [], [], [], 0.0, 0.0, 0
    for v in values:
        acc_o += observed[v]
        acc_e += expected[v]
        if acc_e >= min_expected:
            groups.append(start)
            obs_g.append(acc_o)
            exp_g.append(acc_e)
            acc_o, acc_e, start = 0.0, 0.0, v + 1
    if acc_e > 0 or acc_o > 0:
        if exp_g:
            obs_g[-1] += acc_o
            exp_g[-1] += acc_e
        else:
            groups, obs_g, exp_g = [0], [acc_o], [acc_e]
    obs_g, exp_g = np.array(obs_g), np.array(exp_g)
    dof = len(obs_g) - 2
    if dof >= 1:
        chi2 = float(np.sum((obs_g - exp_g) ** 2 / exp_g))
        p_value = float(stats.chi2.sf(chi2, dof))
    else:
        chi2, p_value = float("nan"), float("nan")
    return {"mean": lam, "values": values.tolist(), "observed": observed.tolist(), "expected": expected.tolist(),
            "edges": groups, "observed_grouped": obs_g.tolist(), "expected_grouped": exp_g.tolist(),
            "chi2": chi2, "dof": dof, "p_value": p_value}


# ---------------------------------------------------------------- the paper's claim

def difference_ci(draws_a, draws_b, level: float = 0.95):
    """CI of b - a from independent bootstrap draws of two independent sample sets."""
    return percentile_ci(np.asarray(draws_b) - np.asarray(draws_a), level)


def claim_survives_baseline(first: dict, last: dict, level: float = 0.95) -> tuple[bool, dict]:
    """Does "correct counts go Poisson -> sub-Poisson, misspellings the opposite way" hold
    for the excess over the binomial baseline?

    `first`/`last` map variant name ("fixed_length", "fixed_words") to a
    `spelling_statistics(..., keep_draws=True)` result at the first and last checkpoint.
    Rule (all must hold; CIs at `level`):
      every variant: (1) excess Q_correct at the last checkpoint has its CI below 0;
                     (2) the change in excess Q_correct, last - first, has its CI below 0;
      fixed_length:  (3) the change in excess Q_misspelled, last - first, has its CI above 0.
    (3) is not required for fixed_words, where excess_M = excess_K p/(1-p) has the same
    sign as excess_K by construction, so "the opposite way" cannot be tested there.
    Returns (verdict, the per-condition booleans and intervals).
    """
    checks = {}
    for variant in last:
        a, b = first[variant], last[variant]
        lo_hi = b["q_correct_excess_ci"]
        d_c = difference_ci(a["draws"]["q_correct_excess"], b["draws"]["q_correct_excess"], level)
        checks[f"{variant}/excess_correct_last_below_0"] = {"ci": lo_hi, "holds": bool(lo_hi[1] < 0)}
        checks[f"{variant}/excess_correct_decreased"] = {"ci": d_c.tolist(), "holds": bool(d_c[1] < 0)}
        if variant == "fixed_length":
            d_m = difference_ci(a["draws"]["q_misspelled_excess"], b["draws"]["q_misspelled_excess"], level)
            checks[f"{variant}/excess_misspelled_increased"] = {"ci": d_m.tolist(), "holds": bool(d_m[0] > 0)}
    verdict = bool(checks) and all(c["holds"] for c in checks.values())
    return verdict, checks


# ---------------------------------------------------------------- one checkpoint of a model

def make_sample_fn(model: gpt.GPTConfig, sample_length: int, temperature: float):
    """fn(params, prompt_M1, key) -> [M, 1 + sample_length] sampled tokens of one checkpoint."""
    def fn(params, prompt_M1, key):
        return generate(params, model, prompt_M1, sample_length, key, temperature)
    return fn


def checkpoint_spelling(texts, vocab, *, n_words: int, case_sensitive: bool = False, n_boot: int = 1000,
                        level: float = 0.95, seed: int = 0) -> dict:
    """Both variants' statistics (with bootstrap draws) and Poisson tests for one checkpoint's
    samples: {"fixed_length": ..., "fixed_words": ...}, a variant None with fewer than 2 samples."""
    out = {}
    for variant, n in (("fixed_length", None), ("fixed_words", n_words)):
        k, m, dropped = sample_counts(texts, vocab, n_words=n, case_sensitive=case_sensitive)
        if len(k) < 2:
            out[variant] = None
            continue
        s = spelling_statistics(k, m, n_boot=n_boot, seed=seed, level=level, keep_draws=True)
        s["n_dropped"] = dropped
        s["counts_correct"], s["counts_misspelled"] = k, m
        s["poisson_correct"] = poisson_histogram(k)
        s["poisson_misspelled"] = poisson_histogram(m)
        out[variant] = s
    return out


def q_defined(s) -> bool:
    """Mandel Q is defined for both counts (a nonzero mean of each) in one variant's statistics."""
    return s is not None and s["mean_correct"] > 0 and s["mean_misspelled"] > 0


def claim_verdict(spell: dict, n_checkpoints: int, level: float = 0.95):
    """`claim_survives_baseline` between the earliest checkpoint (index into the series) of
    `spell` ({index: checkpoint_spelling result}) where Q is defined in both variants and the
    last such one. Returns (first index, last index, verdict, checks); with fewer than two
    such checkpoints the verdict is False over the whole series."""
    valid = [i for i in sorted(spell) if all(q_defined(spell[i][v]) for v in ("fixed_length", "fixed_words"))]
    if len(valid) < 2:
        return 0, n_checkpoints - 1, False, {"error": "fewer than two checkpoints with defined Q"}
    verdict, checks = claim_survives_baseline(spell[valid[0]], spell[valid[-1]], level)
    return valid[0], valid[-1], verdict, checks


def fraction_correct_intervals(fl_first, fl_last, n_boot: int = 2000, level: float = 0.95) -> dict:
    """The fraction of correct words (fixed-length variant): bootstrap over the samples (ratio
    of sums; `spelling_statistics`'s p_ci), and its change between the first and last
    checkpoint from independent resamples of the two sample sets (fl_first may be None)."""
    out = {"fraction_correct_last_ci": fl_last["p_ci"], "n_spelling_samples": int(fl_last["n_samples"])}
    if fl_first is not None:
        draws = [dstats.ratio_draws(s["counts_correct"], s["counts_correct"] + s["counts_misspelled"],
                                    n_boot=n_boot, seed=seed) for seed, s in enumerate((fl_first, fl_last))]
        out.update({"fraction_correct_first_ci": fl_first["p_ci"],
                    "fraction_correct_change": float(fl_last["p"] - fl_first["p"]),
                    "fraction_correct_change_ci": dstats.quantile_ci(draws[1] - draws[0], level)})
    return out
