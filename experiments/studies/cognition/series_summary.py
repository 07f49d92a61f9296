"""The headline numbers of a series run, each with its 95% interval.

[choice] As on the knowledge world (`probes.cognition.intervals`): an accuracy on the held-out
items gets the Wilson interval; a difference of two accuracies on the same items (cognitive minus
expressive, a later stage minus an earlier one, k shots minus none) the paired bootstrap over
items; pass@k the bootstrap over items of each item's unbiased pass@k; a correlation over
checkpoints the bootstrap over checkpoints (a lower bound on its uncertainty, since the
checkpoints of one run are not independent). A statistic the data leave undefined (a correlation
with a constant series) is null.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from dynamics import knowledge as kw
from dynamics import stats as dstats
from probes import cognition as cm


def _correlation(x, y) -> tuple[float, float, float]:
    """(Pearson r, its p-value, Spearman rho), NaN where a series is constant."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return np.nan, np.nan, np.nan
    r = stats.pearsonr(x, y)
    return float(r[0]), float(r[1]), float(stats.spearmanr(x, y).statistic)


def _stage_ends(config, m: dict, stage: str, i: int) -> tuple[dict, dict]:
    """(numbers, pass@k by k) of one stage at its last checkpoint (index i)."""
    n, top = m["n_test"], max(config.pass_ks)
    out = {}
    for key, right in (("cognitive_logistic", m["logistic_q"][i]), ("expressive_letter", m["letter_q"][i])):
        out[f"{key}_{stage}"] = float(right.mean())
        out[f"{key}_{stage}_ci"] = dstats.wilson_ci(int(right.sum()), n)
    out[f"cognitive_{stage}"] = float(m["cognitive_q"][i].mean())
    out[f"expressive_{stage}"] = float(m["greedy_q"][i].mean())
    out[f"answer_rate_{stage}"] = float(m["answered_q"][i].mean())
    out[f"cognitive_layer_{stage}"] = int(m["best_layer"][i])
    c = m["n_correct"][stage]
    per_item = {k: kw.pass_at_k(config.n_samples, c, k) for k in config.pass_ks}
    out[f"pass_at_{top}_{stage}"] = float(per_item[top].mean())
    out[f"pass_at_{top}_{stage}_ci"] = dstats.mean_ci(per_item[top])
    fewshot = {0: m["greedy_q"][i], **m["fewshot"][stage]}
    out[f"fewshot_{stage}"] = {k: float(v.mean()) for k, v in fewshot.items()}
    out[f"fewshot_{stage}_ci"] = {k: dstats.wilson_ci(int(v.sum()), n) for k, v in fewshot.items()}
    gains = {k: v.astype(float) - fewshot[0] for k, v in fewshot.items() if k > 0}
    if gains:
        best = max(gains, key=lambda k: gains[k].mean())
        out[f"fewshot_gain_{stage}"] = float(gains[best].mean())
        out[f"fewshot_gain_{stage}_ci"] = dstats.mean_ci(gains[best])
        out[f"fewshot_gain_{stage}_k"] = int(best)
    return out, {k: float(v.mean()) for k, v in per_item.items()}


def summarize(config, stages, task, m: dict) -> dict:
    """Every headline number of a series run (see the module docstring for the intervals)."""
    cog_C, expr_C, letter_C = (m[k].mean(-1) for k in ("cognitive_q", "greedy_q", "letter_q"))
    summary = {
        "mode": "series", "text_source": task.text_source, "tasks": task.record,
        "stages": [{"label": s.label, "run": s.run, "series": s.series, "n_checkpoints": len(s.steps),
                    "first_step": s.steps[0], "last_step": s.steps[-1]} for s in stages],
        "n_checkpoints": len(m["labels"]), "n_train_items": int(m["n_train"]), "n_test_items": int(m["n_test"]),
        "n_items_dropped": int(m["n_dropped"]), "chance": float(np.mean(1.0 / m["n_choices"])),
        "pass_top_k": int(max(config.pass_ks)), "n_samples": int(config.n_samples),
        "probes_converged": int(m["log_converged"].sum()), "probes_total": int(m["log_converged"].size),
        "fewshot_shots_used": m["shots_used"]}
    summary["pass_at_k"] = {}
    for stage, i in m["ends"].items():
        numbers, passes = _stage_ends(config, m, stage, int(i))
        summary.update(numbers)
        summary["pass_at_k"][stage] = passes
    summary.update(cm.intervals(m["cognitive_q"], m["greedy_q"], {s: int(i) for s, i in m["ends"].items()},
                                cog_C, expr_C))
    r, p, rho = _correlation(cog_C, expr_C)
    r_letter, _, rho_letter = _correlation(cog_C, letter_C)
    summary.update({"pearson_r": dstats.defined(r), "pearson_p": dstats.defined(p), "spearman_rho": dstats.defined(rho),
                    "pearson_r_letter": dstats.defined(r_letter), "spearman_rho_letter": dstats.defined(rho_letter),
                    "pearson_r_letter_ci": dstats.correlation_ci(cog_C, letter_C, "pearson")})
    per_stage = {}
    for stage in m["ends"]:
        sel = np.array([s == stage for s, _ in m["labels"]])
        r_s, _, _ = _correlation(cog_C[sel], expr_C[sel])
        per_stage[stage] = {"pearson_r": dstats.defined(r_s), "n_checkpoints": int(sel.sum()),
                            "pearson_r_ci": dstats.correlation_ci(cog_C[sel], expr_C[sel], "pearson")
                            if sel.sum() >= 3 else None}
    summary["correlation_per_stage"] = per_stage
    return summary
