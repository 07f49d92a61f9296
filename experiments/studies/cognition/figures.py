"""The cognition study's figures (matplotlib only; the numbers come from `probes.cognition`).

`labels` is the [(stage, step)] list of the C checkpoints, in order.
"""
from __future__ import annotations

import numpy as np

from dynamics import stats as dstats
from experiments import plots


def stage_axes(ax, labels) -> None:
    """Checkpoint ticks (step within stage), dotted lines between stages, stage names on top."""
    bounds = [i for i in range(1, len(labels)) if labels[i][0] != labels[i - 1][0]]
    for b in bounds:
        ax.axvline(b - 0.5, color="k", ls=":", lw=1)
    starts = [0] + bounds
    for s, e in zip(starts, bounds + [len(labels)]):
        ax.text((s + e - 1) / 2, 1.02, labels[s][0], ha="center", va="bottom", transform=ax.get_xaxis_transform())
    ticks = list(range(0, len(labels), max(1, len(labels) // 16)))
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(labels[i][1]) for i in ticks], fontsize=7)
    ax.set_xlabel("checkpoint (step within stage)")


def plot_capabilities(labels, curves: dict, chance: float, path, n_questions: int = 0,
                      banded: tuple[str, ...] = ("cognitive (value probe)", "expressive (greedy)")) -> None:
    """Every curve against checkpoint; the `banded` ones with their Wilson 95% band over the
    n_questions test questions."""
    fig, ax = plots.plt.subplots(figsize=(9, 4.6))
    x = np.arange(len(labels))
    for name, y in curves.items():
        line, = ax.plot(x, y, "o-", ms=3, lw=1.2, label=name)
        if n_questions and name in banded:
            band = np.array([dstats.wilson_ci(int(round(v * n_questions)), n_questions) for v in y])
            ax.fill_between(x, band[:, 0], band[:, 1], color=line.get_color(), alpha=0.15, lw=0)
    ax.axhline(chance, color="gray", ls="--", lw=1, label="chance")
    ax.set_ylim(-0.02, 1.25)
    ax.set_ylabel("test accuracy (bands: 95% CI)" if n_questions else "test accuracy")
    stage_axes(ax, labels)
    ax.legend(fontsize=7, loc="upper left", ncol=3)
    ax.grid(alpha=0.3)
    plots.save(fig, path)


def plot_heatmap(labels, acc_CL, path, title: str) -> None:
    """Test accuracy of every (checkpoint, layer) probe."""
    fig, ax = plots.plt.subplots(figsize=(9, 3))
    im = ax.imshow(acc_CL.T, aspect="auto", origin="lower", vmin=0, vmax=1, cmap="viridis")
    ax.set_yticks(range(acc_CL.shape[1]))
    ax.set_yticklabels(["embed"] + [f"block {i}" for i in range(1, acc_CL.shape[1])])
    stage_axes(ax, labels)
    ax.set_title(title, pad=16)
    fig.colorbar(im, ax=ax, label="test accuracy")
    plots.save(fig, path)


def plot_sampling(ends: dict, pass_ks, fewshot, chance: float, path) -> None:
    """pass@k against k and greedy accuracy against the number of shots, per stage's last checkpoint."""
    fig, (a1, a2) = plots.plt.subplots(1, 2, figsize=(9, 3.6))
    for stage, r in ends.items():
        a1.plot(pass_ks, [r["pass"][k] for k in pass_ks], "o-", label=stage)
        a2.plot(fewshot, [r["fewshot"][k] for k in fewshot], "o-", label=stage)
    a1.set_xscale("log", base=2)
    a1.set_xlabel("k (samples)")
    a1.set_ylabel("pass@k (test)")
    a2.set_xlabel("k (solved examples in the prompt)")
    a2.set_ylabel("greedy accuracy (test)")
    for a in (a1, a2):
        a.axhline(chance, color="gray", ls="--", lw=1)
        a.set_ylim(-0.02, 1.05)
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    a1.set_title("repeated sampling (last checkpoint of each stage)", fontsize=9)
    a2.set_title("few-shot prompting", fontsize=9)
    plots.save(fig, path)


def plot_scatter(labels, cog, expr, r, rho, path) -> None:
    """Expressive against cognitive accuracy, one point per checkpoint, coloured by stage."""
    fig, ax = plots.plt.subplots(figsize=(7, 5.2))
    stages = [s for s, _ in labels]
    for stage in dict.fromkeys(stages):
        m = np.array([s == stage for s in stages])
        ax.scatter(cog[m], expr[m], s=14, label=stage)
    ax.plot([0, 1], [0, 1], color="gray", lw=0.8, ls="--")
    ax.set_xlabel("cognitive (probe accuracy)")
    ax.set_ylabel("expressive (greedy accuracy)")
    ax.set_title(f"Pearson r={r:.2f}, Spearman rho={rho:.2f}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    plots.save(fig, path)


def draw(folder, labels, m: dict, pass_ks, fewshot, chance: float, n_questions: int) -> None:
    """Every figure of a cognition run from its measures `m` (see `experiments.studies.cognition.study.measure`)."""
    top = max(pass_ks)
    plot_capabilities(labels, {"cognitive (value probe)": m["cognitive"], "cognitive (PCA probe, Yan et al.)":
                               m["cognitive_pca"], "expressive (greedy)": m["expressive"],
                               "expressive (best option)": m["expr"]["constrained"],
                               f"pass@{top}": m["expr"]["pass"][top], "cloze (likelihood of fact)": m["cloze"]},
                      chance, folder.figure("capabilities"), n_questions=n_questions)
    plot_heatmap(labels, m["vprobe"]["value_test"], folder.figure("probe_layers"), "value probe test accuracy per layer")
    plot_heatmap(labels, m["probes"]["pca_test"], folder.figure("probe_layers_pca"), "PCA probe test accuracy per layer")
    plot_sampling(m["end_results"], pass_ks, fewshot, chance, folder.figure("passk_fewshot"))
    plot_scatter(labels, m["cognitive"], m["expressive"], float(m["pearson"][0]), float(m["spearman"]),
                 folder.figure("cognitive_vs_expressive"))
    plots.loss_curve([r for r in folder.read_metrics() if r.get("loss") is not None], folder.figure("loss"),
                     title="pretrain / sft / rl loss")


def draw_series(folder, m: dict, summary: dict, pass_ks, fewshot) -> None:
    """Every figure of a run on a checkpoint series (`experiments.studies.cognition.series.measure`)."""
    labels, n, chance = m["labels"], m["n_test"], summary["chance"]
    cog, expr = m["cognitive_q"].mean(-1), m["greedy_q"].mean(-1)
    plot_capabilities(labels, {"cognitive (PCA probe, Yan et al.)": cog,
                               "cognitive (logistic probe)": m["logistic_q"].mean(-1),
                               "expressive (greedy answer)": expr,
                               "expressive (letter likelihood)": m["letter_q"].mean(-1),
                               "answer rate (an option named)": m["answered_q"].mean(-1)},
                      chance, folder.figure("capabilities"), n_questions=n,
                      banded=("cognitive (PCA probe, Yan et al.)", "expressive (greedy answer)"))
    plot_heatmap(labels, m["pca_test_CL"], folder.figure("probe_layers_pca"), "PCA probe test accuracy per layer")
    plot_heatmap(labels, m["log_test_CL"], folder.figure("probe_layers_logistic"),
                 "logistic probe test accuracy per layer")
    ends = {s: {"pass": summary["pass_at_k"][s], "fewshot": summary[f"fewshot_{s}"]} for s in m["ends"]}
    plot_sampling(ends, pass_ks, fewshot, chance, folder.figure("passk_fewshot"))
    undefined = lambda x: float("nan") if x is None else x
    plot_scatter(labels, cog, expr, undefined(summary["pearson_r"]), undefined(summary["spearman_rho"]),
                 folder.figure("cognitive_vs_expressive"))
