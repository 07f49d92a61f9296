"""Figures of the linear-origins study, and its GPT case-pair check (unembedding of a character
GPT's series, lower -> upper case pairs as the concept)."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from dynamics.checkpoints import load_stack, map_stack
from models.errors import OntogenyError
from experiments.plots import plt, save
from models import latent
from probes import geometry


# ----------------------------------------------------------------------------- GPT case pairs
def _gpt_geometry(params, pairs, mask, random_pairs):
    from models.gpt import unembedding_matrix

    out = geometry.geometry_measures(unembedding_matrix(params), pairs, mask, random_pairs)
    return {k: out[k] for k in ("within_mean", "within_min", "random_abs_mean")}


def gpt_case_check(run_dir: str, n_random_pairs: int = 64) -> dict:
    """Within-concept cosine of the lower -> upper case direction over a GPT's checkpoint series."""
    from dynamics.data import load_tokenizer

    if not Path(run_dir).is_dir():
        raise OntogenyError(f"gpt_run={run_dir!r} is not a folder; give a pretrain run folder, "
                            f"or leave it empty to skip")
    tokenizer = load_tokenizer(run_dir)
    pairs = geometry.case_pairs(tokenizer.chars)
    if len(pairs) < 2:
        raise OntogenyError(f"{run_dir}'s vocabulary has {len(pairs)} letters in both cases; the case check needs 2")
    steps, params = load_stack(run_dir)
    packed, mask = geometry.pack_pairs([pairs])
    res = map_stack(_gpt_geometry, params, packed, mask,
                    geometry.random_pairs(tokenizer.vocab_size, n_random_pairs, seed=2))
    return {"steps": np.asarray(steps), "n_pairs": len(pairs), **res}


def plot_gpt(result: dict, path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(result["steps"], result["within_mean"], "o-", ms=3, label="case pairs: within cos (mean)")
    ax.plot(result["steps"], result["within_min"], "--", lw=1, label="case pairs: within cos (min)")
    ax.plot(result["steps"], result["random_abs_mean"], ":", label="random pairs |cos|")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("step")
    ax.set_ylabel("cosine")
    ax.set_title(f"GPT unembedding: lower -> upper case ({result['n_pairs']} letters)")
    ax.legend()
    ax.grid(alpha=0.3)
    save(fig, path)


# ----------------------------------------------------------------------------- word pairs on a run
def plot_pairs_over_training(steps, curves: dict, names, path) -> None:
    """Per inner product: every concept's within-concept cosine (thin), their mean, the shuffled-
    and random-pair baselines and the cross-concept |cos|, over the checkpoints."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharey=True)
    for ax, (inner, title) in zip(axes, (("euclid", "Euclidean"), ("causal", "causal (Cov^-1/2)"))):
        c = curves[inner]
        for k, name in enumerate(names):
            ax.plot(steps, c["within_per_concept"][:, k], lw=0.7, alpha=0.5, color=f"C{k % 10}", label=name)
        ax.plot(steps, c["within"], "k-o", ms=3, lw=2, label="within-concept cos (mean)")
        ax.plot(steps, c["shuffled"], "k--", lw=1.5, label="shuffled pairs (mean)")
        ax.plot(steps, c["random"], "k:", lw=1.5, label="random pairs |cos|")
        ax.plot(steps, c["cross"], "-.", color="C3", lw=1.5, label="cross-concept |cos|")
        ax.set_xscale("symlog", linthresh=max(1, int(steps[1]) if len(steps) > 1 else 1))
        ax.set_xlabel("step")
        ax.set_title(f"unembedding word pairs: {title}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cosine")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    save(fig, path)


def plot_concept_matrices(names, euclid_KK, causal_KK, step: int, path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(4 + 0.55 * len(names) * 2, 1.5 + 0.45 * len(names)))
    for ax, M, title in ((axes[0], euclid_KK, "Euclidean"), (axes[1], causal_KK, "causal")):
        im = ax.imshow(np.asarray(M), vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_title(f"concept directions, {title} cos (step {step})", fontsize=9)
    fig.colorbar(im, ax=axes[1])
    save(fig, path)


# ----------------------------------------------------------------------------- figures
def plot_histograms(G_YD, F_XD, m: int, config, path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, M, pairs, n, title in ((axes[0], G_YD, latent.token_pairs(m), 2 ** m, "unembedding g(y1) - g(y0)"),
                                   (axes[1], F_XD, latent.context_pairs(m), 3 ** m, "embedding f(x1) - f(x0)")):
        s = geometry.cosine_samples(M, pairs, geometry.random_pairs(n, config.n_random_pairs, seed=0))
        bins = np.linspace(-1, 1, 41)
        for key, color in (("within", "C0"), ("cross", "C1"), ("random", "C7")):
            ax.hist(s[key], bins=bins, density=True, alpha=0.55, color=color, label=f"{key}, signed ({len(s[key])})")
        ax.set_title(title)
        ax.set_xlabel("cosine")
        ax.legend()
    save(fig, path)


def plot_over_training(steps, res: dict, losses, loss_floor: float, path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for key, style in (("within_cos_mean", "o-"), ("within_cos_min", "--"), ("cross_abs_cos_mean", "o-"),
                       ("random_abs_cos_mean", ":"), ("emb_within_cos_mean", "s-"), ("alignment_mean", "^-")):
        ax.plot(steps, res[key], style, ms=3, label=key)
    ax.set_ylabel("cosine")
    ax.set_title("geometry over training")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(steps, res["logodds_error"], "o-", ms=3, label="log-odds error (nats)")
    ax.plot(steps, np.maximum(losses - loss_floor, 1e-6), ":", label="loss - H(Y|X) (nats)")
    ax.set_yscale("log")
    ax.set_title("log-odds matching")
    ax.legend(fontsize=8)
    for ax in axes:
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(left=0)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    save(fig, path)


def plot_concept_matrix(cross_KK, path) -> None:
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    im = ax.imshow(cross_KK, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_title("cosine between concept directions")
    ax.set_xlabel("concept")
    ax.set_ylabel("concept")
    fig.colorbar(im, ax=ax)
    save(fig, path)


def plot_sweep(rows: list[dict], x: str, y: str, path, config) -> None:
    """One row of heatmaps per prediction's metric (mean over the other axes) on x by y, one column
    per optimizer variant; each cell also shows the fraction of its runs where the prediction passes."""
    variant = lambda r: f"{r['optimizer']}" + (f" wd={r['weight_decay']:g}" if r["weight_decay"] else "")
    variants = list(dict.fromkeys(variant(r) for r in rows))
    fig, axes = plt.subplots(len(SWEEP_FIGURES), len(variants), squeeze=False,
                             figsize=(2.9 * len(variants) + 0.6, 2.5 * len(SWEEP_FIGURES)))
    for row_axes, (metric, key, threshold) in zip(axes, SWEEP_FIGURES):
        for ax, v in zip(row_axes, variants):
            mine = [r for r in rows if variant(r) == v]  # axes per panel: optimizers have their own lrs
            xs, ys = sorted({r[x] for r in mine}), sorted({r[y] for r in mine})
            grid, frac = np.full((len(ys), len(xs)), np.nan), np.full((len(ys), len(xs)), np.nan)
            for i, yv in enumerate(ys):
                for j, xv in enumerate(xs):
                    cell = [r for r in mine if r[x] == xv and r[y] == yv]
                    if cell:
                        grid[i, j] = np.nanmean([float(r[metric]) for r in cell])
                        frac[i, j] = np.mean([r[f"pass_{key}"] for r in cell])
            ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto",
                      vmin=np.nanmin([r[metric] for r in rows]), vmax=np.nanmax([r[metric] for r in rows]))
            for i, j in itertools.product(range(len(ys)), range(len(xs))):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}\n{frac[i, j]:.0%}", ha="center", va="center", fontsize=7,
                            color="w")
            ax.set_xticks(range(len(xs)), [f"{val:g}" for val in xs])
            ax.set_yticks(range(len(ys)), [f"{val:g}" for val in ys])
            ax.set_xlabel(x)
            ax.set_ylabel(y)
            ax.set_title(f"{metric} ({'<=' if key in ('orthogonality', 'logodds') else '>='} "
                         f"{getattr(config, threshold):g})\n{v}", fontsize=8)
    fig.suptitle("sweep: mean value / % of runs passing", fontsize=10)
    save(fig, path)


SWEEP_FIGURES = (("within_cos_mean", "linearity", "within_threshold"),
                 ("cross_abs_cos_mean", "orthogonality", "cross_threshold"),
                 ("emb_within_cos_mean", "embedding", "embedding_threshold"),
                 ("logodds_error", "logodds", "logodds_threshold"))
