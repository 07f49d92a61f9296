"""The probe study's figures: held-out accuracy over (checkpoint, layer), and the best layer's
accuracy over training beside its baselines (matplotlib only; numbers from `experiments.studies.probe.study`)."""
from __future__ import annotations

import numpy as np

from dynamics import stats
from experiments import plots

plt = plots.plt


def plot_all(folder, steps, acc_test_CL2, summary: dict, n_test: int, level: float) -> None:
    plot_heatmap(steps, acc_test_CL2[..., 0], folder.figure("accuracy_heatmap"))
    plot_best_layer(steps, acc_test_CL2, summary, n_test, level, folder.figure("best_layer"))


def plot_heatmap(steps, acc_CL, path) -> None:
    """Held-out accuracy, checkpoints down, layers across (0 = the embedding)."""
    C, L = acc_CL.shape
    fig, ax = plt.subplots(figsize=(max(5.0, 1.0 + 0.6 * L), max(4.0, 0.3 * C)))
    im = ax.imshow(acc_CL, aspect="auto", cmap="viridis", vmin=min(0.5, float(acc_CL.min())), vmax=1.0)
    ax.set_yticks(range(C))
    ax.set_yticklabels([str(s) for s in steps])
    ax.set_xticks(range(L))
    ax.set_xticklabels(["emb"] + [str(i) for i in range(L - 1)])
    ax.set_xlabel("layer (emb = embedding, i = residual after block i)")
    ax.set_ylabel("checkpoint step")
    ax.set_title("held-out probe accuracy")
    fig.colorbar(im, ax=ax, shrink=0.8)
    plots.save(fig, path)


def plot_best_layer(steps, acc_CL2, summary: dict, n_test: int, level: float, path) -> None:
    """The chosen layer's accuracy and the shuffled-label control over steps, Wilson bands."""
    best, sx = summary["best_layer"], np.asarray(steps, float)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for j, (name, color) in enumerate((("probe", "C0"), ("shuffled-label control", "C3"))):
        acc = acc_CL2[:, best, j]
        ci = np.array([stats.wilson_ci(int(round(a * n_test)), n_test, level) for a in acc])
        ax.plot(sx, acc, "o-", ms=3, color=color, label=name)
        ax.fill_between(sx, ci[:, 0], ci[:, 1], color=color, alpha=0.2)
    ax.axhline(summary["majority_rate"], color="k", ls=":", lw=1, label="majority class")
    if summary["emergence_step"] is not None:
        ax.axvline(summary["emergence_step"], color="grey", ls="--", lw=1, label="emergence")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(0, max(float(sx[-1]), 1) * 1.3)  # step 0 at the origin
    ax.set_xlabel("step")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"layer {best} (chosen on validation at the last checkpoint)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    plots.save(fig, path)
