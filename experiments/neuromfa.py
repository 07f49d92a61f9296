"""NeuroMFA study: multifractal spectra of the neuron-interaction network over training and size.

Trains (or reuses) character GPTs of several widths with log-spaced checkpoints, computes the
spectrum (alpha0, width) and the degree of emergence E for every checkpoint x network sample
in one vmapped pass per model, and relates E to validation loss and next-word accuracy with
Spearman correlations, beside two controls: the same analysis on Gaussian weights of each
matrix's std (E should stay near 0), and simple weight baselines (mean |w|, weighted degree).

Next-word accuracy: over val windows, the fraction of whole words (runs of letters/apostrophes
between non-letters) that greedy decoding would produce exactly: every letter is the argmax
given the true prefix, and after the last letter the argmax is a non-letter (the word ends).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import scipy.stats
from tqdm.auto import tqdm

from dynamics import checkpoints
from dynamics import data as data_lib
from dynamics import multifractal as mf
from dynamics import neuron_network as neunet
from dynamics import stats
from dynamics import train as train_lib
from dynamics.errors import OntogenyError
from dynamics.runlog import RunFolder
from experiments.config import require
from models import gpt

DESCRIPTION = "NeuroMFA: multifractal spectrum and degree of emergence of the neuron network over training and size"


@dataclasses.dataclass(frozen=True)
class Config:
    widths: tuple[int, ...] = (32, 64, 128)   # d_model of the models trained here, smallest first
    n_layer: int = 2                          # blocks of every model trained here
    n_head: int = 4                           # attention heads of every model (must divide each width)
    context: int = 64                         # context of every model trained here
    train: train_lib.TrainConfig = train_lib.TrainConfig()
    data: data_lib.DataConfig = data_lib.DataConfig()
    mfa: mf.MFAConfig = mf.MFAConfig()
    n_samples: int = 4          # network samples per checkpoint (paper: 10)
    n_resid: int = 32           # sampled neurons per residual/attention layer (paper: 32)
    n_mlp: int = 64             # sampled MLP neurons (paper: 64)
    sample_seed: int = 0        # draws the sampled neurons
    eval_windows: int = 64      # val windows (of `context` chars) for loss and accuracies
    control_seed: int = 1       # draws the Gaussian-control weights
    control_draws: int = 3      # Gaussian-control draws per checkpoint (averaged with the samples)
    pretrain_run: str = ""      # optional: an existing pretrain run, analysed as one more size

    def __post_init__(self):
        require(len(self.widths) + bool(self.pretrain_run) >= 3,
                f"widths={self.widths}: NeuroMFA compares at least 3 model sizes; give 3 or more widths")
        require(list(self.widths) == sorted(set(self.widths)), f"widths={self.widths} must be distinct and increasing")
        require(all(w % self.n_head == 0 for w in self.widths),
                f"every width in {self.widths} must be a multiple of n_head={self.n_head}")
        require(1 <= self.n_resid <= min(self.widths),
                f"n_resid={self.n_resid} must be between 1 and the smallest width {min(self.widths)}")
        require(1 <= self.n_mlp <= 4 * min(self.widths), f"n_mlp={self.n_mlp} must be in 1..4 x the smallest width")
        require(self.n_samples >= 1 and self.eval_windows >= 1 and self.control_draws >= 1,
                "n_samples, eval_windows and control_draws must be positive")
        require(self.mfa.min_degree < min(self.n_resid, self.n_mlp),
                f"mfa.min_degree={self.mfa.min_degree} leaves no usable node with n_resid={self.n_resid}; lower it")


def _train(steps, batch_size, lr, log_until, every):
    return train_lib.TrainConfig(steps=steps, batch_size=batch_size, lr=lr, min_lr=lr / 10, warmup=min(50, steps // 5),
                                 weight_decay=0.1, eval_every=10 ** 6, eval_batches=2, log_every=50,
                                 log_checkpoints_until=log_until, checkpoint_every=every)


PRESETS = {
    # <= 10 minutes on 2 CPU cores, training included.
    "tiny": Config(widths=(32, 64, 128), n_layer=2, n_head=4, context=64,
                   train=_train(1200, 8, 4e-3, 512, 200), n_samples=10, eval_windows=256),
    # A GPU job: 4 sizes, 4 layers, longer training, the paper's 10 samples.
    "full": Config(widths=(64, 128, 256, 384), n_layer=4, n_head=4, context=128,
                   train=_train(5000, 64, 1e-3, 512, 500), n_samples=10, eval_windows=256),
}


# ----------------------------------------------------------------------------- evaluation
def word_targets(x_BT: np.ndarray, y_BT: np.ndarray, is_letter_V: np.ndarray):
    """Whole words inside the windows: (letter target positions [W, Lmax] padded with -1,
    end position [W]) as flat indices into [B*T]. Target t predicts sequence position t+1."""
    B, T = x_BT.shape
    letters, ends = [], []
    for b in range(B):
        seq = np.concatenate([x_BT[b], y_BT[b, -1:]])
        alpha = is_letter_V[seq]
        p = 1
        while p <= T:
            if alpha[p] and not alpha[p - 1]:
                q = p
                while q <= T and alpha[q]:
                    q += 1
                if q <= T:  # the word ends inside the window
                    letters.append([b * T + t for t in range(p - 1, q - 1)])
                    ends.append(b * T + q - 1)
                p = q
            else:
                p += 1
    if not letters:
        raise OntogenyError("the validation windows hold no whole word; use more eval_windows or a longer context")
    width = max(len(w) for w in letters)
    padded = np.full((len(letters), width), -1, np.int32)
    for i, w in enumerate(letters):
        padded[i, :len(w)] = w
    return padded, np.asarray(ends, np.int32)


@functools.lru_cache(maxsize=None)
def _eval_fn(model_config: gpt.GPTConfig):
    def evaluate(params, batch):
        logits, _ = gpt.apply(params, batch["x"], model_config)
        pred = jnp.argmax(logits, -1).reshape(-1)
        right = pred == batch["y"].reshape(-1)
        right_pad = jnp.concatenate([right, jnp.ones((1,), bool)])
        letters = jnp.where(batch["letters"] >= 0, batch["letters"], right.shape[0])
        word_ok = right_pad[letters].all(1) & ~batch["is_letter"][pred[batch["ends"]]]
        return {"val_loss": gpt.cross_entropy(logits, batch["y"]), "char_acc": right.mean(),
                "word_acc": word_ok.mean()}
    return evaluate


def evaluate_series(stacked, model_config, tokenizer, val_text, n_windows, context, seed=1234):
    """Val loss, next-char and next-word accuracy for every checkpoint (vmapped over T)."""
    ids = tokenizer.encode(val_text)
    x, y = data_lib.eval_batches(ids, 1, n_windows, context, seed=seed)[0]
    is_letter = np.array([c.isalpha() or c == "'" for c in tokenizer.chars])
    letters, ends = word_targets(x, y, is_letter)
    batch = {"x": x, "y": y, "letters": letters, "ends": ends, "is_letter": is_letter}
    return checkpoints.map_stack(_eval_fn(model_config), stacked, batch)


# ----------------------------------------------------------------------------- study
def resolve(config: Config) -> dict:
    """What `run` runs, references checked before anything is created: one pretrain run per width
    (as `experiments.pretrain.resolve` sees it: model, every training key, corpus settings), the
    optional extra run (checked: model, tokenizer, a step-0 checkpoint, width >= n_resid), the
    multifractal settings and the study's own keys."""
    from experiments import pretrain

    runs = {f"d{w}": pretrain.resolve(pretrain.PretrainConfig(
        model=gpt.GPTConfig(context=config.context, n_layer=config.n_layer, n_head=config.n_head, d_model=w),
        train=config.train, data=config.data)) for w in config.widths}
    if config.pretrain_run:
        ref = pretrain.pretrain_reference(config.pretrain_run, "")
        require(ref["steps"][0] == 0, f"pretrain_run={config.pretrain_run!r} has no step-0 checkpoint; E(t) "
                                      f"is defined relative to initialisation")
        require(config.n_resid <= ref["model"].d_model,
                f"n_resid={config.n_resid} exceeds d_model={ref['model'].d_model} of pretrain_run")
        runs["pretrain_run"] = {k: v for k, v in ref.items() if k != "steps"}
    folded = ("widths", "n_layer", "n_head", "context", "train", "data", "mfa", "pretrain_run")
    study = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in folded}
    return {"runs": runs, "mfa": config.mfa, "study": study}


def _spearman(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(scipy.stats.spearmanr(a[ok], b[ok]).statistic)


def _models(config: Config, folder: RunFolder):
    """[(label, run folder)] for every size, training the missing ones."""
    from experiments.pretrain import PretrainConfig, ensure_pretrain

    if config.pretrain_run:  # check it before minutes of training, not after
        checkpoints.load_model_config(config.pretrain_run)
        data_lib.load_tokenizer(config.pretrain_run)
    runs = []
    for width in config.widths:
        pc = PretrainConfig(model=gpt.GPTConfig(context=config.context, n_layer=config.n_layer,
                                                n_head=config.n_head, d_model=width),
                            train=config.train, data=config.data)
        runs.append((f"d{width}", ensure_pretrain(folder.sub(f"model-d{width}").root, pc, preset=f"neuromfa-d{width}")))
    if config.pretrain_run:
        runs.append(("pretrain_run", Path(config.pretrain_run)))
    return runs


def analyse_model(run_dir: Path, config: Config, val_text: str) -> dict:
    """Everything per checkpoint for one model: spectra, control spectra, evaluation."""
    model_config = checkpoints.load_model_config(run_dir)
    tokenizer = data_lib.load_tokenizer(run_dir)
    steps, stacked = checkpoints.load_stack(run_dir)
    if steps[0] != 0:
        raise OntogenyError(f"{run_dir} has no step-0 checkpoint; E(t) is defined relative to initialisation")
    require(config.n_resid <= model_config.d_model, f"n_resid={config.n_resid} exceeds d_model of {run_dir}")
    idx = neunet.sample_indices(config.sample_seed, model_config, config.n_samples, config.n_resid, config.n_mlp)
    spectra = mf.series_spectra(stacked, idx, config.mfa)
    # Fresh noise per checkpoint and per draw; the draws are pooled with the samples.
    rng = np.random.default_rng(config.control_seed)
    draws = [mf.series_spectra(mf.gaussian_like(stacked, rng), idx, config.mfa) for _ in range(config.control_draws)]
    control = {k: np.concatenate([d[k] for d in draws], axis=1) for k in draws[0]}
    evals = evaluate_series(stacked, model_config, tokenizer, val_text, config.eval_windows, model_config.context)
    first = checkpoints.unstack_tree(stacked, 0)
    n_params = gpt.n_params(first, non_embedding=True) - first["wte"].size  # blocks + final norm
    return {"steps": steps, "model": model_config, "n_params": int(n_params), "spectra": spectra,
            "summary": mf.summarize(spectra), "control": mf.summarize(control), "control_spectra": control,
            "eval": {k: np.asarray(v, float) for k, v in evals.items()}}


def run(config: Config, folder: RunFolder) -> dict:
    t0 = time.perf_counter()
    corpus = data_lib.load_corpus(config.data)
    results = {}
    logged = {(r.get("model"), r.get("step")) for r in folder.read_metrics()}  # a rerun does not log twice
    for label, run_dir in tqdm(_models(config, folder), desc="neuromfa analysis", unit="model", leave=False):
        res = analyse_model(run_dir, config, corpus.val_text)
        results[label] = res
        s, c, e = res["summary"], res["control"], res["eval"]
        for t, step in enumerate(res["steps"]):
            if (label, int(step)) in logged:
                continue
            folder.log({"model": label, "n_params": res["n_params"], "step": int(step),
                        "alpha0": s["alpha0"][t], "width": s["width"][t], "emergence": s["emergence"][t],
                        "control_alpha0": c["alpha0"][t], "control_width": c["width"][t],
                        "control_emergence": c["emergence"][t], "mean_abs_w": s["mean_abs_w"][t],
                        "strength": s["strength"][t], "n_used": s["n_used"][t],
                        **{k: v[t] for k, v in e.items()}})
    order = sorted(results, key=lambda k: results[k]["n_params"])
    largest = results[order[-1]]
    plot_all(results, order, folder)
    return {**_summary(results, order, largest), "wall_s": time.perf_counter() - t0}


def _partial(r_xy, r_xz, r_yz) -> float:
    """Partial correlation of x and y given z, from the three pairwise (rank) correlations."""
    denom = math.sqrt(max((1 - r_xz ** 2) * (1 - r_yz ** 2), 0.0))
    return float((r_xy - r_xz * r_yz) / denom) if denom > 1e-9 else float("nan")


def _correlations(rows: dict) -> dict:
    """Spearman of E and of each baseline against val loss and next-word accuracy, plus the
    partial Spearman of each given mean |w| (what a measure adds beyond the weight scale)."""
    out = {}
    for name in ("emergence", "alpha0", "width", "mean_abs_w", "strength", "control_emergence"):
        out[name] = {}
        for target in ("val_loss", "word_acc", "char_acc"):
            r = _spearman(rows[name], rows[target])
            out[name][f"vs_{target}"] = stats.defined(r)  # null where a series is constant
            if name != "mean_abs_w":
                out[name][f"vs_{target}_given_mean_abs_w"] = stats.defined(_partial(
                    r, _spearman(rows[name], rows["mean_abs_w"]), _spearman(rows[target], rows["mean_abs_w"])))
    return out


def _rows(res_list) -> dict:
    cat = lambda f: np.concatenate([f(r) for r in res_list])
    return {"emergence": cat(lambda r: r["summary"]["emergence"]), "alpha0": cat(lambda r: r["summary"]["alpha0"]),
            "width": cat(lambda r: r["summary"]["width"]), "mean_abs_w": cat(lambda r: r["summary"]["mean_abs_w"]),
            "strength": cat(lambda r: r["summary"]["strength"]),
            "control_emergence": cat(lambda r: r["control"]["emergence"]),
            **{k: cat(lambda r, k=k: r["eval"][k]) for k in ("val_loss", "word_acc", "char_acc")}}


def _resampled_means(series_TS, counts_BS) -> np.ndarray:
    """[B, T] means over the resampled samples (NaN samples of a checkpoint left out)."""
    x = np.asarray(series_TS, np.float64)
    ok = np.isfinite(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (counts_BS @ np.where(ok, x, 0.0).T) / (counts_BS @ ok.T)


def intervals(res: dict, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Intervals for one model's headline numbers, bootstrap over its network samples (the
    same sampled neurons at every checkpoint, so first/last comparisons are paired); the
    Gaussian control's pooled draws are resampled independently. [choice] E is recomputed
    from the resampled sample-mean alpha0 and width, as `mf.summarize` forms it."""
    sp = res["spectra"]
    counts = stats.resample_counts(np.asarray(sp["alpha0"]).shape[1], n_boot, seed)
    a, w = _resampled_means(sp["alpha0"], counts), _resampled_means(sp["width"], counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        e = (w / w[:, :1]) * np.log(a[:, :1] / a)
    out = {"n_network_samples": int(counts.shape[1]),
           "alpha0_first_ci": stats.quantile_ci(a[:, 0], level), "alpha0_last_ci": stats.quantile_ci(a[:, -1], level),
           "alpha0_change_ci": stats.quantile_ci(a[:, -1] - a[:, 0], level),
           "width_first_ci": stats.quantile_ci(w[:, 0], level), "width_last_ci": stats.quantile_ci(w[:, -1], level),
           "width_change_ci": stats.quantile_ci(w[:, -1] - w[:, 0], level), "emergence_last_ci": stats.quantile_ci(e[:, -1], level)}
    cs = res.get("control_spectra")
    if cs is not None:
        cc = stats.resample_counts(np.asarray(cs["alpha0"]).shape[1], n_boot, seed + 1)
        ca, cw = _resampled_means(cs["alpha0"], cc), _resampled_means(cs["width"], cc)
        with np.errstate(invalid="ignore", divide="ignore"):
            ce = (cw[:, -1] / cw[:, 0]) * np.log(ca[:, 0] / ca[:, -1])
        out.update({"emergence_control_last_ci": stats.quantile_ci(ce, level),
                    "emergence_minus_control_last_ci": stats.quantile_ci(e[:, -1] - ce, level)})
    rows = _rows([res])
    out["spearman_emergence_vs_val_loss_ci"] = stats.correlation_ci(rows["emergence"], rows["val_loss"],
                                                                    "spearman", n_boot=n_boot, level=level)
    return out


def _summary(results, order, largest) -> dict:
    s, c, e = largest["summary"], largest["control"], largest["eval"]
    corr = _correlations(_rows([largest]))
    pooled = _correlations(_rows([results[k] for k in order]))
    rows = _rows([results[k] for k in order])
    last_E = [float(results[k]["summary"]["emergence"][-1]) for k in order]
    sizes = [results[k]["n_params"] for k in order]
    return {
        "models": order, "n_params_by_size": sizes,
        "steps": [int(x) for x in largest["steps"]],
        "alpha0_first": float(s["alpha0"][0]), "alpha0_last": float(s["alpha0"][-1]),
        "width_first": float(s["width"][0]), "width_last": float(s["width"][-1]),
        "emergence_last": float(s["emergence"][-1]),
        "emergence_control_last": float(c["emergence"][-1]),
        "control_alpha0_first": float(c["alpha0"][0]), "control_alpha0_last": float(c["alpha0"][-1]),
        "control_width_first": float(c["width"][0]), "control_width_last": float(c["width"][-1]),
        "spearman_emergence_vs_val_loss": corr["emergence"]["vs_val_loss"],
        "spearman_emergence_vs_word_acc": corr["emergence"]["vs_word_acc"],
        "spearman_pooled_emergence_vs_val_loss": pooled["emergence"]["vs_val_loss"],
        "spearman_pooled_mean_abs_w_vs_val_loss": pooled["mean_abs_w"]["vs_val_loss"],
        "partial_spearman_pooled_emergence_vs_val_loss_given_mean_abs_w":
            pooled["emergence"]["vs_val_loss_given_mean_abs_w"],
        "partial_spearman_pooled_emergence_vs_word_acc_given_mean_abs_w":
            pooled["emergence"]["vs_word_acc_given_mean_abs_w"],
        "spearman_largest": corr, "spearman_pooled_over_sizes": pooled,
        "emergence_last_by_size": last_E,
        "emergence_control_last_by_size": [float(results[k]["control"]["emergence"][-1]) for k in order],
        "spearman_emergence_last_vs_log_size": stats.defined(_spearman(np.log(sizes), last_E)),
        "val_loss_last_by_size": [float(results[k]["eval"]["val_loss"][-1]) for k in order],
        "word_acc_last_by_size": [float(results[k]["eval"]["word_acc"][-1]) for k in order],
        "val_loss_last": float(e["val_loss"][-1]), "word_acc_last": float(e["word_acc"][-1]),
        "n_used_nodes_last": float(s["n_used"][-1]),
        "largest_model": order[-1], "largest_n_params": int(largest["n_params"]),
        "emergence_minus_control_last": float(s["emergence"][-1] - c["emergence"][-1]),
        "alpha0_change": float(s["alpha0"][-1] - s["alpha0"][0]), "width_change": float(s["width"][-1] - s["width"][0]),
        **intervals(largest),
        "spearman_pooled_emergence_vs_val_loss_ci": stats.correlation_ci(rows["emergence"], rows["val_loss"], "spearman"),
    }


# ----------------------------------------------------------------------------- figures
def plot_all(results, order, folder: RunFolder) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    colors = plt.cm.plasma(np.linspace(0.0, 0.8, len(order)))
    xstep = lambda steps: np.maximum(steps, 0.5)  # step 0 shown at 0.5 on the log axis

    # f(alpha) spectra coloured by step, one panel per size (sample-averaged alpha and f).
    fig, axes = plt.subplots(1, len(order), figsize=(4 * len(order), 3.6), squeeze=False)
    for ax, label in zip(axes[0], order):
        r = results[label]
        norm = matplotlib.colors.LogNorm(vmin=0.5, vmax=max(r["steps"][-1], 1))
        for t, step in enumerate(r["steps"]):
            a = np.nanmean(r["spectra"]["alpha"][t], 0)
            f = np.nanmean(r["spectra"]["f"][t], 0)
            ax.plot(a, f, color=plt.cm.viridis(norm(max(step, 0.5))), lw=1)
        ax.set(title=f"{label} ({r['n_params']:,} params)", xlabel="alpha", ylabel="f(alpha)")
        fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=ax, label="step")
    _save(fig, folder.figure("spectra"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for col, label in zip(colors, order):
        r = results[label]
        for ax, key in zip(axes, ("alpha0", "width")):
            ax.plot(xstep(r["steps"]), r["summary"][key], "o-", ms=3, color=col, label=label)
            ax.plot(xstep(r["steps"]), r["control"][key], "--", color=col, alpha=0.6)
    for ax, key in zip(axes, ("alpha0 (regularity)", "width w (heterogeneity)")):
        ax.set(xscale="log", xlabel="step (0 at 0.5)", ylabel=key, title=f"{key}; dashed: Gaussian control")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels collide at legible sizes
        ax.legend(fontsize=8)
    _save(fig, folder.figure("alpha0_width"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for col, label in zip(colors, order):
        r = results[label]
        axes[0].plot(xstep(r["steps"]), r["summary"]["emergence"], "o-", ms=3, color=col, label=label)
        axes[0].plot(xstep(r["steps"]), r["control"]["emergence"], "--", color=col, alpha=0.6)
        axes[1].plot(xstep(r["steps"]), r["eval"]["word_acc"], "o-", ms=3, color=col, label=label)
    axes[0].set(xscale="log", xlabel="step", ylabel="E(t)", title="degree of emergence; dashed: Gaussian control")
    axes[1].set(xscale="log", xlabel="step", ylabel="next-word accuracy", title="downstream: next-word accuracy")
    for ax in axes:
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    for ax in axes:
        ax.legend(fontsize=8)
    _save(fig, folder.figure("emergence"))

    sizes = [results[k]["n_params"] for k in order]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(sizes, [results[k]["summary"]["emergence"][-1] for k in order], "o-", label="E (trained weights)")
    ax.plot(sizes, [results[k]["control"]["emergence"][-1] for k in order], "s--", label="E (Gaussian control)")
    ax.axhline(0, color="gray", lw=0.5)
    ax.set(xscale="log", xlabel="non-embedding parameters", ylabel="E at the last step", title="E against model size")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend()
    _save(fig, folder.figure("emergence_vs_size"))

    rows = _rows([results[k] for k in order])
    corr = _correlations(rows)
    names = ["emergence", "control_emergence", "alpha0", "width", "mean_abs_w", "strength"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for col, label in zip(colors, order):
        r = results[label]
        axes[0].plot(r["summary"]["emergence"], r["eval"]["val_loss"], "o", ms=4, color=col, label=label)
    axes[0].set(xlabel="E", ylabel="val loss", title="E against validation loss (all sizes, all steps)")
    axes[0].legend(fontsize=8)
    pos = np.arange(len(names))
    for off, key, lab in ((-0.2, "vs_val_loss", "vs val loss"), (0.2, "vs_word_acc", "vs next-word acc")):
        axes[1].bar(pos + off, [corr[n][key] for n in names], 0.4, label=lab)
    axes[1].set_xticks(pos, ["E", "E control", "alpha0", "width", "mean|w|", "w. degree"], fontsize=8)
    axes[1].axhline(0, color="gray", lw=0.5)
    axes[1].set(ylabel="Spearman rho (pooled)", title="E beside simple baselines")
    axes[1].legend(fontsize=8)
    _save(fig, folder.figure("correlations"))


def _save(fig, path):
    from experiments import plots

    plots.save(fig, path)


def findings(summary: dict) -> list[str]:
    """The conclusions of a NeuroMFA summary, with intervals and verdicts."""
    n = summary.get("n_network_samples", "?")
    model = f"{summary.get('largest_model', 'the largest model')} ({summary.get('largest_n_params', 0):,} params)"

    def change(key, rises_word, falls_word):
        ci = summary.get(f"{key}_change_ci")
        if ci is None:
            return "no interval for the change"
        return (rises_word if ci[0] > 0 else falls_word) if stats.excludes(ci) else "the change is within the noise"

    out = [f"In {model}, alpha0 went {stats.ci_text(summary, 'alpha0_first', 3)} -> "
           f"{stats.ci_text(summary, 'alpha0_last', 3)} ({change('alpha0', 'it rose', 'it fell: more regular')}) and "
           f"the spectrum width {stats.ci_text(summary, 'width_first', 3)} -> {stats.ci_text(summary, 'width_last', 3)} "
           f"({change('width', 'it widened: more heterogeneous', 'it narrowed')}); bootstrap over {n} network "
           f"samples of one training seed per size, so the intervals are coarse."]
    d = summary.get("emergence_minus_control_last_ci")
    if d is None:
        verdict = "no interval for the difference"
    elif d[0] > 0:
        verdict = f"E exceeds the control by {summary['emergence_minus_control_last']:.3f} [{d[0]:.3f}, {d[1]:.3f}]"
    else:
        verdict = (f"the difference {summary['emergence_minus_control_last']:.3f} [{d[0]:.3f}, {d[1]:.3f}] does not "
                   f"exclude 0: weight-scale growth alone (what the control has) may explain E")
    out.append(f"Degree of emergence E = {stats.ci_text(summary, 'emergence_last', 3)} against "
               f"{stats.ci_text(summary, 'emergence_control_last', 3)} for Gaussian weights of the same scales: {verdict}.")
    rho = summary.get("spearman_emergence_vs_val_loss")
    if rho is not None and np.isfinite(rho):
        ci = summary.get("spearman_emergence_vs_val_loss_ci")
        sign = ("E falls with validation loss" if ci[1] < 0 else "E rises with validation loss") \
            if ci is not None and stats.excludes(ci) else "no monotone relation with validation loss is shown"
        out.append(f"Across checkpoints, Spearman of E with validation loss is "
                   f"{stats.ci_text(summary, 'spearman_emergence_vs_val_loss')} (bootstrap over checkpoints): {sign}.")
    return out
