"""The cognitive side of Yan et al. on multiple-choice items with any number of options, for one
checkpoint of any family, every layer at once: how well the hidden states tell the right option
from the wrong ones.

For each item i and option k the model reads one text (`dynamics.mc_tasks.option_text`); h_l(i, k)
is the residual stream at its last token after the embedding (l = 0) and after every block.
Two probes per layer, both fitted on train items and scored on others:

- PCA probe (the paper's, [reconstructed]): v_l = first principal direction of the differences
  h_l(i, answer) - h_l(i, k) over the fit items' wrong options (`probes.linear.pca_direction`,
  uncentred, sign so that the mean difference projects positively); an item is answered by
  argmax over its options of v_l . h_l(i, k).
- logistic probe: a binary L2 logistic regression "is this option right" on the option states
  standardised by the fit rows (`probes.linear.fit_logistic`, scikit-learn's objective); an item is
  answered by the option of largest log-odds.

The layer is chosen without the test items ([choice]): the PCA probe's mean accuracy on two
folds of the train items (fit on one half, score the other, and back) picks it; the test
accuracies come from the fits on every train item. Items may have different numbers of options:
the host-side `layout` lists which rows to difference, fit and score (static index arrays, so
the probes of all layers and checkpoints run in one program).

Axis letters: L layers (embedding + blocks), R option rows, D width, I items, K options (the
largest count; shorter items are masked), P differences, M fit rows, E scored items, C checkpoints.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from probes import linear
from probes import mc_answers
from probes.layer_probes import hidden_features


def layout(rows_IK, valid_IK, answers_I, fit_items, eval_items) -> dict:
    """Static index arrays of one (fit, score) split: `diff_right` / `diff_wrong` [P] (rows of the
    right option and of each wrong one, fit items), `fit_rows` [M] / `fit_labels` [M], and
    `eval_rows` [E, K] / `eval_valid` [E, K] / `eval_answers` [E]."""
    rows_IK, valid_IK, answers_I = np.asarray(rows_IK), np.asarray(valid_IK, bool), np.asarray(answers_I)
    right, wrong = [], []
    for i in fit_items:
        for k in np.flatnonzero(valid_IK[i]):
            if k != answers_I[i]:
                right.append(rows_IK[i, answers_I[i]])
                wrong.append(rows_IK[i, k])
    fit_valid = valid_IK[fit_items]
    fit_rows = rows_IK[fit_items][fit_valid]
    fit_labels = (np.arange(rows_IK.shape[1])[None, :] == answers_I[fit_items][:, None])[fit_valid]
    return {"diff_right": np.asarray(right, np.int32), "diff_wrong": np.asarray(wrong, np.int32),
            "fit_rows": fit_rows.astype(np.int32), "fit_labels": fit_labels.astype(np.int32),
            "eval_rows": rows_IK[eval_items].astype(np.int32), "eval_valid": valid_IK[eval_items],
            "eval_answers": answers_I[eval_items].astype(np.int32)}


def fold_layouts(rows_IK, valid_IK, answers_I, train_items, test_items, seed: int) -> dict:
    """The three splits a checkpoint's probes use: two folds of the train items (a seeded
    permutation cut in half) and train -> test."""
    order = np.random.default_rng([seed, 67]).permutation(np.asarray(train_items))
    half = len(order) // 2
    a, b = np.sort(order[:half]), np.sort(order[half:])
    make = lambda fit, ev: layout(rows_IK, valid_IK, answers_I, fit, ev)
    return {"fold_a": make(a, b), "fold_b": make(b, a), "test": make(train_items, test_items)}


def _choose(scores_EK, lay):
    """Right/wrong [E] of argmax over each item's valid options."""
    masked = jnp.where(lay["eval_valid"], scores_EK, -jnp.inf)
    return jnp.argmax(masked, -1) == lay["eval_answers"]


def _pca(H_RD, lay):
    """The PCA direction [D] of one split's (right - wrong) differences."""
    return linear.pca_direction(H_RD[lay["diff_right"]] - H_RD[lay["diff_wrong"]])


def probe_split(H_RD, lay, C: float, n_iter: int):
    """Both probes fitted on one split's fit rows and scored on its eval items:
    (PCA right [E], logistic right [E], logistic converged)."""
    H_EKD = H_RD[lay["eval_rows"]]
    pca_right = _choose(H_EKD @ _pca(H_RD, lay), lay)
    E, K, D = H_EKD.shape
    X_fit, X_eval = linear.standardize(H_RD[lay["fit_rows"]], H_EKD.reshape(E * K, D))
    fit = linear.fit_logistic(X_fit, lay["fit_labels"], 2, C, n_iter)
    logits = linear.with_intercept(X_eval) @ fit.W
    log_right = _choose((logits[:, 1] - logits[:, 0]).reshape(E, K), lay)
    return pca_right, log_right, fit.converged


def layer_probes(H_RD, layouts: dict, C: float, n_iter: int) -> dict:
    """One layer: the PCA probe's fold accuracy for the layer choice (`pca_val`), the test items'
    right/wrong of both probes (`pca_right`, `log_right` [E]) and whether the logistic fit
    converged. [choice] Only the PCA probe is fitted on the folds (three singular value
    decompositions); the logistic probe is fitted once, on every train item, and read at the
    layer the PCA probe chose (one Newton fit a layer)."""
    val = [_choose(H_RD[layouts[f]["eval_rows"]] @ _pca(H_RD, layouts[f]), layouts[f]).mean() for f in ("fold_a", "fold_b")]
    pca_right, log_right, converged = probe_split(H_RD, layouts["test"], C, n_iter)
    return {"pca_val": (val[0] + val[1]) / 2, "pca_right": pca_right, "log_right": log_right,
            "log_converged": converged}


@functools.lru_cache(maxsize=16)
def make_checkpoint_fn(model_config, *, batch_size: int, n_new: int, C: float, n_iter: int):
    """fn(params, data) -> the measures of one checkpoint:
    `pca_val`, `log_converged` [L]; `pca_right`, `log_right` [L, E] (test items);
    `letter_logp` [E, K]; `greedy` [E, n_new] (the greedily decoded continuation).

    `data`: `option_rows` [R, S] / `option_lengths` [R] (one text per (item, option)),
    `layouts` (`fold_layouts`), `score_rows` / `score_lengths` (test prompts plus the letters'
    shared prefix), `letter_ids` [K], `prompts` / `prompt_lengths` (test prompts). One function
    object per setting (cached), so stages of one model reuse its compiled program."""
    def fn(params, data):
        H_LRD = hidden_features(params, data["option_rows"], data["option_lengths"], model_config, "last", batch_size)
        probes = jax.vmap(lambda H: layer_probes(H, data["layouts"], C, n_iter))(H_LRD)
        letter_logp = mc_answers.letter_logprobs(params, data["score_rows"], data["score_lengths"], data["letter_ids"],
                                                 model_config, batch_size)
        greedy = mc_answers.decode_rows(params, data["prompts"], data["prompt_lengths"], model_config, n_new,
                                        jax.random.PRNGKey(0), 0.0, batch_size)
        return {**probes, "letter_logp": letter_logp, "greedy": greedy}
    return fn


@functools.lru_cache(maxsize=16)
def make_decode_fn(model_config, *, batch_size: int, n_new: int):
    """fn(params, rows [N, S], lengths [N], temperature [N], key) -> continuations [N, n_new]:
    few-shot prompts (temperature 0) and repeated samples in one program."""
    def fn(params, rows, lengths, temperature, key):
        return mc_answers.decode_rows(params, rows, lengths, model_config, n_new, key, temperature, batch_size)
    return fn
