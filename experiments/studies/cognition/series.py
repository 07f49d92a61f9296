"""Cognition vs expression on any checkpoint series (Yan et al. on real systems):

    python -m experiments cognition --out OUT --set run=RUN --set tasks=ITEMS.jsonl
    python -m experiments cognition --out OUT --set stages=pretrain:RUN_A,sft:RUN_B,rl:RUN_C --set tasks=...

Every checkpoint of every stage (`experiments.studies.cognition.stages`), on the held-out items
(`series_inputs`): the cognitive capability is the PCA probe of the paper at the layer chosen on
train folds, with a logistic probe beside it (`probes.mc_probes`); the expressive capability is
the option greedily decoded after "Answer:" (`max_new_tokens` tokens; named by its letter or by
its text, `probes.mc_answers.named_option`), with the letter of highest likelihood as a second
measure (`probes.mc_answers`). At the last checkpoint of each stage
also k-shot prompts (the `fewshot` k) and pass@k from `n_samples` answers sampled at
`sample_temperature` ([choice]: only there, since each sample costs a decode). Checkpoints are
streamed from disk and vmapped in chunks (`map_stack`), one compiled program per stage.
"""
from __future__ import annotations

import os
import time

import jax
import numpy as np
from tqdm.auto import tqdm

from dynamics import checkpoints
from dynamics import mc_tasks as mt
from dynamics.runlog import RunFolder
from . import figures
from . import series_inputs as si
from . import series_summary
from . import stages as stage_list
from probes import mc_answers
from probes import mc_probes
from probes.layer_probes import pad_tokens

STUDY_KEYS = ("fewshot", "pass_ks", "n_samples", "sample_temperature", "probe_C", "probe_iters", "seed",
              "test_fraction", "max_items", "max_new_tokens", "batch_size", "chunk_size")


def resolve(config) -> dict:
    """The stages (each run checked: folder, model, tokenizer, a non-empty series), the items
    (files read, every row checked, and hashed; or the world) and the study keys that apply.
    [choice] Which items each stage can read (its tokenizer, its context) is settled when the
    study starts (`series_inputs.prepare`): items a stage cannot read are dropped and counted."""
    stages = stage_list.parse(config.run, config.stages)
    task = si.load_task(config)
    unused = config.unused()
    return {"stages": [{"label": s.label, "run": s.run, "series": s.series, "steps": list(s.steps),
                        "model": checkpoints.load_model_config(s.run)} for s in stages],
            "task": task.record, "n_items": len(task.items),
            "study": {k: getattr(config, k) for k in STUDY_KEYS if k not in unused}}


def _chunk(config):
    return config.chunk_size or None


def measure_stage(config, stage, task, enc, train, test, tokenizer, model) -> dict:
    """The measures of every checkpoint of one stage, and few-shot / pass@k at its last one."""
    data = si.stage_data(task, enc, train, test, config.seed)
    fn = mc_probes.make_checkpoint_fn(model, batch_size=config.batch_size, n_new=config.max_new_tokens,
                                      C=config.probe_C, n_iter=config.probe_iters)
    _, disk = checkpoints.open_stack(stage.run, stage.steps, stage.series)
    out = checkpoints.map_stack(fn, disk, data, chunk_size=_chunk(config))
    n_choices = np.array([len(task.items[i].choices) for i in test])
    choices = [task.items[i].choices for i in test]
    out["answer"] = np.stack([mc_answers.parse_answers(g, choices, tokenizer, mt.LETTERS) for g in out["greedy"]])
    out["letter_choice"] = np.where(np.arange(out["letter_logp"].shape[-1])[None, None] < n_choices[None, :, None],
                                    out["letter_logp"], -np.inf).argmax(-1)
    out.update(at_stage_end(config, stage, task, train, test, tokenizer, model, data, enc["context"]))
    return out


def at_stage_end(config, stage, task, train, test, tokenizer, model, data, context: int) -> dict:
    """k-shot answers (greedy) and `n_samples` sampled answers per test item at the stage's last
    checkpoint, decoded in one program: {"fewshot": {k: option [E]}, "shots_used": {k: mean},
    "n_correct": [E]}."""
    n, E, choices = config.n_samples, len(test), [task.items[i].choices for i in test]
    ids, used = [], {}
    for k in (k for k in config.fewshot if k > 0):
        prompts, shots = si.fewshot_prompts(task, tokenizer, train, test, k, config.seed,
                                            context - config.max_new_tokens)
        ids += prompts
        used[k] = float(shots.mean())
    ids += [r[:m] for r, m in zip(data["prompts"], data["prompt_lengths"]) for _ in range(n)]
    rows, lengths = pad_tokens(ids, max(len(r) for r in ids))
    temperature = np.r_[np.zeros(len(used) * E), np.full(n * E, config.sample_temperature)].astype(np.float32)
    fn = mc_probes.make_decode_fn(model, batch_size=config.batch_size, n_new=config.max_new_tokens)
    _, end = checkpoints.open_stack(stage.run, stage.steps[-1:], stage.series)
    new = checkpoints.map_stack(fn, end, rows, lengths, temperature, jax.random.PRNGKey(config.seed), chunk_size=1)[0]
    picked = mc_answers.parse_answers(new, choices * len(used) + [c for c in choices for _ in range(n)], tokenizer,
                                      mt.LETTERS)
    answers = np.array([task.items[i].answer for i in test])
    fewshot = {k: picked[j * E:(j + 1) * E] for j, k in enumerate(used)}
    sampled = picked[len(used) * E:].reshape(E, n)
    return {"fewshot": fewshot, "shots_used": used, "n_correct": (sampled == answers[:, None]).sum(-1)}


def measure(config, stages, task) -> dict:
    """Every stage measured on the items every stage can read; per-checkpoint arrays concatenated
    over stages in order (`labels` [(stage, step)])."""
    prepared = si.prepare(config, stages, task)
    tokenizers, models, encoded = prepared["tokenizers"], prepared["models"], prepared["encoded"]
    train, test, dropped = prepared["train"], prepared["test"], prepared["dropped"]
    per_stage = [measure_stage(config, s, task, e, train, test, tok, m)
                 for s, e, tok, m in tqdm(list(zip(stages, encoded, tokenizers, models)), desc="cognition stages",
                                          unit="stage", leave=False)]
    answers = np.array([task.items[i].answer for i in test])
    cat = lambda key: np.concatenate([p[key] for p in per_stage])
    best = cat("pca_val").argmax(-1)
    C = len(best)
    return {"labels": [(s.label, int(step)) for s in stages for step in s.steps],
            "ends": dict(zip([s.label for s in stages], np.cumsum([len(s.steps) for s in stages]) - 1)),
            "answers": answers, "n_choices": np.array([len(task.items[i].choices) for i in test]),
            "n_train": len(train), "n_test": len(test), "n_dropped": dropped,
            "best_layer": best,
            "pca_test_CL": cat("pca_right").mean(-1), "log_test_CL": cat("log_right").mean(-1),
            "cognitive_q": cat("pca_right")[np.arange(C), best], "logistic_q": cat("log_right")[np.arange(C), best],
            "greedy_q": cat("answer") == answers[None], "answered_q": cat("answer") >= 0,
            "letter_q": cat("letter_choice") == answers[None],
            "log_converged": cat("log_converged"),
            "fewshot": {s.label: {k: p["fewshot"][k] == answers for k in p["fewshot"]} for s, p in zip(stages, per_stage)},
            "shots_used": {s.label: p["shots_used"] for s, p in zip(stages, per_stage)},
            "n_correct": {s.label: p["n_correct"] for s, p in zip(stages, per_stage)}}


def run(config, folder: RunFolder) -> dict:
    """Measure every checkpoint of the stages, log one row per checkpoint, draw, summarise."""
    cpu0, wall0 = os.times(), time.perf_counter()
    stages = stage_list.parse(config.run, config.stages)
    task = si.load_task(config)
    m = measure(config, stages, task)
    folder.metrics_path.unlink(missing_ok=True)  # a re-run recomputes: one row per checkpoint
    for t, (stage, step) in enumerate(m["labels"]):
        folder.log({"stage": stage, "step": step, "cognitive": float(m["cognitive_q"][t].mean()),
                    "cognitive_layer": int(m["best_layer"][t]), "cognitive_logistic": float(m["logistic_q"][t].mean()),
                    "expressive": float(m["greedy_q"][t].mean()), "expressive_letter": float(m["letter_q"][t].mean()),
                    "answer_rate": float(m["answered_q"][t].mean())})
    summary = series_summary.summarize(config, stages, task, m)
    figures.draw_series(folder, m, summary, config.pass_ks, config.fewshot)
    cpu1 = os.times()
    summary.update({"wall_s": time.perf_counter() - wall0,
                    "cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)})
    return summary

