"""The cognition measures of Yan et al. (ICML 2024), each written for one checkpoint (and one
layer) and lifted over checkpoints and layers by `jax.vmap` (the forward functions by
`dynamics.checkpoints.map_stack`).

Axis letters: C checkpoints, L layers (embedding + every block), Q questions, M contexts per
question, K options per item, N rows/items, D width, V vocabulary, S token positions.

- items: `option_sentences` (the fact sentence with each option filled in, for the PCA probe
  and the cloze choice), `value_contexts` (the fact sentence cut before its value, after random
  other facts, for the value probe), `fewshot_prompts`; `value_classes` names each question's
  (attribute, value) class.
- forward (one checkpoint): `hidden_and_loglik`, `last_states`, `last_logits`.
- cognitive: `value_probe` (headline) and `option_probes` (the PCA probe of the paper and a
  logistic probe on the same states) for one (checkpoint, layer); `value_probe_grid` and
  `probe_grid` lift them over [C, L].
- expressive: greedy and option-constrained answers, and unbiased pass@k from n samples of the
  next character at a temperature (`expressive_scores`; `pass_at_ks` for one checkpoint).
- `intervals`: 95% intervals of the headline numbers over the test questions.
"""
from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import knowledge as kw
from dynamics import stats as dstats
from models import gpt
from probes import linear


# ------------------------------------------------------------------------------- items
def option_sentences(world: kw.World, tok, questions, options):
    """Fact sentences with each option filled in: tokens [N*K, S], value mask [N*K, S-1]."""
    texts, prefixes = [], []
    for q, opts in zip(questions, options):
        e, a = world.questions[q]
        for v in opts:
            sentence = kw.fact_sentence(world, e, a, int(v))
            texts.append(sentence)
            prefixes.append(len(sentence) - len(kw.value_name(a, int(v))) - 1)
    S = max(len(t) for t in texts) + 1
    tokens = kw.left_pad(texts, tok, S)
    mask = np.zeros((len(texts), S - 1), np.float32)
    for n, (t, p) in enumerate(zip(texts, prefixes)):
        mask[n, S - len(t) + p - 1:] = 1.0  # targets: the value and the full stop
    return tokens, mask


def value_contexts(world: kw.World, tok, questions, n_contexts: int, n_facts: int, seed: int) -> np.ndarray:
    """Token rows [Q * n_contexts, S]: n_facts random other facts, then the question's fact
    sentence cut just before its value ("...\\nzorb lives in "), left-padded to one length."""
    texts = []
    for q in questions:
        e, a = world.questions[q]
        prefix = kw.ATTRIBUTES[a][0].split("{v}")[0].format(e=world.entities[e])
        others = np.array([i for i in range(len(world.questions)) if i != q])
        for m in range(n_contexts):
            rng = np.random.default_rng([seed, 53, int(q), m])
            facts = [kw.fact_sentence(world, *world.questions[i]) for i in rng.choice(others, n_facts, replace=False)]
            texts.append("".join(f + kw.PAD for f in facts) + prefix)
    return kw.left_pad(texts, tok, max(len(t) for t in texts))


def value_classes(world: kw.World, options_QK) -> tuple[np.ndarray, np.ndarray, int]:
    """(class of each question's true value [Q], class of each option [Q, K], number of classes):
    a class is one (attribute, value) pair, attribute * n_values + value."""
    V = world.config.n_values
    classes_Q = world.questions[:, 1] * V + world.values_EA[world.questions[:, 0], world.questions[:, 1]]
    return classes_Q, world.questions[:, 1:2] * V + options_QK, world.config.n_attributes * V


def fewshot_prompts(world: kw.World, tok, questions, options, k: int, seed: int, fmt: str = "value") -> np.ndarray:
    """k solved train items (fixed per question by the seed) before each test prompt."""
    tr_opts, tr_ans = kw.fixed_items(world, world.train, seed + 5)
    texts = []
    for q, opts in zip(questions, options):
        rng = np.random.default_rng([seed, 41, int(q)])
        pick = rng.choice(len(world.train), k, replace=False)
        shots = [(int(world.train[i]), tr_opts[i], int(tr_ans[i])) for i in pick]
        texts.append(kw.fewshot_prompt(world, int(q), opts, shots, fmt))
    return kw.left_pad(texts, tok, kw.prompt_length(world, k))


# ----------------------------------------------------------------- forward, one checkpoint
def hidden_and_loglik(model_config: gpt.GPTConfig):
    """fn(params, tokens [N, S], mask [N, S-1]) -> (last-token states [L, N, D], log p of masked targets [N])."""
    def fn(params, tokens, mask):
        logits, acts = gpt.apply(params, tokens, model_config, capture=("embed", "resid"))
        states = jnp.concatenate([acts["embed"][None, :, -1], acts["resid"][:, :, -1]], axis=0)
        logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
        tok_lp = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
        return states, (tok_lp * mask).sum(-1)
    return fn


def last_logits(model_config: gpt.GPTConfig):
    """fn(params, prompts [N, S]) -> next-token logits [N, V]."""
    def fn(params, prompts):
        return gpt.apply(params, prompts, model_config)[0][:, -1].astype(jnp.float32)
    return fn


def last_states(model_config: gpt.GPTConfig):
    """fn(params, tokens [N, S]) -> last-token states after the embedding and every block [L, N, D]."""
    def fn(params, tokens):
        _, acts = gpt.apply(params, tokens, model_config, capture=("embed", "resid"))
        return jnp.concatenate([acts["embed"][None, :, -1], acts["resid"][:, :, -1]], axis=0)
    return fn


# ------------------------------------------------------------------------------ cognitive
def _value_accuracy(H_QMD, fit_q, eval_q, classes_Q, option_classes_QK, answers_Q, n_classes, C, n_iter):
    """Fit the one-vs-rest probe on `fit_q`'s contexts, answer `eval_q`: (right [len(eval_q)], converged)."""
    M, D = H_QMD.shape[-2:]
    X_fit, X_eval = linear.standardize(H_QMD[fit_q].reshape(-1, D), H_QMD[eval_q].reshape(-1, D))
    y_fit = jnp.repeat(jnp.asarray(classes_Q)[fit_q], M)
    fit = linear.fit_one_vs_rest(X_fit, y_fit, n_classes, C, n_iter)
    scores = (linear.with_intercept(X_eval) @ fit.W).reshape(len(eval_q), M, n_classes).mean(1)
    option_scores = jnp.take_along_axis(scores, jnp.asarray(option_classes_QK)[eval_q], axis=1)
    return jnp.argmax(option_scores, -1) == jnp.asarray(answers_Q)[eval_q], fit.converged


def value_probe(H_QMD, classes_Q, option_classes_QK, answers_Q, train_idx, test_idx, n_classes: int,
                C: float, n_iter: int) -> dict:
    """The value probe of one (checkpoint, layer) on states [Q, M, D]: one-vs-rest logistic
    regressions over the classes on standardised states (all contexts of the fit's questions);
    an item's answer is the option whose class has the highest log-odds averaged over the
    question's contexts. Returns `value_val` (mean accuracy of a 2-fold split of the train
    questions, for the layer choice: no selection on test), `value_test`, `value_test_q` (per
    test question) and `value_converged` (every fit of both folds and the final one)."""
    half = len(train_idx) // 2
    folds = [(train_idx[:half], train_idx[half:]), (train_idx[half:], train_idx[:half])]
    acc = functools.partial(_value_accuracy, H_QMD, classes_Q=classes_Q, option_classes_QK=option_classes_QK,
                            answers_Q=answers_Q, n_classes=n_classes, C=C, n_iter=n_iter)
    (r0, c0), (r1, c1) = (acc(f, e) for f, e in folds)
    right, converged = acc(train_idx, test_idx)
    return {"value_val": (r0.mean() + r1.mean()) / 2, "value_test": right.mean(), "value_test_q": right,
            "value_converged": c0 & c1 & converged}


def value_probe_grid(H_CLQMD, classes_Q, option_classes_QK, answers_Q, train_idx, test_idx, n_classes: int,
                     C: float, n_iter: int) -> dict:
    """`value_probe` for every (checkpoint, layer): each key [C, L] (`value_test_q` [C, L, Q_test])."""
    one = functools.partial(value_probe, classes_Q=classes_Q, option_classes_QK=option_classes_QK,
                            answers_Q=answers_Q, train_idx=train_idx, test_idx=test_idx, n_classes=n_classes,
                            C=C, n_iter=n_iter)
    out = jax.jit(jax.vmap(jax.vmap(one)))(jnp.asarray(H_CLQMD))
    return {k: np.asarray(v) for k, v in out.items()}


def option_probes(H_NKD, answers_N, train_idx, test_idx, C: float, n_iter: int) -> dict:
    """The PCA probe of Yan et al. (first principal direction of correct - incorrect option
    states) and a binary logistic probe ("is this option true") on the last-token states [N, K, D]
    of one (checkpoint, layer): train/test accuracy of each and whether the logistic fit converged."""
    a_tr, a_te = jnp.asarray(answers_N[train_idx]), jnp.asarray(answers_N[test_idx])
    K, D = H_NKD.shape[-2:]
    H_tr, H_te = H_NKD[train_idx], H_NKD[test_idx]
    v, pca_test = linear.pca_probe(H_tr, a_tr, H_te, a_te)
    pca_train = linear.multiple_choice_accuracy(v, H_tr, a_tr)
    y_tr = (jnp.arange(K)[None] == a_tr[:, None]).reshape(-1).astype(jnp.int32)
    X_tr, X_te = linear.standardize(H_tr.reshape(-1, D), H_te.reshape(-1, D))
    fit = linear.fit_logistic(X_tr, y_tr, 2, C, n_iter)
    logits = lambda X: linear.with_intercept(X) @ fit.W
    score = lambda X, n: (logits(X)[:, 1] - logits(X)[:, 0]).reshape(n, K)  # log-odds of "true"
    log_train = jnp.mean(jnp.argmax(score(X_tr, len(a_tr)), -1) == a_tr)
    log_test = jnp.mean(jnp.argmax(score(X_te, len(a_te)), -1) == a_te)
    return {"pca_train": pca_train, "pca_test": pca_test, "logistic_train": log_train, "logistic_test": log_test,
            "logistic_converged": fit.converged}


def probe_grid(H_CLNKD, answers_N, train_idx, test_idx, C: float, n_iter: int) -> dict:
    """`option_probes` for every (checkpoint, layer): each key [C, L]."""
    one = functools.partial(option_probes, answers_N=answers_N, train_idx=train_idx, test_idx=test_idx, C=C,
                            n_iter=n_iter)
    out = jax.jit(jax.vmap(jax.vmap(one)))(jnp.asarray(H_CLNKD))
    return {k: np.asarray(v) for k, v in out.items()}


# ----------------------------------------------------------------------------- expressive
def sample_correct(logits_NV, answer_ids_N, n: int, temperature: float, seed: int) -> np.ndarray:
    """Correct answers among n samples of the next character per item: [N]."""
    logits = logits_NV / temperature
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(p, -1)
    draws = (rng.random((len(p), n, 1)) > cdf[:, None, :-1]).sum(-1)  # inverse-CDF sampling [N, n]
    return (draws == answer_ids_N[:, None]).sum(-1)


def pass_at_ks(logits_NV, answer_ids_N, pass_ks, n_samples: int, temperature: float, seed: int) -> dict:
    """Unbiased pass@k of one checkpoint (mean over items) for every k, from n_samples draws each."""
    c = sample_correct(logits_NV, answer_ids_N, n_samples, temperature, seed)
    return {k: float(np.mean(kw.pass_at_k(n_samples, c, k))) for k in pass_ks}


def expressive_scores(logits_CNV, answer_ids_N, candidates_NK, pass_ks, n_samples: int, temperature: float,
                      seed: int) -> dict:
    """Greedy (`greedy` [C], per question `greedy_q` [C, N]), option-constrained (best of the K
    options' first characters, [C]) and pass@k ({k: [C]}, checkpoint c sampled with seed + c)."""
    greedy_q = logits_CNV.argmax(-1) == answer_ids_N[None]
    cand_CNK = np.broadcast_to(candidates_NK, logits_CNV.shape[:1] + candidates_NK.shape)
    option_logits = np.take_along_axis(logits_CNV, cand_CNK, -1)
    constrained = (np.take_along_axis(candidates_NK[None], option_logits.argmax(-1)[..., None], -1)[..., 0]
                   == answer_ids_N[None]).mean(-1)
    per_c = [pass_at_ks(logits, answer_ids_N, pass_ks, n_samples, temperature, seed + c)
             for c, logits in enumerate(logits_CNV)]
    return {"greedy": greedy_q.mean(-1), "greedy_q": greedy_q, "constrained": constrained,
            "pass": {k: np.array([p[k] for p in per_c]) for k in pass_ks}}


# ------------------------------------------------------------------------------ intervals
def intervals(cognitive_CQ, expressive_CQ, ends: dict, cognitive_C, expressive_C, level: float = 0.95) -> dict:
    """95% intervals of the headline numbers, over the test questions of one training seed.
    `ends` maps each stage (any number, in order) to the index of its last checkpoint.

    [choice] An accuracy (each question right or wrong once) gets the Wilson interval, not the
    bootstrap, which collapses to [0, 0] at 0 of 48; a difference of two accuracies on the same
    questions gets the paired bootstrap over questions; Pearson / Spearman get the bootstrap over
    checkpoints (the correlation's units).
    """
    cog, expr = np.asarray(cognitive_CQ, np.float64), np.asarray(expressive_CQ, np.float64)
    n = cog.shape[1]
    out = {}
    for s, i in ends.items():
        out[f"cognitive_{s}_ci"] = dstats.wilson_ci(int(round(cog[i].sum())), n, level)
        out[f"expressive_{s}_ci"] = dstats.wilson_ci(int(round(expr[i].sum())), n, level)
        out[f"cognitive_minus_expressive_{s}"] = float(cog[i].mean() - expr[i].mean())
        out[f"cognitive_minus_expressive_{s}_ci"] = dstats.mean_ci(cog[i] - expr[i], level=level)
    for a, b in itertools.combinations(list(ends), 2):   # every earlier stage against every later one
        d = expr[ends[b]] - expr[ends[a]]
        out[f"expressive_{b}_minus_{a}"] = float(d.mean())
        out[f"expressive_{b}_minus_{a}_ci"] = dstats.mean_ci(d, level=level)
    out["pearson_r_ci"] = dstats.correlation_ci(cognitive_C, expressive_C, "pearson", level=level)
    out["spearman_rho_ci"] = dstats.correlation_ci(cognitive_C, expressive_C, "spearman", level=level)
    return out
