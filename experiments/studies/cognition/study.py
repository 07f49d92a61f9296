"""Cognition vs expression across pretraining, SFT and RL (Yan et al., ICML 2024), in two settings.

On a checkpoint series of real systems (`--set run=RUN --set tasks=ITEMS.jsonl`, or
`--set stages=pretrain:RUN_A,sft:RUN_B,...`): every checkpoint of every stage of a run of any
family, on multiple-choice benchmark items in the paper's format (ARC, OpenBookQA, CommonsenseQA,
RACE, or plain rows; `dynamics.mc_tasks`). See `experiments.studies.cognition.series`; the
`yan2024` preset is the OLMo-2 1B stage series on ARC-Challenge. Without `run`, the study
trains and measures its own small world (the `tiny` and `full` presets):

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

This module orchestrates (config, training stages, `run`, `findings`); the measures themselves
live in `probes.cognition` (one checkpoint each, lifted over checkpoints and layers), the
figures in `experiments.studies.cognition.figures`, the probe benchmark in `experiments.bench.studies`.
"""
from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from dynamics import knowledge as kw
from dynamics import posttrain
from dynamics import stats as dstats
from dynamics import train as train_lib
from dynamics.checkpoints import load_stages, map_stack
from dynamics.runlog import RunFolder, write_json
from . import figures
from . import findings as statements
from . import series
from . import stages as stage_list
from .training import response_length, train_stages
from models.errors import require
from models import gpt
from probes import cognition as cm

DESCRIPTION = ("cognition (probes) vs expression (answers) over pretraining, SFT and RL: a synthetic knowledge world, "
               "or any checkpoint series on benchmark items")
STAGES = ("pretrain", "sft", "rl")
SERIES_KEYS = ("stages", "tasks", "test_tasks", "test_fraction", "max_items", "max_new_tokens", "batch_size",
               "chunk_size")


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
    run: str = ""                  # a run folder of any family with one or more stage series; "" = train the world's stages
    stages: str = ""               # "" = every series of run; "pretrain,sft" = those of run; "pretrain:RUN_A,sft:RUN_B" = one run each
    tasks: str = ""                # JSONL of multiple-choice items (ARC, OpenBookQA, CommonsenseQA, RACE, plain); "" = the world's
    test_tasks: str = ""           # JSONL of the held-out items; "" = a seeded split of tasks
    test_fraction: float = 0.5     # share of tasks held out when test_tasks is empty
    max_items: int = 0             # items read from each tasks file (0 = all; else a seeded sample)
    max_new_tokens: int = 2        # tokens decoded after "Answer:" to read the answer letter
    batch_size: int = 16           # texts per forward pass inside one checkpoint
    chunk_size: int = 0            # checkpoints per vmapped chunk (0: from the memory budget)

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
        require(0 < self.test_fraction < 1, f"test_fraction={self.test_fraction} must lie in (0, 1)")
        require(self.max_items >= 0 and self.chunk_size >= 0, "max_items and chunk_size must be >= 0")
        require(self.max_new_tokens >= 1 and self.batch_size >= 1, "max_new_tokens and batch_size must be >= 1")

    @property
    def on_series(self) -> bool:
        """Measure existing checkpoint series (`run` / `stages`) instead of training the world's stages."""
        return bool(self.run) or stage_list.is_paired(self.stages)

    def unused(self) -> dict[str, str]:
        """Keys this study never reads with the other settings: setting one is refused."""
        if self.on_series:
            return self._unused_on_series()
        keys = {k: "it applies to checkpoint series; set run=RUN (or stages=LABEL:RUN,...) to measure one"
                for k in SERIES_KEYS}
        return {**keys, **self._unused_training()}

    def _unused_on_series(self) -> dict[str, str]:
        trained = "run= measures existing checkpoints, so nothing is trained"
        keys = {f"{group}.{f.name}": trained for group in ("model", *STAGES, "grpo")
                for f in dataclasses.fields(getattr(self, group))}
        keys.update({k: trained for k in ("pretrain_chars", "sft_replay_rows", "probe_contexts", "context_facts")})
        keys["answer_format"] = "items on a series are answered with letters"
        if stage_list.is_paired(self.stages):
            keys["run"] = "stages names a run folder for every stage"
        if self.tasks:
            keys.update({f"world.{f.name}": "tasks gives the items" for f in dataclasses.fields(self.world)})
        else:
            why = "without tasks the knowledge world's items and its own split are used"
            keys.update({k: why for k in ("test_tasks", "test_fraction", "max_items")})
        if self.test_tasks:
            keys["test_fraction"] = "test_tasks gives the held-out items"
        return keys

    def _unused_training(self) -> dict[str, str]:
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
    # The OLMo-2 1B stage series on ARC-Challenge: pretraining branches, then SFT, DPO and RLVR, imported with
    #   python -m experiments import --model allenai/OLMo-2-0425-1B --steps olmo2-1b-stage1 --out runs/olmo2-1b
    #   python -m experiments import --model allenai/OLMo-2-0425-1B-SFT --steps 0=main --stage sft --out runs/olmo2-1b
    #   (the same for -DPO with --stage dpo and -RLVR1 with --stage rl)
    # and the items exported with the `datasets` package:
    #   d = load_dataset("allenai/ai2_arc", "ARC-Challenge"); d["train"].to_json("data/arc-challenge-train.jsonl")
    #   d["test"].to_json("data/arc-challenge-test.jsonl")
    # [choice] temperature 0.8 for pass@k, inside the paper's 0.7-1.0.
    "yan2024": Config(run="runs/olmo2-1b", tasks="data/arc-challenge-train.jsonl",
                      test_tasks="data/arc-challenge-test.jsonl", fewshot=(0, 1, 3, 5), pass_ks=(1, 2, 4, 8, 16),
                      n_samples=16, sample_temperature=0.8, probe_iters=15, max_new_tokens=2, batch_size=8),
}


def resolve(config: Config) -> dict:
    """What `run` runs: the world, the model (vocabulary from the world's tokenizer), per stage the
    settings `dynamics.train` reads (optimizer, loop) and the batch size this module's batch
    functions read (RL batches are prompts x group), GRPO, and the study's own keys. Keys that
    `Config.unused` names appear nowhere here (tests/test_config_contract.py checks both ways).
    On a checkpoint series: the stages (each checked), the items and their split
    (`experiments.studies.cognition.series.resolve`)."""
    if config.on_series:
        return series.resolve(config)
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
    unused = config.unused()
    study = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
             if f.name not in nested and f.name not in unused}
    return {"world": config.world, "model": model, "stages": stages, "grpo": config.grpo, "study": study}


# ------------------------------------------------------------------------- measurements
def measure_cognitive(config: Config, world: kw.World, tok, model_config, stack, options, answers) -> dict:
    """Value probe (layer chosen on train folds), option probes and cloze for every checkpoint."""
    C, (Q, K) = jax.tree.leaves(stack)[0].shape[0], options.shape
    tokens, mask = cm.option_sentences(world, tok, np.arange(Q), options)
    states, loglik = map_stack(cm.hidden_and_loglik(model_config), stack, jnp.asarray(tokens), jnp.asarray(mask))
    probes = cm.probe_grid(states.reshape(C, states.shape[1], Q, K, -1), answers, world.train, world.test,
                           config.probe_C, config.probe_iters)
    M = config.probe_contexts
    ctx = cm.value_contexts(world, tok, np.arange(Q), M, config.context_facts, config.seed)
    classes_Q, option_classes_QK, n_classes = cm.value_classes(world, options)
    vstates_CLND = map_stack(cm.last_states(model_config), stack, jnp.asarray(ctx))
    vprobe = cm.value_probe_grid(vstates_CLND.reshape(C, vstates_CLND.shape[1], Q, M, -1), classes_Q,
                                 option_classes_QK, answers, world.train, world.test, n_classes, config.probe_C,
                                 config.probe_iters)
    best_layer, every = vprobe["value_val"].argmax(-1), np.arange(C)
    return {"probes": probes, "vprobe": vprobe, "best_layer": best_layer,
            "cognitive": vprobe["value_test"][every, best_layer],
            "cognitive_q": vprobe["value_test_q"][every, best_layer],                      # [C, Q_test]
            "cognitive_pca": probes["pca_test"][every, probes["pca_train"].argmax(-1)],
            "cognitive_log": probes["logistic_test"][every, probes["logistic_train"].argmax(-1)],
            "cloze": (loglik.reshape(C, Q, K)[:, world.test].argmax(-1) == answers[world.test]).mean(-1)}


def measure_expressive(config: Config, world: kw.World, tok, model_config, labels, stack, options, answers) -> dict:
    """Greedy / constrained / pass@k answers for every checkpoint; few-shot and pass@k at the
    last checkpoint of each stage (`ends`: stage -> checkpoint index; `end_results`)."""
    test_opts, test_ans, fmt = options[world.test], answers[world.test], config.answer_format
    answer_ids = tok.encode("".join(kw.answer_text(world, int(q), o, k, fmt)[0]
                                    for q, o, k in zip(world.test, test_opts, test_ans)))
    candidates = np.stack([tok.encode(kw.option_heads(world, int(q), o, fmt)) for q, o in zip(world.test, test_opts)])
    prompts = kw.left_pad([kw.format_prompt(world, int(q), o) for q, o in zip(world.test, test_opts)], tok,
                          kw.prompt_length(world, 0))
    logits_fn = cm.last_logits(model_config)
    expr = cm.expressive_scores(map_stack(logits_fn, stack, jnp.asarray(prompts)), answer_ids, candidates,
                                config.pass_ks, config.n_samples, config.sample_temperature, config.seed)
    ends = {s: max(i for i, (st, _) in enumerate(labels) if st == s) for s in STAGES}
    end_stack = jax.tree.map(lambda x: x[list(ends.values())], stack)
    fewshot = {0: expr["greedy"][list(ends.values())]}  # 0 shots: the zero-shot prompts above
    for k in (k for k in config.fewshot if k > 0):
        fp = cm.fewshot_prompts(world, tok, world.test, test_opts, k, config.seed, fmt)
        fewshot[k] = (map_stack(logits_fn, end_stack, jnp.asarray(fp)).argmax(-1) == answer_ids[None]).mean(-1)
    end_results = {s: {"pass": {k: float(expr["pass"][k][i]) for k in config.pass_ks},
                       "fewshot": {k: float(fewshot[k][j]) for k in config.fewshot}}
                   for j, (s, i) in enumerate(ends.items())}
    return {"expr": expr, "expressive": expr["greedy"], "ends": ends, "end_results": end_results}


def measure(config: Config, world: kw.World, tok, model_config, labels, stack) -> dict:
    """Every measure of every checkpoint on the test questions (fixed options; the train items
    feed the probes' fit), and the correlations of cognitive and expressive accuracy."""
    options, answers = kw.fixed_items(world, np.arange(len(world.questions)), config.seed)
    m = {**measure_cognitive(config, world, tok, model_config, stack, options, answers),
         **measure_expressive(config, world, tok, model_config, labels, stack, options, answers)}
    cog, expr = m["cognitive"], m["expressive"]
    m["pearson"] = stats.pearsonr(cog, expr) if np.ptp(expr) > 0 and np.ptp(cog) > 0 else (np.nan, np.nan)
    m["spearman"] = stats.spearmanr(cog, expr).statistic if np.ptp(expr) > 0 else np.nan
    return m


# ---------------------------------------------------------------------------------- run
def log_checkpoints(folder: RunFolder, labels, m: dict, pass_ks) -> None:
    """One metrics row per checkpoint."""
    for t, (stage, s) in enumerate(labels):
        folder.log({"stage": stage, "step": s, "cognitive": float(m["cognitive"][t]),
                    "cognitive_layer": int(m["best_layer"][t]), "cognitive_pca": float(m["cognitive_pca"][t]),
                    "cognitive_option_logistic": float(m["cognitive_log"][t]), "expressive": float(m["expressive"][t]),
                    "expressive_constrained": float(m["expr"]["constrained"][t]), "cloze": float(m["cloze"][t]),
                    **{f"pass_at_{k}": float(m["expr"]["pass"][k][t]) for k in pass_ks}})


def summarize(config: Config, world: kw.World, m: dict) -> dict:
    """The headline numbers: per stage end, the correlations, few-shot gains, pass@k, intervals."""
    vprobe, probes, top = m["vprobe"], m["probes"], max(config.pass_ks)
    summary = {"text_source": f"the knowledge world's {len(world.test)} held-out questions (world seed "
                               f"{world.config.seed}, items seed {config.seed})",
               "chance": world.chance, "n_train_questions": len(world.train), "n_test_questions": len(world.test),
               "n_checkpoints": len(m["cognitive"]),
               # every (checkpoint, layer) probe's Newton fits, value and option-logistic alike
               "probes_converged": int(vprobe["value_converged"].sum() + probes["logistic_converged"].sum()),
               "probes_total": int(vprobe["value_converged"].size + probes["logistic_converged"].size)}
    for s, i in m["ends"].items():
        summary.update({f"cognitive_{s}": float(m["cognitive"][i]), f"expressive_{s}": float(m["expressive"][i]),
                        f"cognitive_pca_{s}": float(m["cognitive_pca"][i]),
                        f"cognitive_option_logistic_{s}": float(m["cognitive_log"][i]),
                        f"expressive_constrained_{s}": float(m["expr"]["constrained"][i]),
                        f"cloze_{s}": float(m["cloze"][i]), f"cognitive_layer_{s}": int(m["best_layer"][i]),
                        f"pass_at_{top}_{s}": m["end_results"][s]["pass"][top],
                        f"fewshot_{s}": m["end_results"][s]["fewshot"]})
    gains = {s: max((r["fewshot"][k] - r["fewshot"][0] for k in config.fewshot if k > 0), default=0.0)
             for s, r in m["end_results"].items()}
    summary.update({
        # undefined (null) when a series is constant, e.g. expression stuck at 0 throughout
        "pearson_r": dstats.defined(m["pearson"][0]), "pearson_p": dstats.defined(m["pearson"][1]),
        "spearman_rho": dstats.defined(m["spearman"]),
        "fewshot_best_gain": gains["pretrain"], "fewshot_best_gain_per_stage": gains,
        "pass_at_k": {s: r["pass"] for s, r in m["end_results"].items()},
        **cm.intervals(m["cognitive_q"], m["expr"]["greedy_q"], m["ends"], m["cognitive"], m["expressive"])})
    return summary


def run(config: Config, folder: RunFolder) -> dict:
    """Train the three stages, measure every checkpoint, log, draw, summarise (on a checkpoint
    series: `experiments.studies.cognition.series.run`)."""
    if config.on_series:
        return series.run(config, folder)
    cpu0, wall0 = os.times(), time.perf_counter()
    world = kw.make_world(config.world)
    tok = kw.tokenizer(world)
    model_config = resolve(config)["model"]
    tok.save(folder.root / "tokenizer.json")
    write_json(folder.root / "model.json", model_config)
    times = train_stages(config, folder, world, tok, model_config)

    labels, stack = load_stages(folder.root, STAGES)
    t0 = time.perf_counter()
    m = measure(config, world, tok, model_config, labels, stack)
    eval_s = time.perf_counter() - t0
    log_checkpoints(folder, labels, m, config.pass_ks)
    figures.draw(folder, labels, m, config.pass_ks, config.fewshot, world.chance, len(world.test))
    summary = summarize(config, world, m)
    cpu1 = os.times()
    summary.update({**times, "eval_s": eval_s, "wall_s": time.perf_counter() - wall0,
                    "cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)})
    return summary


def findings(summary: dict) -> list[str]:
    """The conclusions of a cognition summary, with intervals and verdicts."""
    return statements.series(summary) if summary.get("mode") == "series" else statements.toy(summary)
