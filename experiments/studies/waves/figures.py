"""The waves study's figures (matplotlib only; the numbers come from `probes.waves.channels` and
`probes.waves.spelling`).

`W` is the wave pass's output (leaves [C, P, ...]); `per` the per-checkpoint host results
({"records", "clusters", "orders", "spell"}); `names` the class-indicator names.
"""
from __future__ import annotations

import numpy as np
from scipy import stats as st

from dynamics.data import spread
from experiments import plots

plt = plots.plt


def plot_all(folder, config, steps, W, per, names, tokenizer, i0, i1) -> None:
    """Every figure of the study into folder/figures (i0, i1: the verdict's checkpoints)."""
    records = per["records"]
    plot_heatmaps(steps, W, records, per["orders"], config.n_heatmaps, folder.figure("correlation_heatmaps"))
    plot_coherence(steps, records, folder.figure("coherence"))
    plot_autocorrelation(steps, W, records, folder.figure("autocorrelation"))
    plot_space_waves(steps, W, names, tokenizer, folder.figure("space_waves"))
    plot_mandel_q(steps, per["spell"], folder.figure("mandel_q"))
    plot_count_histograms(steps, per["spell"], i0, i1, folder.figure("count_histograms"))


def _symlog(ax, steps) -> None:
    """Step 0 sits at the origin of a symlog axis."""
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(0, max(float(steps[-1]), 1) * 1.3)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)


def plot_heatmaps(steps, W, records, orders, n_heatmaps, path) -> None:
    """Correlation heatmaps of a few checkpoints, ordered by each checkpoint's clustering."""
    C = len(steps)
    show = spread(C, n_heatmaps)
    fig, axes = plt.subplots(1, len(show), figsize=(4 * len(show), 3.8), squeeze=False)
    for ax, c in zip(axes[0], show):
        corr = W["corr"][c].mean(0)[np.ix_(orders[c], orders[c])]
        im = ax.imshow(corr, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_title(f"step {steps[c]}: mean|C|={records[c]['coherence']:.2f}", fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    plots.save(fig, path, tight=False)  # the shared colorbar defeats tight_layout


def plot_coherence(steps, records, path) -> None:
    """Coherence, eigen-ratio and repeatability over steps."""
    sx = steps.astype(float)
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    coh, sd = np.array([r["coherence"] for r in records]), np.array([r["coherence_sd"] for r in records])
    ax[0].plot(sx, coh, "o-", ms=3, label="mean off-diagonal |C|")
    ax[0].fill_between(sx, coh - sd, coh + sd, alpha=0.2)
    ax[0].plot(sx, [r["eig_ratio"] for r in records], "s-", ms=3, label="top eigenvalue / trace")
    ax[0].set_title("coherence (band: sd over passages)")
    ax[1].plot(sx, [r["repeat_corr"] for r in records], "o-", ms=3, label="corr of C across passages")
    ax[1].plot(sx, [r["repeat_mode"] for r in records], "s-", ms=3, label="|cos| of top modes")
    ax[1].plot(sx, [r["cluster_agreement"] for r in records], "^-", ms=3, label="cluster ARI")
    ax[1].set_title("repeatability across prompts and seeds")
    for a in ax:
        _symlog(a, steps)
        a.legend(fontsize=8)
    plots.save(fig, path)


def plot_autocorrelation(steps, W, records, path) -> None:
    """Autocorrelation curves (mean |A| over channels and passages); period and coherence time."""
    C, sx = len(steps), steps.astype(float)
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    cmap = plt.get_cmap("viridis")
    for c in range(C):
        ax[0].plot(W["mean_abs_autocorr"][c].mean(0), color=cmap(c / max(C - 1, 1)), lw=1,
                   label=f"step {steps[c]}" if c in (0, C // 2, C - 1) else None)
    ax[0].axhline(1 / np.e, color="k", ls=":", lw=1)
    ax[0].set_xlabel("lag (characters)"), ax[0].set_ylabel("mean |A|"), ax[0].legend(fontsize=8)
    ax[0].set_title("autocorrelation of channels")
    ax[1].plot(sx, [r["period"] for r in records], "o-", ms=3, label="dominant period")
    ax[1].plot(sx, [r["coherence_time"] for r in records], "s-", ms=3, label="coherence time (median)")
    ax[1].set_ylabel("characters")
    _symlog(ax[1], steps)
    ax[1].legend(fontsize=8)
    plots.save(fig, path)


def plot_space_waves(steps, W, names, tokenizer, path) -> None:
    """The four most space-related channels along a generated passage at the last checkpoint."""
    R = W["class_corr"][-1].mean(0)
    space = np.maximum(np.abs(R[:, names.index("space@t")]), np.abs(R[:, names.index("space@t+1")]))
    top = np.argsort(-space)[:4]
    tokens = W["tokens"][-1, 0]
    shown = 64  # tokens: each tick label stays legible at the report's width
    text = [tokenizer.decode([int(t)]) for t in tokens[:-1][:shown]]  # one label per token (BPE: several chars)
    x = W["waves"][-1, 0][:shown]
    fig, ax = plt.subplots(figsize=(12, 4.5))
    for j, d in enumerate(top):
        z = (x[:, d] - x[:, d].mean()) / (x[:, d].std() + 1e-8)
        ax.plot(z + 4 * j, lw=1, label=f"channel {d} (|r| space = {space[d]:.2f})")
    for s, ch in enumerate(text):
        if ch[:1] == " ":
            ax.axvline(s, color="grey", lw=0.5, alpha=0.5)
    ax.set_xticks(range(len(text)))
    ax.set_xticklabels([repr(ch)[1:-1] for ch in text], fontsize=5)
    ax.set_title(f"space-related channels at step {steps[-1]} (grey: spaces)")
    ax.legend(fontsize=7, loc="upper right")
    plots.save(fig, path)


def plot_mandel_q(steps, spell, path) -> None:
    """Mandel Q over steps with the binomial baseline, both variants."""
    sx = steps.astype(float)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, variant in zip(axes, ("fixed_length", "fixed_words")):
        for what, color in (("correct", "C0"), ("misspelled", "C3")):
            rows = [(sx[c], spell[c][variant]) for c in sorted(spell) if spell[c][variant] is not None]
            if not rows:
                continue
            xs = np.array([r[0] for r in rows])
            q = np.array([r[1][f"q_{what}"] for r in rows], float)
            ci = np.array([r[1][f"q_{what}_ci"] for r in rows], float)
            base = np.array([r[1][f"q_{what}_baseline"] for r in rows], float)
            bci = np.array([r[1][f"q_{what}_baseline_ci"] for r in rows], float)
            ax.plot(xs, q, "o-", ms=3, color=color, label=f"Q {what}")
            ax.fill_between(xs, ci[:, 0], ci[:, 1], color=color, alpha=0.2)
            ax.plot(xs, base, "--", color=color, lw=1, label=f"binomial baseline ({what})")
            ax.fill_between(xs, bci[:, 0], bci[:, 1], color=color, alpha=0.1, hatch="//")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_title(f"Mandel Q, {variant.replace('_', ' ')}")
        _symlog(ax, steps)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("Q = var/mean - 1")
    plots.save(fig, path)


def plot_count_histograms(steps, spell, i0, i1, path) -> None:
    """Count histograms against Poisson at the verdict's first and last checkpoints."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for row, c in enumerate((i0, i1)):
        s = spell[c]["fixed_length"]
        if s is None:
            continue
        for col, what in enumerate(("correct", "misspelled")):
            counts = s[f"counts_{what}"]
            ax = axes[row, col]
            v = np.arange(counts.max() + 2)
            ax.bar(v, np.bincount(counts, minlength=len(v))[: len(v)] / len(counts), alpha=0.6, label="samples")
            ax.plot(v, st.poisson.pmf(v, counts.mean()), "ko-", ms=3, label="Poisson(mean)")
            p = s[f"poisson_{what}"]["p_value"]
            ax.set_title(f"step {steps[c]}: {what}, Q={s[f'q_{what}']:.2f}, chi2 p={p:.2g}", fontsize=9)
            ax.set_xlabel("words per sample"), ax.legend(fontsize=7)
    plots.save(fig, path)
