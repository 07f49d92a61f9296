"""What NeuroMFA's spectra are related to: downstream scores, baselines, correlations, intervals.

- `evaluate_series`: validation loss, next-character and next-word accuracy of every checkpoint
  (vmapped over C). Next-word accuracy: over val windows, the fraction of whole words (runs of
  letters/apostrophes between non-letters, `word_targets`) that greedy decoding would produce
  exactly: every letter is the argmax given the true prefix, and after the last letter the
  argmax is a non-letter (the word ends).
- `correlations`: Spearman of E, alpha0, width and the simple baselines (mean |w|, weighted
  degree, the Gaussian control's E) against val loss and accuracies, plus the partial Spearman
  given mean |w| (what a measure adds beyond the weight scale).
- `intervals`: bootstrap over one model's network samples; `summary_numbers`: the study's
  headline numbers from every model's `analyse` result.

A model's result (what `summary_numbers`, `intervals` and `rows` read) is a dict with "steps"
[C], "n_params", "spectra" / "control_spectra" (`spectrum.series_spectra` leaves [C, M, ...]),
"summary" / "control" (`spectrum.summarize`, [C]) and "eval" (`evaluate_series`, [C]).
"""
from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import numpy as np
import scipy.stats

from dynamics import checkpoints
from dynamics import data as data_lib
from dynamics import stats
from models import gpt
from models.errors import OntogenyError

TARGETS = ("val_loss", "word_acc", "char_acc")
MEASURES = ("emergence", "alpha0", "width", "mean_abs_w", "strength", "control_emergence")


# ----------------------------------------------------------------------------- downstream scores
def word_targets(x_BS: np.ndarray, y_BS: np.ndarray, is_letter_V: np.ndarray):
    """Whole words inside the windows: (letter target positions [W, Lmax] padded with -1,
    end position [W]) as flat indices into [B*S]. Target s predicts sequence position s+1."""
    B, S = x_BS.shape
    letters, ends = [], []
    for b in range(B):
        seq = np.concatenate([x_BS[b], y_BS[b, -1:]])
        alpha = is_letter_V[seq]
        p = 1
        while p <= S:
            if alpha[p] and not alpha[p - 1]:
                q = p
                while q <= S and alpha[q]:
                    q += 1
                if q <= S:  # the word ends inside the window
                    letters.append([b * S + t for t in range(p - 1, q - 1)])
                    ends.append(b * S + q - 1)
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
    """One checkpoint's scores; one function object per model, so map_stack reuses its compilation."""
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
    """Val loss, next-char and next-word accuracy for every checkpoint (vmapped over C)."""
    ids = tokenizer.encode(val_text)
    x, y = data_lib.eval_batches(ids, 1, n_windows, context, seed=seed)[0]
    is_letter = np.array([c.isalpha() or c == "'" for c in tokenizer.chars])
    letters, ends = word_targets(x, y, is_letter)
    batch = {"x": x, "y": y, "letters": letters, "ends": ends, "is_letter": is_letter}
    return checkpoints.map_stack(_eval_fn(model_config), stacked, batch)


# ----------------------------------------------------------------------------- correlations
def spearman(a, b) -> float:
    """Spearman rho over the finite pairs; NaN with fewer than 3 or a constant side."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(scipy.stats.spearmanr(a[ok], b[ok]).statistic)


def partial_correlation(r_xy, r_xz, r_yz) -> float:
    """Partial correlation of x and y given z, from the three pairwise (rank) correlations."""
    denom = math.sqrt(max((1 - r_xz ** 2) * (1 - r_yz ** 2), 0.0))
    return float((r_xy - r_xz * r_yz) / denom) if denom > 1e-9 else float("nan")


def correlations(rows_: dict) -> dict:
    """{measure: {"vs_<target>": rho, "vs_<target>_given_mean_abs_w": partial rho}} over the rows;
    None where a series is constant (the statistic is undefined)."""
    out = {}
    for name in MEASURES:
        out[name] = {}
        for target in TARGETS:
            r = spearman(rows_[name], rows_[target])
            out[name][f"vs_{target}"] = stats.defined(r)
            if name != "mean_abs_w":
                out[name][f"vs_{target}_given_mean_abs_w"] = stats.defined(partial_correlation(
                    r, spearman(rows_[name], rows_["mean_abs_w"]), spearman(rows_[target], rows_["mean_abs_w"])))
    return out


def rows(results: list[dict]) -> dict:
    """Every measure and target of the models' checkpoints, concatenated: {name: [sum of C]}."""
    cat = lambda f: np.concatenate([f(r) for r in results])
    out = {name: cat(lambda r, n=name: r["summary"][n]) for name in MEASURES if name != "control_emergence"}
    out["control_emergence"] = cat(lambda r: r["control"]["emergence"])
    return {**out, **{k: cat(lambda r, k=k: r["eval"][k]) for k in TARGETS}}


# ----------------------------------------------------------------------------- intervals
def resampled_means(series_CM, counts_BM) -> np.ndarray:
    """[B, C] means over the resampled samples (NaN samples of a checkpoint left out)."""
    x = np.asarray(series_CM, np.float64)
    ok = np.isfinite(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (counts_BM @ np.where(ok, x, 0.0).T) / (counts_BM @ ok.T)


def intervals(res: dict, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Intervals for one model's headline numbers, bootstrap over its network samples (the
    same sampled neurons at every checkpoint, so first/last comparisons are paired); the
    Gaussian control's pooled draws are resampled independently. [choice] E is recomputed
    from the resampled sample-mean alpha0 and width, as `spectrum.summarize` forms it."""
    sp = res["spectra"]
    counts = stats.resample_counts(np.asarray(sp["alpha0"]).shape[1], n_boot, seed)
    a, w = resampled_means(sp["alpha0"], counts), resampled_means(sp["width"], counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        e = (w / w[:, :1]) * np.log(a[:, :1] / a)
    ci = lambda x: stats.quantile_ci(x, level)
    out = {"n_network_samples": int(counts.shape[1]),
           "alpha0_first_ci": ci(a[:, 0]), "alpha0_last_ci": ci(a[:, -1]), "alpha0_change_ci": ci(a[:, -1] - a[:, 0]),
           "width_first_ci": ci(w[:, 0]), "width_last_ci": ci(w[:, -1]), "width_change_ci": ci(w[:, -1] - w[:, 0]),
           "emergence_last_ci": ci(e[:, -1])}
    cs = res.get("control_spectra")
    if cs is not None:
        cc = stats.resample_counts(np.asarray(cs["alpha0"]).shape[1], n_boot, seed + 1)
        ca, cw = resampled_means(cs["alpha0"], cc), resampled_means(cs["width"], cc)
        with np.errstate(invalid="ignore", divide="ignore"):
            ce = (cw[:, -1] / cw[:, 0]) * np.log(ca[:, 0] / ca[:, -1])
        out.update({"emergence_control_last_ci": ci(ce), "emergence_minus_control_last_ci": ci(e[:, -1] - ce)})
    one = rows([res])
    out["spearman_emergence_vs_val_loss_ci"] = stats.correlation_ci(one["emergence"], one["val_loss"],
                                                                    "spearman", n_boot=n_boot, level=level)
    return out


# ----------------------------------------------------------------------------- the headline numbers
def summary_numbers(results: dict, order: list[str]) -> dict:
    """The headline numbers over models `order` (smallest first; the last is the largest):
    its spectra, E against the control, correlations (its own and pooled over sizes), E against
    size, and the intervals."""
    largest = results[order[-1]]
    s, c, e = largest["summary"], largest["control"], largest["eval"]
    pooled_rows = rows([results[k] for k in order])
    corr, pooled = correlations(rows([largest])), correlations(pooled_rows)
    last = lambda part, key: [float(results[k][part][key][-1]) for k in order]
    sizes = [results[k]["n_params"] for k in order]
    return {
        "models": order, "n_params_by_size": sizes, "steps": [int(x) for x in largest["steps"]],
        "alpha0_first": float(s["alpha0"][0]), "alpha0_last": float(s["alpha0"][-1]),
        "width_first": float(s["width"][0]), "width_last": float(s["width"][-1]),
        "emergence_last": float(s["emergence"][-1]), "emergence_control_last": float(c["emergence"][-1]),
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
        "emergence_last_by_size": last("summary", "emergence"),
        "emergence_control_last_by_size": last("control", "emergence"),
        "spearman_emergence_last_vs_log_size": stats.defined(spearman(np.log(sizes), last("summary", "emergence"))),
        "val_loss_last_by_size": last("eval", "val_loss"), "word_acc_last_by_size": last("eval", "word_acc"),
        "val_loss_last": float(e["val_loss"][-1]), "word_acc_last": float(e["word_acc"][-1]),
        "n_used_nodes_last": float(s["n_used"][-1]),
        "largest_model": order[-1], "largest_n_params": int(largest["n_params"]),
        "emergence_minus_control_last": float(s["emergence"][-1] - c["emergence"][-1]),
        "alpha0_change": float(s["alpha0"][-1] - s["alpha0"][0]), "width_change": float(s["width"][-1] - s["width"][0]),
        **intervals(largest),
        "spearman_pooled_emergence_vs_val_loss_ci": stats.correlation_ci(pooled_rows["emergence"],
                                                                         pooled_rows["val_loss"], "spearman"),
    }
