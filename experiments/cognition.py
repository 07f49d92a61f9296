"""Cognition vs expression across pretraining, SFT and RL (Yan et al., ICML 2024), at small scale.

A small GPT is pretrained on the plain-sentence facts of a synthetic knowledge world
(`dynamics.knowledge`), then fine-tuned on train-split multiple-choice items (SFT), then
trained with GRPO on a verifiable letter reward (RL). Every checkpoint of the three stages is
measured on the *test* questions:

- cognitive: linear probes on hidden states, after the embedding and after every block.
  Headline, the *value probe*: the state at the position just before the value of the fact
  sentence ("zorb lives in |"), each question in `probe_contexts` contexts of random other
  facts; one-vs-rest L2 logistic regressions over the (attribute, value) classes, fitted on
  the train questions; a test item is answered by the option whose class scores highest
  (scores averaged over the contexts). The layer is chosen on a 2-fold split of the *train*
  questions (no selection on test). [choice] The probe of Yan et al., the PCA direction of
  (correct - incorrect) differences of the last-token state of the sentence with each option
  filled in ("zorb lives in mik."), is reported beside it (`cognitive_pca_*`): in a character
  model the full stop after a value carries almost nothing about whether the value was
  right (test accuracy near chance throughout), so it cannot show what the model knows.
- expressive: the model's own first answer character after "Answer: " (greedy), which names
  one option (answers are option texts by default, letters with answer_format="letter"; see
  dynamics.knowledge); also the best of the K options' first characters (option-constrained)
  and the likelihood choice among the K fact sentences (cloze), as diagnostics.
- few-shot (k solved train items in the prompt) and repeated sampling (n samples at a
  temperature, unbiased pass@k) at the last checkpoint of each stage; pass@k also for all.
- Pearson (p-value) and Spearman between cognitive and expressive accuracy over all checkpoints.
"""
from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from dynamics import distributed
from dynamics import knowledge as kw
from dynamics import posttrain
from dynamics import stats as dstats
from dynamics import train as train_lib
from dynamics.checkpoints import load_stages, map_stack
from dynamics.data import get_batch
from dynamics.runlog import RunFolder, write_json
from experiments import plots
from experiments.config import require
from models import gpt
from probes import linear

DESCRIPTION = "cognition (probes) vs expression (answers) over pretraining, SFT and RL on a synthetic knowledge world"
STAGES = ("pretrain", "sft", "rl")


@dataclasses.dataclass(frozen=True)
class Config:
    world: kw.WorldConfig = kw.WorldConfig(n_entities=32)
    model: gpt.GPTConfig = gpt.GPTConfig(context=400, n_layer=3, n_head=4, d_model=96)
    pretrain: train_lib.TrainConfig = train_lib.TrainConfig(
        steps=800, batch_size=4, lr=8e-3, min_lr=8e-4, warmup=50, weight_decay=0.0,
        log_every=10, log_checkpoints_until=512, checkpoint_every=100)
    sft: train_lib.TrainConfig = train_lib.TrainConfig(
        steps=150, batch_size=32, lr=1e-3, min_lr=1e-4, warmup=10, weight_decay=0.0,
        log_every=10, log_checkpoints_until=128, checkpoint_every=50)
    rl: train_lib.TrainConfig = train_lib.TrainConfig(
        steps=32, batch_size=1, lr=3e-4, min_lr=3e-5, warmup=5, weight_decay=0.0,
        log_every=4, log_checkpoints_until=64, checkpoint_every=0)
    grpo: posttrain.GRPOConfig = posttrain.GRPOConfig(group_size=8, prompts_per_step=16, max_new_tokens=1,
                                                      temperature=1.0, clip_eps=0.2, kl_beta=0.02)
    pretrain_chars: int = 200_000  # characters of fact sentences in the pretraining text
    sft_replay_rows: int = 16      # pretraining-text rows mixed into each SFT batch (keeps the facts)
    probe_contexts: int = 4        # contexts of random other facts per question for the value probe
    context_facts: int = 2         # facts before the probed sentence in each context
    fewshot: tuple[int, ...] = (0, 1, 3, 5)   # solved examples in the prompt (must contain 0)
    pass_ks: tuple[int, ...] = (1, 2, 4, 8, 16)  # k of the unbiased pass@k
    n_samples: int = 16            # samples per test question for pass@k (>= max pass_ks)
    sample_temperature: float = 1.0  # temperature of those samples
    probe_C: float = 1.0           # inverse L2 strength of the logistic probes
    probe_iters: int = 15          # most Newton iterations per logistic probe (it stops once converged)
    answer_format: str = "value"   # "value" (option text) or "letter": see dynamics.knowledge
    seed: int = 0                  # seeds every stage (init, batches, rollouts: seed, +1, +2, ...) and the items

    def __post_init__(self):
        require(self.n_samples >= max(self.pass_ks, default=1) and min(self.pass_ks, default=1) >= 1,
                f"pass_ks={self.pass_ks} must lie in [1, n_samples={self.n_samples}]")
        require(0 in self.fewshot and min(self.fewshot) >= 0, f"fewshot={self.fewshot} must contain 0 (the baseline)")
        require(self.sample_temperature > 0, "sample_temperature must be > 0")
        require(self.pretrain_chars >= 1000, "pretrain_chars must be >= 1000")
        require(self.sft_replay_rows >= 0 and self.probe_contexts >= 1 and self.context_facts >= 0,
                "sft_replay_rows and context_facts must be >= 0, probe_contexts >= 1")
        require(self.answer_format in kw.FORMATS, f"answer_format={self.answer_format!r}: choose one of {kw.FORMATS}")
        world = kw.make_world(self.world)
        need = kw.prompt_length(world, max(self.fewshot)) + 1
        require(need <= self.model.context, f"{max(self.fewshot)}-shot prompts need {need} positions but "
                                            f"model.context={self.model.context}; raise it or lower fewshot")
        require(len(world.train) >= max(self.fewshot), "fewer train questions than few-shot examples")

    def unused(self) -> dict[str, str]:
        """Keys of the embedded configs this study never reads: setting one is refused."""
        after = "cognition measures its checkpoints after training, with no validation loss during it"
        why = {"seed": "cognition seeds every stage from the top-level key seed; set seed=N instead",
               "eval_every": after, "eval_batches": after}
        keys = {f"{stage}.{k}": reason for stage in STAGES for k, reason in why.items()}
        keys["rl.batch_size"] = "an RL step's batch is grpo.prompts_per_step x grpo.group_size; set those"
        keys["model.vocab_size"] = "the vocabulary is the knowledge world's characters"
        return keys


PRESETS = {
    "tiny": Config(),
    "full": Config(
        world=kw.WorldConfig(n_entities=160, n_attributes=4, n_values=8, n_options=4),
        model=gpt.GPTConfig(context=448, n_layer=6, n_head=6, d_model=192),
        pretrain=train_lib.TrainConfig(steps=4000, batch_size=32, lr=1e-3, min_lr=1e-4, warmup=100,
                                       log_every=20, log_checkpoints_until=512, checkpoint_every=500),
        sft=train_lib.TrainConfig(steps=600, batch_size=64, lr=5e-4, min_lr=5e-5, warmup=20, weight_decay=0.0,
                                  log_every=10, log_checkpoints_until=256, checkpoint_every=100),
        rl=train_lib.TrainConfig(steps=256, batch_size=1, lr=2e-4, min_lr=2e-5, warmup=10, weight_decay=0.0,
                                 log_every=4, log_checkpoints_until=128, checkpoint_every=64),
        grpo=posttrain.GRPOConfig(group_size=16, prompts_per_step=32, max_new_tokens=1, temperature=1.0,
                                  clip_eps=0.2, kl_beta=0.02),
        pretrain_chars=2_000_000),
}


def response_length(world: kw.World, fmt: str) -> int:
    """Tokens of the longest SFT response (answer and newline)."""
    V = world.config.n_values
    return max(len(kw.answer_text(world, int(q), np.arange(V), k, fmt)) for q in world.train for k in range(V)) + 1


def resolve(config: Config) -> dict:
    """What `run` runs: the world, the model (vocabulary from the world's tokenizer), per stage the
    settings `dynamics.train` reads (optimizer, loop) and the batch size this module's batch
    functions read (RL batches are prompts x group), GRPO, and the study's own keys. Keys that
    `Config.unused` names appear nowhere here (tests/test_config_contract.py checks both ways)."""
    world = kw.make_world(config.world)
    model = dataclasses.replace(config.model, vocab_size=kw.tokenizer(world).vocab_size)
    sft_length = kw.prompt_length(world, 0) + response_length(world, config.answer_format) - 1
    require(sft_length <= model.context, f"SFT rows need {sft_length} positions but model.context={model.context}; "
                                         f"raise model.context")  # checked now, not after pretraining
    stages = {s: {"optimizer": train_lib.optimizer_settings(getattr(config, s)),
                  "loop": train_lib.loop_settings(getattr(config, s), evaluated=False)} for s in STAGES}
    for s in ("pretrain", "sft"):
        stages[s]["batch_size"] = getattr(config, s).batch_size
    nested = ("world", "model", "grpo", *STAGES)
    study = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in nested}
    return {"world": config.world, "model": model, "stages": stages, "grpo": config.grpo, "study": study}


# ------------------------------------------------------------------------------ training
def train_stages(config: Config, folder: RunFolder, world: kw.World, tok, model_config: gpt.GPTConfig) -> dict:
    """Pretrain -> SFT -> RL into `folder`'s checkpoint series (each resumes or is reused)."""
    P0 = kw.prompt_length(world, 0)
    ids = tok.encode(kw.pretrain_text(world, config.pretrain_chars, config.seed))
    fmt = config.answer_format
    R = response_length(world, fmt)
    times = {}

    # pretraining: plain next-character loss on the fact sentences
    pc = config.pretrain
    opt = train_lib.make_optimizer(pc)
    state = train_lib.init_state(gpt.init_params(model_config, jax.random.PRNGKey(config.seed)), opt, config.seed)
    step = train_lib.make_train_step(train_lib.lm_loss(model_config), opt, dropout=model_config.dropout > 0)

    def pretrain_batch(s):
        x, y = get_batch(ids, config.seed, s, pc.batch_size, model_config.context)
        return {"inputs": x, "targets": y}

    t0 = time.perf_counter()
    state = train_lib.run_training(folder, "pretrain", state, step, pretrain_batch, pc, mesh=train_lib.training_mesh(pc),
                                   tokens_per_step=pc.batch_size * model_config.context)
    times["pretrain_s"] = time.perf_counter() - t0

    def random_items(s, n, stream):
        """n train items with fresh options and order: a pure function of the step."""
        rng = np.random.default_rng([config.seed, stream, s])
        qs = rng.choice(world.train, n)
        items = [kw.draw_item(world, int(q), rng) for q in qs]
        prompts = kw.left_pad([kw.format_prompt(world, int(q), o) for q, (o, _) in zip(qs, items)], tok, P0)
        return prompts, [kw.answer_text(world, int(q), o, k, fmt) for q, (o, k) in zip(qs, items)]

    # SFT: the answer after "Answer: " (and its newline), loss on the response only
    sc = config.sft
    opt = train_lib.make_optimizer(sc)
    state = train_lib.init_state(distributed.to_host(state["params"]), opt, config.seed + 1)
    step = train_lib.make_train_step(train_lib.lm_loss(model_config), opt, dropout=model_config.dropout > 0)

    def sft_batch(s):
        """SFT items (loss on the answer) plus `sft_replay_rows` windows of pretraining text (loss
        everywhere): [choice] without the replay, SFT on the train questions erased the test
        facts (cloze 0.75 -> 0.44), as the PPO-ptx mixing of InstructGPT is meant to prevent."""
        prompts, answers = random_items(s, sc.batch_size, 21)
        tokens, mask = posttrain.pack(list(prompts), [tok.encode(a + "\n") for a in answers], P0 + R - 1)
        if config.sft_replay_rows:
            x, y = get_batch(ids, config.seed + 5, s, config.sft_replay_rows, P0 + R - 1)
            tokens = np.concatenate([tokens, np.concatenate([x, y[:, -1:]], axis=1)])
            mask = np.concatenate([mask, np.ones(x.shape, np.float32)])
        return posttrain.as_batch(tokens, mask)

    t0 = time.perf_counter()
    state = train_lib.run_training(folder, "sft", state, step, sft_batch, sc, tokens_per_step=sc.batch_size * P0,
                                   mesh=train_lib.training_mesh(sc, (sc.batch_size + config.sft_replay_rows,)))
    times["sft_s"] = time.perf_counter() - t0

    # RL: GRPO against the SFT model, reward 1 when the first answer character is the right one
    rc, g = config.rl, config.grpo
    ref = jax.tree.map(jnp.asarray, distributed.to_host(state["params"]))  # this process's copy
    opt = train_lib.make_optimizer(rc)
    state = train_lib.init_state(distributed.to_host(state["params"]), opt, config.seed + 2)
    step = train_lib.make_train_step(posttrain.grpo_loss(model_config, g), opt, dropout=False)

    def prompt_fn(s):
        prompts, answers = random_items(s, g.prompts_per_step, 31)
        return prompts, tok.encode("".join(a[0] for a in answers))

    reward_fn = lambda completions, answers: (completions[:, 0] == answers).astype(np.float32)
    rollout = posttrain.make_rollout(model_config, g, reward_fn, prompt_fn, config.seed + 3)
    t0 = time.perf_counter()
    train_lib.run_training(folder, "rl", state, step, lambda s, p: rollout(s, p, ref), rc, on_policy=True,
                           mesh=train_lib.training_mesh(rc, (g.prompts_per_step * g.group_size,)))
    times["rl_s"] = time.perf_counter() - t0
    return times


# ------------------------------------------------------------------------- measurements
def hidden_and_loglik(model_config: gpt.GPTConfig):
    """fn(params, tokens [N, T], mask [N, T-1]) -> (last-token states [L+1, N, D], log p of masked targets [N])."""
    def fn(params, tokens, mask):
        logits, acts = gpt.apply(params, tokens, model_config, capture=("embed", "resid"))
        states = jnp.concatenate([acts["embed"][None, :, -1], acts["resid"][:, :, -1]], axis=0)
        logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
        tok_lp = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
        return states, (tok_lp * mask).sum(-1)
    return fn


def last_logits(model_config: gpt.GPTConfig):
    """fn(params, prompts [N, T]) -> next-token logits [N, V]."""
    def fn(params, prompts):
        return gpt.apply(params, prompts, model_config)[0][:, -1].astype(jnp.float32)
    return fn


def option_sentences(world: kw.World, tok, questions, options):
    """Fact sentences with each option filled in: tokens [N*K, T], value mask [N*K, T-1]."""
    texts, prefixes = [], []
    for q, opts in zip(questions, options):
        e, a = world.questions[q]
        for v in opts:
            sentence = kw.fact_sentence(world, e, a, int(v))
            texts.append(sentence)
            prefixes.append(len(sentence) - len(kw.value_name(a, int(v))) - 1)
    T = max(len(t) for t in texts) + 1
    tokens = kw.left_pad(texts, tok, T)
    mask = np.zeros((len(texts), T - 1), np.float32)
    for n, (t, p) in enumerate(zip(texts, prefixes)):
        mask[n, T - len(t) + p - 1:] = 1.0  # targets: the value and the full stop
    return tokens, mask


def value_contexts(world: kw.World, tok, questions, n_contexts: int, n_facts: int, seed: int) -> np.ndarray:
    """Token rows [Q * n_contexts, T]: n_facts random other facts, then the question's fact
    sentence cut just before its value ("...\nzorb lives in "), left-padded to one length."""
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


def last_states(model_config: gpt.GPTConfig):
    """fn(params, tokens [N, T]) -> last-token states after the embedding and every block [L+1, N, D]."""
    def fn(params, tokens):
        _, acts = gpt.apply(params, tokens, model_config, capture=("embed", "resid"))
        return jnp.concatenate([acts["embed"][None, :, -1], acts["resid"][:, :, -1]], axis=0)
    return fn


def value_probe_grid(H_TLQMD, classes_Q, option_classes_QK, answers_Q, train_idx, test_idx, n_classes: int,
                     C: float, n_iter: int) -> dict:
    """Value probes for every (checkpoint, layer): test accuracy [T, L] on test questions (and
    per test question, `value_test_q` [T, L, Q_test], for intervals), and validation accuracy
    [T, L] of a 2-fold split of the train questions (for layer choice).

    Each probe: one-vs-rest logistic regressions over the classes on standardised states (all
    contexts of the fit's questions); an item's answer is the option whose class has the highest
    log-odds averaged over the question's contexts. `value_converged` [T, L]: every fit of the
    probe (both folds and the final one, every class) converged."""
    M = H_TLQMD.shape[-2]
    half = len(train_idx) // 2
    folds = [(train_idx[:half], train_idx[half:]), (train_idx[half:], train_idx[:half])]

    def accuracy(H_QMD, fit_q, eval_q):
        D = H_QMD.shape[-1]
        X_fit, X_eval = linear.standardize(H_QMD[fit_q].reshape(-1, D), H_QMD[eval_q].reshape(-1, D))
        y_fit = jnp.repeat(jnp.asarray(classes_Q)[fit_q], M)
        fit = linear.fit_one_vs_rest(X_fit, y_fit, n_classes, C, n_iter)
        scores = (linear.with_intercept(X_eval) @ fit.W).reshape(len(eval_q), M, n_classes).mean(1)
        option_scores = jnp.take_along_axis(scores, jnp.asarray(option_classes_QK)[eval_q], axis=1)
        return jnp.argmax(option_scores, -1) == jnp.asarray(answers_Q)[eval_q], fit.converged  # per question

    def one(H_QMD):
        (r0, c0), (r1, c1) = (accuracy(H_QMD, f, e) for f, e in folds)
        right, converged = accuracy(H_QMD, train_idx, test_idx)
        return {"value_val": (r0.mean() + r1.mean()) / 2, "value_test": right.mean(), "value_test_q": right,
                "value_converged": c0 & c1 & converged}

    out = jax.jit(jax.vmap(jax.vmap(one)))(jnp.asarray(H_TLQMD))
    return {k: np.asarray(v) for k, v in out.items()}


def probe_grid(H_TLNKD, answers_N, train_idx, test_idx, C: float, n_iter: int) -> dict:
    """PCA and logistic probes for every (checkpoint, layer): train/test accuracies [T, L] and
    whether each logistic fit converged."""
    H = jnp.asarray(H_TLNKD)
    a_tr, a_te = jnp.asarray(answers_N[train_idx]), jnp.asarray(answers_N[test_idx])
    K = H.shape[-2]

    def one(H_NKD):
        H_tr, H_te = H_NKD[train_idx], H_NKD[test_idx]
        v, pca_test = linear.pca_probe(H_tr, a_tr, H_te, a_te)
        pca_train = linear.multiple_choice_accuracy(v, H_tr, a_tr)
        D = H_tr.shape[-1]
        y_tr = (jnp.arange(K)[None] == a_tr[:, None]).reshape(-1).astype(jnp.int32)
        X_tr, X_te = linear.standardize(H_tr.reshape(-1, D), H_te.reshape(-1, D))
        fit = linear.fit_logistic(X_tr, y_tr, 2, C, n_iter)
        logits = lambda X: linear.with_intercept(X) @ fit.W
        score = lambda X, n: (logits(X)[:, 1] - logits(X)[:, 0]).reshape(n, K)  # log-odds of "true"
        log_train = jnp.mean(jnp.argmax(score(X_tr, len(a_tr)), -1) == a_tr)
        log_test = jnp.mean(jnp.argmax(score(X_te, len(a_te)), -1) == a_te)
        return {"pca_train": pca_train, "pca_test": pca_test, "logistic_train": log_train, "logistic_test": log_test,
                "logistic_converged": fit.converged}

    out = jax.jit(jax.vmap(jax.vmap(one)))(H)
    return {k: np.asarray(v) for k, v in out.items()}


def sample_correct(logits_NV, answer_ids_N, n: int, temperature: float, seed: int) -> np.ndarray:
    """Correct answers among n samples of the next character per item: [N]."""
    logits = logits_NV / temperature
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(p, -1)
    draws = (rng.random((len(p), n, 1)) > cdf[:, None, :-1]).sum(-1)  # inverse-CDF sampling [N, n]
    return (draws == answer_ids_N[:, None]).sum(-1)


def expressive_scores(logits_TNV, answer_ids_N, candidates_NK, config: Config, seed: int) -> dict:
    """Greedy, option-constrained (best of the K options' first characters) and pass@k accuracies."""
    greedy_q = logits_TNV.argmax(-1) == answer_ids_N[None]      # [T, N] per question
    greedy = greedy_q.mean(-1)
    option_logits = np.take_along_axis(logits_TNV, np.broadcast_to(candidates_NK, logits_TNV.shape[:1] + candidates_NK.shape), -1)
    constrained = (np.take_along_axis(candidates_NK[None], option_logits.argmax(-1)[..., None], -1)[..., 0]
                   == answer_ids_N[None]).mean(-1)
    passk = {k: [] for k in config.pass_ks}
    for t, logits in enumerate(logits_TNV):
        c = sample_correct(logits, answer_ids_N, config.n_samples, config.sample_temperature, seed + t)
        for k in config.pass_ks:
            passk[k].append(float(np.mean(kw.pass_at_k(config.n_samples, c, k))))
    return {"greedy": greedy, "greedy_q": greedy_q, "constrained": constrained,
            "pass": {k: np.array(v) for k, v in passk.items()}}


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


# ------------------------------------------------------------------------------ figures
def _stage_axes(ax, labels):
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
    _stage_axes(ax, labels)
    ax.legend(fontsize=7, loc="upper left", ncol=3)
    ax.grid(alpha=0.3)
    plots.save(fig, path)


def plot_heatmap(labels, acc_TL, path, title: str) -> None:
    fig, ax = plots.plt.subplots(figsize=(9, 3))
    im = ax.imshow(acc_TL.T, aspect="auto", origin="lower", vmin=0, vmax=1, cmap="viridis")
    ax.set_yticks(range(acc_TL.shape[1]))
    ax.set_yticklabels(["embed"] + [f"block {i}" for i in range(1, acc_TL.shape[1])])
    _stage_axes(ax, labels)
    ax.set_title(title, pad=16)
    fig.colorbar(im, ax=ax, label="test accuracy")
    plots.save(fig, path)


def plot_sampling(ends: dict, config: Config, chance: float, path) -> None:
    fig, (a1, a2) = plots.plt.subplots(1, 2, figsize=(9, 3.6))
    for stage, r in ends.items():
        a1.plot(config.pass_ks, [r["pass"][k] for k in config.pass_ks], "o-", label=stage)
        a2.plot(config.fewshot, [r["fewshot"][k] for k in config.fewshot], "o-", label=stage)
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


# ---------------------------------------------------------------------------------- run
def run(config: Config, folder: RunFolder) -> dict:
    cpu0, wall0 = os.times(), time.perf_counter()
    world = kw.make_world(config.world)
    tok = kw.tokenizer(world)
    model_config = resolve(config)["model"]
    tok.save(folder.root / "tokenizer.json")
    write_json(folder.root / "model.json", model_config)
    times = train_stages(config, folder, world, tok, model_config)

    labels, stack = load_stages(folder.root, STAGES)
    T = len(labels)
    t0 = time.perf_counter()
    # evaluation set: every question with fixed options (train items feed the probes' fit)
    options, answers = kw.fixed_items(world, np.arange(len(world.questions)), config.seed)
    tokens, mask = option_sentences(world, tok, np.arange(len(world.questions)), options)
    states, loglik = map_stack(hidden_and_loglik(model_config), stack, jnp.asarray(tokens), jnp.asarray(mask))
    Q, Kopt = options.shape
    H = states.reshape(T, states.shape[1], Q, Kopt, -1)
    probes = probe_grid(H, answers, world.train, world.test, config.probe_C, config.probe_iters)
    cognitive_pca = probes["pca_test"][np.arange(T), probes["pca_train"].argmax(-1)]
    cognitive_log = probes["logistic_test"][np.arange(T), probes["logistic_train"].argmax(-1)]
    M = config.probe_contexts
    ctx = value_contexts(world, tok, np.arange(Q), M, config.context_facts, config.seed)
    V = world.config.n_values
    classes = world.questions[:, 1] * V + world.values_EA[world.questions[:, 0], world.questions[:, 1]]
    option_classes = world.questions[:, 1:2] * V + options
    vstates = map_stack(last_states(model_config), stack, jnp.asarray(ctx))          # [T, L+1, Q*M, D]
    vprobe = value_probe_grid(vstates.reshape(T, vstates.shape[1], Q, M, -1), classes, option_classes, answers,
                              world.train, world.test, world.config.n_attributes * V, config.probe_C,
                              config.probe_iters)
    best_layer = vprobe["value_val"].argmax(-1)
    cognitive = vprobe["value_test"][np.arange(T), best_layer]
    cognitive_q = vprobe["value_test_q"][np.arange(T), best_layer]                   # [T, Q_test]
    cloze = (loglik.reshape(T, Q, Kopt)[:, world.test].argmax(-1) == answers[world.test]).mean(-1)

    test_opts, test_ans = options[world.test], answers[world.test]
    fmt = config.answer_format
    answer_ids = tok.encode("".join(kw.answer_text(world, int(q), o, k, fmt)[0]
                                    for q, o, k in zip(world.test, test_opts, test_ans)))
    candidates = np.stack([tok.encode(kw.option_heads(world, int(q), o, fmt)) for q, o in zip(world.test, test_opts)])
    prompts = kw.left_pad([kw.format_prompt(world, int(q), o) for q, o in zip(world.test, test_opts)], tok,
                          kw.prompt_length(world, 0))
    logits_fn = last_logits(model_config)
    expr = expressive_scores(map_stack(logits_fn, stack, jnp.asarray(prompts)), answer_ids, candidates, config,
                             config.seed)
    expressive = expr["greedy"]

    # few-shot and pass@k at the last checkpoint of each stage
    ends = {s: max(i for i, (st, _) in enumerate(labels) if st == s) for s in STAGES}
    end_stack = jax.tree.map(lambda x: x[list(ends.values())], stack)
    fewshot = {0: expressive[list(ends.values())]}  # 0 shots: the zero-shot prompts above
    for k in (k for k in config.fewshot if k > 0):
        fp = fewshot_prompts(world, tok, world.test, test_opts, k, config.seed, fmt)
        fewshot[k] = (map_stack(logits_fn, end_stack, jnp.asarray(fp)).argmax(-1) == answer_ids[None]).mean(-1)
    end_results = {s: {"pass": {k: float(expr["pass"][k][i]) for k in config.pass_ks},
                       "fewshot": {k: float(fewshot[k][j]) for k in config.fewshot}}
                   for j, (s, i) in enumerate(ends.items())}
    eval_s = time.perf_counter() - t0

    pearson = stats.pearsonr(cognitive, expressive) if np.ptp(expressive) > 0 and np.ptp(cognitive) > 0 else (np.nan, np.nan)
    spearman = stats.spearmanr(cognitive, expressive).statistic if np.ptp(expressive) > 0 else np.nan
    for t, (stage, s) in enumerate(labels):
        folder.log({"stage": stage, "step": s, "cognitive": float(cognitive[t]), "cognitive_layer": int(best_layer[t]),
                    "cognitive_pca": float(cognitive_pca[t]), "cognitive_option_logistic": float(cognitive_log[t]), "expressive": float(expressive[t]),
                    "expressive_constrained": float(expr["constrained"][t]), "cloze": float(cloze[t]),
                    **{f"pass_at_{k}": float(expr["pass"][k][t]) for k in config.pass_ks}})

    chance = world.chance
    plot_capabilities(labels, {"cognitive (value probe)": cognitive, "cognitive (PCA probe, Yan et al.)": cognitive_pca,
                               "expressive (greedy)": expressive, "expressive (best option)": expr["constrained"],
                               f"pass@{max(config.pass_ks)}": expr["pass"][max(config.pass_ks)],
                               "cloze (likelihood of fact)": cloze}, chance, folder.figure("capabilities"),
                      n_questions=len(world.test))
    plot_heatmap(labels, vprobe["value_test"], folder.figure("probe_layers"), "value probe test accuracy per layer")
    plot_heatmap(labels, probes["pca_test"], folder.figure("probe_layers_pca"), "PCA probe test accuracy per layer")
    plot_sampling(end_results, config, chance, folder.figure("passk_fewshot"))
    plot_scatter(labels, cognitive, expressive, float(pearson[0]), float(spearman), folder.figure("cognitive_vs_expressive"))
    plots.loss_curve([r for r in folder.read_metrics() if r.get("loss") is not None], folder.figure("loss"),
                     title="pretrain / sft / rl loss")

    cpu1 = os.times()
    summary = {"chance": chance, "n_train_questions": len(world.train), "n_test_questions": len(world.test),
               "n_checkpoints": T,
               # every (checkpoint, layer) probe's Newton fits, value and option-logistic alike
               "probes_converged": int(vprobe["value_converged"].sum() + probes["logistic_converged"].sum()),
               "probes_total": int(vprobe["value_converged"].size + probes["logistic_converged"].size)}
    for s, i in ends.items():
        summary[f"cognitive_{s}"] = float(cognitive[i])
        summary[f"expressive_{s}"] = float(expressive[i])
        summary[f"cognitive_pca_{s}"] = float(cognitive_pca[i])
        summary[f"cognitive_option_logistic_{s}"] = float(cognitive_log[i])
        summary[f"expressive_constrained_{s}"] = float(expr["constrained"][i])
        summary[f"cloze_{s}"] = float(cloze[i])
        summary[f"cognitive_layer_{s}"] = int(best_layer[i])
        summary[f"pass_at_{max(config.pass_ks)}_{s}"] = end_results[s]["pass"][max(config.pass_ks)]
        summary[f"fewshot_{s}"] = end_results[s]["fewshot"]
    gains = {s: max((r["fewshot"][k] - r["fewshot"][0] for k in config.fewshot if k > 0), default=0.0)
             for s, r in end_results.items()}
    summary.update({
        # undefined (null) when a series is constant, e.g. expression stuck at 0 throughout
        "pearson_r": dstats.defined(pearson[0]), "pearson_p": dstats.defined(pearson[1]),
        "spearman_rho": dstats.defined(spearman),
        "fewshot_best_gain": gains["pretrain"], "fewshot_best_gain_per_stage": gains,
        "pass_at_k": {s: r["pass"] for s, r in end_results.items()},
        **intervals(cognitive_q, expr["greedy_q"], ends, cognitive, expressive),
        **times, "eval_s": eval_s, "wall_s": time.perf_counter() - wall0,
        "cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
    })
    return summary


# ---------------------------------------------------------------------- intervals, findings
def intervals(cognitive_TQ, expressive_TQ, ends: dict, cognitive_T, expressive_T, level: float = 0.95) -> dict:
    """95% intervals of the headline numbers, over the test questions of one training seed.

    [choice] An accuracy (each question right or wrong once) gets the Wilson interval, not the
    bootstrap, which collapses to [0, 0] at 0 of 48; a difference of two accuracies on the same
    questions gets the paired bootstrap over questions; Pearson / Spearman get the bootstrap over
    checkpoints (the correlation's units).
    """
    cog, expr = np.asarray(cognitive_TQ, np.float64), np.asarray(expressive_TQ, np.float64)
    n = cog.shape[1]
    out = {}
    for s, i in ends.items():
        out[f"cognitive_{s}_ci"] = dstats.wilson_ci(int(round(cog[i].sum())), n, level)
        out[f"expressive_{s}_ci"] = dstats.wilson_ci(int(round(expr[i].sum())), n, level)
        out[f"cognitive_minus_expressive_{s}"] = float(cog[i].mean() - expr[i].mean())
        out[f"cognitive_minus_expressive_{s}_ci"] = dstats.mean_ci(cog[i] - expr[i], level=level)
    stages = list(ends)
    for a, b in ((stages[0], stages[1]), (stages[0], stages[2]), (stages[1], stages[2])):
        d = expr[ends[b]] - expr[ends[a]]
        out[f"expressive_{b}_minus_{a}"] = float(d.mean())
        out[f"expressive_{b}_minus_{a}_ci"] = dstats.mean_ci(d, level=level)
    out["pearson_r_ci"] = dstats.correlation_ci(cognitive_T, expressive_T, "pearson", level=level)
    out["spearman_rho_ci"] = dstats.correlation_ci(cognitive_T, expressive_T, "spearman", level=level)
    return out


def _verdict(summary: dict, key: str, yes: str, no: str) -> str:
    """'+0.46 [+0.31, +0.60]: <yes>' if the interval excludes 0, else the interval and <no>."""
    ci = summary.get(f"{key}_ci")
    text = dstats.ci_text(summary, key, signed=True)
    return f"{text}: {yes}" if ci is not None and dstats.excludes(ci) else f"{text}, which includes 0: {no}"


def findings(summary: dict) -> list[str]:
    """The conclusions of a cognition summary, with intervals and verdicts."""
    s, n = summary, summary.get("n_test_questions", "?")
    gap = _verdict(s, "cognitive_minus_expressive_pretrain", "cognition precedes expression",
                   "no gap between cognition and expression is shown")
    rl = _verdict(s, "expressive_rl_minus_pretrain", "post-training taught the model to answer",
                  "no gain from post-training is shown")
    sft_rl = _verdict(s, "expressive_rl_minus_sft", "RL changed what SFT reached", "RL did not measurably change it")
    r_ci = s.get("pearson_r_ci")
    corr = ("they rise together" if r_ci and r_ci[0] > 0 else "no correlation is shown") if r_ci else "no interval"
    if s.get("pearson_r") is None or not np.isfinite(s["pearson_r"]):   # NaN is written to JSON as null
        corr_line = (f"Across {s.get('n_checkpoints', '?')} checkpoints the correlation of cognitive and expressive "
                     f"accuracy is undefined (one of them never changes).")
    else:
        corr_line = (f"Across {s.get('n_checkpoints', '?')} checkpoints cognitive and expressive accuracy correlate "
                     f"with Pearson r = {dstats.ci_text(s, 'pearson_r')} and Spearman "
                     f"{dstats.ci_text(s, 'spearman_rho')} (bootstrap over checkpoints): {corr}.")
    return [
        f"After pretraining the value probe reads {dstats.ci_text(s, 'cognitive_pretrain')} of {n} held-out questions "
        f"while the model answers {dstats.ci_text(s, 'expressive_pretrain')} (chance {s['chance']:.2f}); the "
        f"paired difference is {gap}.",
        f"The model answers {dstats.ci_text(s, 'expressive_sft')} after SFT and {dstats.ci_text(s, 'expressive_rl')} "
        f"after RL; RL minus pretraining is {rl}; RL minus SFT is {sft_rl}.",
        f"{corr_line} Intervals are over questions and checkpoints of one training seed.",
    ]


# ---------------------------------------------------------------------------- benchmark
def logistic_objective_np(W, X, y, C: float) -> float:
    """sum of binary log-losses + (1/2C)||w||^2 (intercept unpenalised), in float64: W [D+1]."""
    z = X.astype(np.float64) @ W[:-1] + W[-1]
    return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 / C * np.sum(W[:-1] ** 2))


def bench_probes(quick: bool = False) -> dict:
    """Logistic probes for T checkpoints x L layers on N examples of width D: vmapped Newton
    (`probes.linear.fit_grid(fit_logistic)`) against a scikit-learn loop on the same data.

    Reports both wall times (ours after compilation; compile time apart), the speed ratio, and
    the objective gap (ours - scikit-learn's, summed over the T x L fits; <= 0 means ours is no
    worse). Data: standardised Gaussian states with a planted direction and 10% label noise.
    """
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        from dynamics.errors import OntogenyError
        raise OntogenyError("bench probes compares against scikit-learn: pip install scikit-learn "
                            "(or the test extras, pip install -e '.[test]')") from None

    T, L, N, D = (4, 2, 2048, 64) if quick else (16, 8, 8192, 128)
    C, n_iter = 1.0, 50
    rng = np.random.default_rng(0)
    X = rng.normal(size=(T, L, N, D)).astype(np.float32)
    w_true = rng.normal(size=(T, L, D)) / np.sqrt(D) * np.linspace(0.5, 3.0, L)[None, :, None]
    y = (np.einsum("tlnd,tld->tln", X, w_true) + rng.logistic(size=(T, L, N)) > 0).astype(np.int32)
    y[:, :, 0] = 0
    y[:, :, 1] = 1  # every fit sees both classes

    fit = jax.jit(jax.vmap(jax.vmap(lambda X_, y_: linear.fit_logistic(X_, y_, 2, C, n_iter))))
    Xj, yj = jnp.asarray(X), jnp.asarray(y)
    t0 = time.perf_counter()
    jax.block_until_ready(fit(Xj, yj))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fits = jax.block_until_ready(fit(Xj, yj))
    ours_s = time.perf_counter() - t0
    W = np.asarray(fits.W)
    w_ours = W[..., 1] - W[..., 0]  # binary: log-odds of class 1 = logit 1 - logit 0

    t0 = time.perf_counter()
    w_sk = np.zeros((T, L, D + 1))
    for t in range(T):
        for l in range(L):
            clf = LogisticRegression(C=C, max_iter=1000).fit(X[t, l], y[t, l])
            w_sk[t, l] = np.r_[clf.coef_[0], clf.intercept_[0]]
    sklearn_s = time.perf_counter() - t0

    obj_ours = np.array([[logistic_objective_np(w_ours[t, l], X[t, l], y[t, l], C) for l in range(L)] for t in range(T)])
    obj_sk = np.array([[logistic_objective_np(w_sk[t, l], X[t, l], y[t, l], C) for l in range(L)] for t in range(T)])
    gap = obj_ours - obj_sk
    result = {"probes_shape": [T, L, N, D], "probes_newton_iters": n_iter, "probes_compile_s": compile_s,
              "probes_ours_s": ours_s, "probes_sklearn_s": sklearn_s, "probes_speedup": sklearn_s / ours_s,
              "probes_objective_gap_max": float(gap.max()), "probes_objective_gap_rel_max": float((gap / obj_sk).max()),
              "probes_objective_ours_le_sklearn": bool(np.all(gap <= 1e-6 * np.abs(obj_sk))),
              "probes_converged": int(np.asarray(fits.converged).sum()), "probes_total": T * L,
              "probes_newton_iters_max": int(np.asarray(fits.n_iter).max())}
    print(f"probes: T={T} x L={L} logistic fits, N={N}, D={D}: ours {ours_s:.2f} s (compile {compile_s:.1f} s), "
          f"scikit-learn loop {sklearn_s:.2f} s, speed-up {result['probes_speedup']:.1f}x; objective gap "
          f"(ours - sklearn) max {gap.max():.3g} (relative {result['probes_objective_gap_rel_max']:.2g})", flush=True)
    return result
