"""The development study's headline numbers, metrics rows and findings, read off the passes'
arrays (`measures`): every headline `x` with `x_ci`, per checkpoint where it is a curve.

Intervals: the LLC's is Student t over its chains (the estimator's spread); the lens losses',
the ICL score's and the head scores' are percentile bootstraps over windows or sequences (the
max over heads taken inside each resample); CKA's a jackknife over windows. [choice] "Changes
fastest" is the pair of consecutive checkpoints, thinned to at least 5% of the series' span
apart (`series.spaced_pairs`), with the largest change per unit of log(1 + step) (or of step); for the
logit lens, of its mean over layers; for CKA, 1 - their CKA averaged over layers.
"""
from __future__ import annotations

import numpy as np

from dynamics import stats
from dynamics.runlog import RunFolder
from probes.development import heads
from probes.development.series import cka_series, fastest_change, max_head_ci, supported_turns, value_change


def _curve_ci(values_CN, config) -> list:
    return [stats.mean_ci(v, n_boot=config.n_boot, level=config.ci_level, seed=config.seed) for v in values_CN]


def lens_summary(config, series: dict, shape: dict) -> dict:
    nll = np.asarray(series["lens_nll"], np.float64)                        # [C, L+1, N, S]
    per_window = nll.mean(-1)
    icl = nll[:, -1, :, shape["icl_late"]] - nll[:, -1, :, shape["icl_early"]]
    return {"logit_lens_loss": per_window.mean(-1),
            "logit_lens_loss_ci": [_curve_ci(c, config) for c in per_window],
            "loss": per_window[:, -1].mean(-1), "loss_ci": _curve_ci(per_window[:, -1], config),
            "icl_score": icl.mean(-1), "icl_score_ci": _curve_ci(icl, config)}


def head_summary(config, series: dict, period: int) -> dict:
    out, kw = {}, dict(n_boot=config.n_boot, level=config.ci_level, seed=config.seed)
    for kind in ("prev_token", "induction"):
        rows = [max_head_ci(s, **kw) for s in series[kind]]
        out[f"{kind}_score_max"] = [r[0] for r in rows]
        out[f"{kind}_score_max_ci"] = [r[1] for r in rows]
        out[f"{kind}_head"] = [list(r[2]) for r in rows]
        out[f"{kind}_chance"] = heads.chance_scores(period)[kind]
    control = [float(np.asarray(s)[:, l, h].mean()) for s, (l, h) in zip(series["induction_control"], out["induction_head"])]
    out["induction_control"] = control
    first, last = (np.asarray(series["induction"])[c][:, l, h] for c, (l, h) in
                   ((0, out["induction_head"][0]), (-1, out["induction_head"][-1])))
    out["induction_gain"] = float(last.mean() - first.mean())
    out["induction_gain_ci"] = stats.paired_bootstrap_ci(first, last, **kw)
    return out


def llc_summary(config, llc: dict) -> dict:
    k = np.asarray(llc["llc_K"], np.float64)                                 # [C', K]
    mean = k.mean(1)
    ci = [stats.t_ci(row, config.ci_level) for row in k]
    turns = supported_turns(llc["steps"], mean, np.asarray(ci))
    return {"llc_steps": [int(s) for s in llc["steps"]], "llc": mean, "llc_ci": ci, "llc_std": k.std(1, ddof=1),
            "llc_chains": k, "llc_init_loss": np.asarray(llc["init_loss"]), "llc_nbeta": float(np.asarray(llc["nbeta"])[0]),
            "stage_boundaries": turns["supported"], "stage_candidates": turns["candidates"]}


def weight_summary(series: dict) -> dict:
    w = series["weights"]
    return {"weight_frobenius": {name: np.sqrt(np.square(st["frobenius"]).sum(-1)) for name, st in w.items()},
            "weight_stable_rank": {name: st["stable_rank"].mean(-1) for name, st in w.items()}}


def summarize(config, series: dict, llc: dict, data: dict) -> tuple[dict, dict]:
    """(summary, CKA arrays) of the two passes."""
    steps = [int(s) for s in series["steps"]]
    shape = data["shape"]
    cka = cka_series(series["gram"], data["groups"], config.cka_debiased, config.ci_level)
    out = {"steps": steps, "n_layers": int(series["lens_nll"].shape[1]), "shapes": shape,
           "change_axis": "log_step" if config.rate_per_log_step else "step",
           "cka_kind": "debiased" if config.cka_debiased else "linear",
           "cka_adjacent": cka["adjacent"], "cka_adjacent_ci": cka["adjacent_ci"],
           **lens_summary(config, series, shape), **head_summary(config, series, shape["period"]),
           **llc_summary(config, llc), **weight_summary(series)}
    axis = out["change_axis"]
    maps = np.asarray(cka["maps"], np.float64)
    out["fastest_change"] = {
        "llc": fastest_change(out["llc_steps"], value_change(out["llc"]), axis),
        "cka_adjacent": fastest_change(steps, lambda i, j: 1.0 - maps[:, i, j].mean(), axis),
        "induction_score_max": fastest_change(steps, value_change(out["induction_score_max"]), axis),
        "prev_token_score_max": fastest_change(steps, value_change(out["prev_token_score_max"]), axis),
        "logit_lens_loss": fastest_change(steps, value_change(out["logit_lens_loss"].mean(1)), axis)}
    return out, cka


def log_rows(folder: RunFolder, summary: dict) -> None:
    """One metrics row per analysed checkpoint (its step first), each logged once."""
    logged = {r.get("step") for r in folder.read_metrics()}
    llc_at = {s: i for i, s in enumerate(summary["llc_steps"])}
    for c, step in enumerate(summary["steps"]):
        if step in logged:
            continue
        row = {"step": step, "loss": summary["loss"][c], "logit_lens_loss": summary["logit_lens_loss"][c],
               "induction_score_max": summary["induction_score_max"][c],
               "prev_token_score_max": summary["prev_token_score_max"][c], "icl_score": summary["icl_score"][c]}
        if c + 1 < len(summary["steps"]):
            row["cka_to_next"] = summary["cka_adjacent"][c]
        if step in llc_at:
            row["llc"], row["llc_chains"] = summary["llc"][llc_at[step]], summary["llc_chains"][llc_at[step]]
        folder.log(row)


def findings(summary: dict) -> list[str]:
    """What a development summary shows, with intervals; a stage boundary only where supported."""
    fmt, s = stats.format_ci, summary
    steps, ls = s["steps"], s["llc_steps"]
    boundaries = (f"the intervals support a stage boundary at step(s) {', '.join(map(str, s['stage_boundaries']))}"
                  if s["stage_boundaries"] else
                  "no stage boundary is supported by the intervals" +
                  (f" (turns at {', '.join(map(str, s['stage_candidates']))} lie within them)" if s["stage_candidates"] else ""))
    lens_last = s["logit_lens_loss"][-1]
    fast = s["fastest_change"]
    (l0, h0), (l1, h1) = s["induction_head"][0], s["induction_head"][-1]
    return [
        f"LLC (t interval over {len(s['llc_chains'][0])} SGLD chains) goes from {fmt(s['llc'][0], s['llc_ci'][0])} at step "
        f"{ls[0]} to {fmt(s['llc'][-1], s['llc_ci'][-1])} at step {ls[-1]}, changing fastest between steps "
        f"{fast['llc'][0]} and {fast['llc'][1]}; {boundaries}.",
        f"The strongest induction head scores {fmt(s['induction_score_max'][0], s['induction_score_max_ci'][0])} at step "
        f"{steps[0]} (layer {l0}, head {h0}) and {fmt(s['induction_score_max'][-1], s['induction_score_max_ci'][-1])} at "
        f"step {steps[-1]} (layer {l1}, head {h1}), against {s['induction_chance']:.3f} for uniform attention and "
        f"{s['induction_control'][-1]:.3f} on unrepeated tokens; change {fmt(s['induction_gain'], s['induction_gain_ci'], signed=True)}"
        f", fastest between steps {fast['induction_score_max'][0]} and {fast['induction_score_max'][1]}; the best "
        f"previous-token head scores {fmt(s['prev_token_score_max'][-1], s['prev_token_score_max_ci'][-1])} "
        f"(chance {s['prev_token_chance']:.3f}).",
        f"At step {steps[-1]} the logit lens reads {lens_last[0]:.2f} nats from the embedding and "
        f"{fmt(s['loss'][-1], s['loss_ci'][-1])} after the last block (the model's own loss; "
        f"{fmt(s['loss'][0], s['loss_ci'][0])} at step {steps[0]}); the ICL score is "
        f"{fmt(s['icl_score'][-1], s['icl_score_ci'][-1], signed=True)} nats (late minus early position).",
        f"Representations change fastest ({s['cka_kind']} CKA averaged over layers, per unit of "
        f"{s.get('change_axis', 'log_step')}) between steps {fast['cka_adjacent'][0]} and {fast['cka_adjacent'][1]}; "
        f"the last two checkpoints' CKA is "
        f"{np.mean(s['cka_adjacent'][-1]):.3f} averaged over layers.",
    ]
