"""`linear-origins --set run=RUN [--set pairs=JSONL]`: the word-pair geometry of a run's unembedding
at every checkpoint, for a run of any family (an imported suite or a run trained here), its
checkpoints streamed from disk through `map_stack`.

Concepts are counterfactual word pairs (`probes.word_pairs`: the built-in English set or the
user's JSONL, tokenised with the run's tokenizer); the measures, Euclidean and causal, are
`probes.word_geometry`'s. Each checkpoint gets the within-concept cosine, the cross-concept
cosine matrix and two baselines of the same checkpoint (shuffled pairs, random token pairs).
Intervals are percentile bootstrap (2000 resamples) over concepts, over random pairs for the
random baseline; a difference against the random baseline resamples both independently.
The checks, at the last checkpoint, each for both inner products (PASS only when the interval
clears the margin `margin_cos`):
  pairing        within-concept cos minus shuffled-pair cos (paired by concept) > margin
  beats random   within-concept cos minus random-pair |cos| > margin
  orthogonality  cross-concept |cos| minus random-pair |cos| < margin (no more aligned than
                 random differences are)
  training       within-concept cos at the last minus the first checkpoint > margin (the first
                 checkpoint is the untrained model when the series starts at step 0)
The emergence step is the first checkpoint whose pairing interval clears the margin.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

from dynamics import run_tokenizer, stats
from dynamics.checkpoints import map_stack, open_stack, set_memory_budget
from dynamics.data import spread
from dynamics.runlog import RunFolder, write_json
from experiments.studies import run_inputs as suite
from models.errors import require
from probes import geometry, word_geometry, word_pairs
from . import figures
from .scenarios import require_finite

KEYS = ("run", "pairs", "multi_token", "leading_space", "n_shuffles", "causal_floor", "max_checkpoints",
        "memory_budget_gb", "pairs_seed", "within_mode", "n_random_pairs", "margin_cos")  # what this mode reads
INNER = (("euclid", ""), ("causal", "causal_"))
N_BOOT = 2000


def pairs_source(config) -> str:
    return str(Path(config.pairs).resolve()) if config.pairs else word_pairs.BUILTIN_NAME


def prepare(config) -> dict:
    """The run (checked), its tokenizer, the pairs read and tokenised (at least two concepts of
    two pairs each) and the checkpoints chosen; everything `plan` and `run` read."""
    require(not config.gpt_run, "give run (word pairs on a run) or gpt_run (the latent learner's case check), not both")
    ref = suite.run_reference(config.run)
    tokenizer = run_tokenizer.load_tokenizer(config.run)
    source = pairs_source(config)
    tokenized = word_pairs.tokenize_pairs(word_pairs.read_pairs(config.pairs or None), tokenizer,
                                          multi_token=config.multi_token, leading_space=config.leading_space)
    n_vocab = min(tokenizer.vocab_size, ref["model"].vocab_size)
    require(all(t < n_vocab for ids in tokenized.items for t in ids),
            f"{config.run}'s tokenizer gives ids beyond the model's {n_vocab} unembedding rows; re-import the run "
            f"with its own tokenizer.json")
    kept = {k: v["kept"] for k, v in tokenized.report.items()}
    require(len(tokenized.names) >= 2,
            f"{len(tokenized.names)} concept(s) of {source} keep 2 or more pairs with {config.run}'s tokenizer "
            f"(pairs kept per concept: {kept}); give pairs=FILE with words it writes as one token (single "
            f"characters for a character tokenizer), or multi_token=first or mean")
    steps = np.asarray(ref["steps"])[spread(len(ref["steps"]), config.max_checkpoints)]
    return {"ref": ref, "pairs": tokenized, "n_vocab": n_vocab, "steps": steps, "source": source}


def plan(config) -> dict:
    """`resolve` in this mode: the run, the pairs (file digest and what tokenising kept), the keys read."""
    prep = prepare(config)
    path = Path(config.pairs) if config.pairs else word_pairs.BUILTIN
    return {"run": {"run": prep["ref"]["run"], "model": prep["ref"]["model"], "steps": prep["steps"].tolist()},
            "pairs": {"source": prep["source"], "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                      "kept": prep["pairs"].report},
            "study": {k: getattr(config, k) for k in KEYS}}


def pair_data(tokenized, n_vocab: int, config) -> dict:
    """The arrays every checkpoint reads: items (the pairs' words, then the random tokens), pairs,
    their shuffled re-matchings and the random pairs, all as item indices."""
    randoms = geometry.random_pairs(n_vocab, config.n_random_pairs, seed=config.pairs_seed)
    first = len(tokenized.items)
    items, item_mask = word_geometry.pack_items(tokenized.items + [(int(t),) for t in randoms.reshape(-1)])
    pairs, mask = geometry.pack_pairs(tokenized.pairs)
    return {"items": items, "item_mask": item_mask, "pairs": pairs, "mask": mask,
            "shuffled": word_geometry.shuffled_pairs(pairs, mask, config.n_shuffles, seed=config.pairs_seed + 1),
            "random": (first + np.arange(2 * len(randoms))).reshape(-1, 2).astype(np.int32)}


def _ci(draws) -> list[float] | None:
    return stats.quantile_ci(draws)


def inner_statistics(res: dict, steps, margin: float) -> dict:
    """One inner product's headline numbers with intervals (last checkpoint, and the first), the
    curves over checkpoints and the emergence step. `res`: map_stack's leaves [C, ...]."""
    w, s = np.asarray(res["within_per_concept"], np.float64), np.asarray(res["shuffled_per_concept"], np.float64)
    r, cross = np.asarray(res["random_per_pair"], np.float64), np.asarray(res["cross_cos"], np.float64)
    C, K = w.shape
    counts, rcounts = stats.resample_counts(K, N_BOOT, 0), stats.resample_counts(r.shape[1], N_BOOT, 1)
    wd, sd, rd = counts @ w[-1] / K, counts @ s[-1] / K, rcounts @ r[-1] / r.shape[1]
    xd = word_geometry.cross_abs_draws(cross[-1], counts)
    out = {"within_cos_mean": float(w[-1].mean()), "within_cos_mean_ci": _ci(wd),
           "within_cos_min": float(res["within_min"][-1]),
           "shuffled_within_cos_mean": float(s[-1].mean()), "shuffled_within_cos_mean_ci": _ci(sd),
           "within_minus_shuffled": float((w[-1] - s[-1]).mean()), "within_minus_shuffled_ci": _ci(wd - sd),
           "random_pair_abs_cos_mean": float(r[-1].mean()), "random_pair_abs_cos_mean_ci": _ci(rd),
           "within_minus_random": float(w[-1].mean() - r[-1].mean()), "within_minus_random_ci": _ci(wd - rd),
           "cross_concept_abs_cos_mean": word_geometry.cross_abs_mean(cross[-1]),
           "cross_concept_abs_cos_mean_ci": _ci(xd),
           "cross_minus_random": word_geometry.cross_abs_mean(cross[-1]) - float(r[-1].mean()),
           "cross_minus_random_ci": _ci(xd - rd),
           "within_cos_mean_first": float(w[0].mean()), "within_cos_mean_first_ci": _ci(counts @ w[0] / K),
           "within_change": float((w[-1] - w[0]).mean()), "within_change_ci": _ci(counts @ (w[-1] - w[0]) / K)}
    pairing_lo = np.quantile(counts @ (w - s).T / K, 0.025, axis=0)                  # [C]
    emerged = np.flatnonzero(pairing_lo > margin)
    out["emergence_step"] = int(steps[emerged[0]]) if len(emerged) else None
    curves = {"within": w.mean(1), "within_per_concept": w, "shuffled": s.mean(1), "random": r.mean(1),
              "cross": np.array([word_geometry.cross_abs_mean(x) for x in cross]), "pairing_lo": pairing_lo}
    return {"summary": out, "curves": curves, "cross_draws": xd}


CHECKS = (("pairing", "pairs beat shuffled pairs", "within_minus_shuffled", ">"),
          ("beats_random", "within-concept cos beats random pairs", "within_minus_random", ">"),
          ("orthogonality", "cross-concept |cos| no more than random", "cross_minus_random", "<"),
          ("training", "within-concept cos grew since the first checkpoint", "within_change", ">"))


def verdicts(summary: dict, margin: float) -> list[dict]:
    out = []
    for inner, prefix in INNER:
        for key, name, stat, relation in CHECKS:
            x, ci = summary[prefix + stat], summary[prefix + stat + "_ci"]
            passed = ci is not None and (ci[0] > margin if relation == ">" else ci[1] < margin)
            out.append({"key": f"{prefix}{key}", "name": f"{inner}: {name}", "measured": x, "ci": ci,
                        "relation": relation, "margin": margin, "passed": bool(passed)})
    return out


def format_verdict(v: dict) -> str:
    ci = "no interval" if v["ci"] is None else f"[{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}]"
    return (f"{'PASS' if v['passed'] else 'FAIL'}  {v['name']:<62} {v['measured']:+.3f} {ci} "
            f"(need {v['relation']} {v['margin']:+g})")


def run(config, folder: RunFolder) -> dict:
    """Every checkpoint's word-pair geometry, metrics rows, figures, verdicts and the summary."""
    t0 = time.perf_counter()
    set_memory_budget(int(config.memory_budget_gb * 2**30))
    prep = prepare(config)
    tokenized, model = prep["pairs"], prep["ref"]["model"]
    steps, disk = open_stack(config.run, prep["steps"])
    fn = word_geometry.unembedding_fn(model, prep["n_vocab"], float(config.causal_floor), config.within_mode)
    res = map_stack(fn, disk, pair_data(tokenized, prep["n_vocab"], config))
    per = {inner: inner_statistics(res[inner], steps, config.margin_cos) for inner, _ in INNER}
    logged = {r.get("step") for r in folder.read_metrics()}
    for c, step in enumerate(steps):
        if int(step) not in logged:
            folder.log({"step": int(step), **{inner: {k: float(v[c]) for k, v in per[inner]["curves"].items()
                                                      if k != "within_per_concept"} for inner, _ in INNER}})
    report = tokenized.report
    summary = {"mode": "run", "run": str(config.run), "family": getattr(model, "family", "gpt"),
               "text_source": prep["source"], "steps": [int(s) for s in steps], "n_checkpoints": len(steps),
               "n_vocab": prep["n_vocab"], "d_model": int(model.d_model), "concepts_kept": tokenized.names,
               "concepts_dropped": [k for k in report if k not in tokenized.names],
               "pairs_given": sum(v["given"] for v in report.values()),
               "pairs_kept": sum(len(p) for p in tokenized.pairs),
               "pairs_dropped_multi_token": sum(v["multi_token"] for v in report.values()),
               "pairs_dropped_unrepresentable": sum(v["unrepresentable"] for v in report.values()),
               "pairs_report": report, "multi_token": config.multi_token, "leading_space": config.leading_space}
    for inner, prefix in INNER:
        summary.update({prefix + k: v for k, v in per[inner]["summary"].items()})
    diff = per["causal"]["cross_draws"] - per["euclid"]["cross_draws"]
    summary["causal_minus_euclid_cross"] = summary["causal_cross_concept_abs_cos_mean"] - \
        summary["cross_concept_abs_cos_mean"]
    summary["causal_minus_euclid_cross_ci"] = _ci(diff)
    last = {inner: (np.asarray(res[inner]["within_per_concept"][-1]), np.asarray(res[inner]["shuffled_per_concept"][-1]))
            for inner, _ in INNER}
    summary["concepts"] = [{"concept": name, "pairs": len(tokenized.pairs[k]),
                            **{f"{p}{what}": float(last[inner][j][k]) for inner, p in INNER
                               for j, what in enumerate(("within", "shuffled"))}}
                           for k, name in enumerate(tokenized.names)]
    summary["verdicts"] = verdicts(summary, config.margin_cos)
    summary["predictions_passed"] = sum(v["passed"] for v in summary["verdicts"])
    summary["predictions_total"] = len(summary["verdicts"])
    require_finite(summary, fix=f"a checkpoint of {config.run} holds non-finite unembedding weights")
    write_json(folder.root / "concept_cosines.json",
               {"concepts": tokenized.names, "steps": [int(steps[0]), int(steps[-1])],
                **{inner: {"first": res[inner]["cross_cos"][0], "last": res[inner]["cross_cos"][-1]}
                   for inner, _ in INNER}})
    figures.plot_pairs_over_training(steps, {inner: per[inner]["curves"] for inner, _ in INNER}, tokenized.names,
                                     folder.figure("word_pairs_over_training"))
    figures.plot_concept_matrices(tokenized.names, res["euclid"]["cross_cos"][-1], res["causal"]["cross_cos"][-1],
                                  int(steps[-1]), folder.figure("word_pair_concept_cosines"))
    print(f"word-pair geometry of {config.run} at step {int(steps[-1])} ({len(tokenized.names)} concepts, "
          f"{summary['pairs_kept']} pairs from {prep['source']}), 95% bootstrap intervals over concepts:")
    for v in summary["verdicts"]:
        print("  " + format_verdict(v))
    summary.update({"wall_s": time.perf_counter() - t0, "max_resident_checkpoints": int(disk.max_resident)})
    return summary


def findings(summary: dict) -> list[str]:
    """Three sentences: the within-concept cosine against its baselines, cross-concept
    orthogonality under both inner products, and when the pairing first beat shuffled pairs."""
    s, t = summary, lambda k, d=3: stats.ci_text(summary, k, d)
    pairing = {p: next(v for v in s["verdicts"] if v["key"] == f"{p}pairing")["passed"] for _, p in INNER}
    verdict = ("the pairing matters under both inner products" if all(pairing.values()) else
               "the pairing matters under the " + ("Euclidean" if pairing[""] else "causal") + " inner product only"
               if any(pairing.values()) else "no concept direction beyond its two word sets is shown")
    when = {p: (f"step {s[p + 'emergence_step']}" if s[p + "emergence_step"] is not None else "no checkpoint")
            for _, p in INNER}
    return [
        f"On {s['run']} ({s['family']}, {s['n_checkpoints']} checkpoints; {len(s['concepts_kept'])} concepts, "
        f"{s['pairs_kept']} pairs from {s['text_source']}, {s['pairs_dropped_multi_token']} multi-token pairs "
        f"dropped): at step {s['steps'][-1]} the within-concept cosine is {t('within_cos_mean')} Euclidean and "
        f"{t('causal_within_cos_mean')} causal, against {t('shuffled_within_cos_mean')} / "
        f"{t('causal_shuffled_within_cos_mean')} for shuffled pairs and {s['random_pair_abs_cos_mean']:.3f} / "
        f"{s['causal_random_pair_abs_cos_mean']:.3f} |cos| for random pairs: {verdict}.",
        f"Cross-concept |cos| is {t('cross_concept_abs_cos_mean')} Euclidean and "
        f"{t('causal_cross_concept_abs_cos_mean')} causal (causal minus Euclidean "
        f"{stats.ci_text(s, 'causal_minus_euclid_cross', 3, signed=True)}), bootstrap over concepts.",
        f"Since step {s['steps'][0]} ({t('within_cos_mean_first')}) the Euclidean within-concept cosine changed by "
        f"{stats.ci_text(s, 'within_change', 3, signed=True)}; pairs first beat shuffled pairs by the margin at "
        f"{when['']} (Euclidean) and {when['causal_']} (causal).",
    ]
