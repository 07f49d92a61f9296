"""The NeuroMFA study's figures (matplotlib only; the numbers come from `probes.neuromfa`).

`results` maps a model label to its analysis (`experiments.studies.neuromfa.study.analyse_model`); `order`
lists the labels smallest first. Step 0 is drawn at 0.5 on the log step axes.
"""
from __future__ import annotations

import matplotlib
import matplotlib.ticker
import numpy as np

from dynamics.runlog import RunFolder
from experiments import plots
from probes.neuromfa import measures

plt = plots.plt


def plot_all(results: dict, order: list[str], folder: RunFolder) -> None:
    """Every figure of the study into folder/figures."""
    colors = plt.cm.plasma(np.linspace(0.0, 0.8, len(order)))
    plot_spectra(results, order, folder.figure("spectra"))
    plot_alpha0_width(results, order, colors, folder.figure("alpha0_width"))
    plot_emergence(results, order, colors, folder.figure("emergence"))
    plot_emergence_vs_size(results, order, folder.figure("emergence_vs_size"))
    plot_correlations(results, order, colors, folder.figure("correlations"))


def _xstep(steps):
    return np.maximum(steps, 0.5)  # step 0 shown at 0.5 on the log axis


def _log_steps(ax) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels collide at legible sizes


def plot_spectra(results, order, path) -> None:
    """f(alpha) spectra coloured by step, one panel per size (sample-averaged alpha and f)."""
    fig, axes = plt.subplots(1, len(order), figsize=(4 * len(order), 3.6), squeeze=False)
    for ax, label in zip(axes[0], order):
        r = results[label]
        norm = matplotlib.colors.LogNorm(vmin=0.5, vmax=max(r["steps"][-1], 1))
        for c, step in enumerate(r["steps"]):
            a = np.nanmean(r["spectra"]["alpha"][c], 0)
            f = np.nanmean(r["spectra"]["f"][c], 0)
            ax.plot(a, f, color=plt.cm.viridis(norm(max(step, 0.5))), lw=1)
        ax.set(title=f"{label} ({r['n_params']:,} params)", xlabel="alpha", ylabel="f(alpha)")
        fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=ax, label="step")
    plots.save(fig, path)


def plot_alpha0_width(results, order, colors, path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for col, label in zip(colors, order):
        r = results[label]
        for ax, key in zip(axes, ("alpha0", "width")):
            ax.plot(_xstep(r["steps"]), r["summary"][key], "o-", ms=3, color=col, label=label)
            ax.plot(_xstep(r["steps"]), r["control"][key], "--", color=col, alpha=0.6)
    for ax, key in zip(axes, ("alpha0 (regularity)", "width w (heterogeneity)")):
        ax.set(xlabel="step (0 at 0.5)", ylabel=key, title=f"{key}; dashed: Gaussian control")
        _log_steps(ax)
        ax.legend(fontsize=8)
    plots.save(fig, path)


def plot_emergence(results, order, colors, path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for col, label in zip(colors, order):
        r = results[label]
        axes[0].plot(_xstep(r["steps"]), r["summary"]["emergence"], "o-", ms=3, color=col, label=label)
        axes[0].plot(_xstep(r["steps"]), r["control"]["emergence"], "--", color=col, alpha=0.6)
        axes[1].plot(_xstep(r["steps"]), r["eval"]["word_acc"], "o-", ms=3, color=col, label=label)
    axes[0].set(xlabel="step", ylabel="E(t)", title="degree of emergence; dashed: Gaussian control")
    axes[1].set(xlabel="step", ylabel="next-word accuracy", title="downstream: next-word accuracy")
    for ax in axes:
        _log_steps(ax)
        ax.legend(fontsize=8)
    plots.save(fig, path)


def plot_emergence_vs_size(results, order, path) -> None:
    sizes = [results[k]["n_params"] for k in order]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(sizes, [results[k]["summary"]["emergence"][-1] for k in order], "o-", label="E (trained weights)")
    ax.plot(sizes, [results[k]["control"]["emergence"][-1] for k in order], "s--", label="E (Gaussian control)")
    ax.axhline(0, color="gray", lw=0.5)
    ax.set(xlabel="non-embedding parameters", ylabel="E at the last step", title="E against model size")
    _log_steps(ax)
    ax.legend()
    plots.save(fig, path)


def plot_correlations(results, order, colors, path) -> None:
    """E against val loss (all sizes, all steps), and the pooled Spearman of E beside the
    baselines; an undefined correlation (a constant series) is left blank."""
    corr = measures.correlations(measures.rows([results[k] for k in order]))
    names = ["emergence", "control_emergence", "alpha0", "width", "mean_abs_w", "strength"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for col, label in zip(colors, order):
        r = results[label]
        axes[0].plot(r["summary"]["emergence"], r["eval"]["val_loss"], "o", ms=4, color=col, label=label)
    axes[0].set(xlabel="E", ylabel="val loss", title="E against validation loss (all sizes, all steps)")
    axes[0].legend(fontsize=8)
    pos = np.arange(len(names))
    for off, key, lab in ((-0.2, "vs_val_loss", "vs val loss"), (0.2, "vs_word_acc", "vs next-word acc")):
        heights = [np.nan if corr[n][key] is None else corr[n][key] for n in names]
        axes[1].bar(pos + off, heights, 0.4, label=lab)
    axes[1].set_xticks(pos, ["E", "E control", "alpha0", "width", "mean|w|", "w. degree"], fontsize=8)
    axes[1].axhline(0, color="gray", lw=0.5)
    axes[1].set(ylabel="Spearman rho (pooled)", title="E beside simple baselines")
    axes[1].legend(fontsize=8)
    plots.save(fig, path)
