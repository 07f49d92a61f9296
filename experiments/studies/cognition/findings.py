"""The cognition study's findings: one to three sentences with intervals and verdicts, for a
summary of the knowledge world (`toy`) or of a checkpoint series on benchmark items (`series`)."""
from __future__ import annotations

import numpy as np

from dynamics import stats as dstats


def verdict(summary: dict, key: str, yes: str, no: str) -> str:
    """'+0.46 [+0.31, +0.60]: <yes>' if the interval excludes 0, else the interval and <no>."""
    ci = summary.get(f"{key}_ci")
    text = dstats.ci_text(summary, key, signed=True)
    return f"{text}: {yes}" if ci is not None and dstats.excludes(ci) else f"{text}, which includes 0: {no}"


def correlation_line(s: dict) -> str:
    """Pearson and Spearman of cognitive and expressive accuracy over the checkpoints, or why undefined."""
    r_ci = s.get("pearson_r_ci")
    corr = ("they rise together" if r_ci and r_ci[0] > 0 else "no correlation is shown") if r_ci else "no interval"
    if s.get("pearson_r") is None or not np.isfinite(s["pearson_r"]):   # NaN is written to JSON as null
        return (f"Across {s.get('n_checkpoints', '?')} checkpoints the correlation of cognitive and expressive "
                f"accuracy is undefined (one of them never changes).")
    return (f"Across {s.get('n_checkpoints', '?')} checkpoints cognitive and expressive accuracy correlate "
            f"with Pearson r = {dstats.ci_text(s, 'pearson_r')} and Spearman "
            f"{dstats.ci_text(s, 'spearman_rho')} (bootstrap over checkpoints): {corr}.")


def _against_chance(s: dict, key: str) -> str:
    ci = s.get(f"{key}_ci")
    return ("" if not ci else "; the probe's interval lies above chance" if ci[0] > s["chance"]
            else "; the probe's interval does not exclude chance, so reading above chance is not shown")


def toy(summary: dict) -> list[str]:
    """The conclusions of a knowledge-world summary."""
    s, n = summary, summary.get("n_test_questions", "?")
    gap = verdict(s, "cognitive_minus_expressive_pretrain", "cognition precedes expression",
                  "no gap between cognition and expression is shown")
    rl = verdict(s, "expressive_rl_minus_pretrain", "post-training taught the model to answer",
                 "no gain from post-training is shown")
    sft_rl = verdict(s, "expressive_rl_minus_sft", "RL changed what SFT reached", "RL did not measurably change it")
    above = _against_chance(s, "cognitive_pretrain")
    return [
        f"After pretraining the value probe reads {dstats.ci_text(s, 'cognitive_pretrain')} of {n} held-out questions "
        f"while the model answers {dstats.ci_text(s, 'expressive_pretrain')} (chance {s['chance']:.2f}){above}; the "
        f"paired difference is {gap}.",
        f"The model answers {dstats.ci_text(s, 'expressive_sft')} after SFT and {dstats.ci_text(s, 'expressive_rl')} "
        f"after RL; RL minus pretraining is {rl}; RL minus SFT is {sft_rl}.",
        f"{correlation_line(s)} Intervals are over questions and checkpoints of one training seed.",
    ]


def series(summary: dict) -> list[str]:
    """The conclusions of a checkpoint series scored on multiple-choice items."""
    s = summary
    labels = [st["label"] for st in s["stages"]]
    first, n = labels[0], s["n_test_items"]
    ci = s.get(f"cognitive_{first}_ci")
    above = bool(ci) and ci[0] > s["chance"]
    gap = verdict(s, f"cognitive_minus_expressive_{first}",
                  "cognition precedes expression" if above else "the model says less than the probe reads, though the "
                  "probe itself is not shown above chance", "no gap between cognition and expression is shown")
    lines = [
        f"On {s['text_source']}: at the end of {first} the PCA probe reads {dstats.ci_text(s, f'cognitive_{first}')} "
        f"of {n} held-out items while the model answers {dstats.ci_text(s, f'expressive_{first}')} greedily (an option named "
        f"in {s[f'answer_rate_{first}']:.2f} of them; letter likelihood "
        f"{dstats.ci_text(s, f'expressive_letter_{first}')}; chance {s['chance']:.2f})"
        f"{_against_chance(s, f'cognitive_{first}')}; cognitive minus expressive is {gap}."]
    if len(labels) > 1:
        later = "; ".join(
            f"after {b} it answers {dstats.ci_text(s, f'expressive_{b}')} (probe {dstats.ci_text(s, f'cognitive_{b}')}), "
            + verdict(s, f"expressive_{b}_minus_{first}", f"a change from {first}", f"no change from {first} shown")
            for b in labels[1:])
        lines.append(f"Across stages, {later}.")
    top = s.get("pass_top_k")
    sampling = "" if top is None else (
        f" pass@{top} at the end of each stage: " + ", ".join(
            f"{b} {dstats.ci_text(s, f'pass_at_{top}_{b}')}" for b in labels) + ";")
    lines.append(f"{correlation_line(s)}{sampling} intervals are over items (Wilson, paired bootstrap) and checkpoints.")
    return lines
