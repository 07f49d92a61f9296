"""The development study's figures (matplotlib only; numbers from `summary.summarize`):
LLC and loss against step with the stage boundaries, the chains' traces, the CKA maps, the
head scores over training, the logit-lens heat map and the weight statistics."""
from __future__ import annotations

import numpy as np

from dynamics import data as data_lib
from experiments import plots

plt = plots.plt


def _steps_axis(ax, steps) -> None:
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(0, max(float(steps[-1]), 1) * 1.3)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)


def _band(ax, x, mean, ci, color, label, marker="o-") -> None:
    ci = np.asarray(ci, float)
    ax.plot(x, mean, marker, ms=3, color=color, label=label)
    ax.fill_between(x, ci[:, 0], ci[:, 1], color=color, alpha=0.2)


def plot_all(folder, series: dict, llc: dict, summary: dict, cka: dict) -> None:
    plot_llc(summary, folder.figure("llc_and_loss"))
    plot_traces(llc, summary, folder.figure("llc_traces"))
    plot_cka(summary, cka, folder.figure("cka_map"))
    plot_heads(series, summary, folder.figure("head_scores"))
    plot_lens(summary, folder.figure("logit_lens"))
    plot_weights(series, summary, folder.figure("weights"))


def plot_llc(s: dict, path) -> None:
    """LLC (chains as dots, t interval as a band) and the held-out loss against step; supported
    stage boundaries solid, unsupported turns dotted."""
    fig, ax = plt.subplots(figsize=(9, 4.8))
    x = np.asarray(s["llc_steps"], float)
    _band(ax, x, s["llc"], s["llc_ci"], "C0", "LLC (mean, t interval over chains)")
    chains = np.asarray(s["llc_chains"], float)
    ax.plot(np.repeat(x, chains.shape[1]), chains.reshape(-1), ".", ms=3, color="C0", alpha=0.4)
    ax.set_ylabel("local learning coefficient")
    twin = ax.twinx()
    _band(twin, np.asarray(s["steps"], float), s["loss"], s["loss_ci"], "C3", "held-out loss", "s-")
    twin.set_ylabel("held-out loss (nats/token)")
    for step in s["stage_boundaries"]:
        ax.axvline(step, color="k", lw=1.5, label="stage boundary (supported)")
    for step in set(s["stage_candidates"]) - set(s["stage_boundaries"]):
        ax.axvline(step, color="grey", ls=":", lw=1)
    _steps_axis(ax, s["steps"])
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0][:2] + more[0], lines[1][:2] + more[1], fontsize=9, loc="upper center")
    ax.set_title("LLC and loss over training (dotted: turns the intervals do not support)")
    plots.save(fig, path)


def plot_traces(llc: dict, s: dict, path) -> None:
    """n beta (L_m(w_t) - L_n(w*)) along every chain at each LLC checkpoint: flat once a chain
    has converged; its mean after burn-in is the chain's LLC."""
    trace = np.asarray(llc["trace_KT"], float)                                   # [C', K, T]
    scaled = s["llc_nbeta"] * (trace - np.asarray(llc["init_loss"], float)[:, None, None])
    n = len(scaled)
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols + 1, 2.6 * rows + 0.6), squeeze=False, sharey=True)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        for k in range(scaled.shape[1]):
            ax.plot(scaled[i, k], lw=0.7)
        ax.axhline(s["llc"][i], color="k", ls="--", lw=1)
        ax.set_title(f"step {s['llc_steps'][i]}")
        ax.set_xlabel("SGLD step")
    axes[0, 0].set_ylabel("n beta (L_m - L_n(w*))")
    fig.suptitle("SGLD chains (one line each; dashed: the LLC estimate)")
    plots.save(fig, path)


def plot_cka(s: dict, cka: dict, path) -> None:
    """CKA between every pair of checkpoints for a few layers, and between consecutive ones."""
    maps = np.asarray(cka["maps"])                                                 # [L, C, C]
    layers = data_lib.spread(len(maps), 4)
    steps = s["steps"]
    fig, axes = plt.subplots(1, len(layers) + 1, figsize=(3.6 * len(layers) + 6, 4.6), layout="constrained",
                             gridspec_kw={"width_ratios": [1] * len(layers) + [1.6]})
    ticks = data_lib.spread(len(steps), 6)
    for ax, l in zip(axes, layers):
        im = ax.imshow(maps[l], vmin=min(0.0, float(maps.min())), vmax=1.0, cmap="viridis", origin="lower")
        ax.set_title("embedding" if l == 0 else f"after block {l - 1}")
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(steps[t]) for t in ticks], rotation=60)
        ax.set_yticks(ticks)
        ax.set_yticklabels([str(steps[t]) for t in ticks])
    fig.colorbar(im, ax=list(axes[:len(layers)]), shrink=0.8, pad=0.02)
    ax = axes[-1]
    x = np.asarray(steps[1:], float)
    for l in range(maps.shape[0]):
        ax.plot(x, np.asarray(s["cka_adjacent"])[:, l], "o-", ms=2, label="emb" if l == 0 else f"{l - 1}")
    _steps_axis(ax, steps)
    ax.set_ylabel("CKA to the previous")
    ax.legend(fontsize=8, title="layer")
    fig.suptitle(f"{s['cka_kind']} CKA over training")
    plots.save(fig, path, tight=False)


def plot_heads(series: dict, s: dict, path) -> None:
    """The strongest heads' scores with their intervals against chance and the control, and
    every head's induction score over training."""
    fig, (ax, hm) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1.2, 1]})
    x = np.asarray(s["steps"], float)
    _band(ax, x, s["induction_score_max"], s["induction_score_max_ci"], "C0", "induction (best head)")
    _band(ax, x, s["prev_token_score_max"], s["prev_token_score_max_ci"], "C2", "previous token (best head)")
    ax.plot(x, s["induction_control"], "x--", color="C0", ms=4, lw=1, label="induction head on unrepeated tokens")
    ax.axhline(s["induction_chance"], color="C0", ls=":", lw=1, label="uniform attention (induction)")
    ax.axhline(s["prev_token_chance"], color="C2", ls=":", lw=1, label="uniform attention (previous token)")
    _steps_axis(ax, s["steps"])
    ax.set_ylabel("attention score")
    ax.legend(fontsize=8)
    ind = np.asarray(series["induction"]).mean(1)                                   # [C, L, H]
    C, L, H = ind.shape
    im = hm.imshow(ind.reshape(C, L * H).T, aspect="auto", cmap="magma", vmin=0, vmax=max(0.05, float(ind.max())),
                   origin="lower")
    hm.set_yticks(range(L * H))
    hm.set_yticklabels([f"L{i // H}H{i % H}" for i in range(L * H)], fontsize=7)
    ticks = data_lib.spread(C, 8)
    hm.set_xticks(ticks)
    hm.set_xticklabels([str(s["steps"][t]) for t in ticks], rotation=60)
    hm.set_xlabel("step")
    hm.set_title("induction score of every head")
    fig.colorbar(im, ax=hm, shrink=0.8)
    plots.save(fig, path)


def plot_lens(s: dict, path) -> None:
    """Logit-lens loss per (checkpoint, layer); the last column is the model's own loss."""
    lens = np.asarray(s["logit_lens_loss"], float)
    C, L1 = lens.shape
    fig, ax = plt.subplots(figsize=(max(7.0, 1.5 + 0.8 * L1), max(4.5, 0.28 * C + 1)))
    top = float(max(lens[:, 1:].max(initial=0.0), lens[0].max()))    # the embedding's lens may be far worse
    im = ax.imshow(lens, aspect="auto", cmap="viridis_r", origin="lower", vmax=top)
    ax.set_xticks(range(L1))
    ax.set_xticklabels(["emb"] + [str(i) for i in range(L1 - 1)])
    ticks = data_lib.spread(C, 12)
    ax.set_yticks(ticks)
    ax.set_yticklabels([str(s["steps"][t]) for t in ticks])
    ax.set_xlabel("layer (emb = embedding, i = after block i)")
    ax.set_ylabel("checkpoint step")
    ax.set_title("logit-lens loss (nats/token; colour capped at the untrained model's)")
    fig.colorbar(im, ax=ax, shrink=0.8, extend="max" if lens.max() > top else "neither")
    plots.save(fig, path)


def plot_weights(series: dict, s: dict, path) -> None:
    """Stable rank and Frobenius norm per matrix over training; singular values at the last
    checkpoint (layer means)."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    x = np.asarray(s["steps"], float)
    for name in s["weight_stable_rank"]:
        axes[0].plot(x, s["weight_stable_rank"][name], "o-", ms=2, label=name)
        axes[1].plot(x, s["weight_frobenius"][name], "o-", ms=2, label=name)
        sv = np.asarray(series["weights"][name]["sv"])[-1].mean(0)
        axes[2].semilogy(np.arange(1, len(sv) + 1), sv, label=name)
    for ax, title in zip(axes[:2], ("stable rank (mean over layers)", "Frobenius norm")):
        _steps_axis(ax, s["steps"])
        ax.set_title(title)
    axes[2].set_xscale("log")
    axes[2].set_xlabel("index")
    axes[2].set_title(f"singular values at step {s['steps'][-1]}")
    axes[2].legend(fontsize=8)
    axes[2].grid(alpha=0.3)
    plots.save(fig, path)
