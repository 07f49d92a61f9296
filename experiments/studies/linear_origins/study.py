"""Origins of linear representations (Jiang et al., ICML 2024): the theory's checks and sweeps.

`run` trains the latent-concept learner (models/latent.py; its training: dynamics/latent_training.py),
keeps a log-spaced checkpoint series (saved with `dynamics.checkpoints.Series`, stage "latent"),
computes every geometry measure over the stacked series with `map_stack`, and prints each
prediction of the theory with its measured value, threshold and PASS/FAIL. With `sweep`, a
grid over (m, d, dependence strength, optimizer, weight decay, lr, seed) runs with one
compiled, vmapped training call per shape group (m, d, optimizer); results go to sweep.csv and
heatmaps. With `gpt_run`, the same unembedding check runs on a character GPT's series, with
lower/upper-case letter pairs as the concept (our analogue of the paper's LLaMA-2 check).
With `run` (a run of any family: an imported Pythia / GPT-2 / LLaMA series or a run trained here)
the latent learner is not trained: concepts given as counterfactual word pairs (`pairs`, default
the built-in English set) are measured on the run's unembedding at every checkpoint, under the
Euclidean and the causal inner product, against shuffled and random pairs (`on_run.py`).

Predictions (each with a threshold, and judged against two baselines measured in the same run at
the same d, the untrained step-0 model and random directions, with a bootstrap interval over
concepts: see experiments/studies/linear_origins/verdicts.py):
  linearity        within-concept cosine of g(y1) - g(y0), mean >= within_threshold
  orthogonality    cross-concept |cosine| of concept directions, mean <= cross_threshold
  concept-specific within-concept mean exceeds the random-pair |cos| baseline by random_margin
  embedding side   within-concept cosine of f(x1) - f(x0), mean >= embedding_threshold
  log-odds match   mean |learned - exact log-odds| (finite cells) <= logodds_threshold nats
`verdict_table` also runs the checks where the theory says they should and should not hold
(dependent concepts, Adam, d < m, too few steps, large init) and writes verdicts.md.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from dynamics import distributed, latent_training
from dynamics.checkpoints import Series, load_stack
from dynamics.runlog import RunFolder, write_json
from dynamics.schedule import checkpoint_steps
from . import on_run
from . import verdicts as lv
from experiments.cli.config import all_keys
from models.errors import require
from .figures import (gpt_case_check, plot_concept_matrix, plot_gpt, plot_histograms,
                                        plot_over_training, plot_sweep)
from .scenarios import (dependent_problem, headline_intervals, require_finite, run_sweep,
                                          seeds_and_table, sweep_grid)
from models import latent
from probes import geometry, word_pairs

DESCRIPTION = "Origins of linear representations (Jiang et al. 2024): latent-concept model, theory checks, sweeps"
STAGE = "latent"


@dataclasses.dataclass(frozen=True)
class Config:
    # the study's generator default differs from LatentConfig's: independent concepts
    problem: latent.LatentConfig = latent.LatentConfig(independent=True)  # the latent-concept generator
    learner: latent.LearnerConfig = latent.LearnerConfig()  # the learner softmax(f(x)^T g(y))
    train: latent_training.TrainConfig = latent_training.TrainConfig()  # checkpoints at 0, 1, 2, 4, ..., steps
    # measures
    within_mode: str = "pairwise"  # within-concept cosine: pairwise or to_mean
    n_random_pairs: int = 64  # random item pairs of the random-pair |cos| baseline (the learner's items, or a run's tokens)
    # predictions
    within_threshold: float = 0.9  # linearity passes when the within-concept cosine mean >= this
    cross_threshold: float = 0.2  # orthogonality: cross-concept |cos| mean <= this
    random_margin: float = 0.3  # concept-specific: within-concept mean beats random pairs by this
    embedding_threshold: float = 0.9  # embedding side: within-concept cosine of f >= this
    logodds_threshold: float = 0.15  # log-odds match: mean |learned - exact| <= this (nats)
    # baselines: a check must beat random directions and the step-0 model by these margins
    margin_cos: float = 0.05  # a cosine check must beat its baselines by this margin
    margin_logodds: float = 0.05  # the log-odds check must beat its baselines by this (nats)
    n_random_draws: int = 8  # draws of random directions averaged in the random-direction baseline
    n_seeds: int = 1  # seeds of the configured run (one vmapped call) for the spread over seeds
    # verdict table: the checks where the theory says they hold and where it says they fail
    verdict_table: bool = False  # also run the verdict table over the theory's cases
    table_strength: float = 2.0  # verdict table: DAG strength of the dependent case
    table_edge_density: float = 1.0  # verdict table: DAG edge density of the dependent case
    table_adam_lr: float = 0.01  # verdict table: learning rate of the Adam case
    table_small_d: int = 2  # verdict table: the d < m case's width
    table_few_steps: int = 16  # verdict table: steps of the too-few-steps case
    table_init_scale: float = 0.3  # verdict table: init scale of the large-init case (1.0 diverges at lr 1)
    # sweep: m x d x strength x optimizer x weight decay x lr x seed (seed also draws the DAG)
    sweep: bool = False  # also run the vmapped sweep below (--sweep)
    sweep_steps: int = 1024  # sweep: training steps per run
    sweep_m: tuple[int, ...] = (3, 4)  # sweep: concept counts m
    sweep_d: tuple[int, ...] = (4, 16)  # sweep: widths d
    sweep_strength: tuple[float, ...] = (0.0, 2.0)  # sweep: DAG strengths
    sweep_optimizers: tuple[str, ...] = ("gd", "adam")  # sweep: optimizers (gd, sgd, adam)
    sweep_weight_decay: tuple[float, ...] = (0.0, 0.01)  # sweep: weight decays
    sweep_lr_gd: tuple[float, ...] = (0.5, 1.0)  # sweep: learning rates of gd runs
    sweep_lr_sgd: tuple[float, ...] = (0.5, 1.0)  # sweep: learning rates of sgd runs
    sweep_lr_adam: tuple[float, ...] = (0.003, 0.01)  # sweep: learning rates of adam runs
    sweep_seeds: tuple[int, ...] = (0, 1)  # sweep: seeds (each also draws the DAG)
    # character GPT run folder for the case-pair check ("" = skip)
    gpt_run: str = ""  # character GPT run folder for the case-pair check (empty = skip)
    # word pairs on a run of any family: the latent learner is not trained (experiments/studies/linear_origins/on_run.py)
    run: str = ""  # run folder of any family (imported or trained here): word-pair geometry of its unembedding
    pairs: str = ""  # run=...: JSONL of concepts {"concept": name, "pairs": [[w0, w1], ...]} ("" = built-in English)
    multi_token: str = "drop"  # run=...: a word of several tokens: drop its pair, or use its first token or their mean
    leading_space: str = "prefer"  # run=...: " word" (always), "word" (never) or per pair the form that is one token
    n_shuffles: int = 8  # run=...: draws of the shuffled-pair baseline (pairs re-matched within each concept)
    causal_floor: float = 1e-6  # run=...: floor on Cov(unembedding)'s eigenvalues, relative to the largest
    pairs_seed: int = 0  # run=...: draws the random and the shuffled pairs
    max_checkpoints: int = 0  # run=...: 0 = every checkpoint, else this many spread over the series
    memory_budget_gb: float = 0.0  # run=...: host memory for streamed checkpoint chunks (0 = a quarter of free memory)

    def __post_init__(self):
        m, d = self.problem.n_concepts, self.learner.d
        require(m >= 2 and min(self.sweep_m) >= 2,
                "problem.n_concepts and sweep_m must be >= 2: cross-concept orthogonality needs two concepts")
        require(self.within_mode in ("pairwise", "to_mean"),
                f"within_mode={self.within_mode!r} must be pairwise or to_mean")
        require(self.n_random_pairs >= 2, f"n_random_pairs={self.n_random_pairs} must be >= 2")
        require(self.multi_token in word_pairs.MULTI_TOKEN,
                f"multi_token={self.multi_token!r} must be one of {', '.join(word_pairs.MULTI_TOKEN)}")
        require(self.leading_space in word_pairs.LEADING_SPACE,
                f"leading_space={self.leading_space!r} must be one of {', '.join(word_pairs.LEADING_SPACE)}")
        require(self.n_shuffles >= 1 and 0 < self.causal_floor < 1 and self.memory_budget_gb >= 0,
                "n_shuffles must be >= 1, causal_floor in (0, 1) and memory_budget_gb >= 0")
        require(self.max_checkpoints == 0 or self.max_checkpoints >= 2,
                f"max_checkpoints={self.max_checkpoints} must be 0 (all) or >= 2")
        require(self.sweep_steps >= 1, f"sweep_steps={self.sweep_steps} must be >= 1")
        require(self.margin_cos >= 0 and self.margin_logodds >= 0, "margin_cos and margin_logodds must be >= 0")
        require(self.n_random_draws >= 1 and self.n_seeds >= 1, "n_random_draws and n_seeds must be >= 1")
        if self.verdict_table:
            require(1 <= self.table_small_d < min(d, m),
                    f"table_small_d={self.table_small_d} must be in 1..min(learner.d, problem.n_concepts)-1 "
                    f"(the d < m case)")
            require(1 <= self.table_few_steps < self.train.steps,
                    f"table_few_steps={self.table_few_steps} must be in 1..train.steps-1")
            dependent_problem(self)
            dataclasses.replace(self.learner, init_scale=self.table_init_scale)
            require(self.table_adam_lr > 0, f"table_adam_lr={self.table_adam_lr} must be > 0")
        for name in ("sweep_m", "sweep_d", "sweep_strength", "sweep_optimizers", "sweep_weight_decay", "sweep_seeds"):
            require(len(getattr(self, name)) >= 1, f"{name} is empty; give at least one value, e.g. --set {name}=1")
        for m in self.sweep_m:
            latent.LatentConfig(n_concepts=m)
        for d in self.sweep_d:
            latent.LearnerConfig(d=d)
        for kind in self.sweep_optimizers:
            require(kind in latent_training.OPTIMIZERS,
                    f"sweep_optimizers has {kind!r}; choose from {', '.join(latent_training.OPTIMIZERS)}")
            require(len(self.sweep_lrs(kind)) >= 1 and min(self.sweep_lrs(kind)) > 0,
                    f"sweep_lr_{kind} must hold positive learning rates")
        require(min(self.sweep_strength) >= 0 and min(self.sweep_weight_decay) >= 0,
                "sweep_strength and sweep_weight_decay values must be >= 0")

    def sweep_lrs(self, kind: str) -> tuple[float, ...]:
        return getattr(self, f"sweep_lr_{kind}")

    def unused(self) -> dict[str, str]:
        """Keys the other settings leave without effect (setting one is refused); `resolve` lists the rest."""
        if self.run:
            why = "run=... measures word pairs on the run's unembedding; the latent learner is not trained"
            keys = {k: why for k in all_keys(self) if k not in on_run.KEYS}
            return {**keys, "run": "give run or gpt_run, not both"} if self.gpt_run else keys
        keys = {k: "read on run=... only (word pairs on a run's unembedding)" for k in on_run.KEYS
                if k not in ("run", "within_mode", "n_random_pairs", "margin_cos")}
        if self.gpt_run:
            keys["run"] = "gpt_run=... adds the case check to the latent learner; give run alone for a run's word pairs"
        if not self.sweep:
            keys.update({f.name: "sweep=false; add --sweep" for f in dataclasses.fields(self)
                         if f.name.startswith("sweep_")})
        else:
            keys.update({f"sweep_lr_{k}": f"{k} is not in sweep_optimizers" for k in latent_training.OPTIMIZERS
                         if k not in self.sweep_optimizers})
        if not self.verdict_table:
            keys.update({f.name: "verdict_table=false; add --verdicts" for f in dataclasses.fields(self)
                         if f.name.startswith("table_")})
        if self.problem.independent:
            keys["problem.strength"] = "problem.independent=true ignores the DAG; set problem.independent=false too"
        if not _uses_dag_edges(self):
            keys["problem.edge_density"] = ("no run here draws DAG edges (independent or strength 0, no dependent "
                                            "sweep/table)")
        if not _uses_batches(self):
            keys["train.batch_size"] = "only sgd runs use minibatches and no run here uses sgd"
        if self.learner.f_kind == "table":
            keys.update({"learner.hidden": "learner.f_kind=table has no MLP",
                         "learner.n_hidden": "learner.f_kind=table has no MLP"})
        return keys


def _uses_dag_edges(config: Config) -> bool:
    return ((not config.problem.independent and config.problem.strength > 0)  # the table has table_edge_density
            or (config.sweep and max(config.sweep_strength) > 0))


def _uses_batches(config: Config) -> bool:
    return config.train.optimizer == "sgd" or (config.sweep and "sgd" in config.sweep_optimizers)


def resolve(config: Config) -> dict:
    """What `run` runs, references checked before anything is created: the main run's generator,
    learner and training settings (only the fields they read), the sweep grid and the verdict
    table when on, the measures, and the GPT run of the case check (its tokenizer checked)."""
    if config.run:
        return on_run.plan(config)
    unused = config.unused()
    read = lambda group: {k: v for k, v in dataclasses.asdict(getattr(config, group)).items()
                          if f"{group}.{k}" not in unused}
    plan = {"generator": read("problem"), "learner": read("learner"), "train": read("train"), "gpt_run": None}
    if config.sweep:
        plan["sweep"] = {"grid": sweep_grid(config), "steps": config.sweep_steps}
    folded = {"problem", "learner", "train", "gpt_run", "sweep"}
    plan["study"] = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                     if f.name not in folded and not f.name.startswith("sweep_") and f.name not in unused}
    if config.gpt_run:
        from dynamics.data import load_tokenizer

        require(Path(config.gpt_run).is_dir(), f"gpt_run={config.gpt_run!r} is not a folder; give a pretrain run "
                                               f"folder, or leave it empty to skip")
        pairs = geometry.case_pairs(load_tokenizer(config.gpt_run).chars)
        require(len(pairs) >= 2, f"{config.gpt_run}'s vocabulary has {len(pairs)} letters in both cases; the "
                                 f"case check needs 2")
        plan["gpt_run"] = {"run": str(Path(config.gpt_run).resolve()),
                           "steps": Series(config.gpt_run, "pretrain", create=False).steps()}
    return plan


M5 = latent.LatentConfig(n_concepts=5, independent=True)
PRESETS = {
    # [choice] m = 5, not 4: the verdicts' interval is over concepts, and with 4 the paired step-0
    # comparison lacks power (orthogonality failed it on 2 of 6 seeds at m = 4, passed 6 of 6 at m = 5)
    "tiny": Config(problem=M5, sweep=True, n_seeds=4),
    "verdicts": Config(problem=M5, verdict_table=True, n_seeds=4),  # where the checks pass and fail (README)
    "full": Config(problem=M5, learner=latent.LearnerConfig(d=32), train=latent_training.TrainConfig(steps=16384),
                   sweep_steps=8192, sweep_m=(3, 4, 5, 6), sweep_d=(4, 8, 16, 64),
                   sweep_strength=(0.0, 0.5, 1.0, 2.0), sweep_optimizers=("gd", "sgd", "adam"),
                   sweep_weight_decay=(0.0, 0.01), sweep_lr_gd=(0.5, 1.0), sweep_lr_sgd=(0.5, 1.0),
                   sweep_lr_adam=(0.003, 0.01), sweep_seeds=(0, 1, 2)),
}
FLAGS = {"sweep": "sweep", "verdicts": "verdict_table"}


# ----------------------------------------------------------------------------- the default run
def train_or_load(problem: latent.LatentProblem, config: Config, folder: RunFolder):
    """The main run's series: reuse a finished one in the folder, else train and save every snapshot."""
    steps = checkpoint_steps(config.train.steps, log_until=config.train.steps, every=0)
    series = Series(folder.root, STAGE)
    if series.steps() == steps:
        loaded_steps, params = load_stack(folder.root, stage=STAGE)
        losses = np.array([series.meta(s)["loss"] for s in steps])
        return np.asarray(loaded_steps), params, losses, False
    series.delete_after(-1)  # a partial series (interrupted run) is retrained from scratch
    params, losses = latent_training.train(problem, config.learner, config.train, steps, progress=True)
    for t, step in enumerate(steps):
        series.save(step, jax.tree.map(lambda x: x[t], params), meta={"loss": float(losses[t])})
    distributed.barrier("latent-series-saved")  # process 0 wrote it; every process may read it next
    return np.asarray(steps), params, losses, True


def run_default(config: Config, folder: RunFolder) -> dict:
    problem = latent.build_problem(config.problem)
    steps, params, losses, fresh = train_or_load(problem, config, folder)
    T, m = len(steps), problem.n_concepts
    data = lv.problem_data(problem, config.n_random_pairs)
    res = lv.measure(params, jax.tree.map(lambda x: np.broadcast_to(x, (T,) + x.shape), data), m, config)
    data1 = lv.stack_data([data])
    d = config.learner.d
    rand = lv.measure_random(res["embedding"][-1:], np.asarray(params["g"][-1:]), [d], data1, m, config)
    step0 = lv.measure_step0(config.learner, [config.train.seed], [d], [config.learner.init_scale], data1, m, config)
    verdicts = lv.judge(lv.per_concept(res, T - 1), lv.per_concept(step0, 0), lv.per_concept(rand, 0), config)
    if fresh:
        for t, step in enumerate(steps):
            folder.log({"step": int(step), "loss": float(losses[t]), **{k: float(res[k][t]) for k in lv.SCALARS}})
    final = {k: float(res[k][-1]) for k in lv.SCALARS}
    final["loss"], final["loss_floor"] = float(losses[-1]), latent.conditional_entropy(problem.weight_XY)

    plot_histograms(np.asarray(params["g"][-1]), res["embedding"][-1], m, config, folder.figure("cosine_histograms"))
    plot_over_training(steps, res, losses, final["loss_floor"], folder.figure("measures_over_training"))
    plot_concept_matrix(res["cross_cos"][-1], folder.figure("concept_cosine_matrix"))
    return {"steps": steps, "final": final, "per_step": res, "verdicts": verdicts}


# ----------------------------------------------------------------------------- the study
def run(config: Config, folder: RunFolder) -> dict:
    if config.run:
        return on_run.run(config, folder)
    gpt = gpt_case_check(config.gpt_run, config.n_random_pairs) if config.gpt_run else None  # bad input fails fast
    main = run_default(config, folder)
    final = main["final"]
    preds = main["verdicts"]
    problem, d = config.problem, config.learner.d
    dependence = "independent" if problem.independent or problem.strength == 0 else f"strength {problem.strength:g}"
    setting = f"{config.train.optimizer}, m={problem.n_concepts}, d={d}, {dependence}, {config.train.steps} steps"
    print(f"Jiang et al. predictions ({setting}), each against random directions and the step-0 model at "
          f"d={d}, 95% bootstrap interval over concepts:")
    for p in preds:
        print("  " + lv.format_verdict(p))
    summary = {
        "within_concept_cos_mean": final["within_cos_mean"],
        "within_concept_cos_min": final["within_cos_min"],
        "cross_concept_abs_cos_mean": final["cross_abs_cos_mean"],
        "random_pair_abs_cos_mean": final["random_abs_cos_mean"],
        "embedding_within_cos_mean": final["emb_within_cos_mean"],
        "embedding_cross_abs_cos_mean": final["emb_cross_abs_cos_mean"],
        "alignment_mean": final["alignment_mean"],
        "logodds_error": final["logodds_error"],
        "final_loss": final["loss"],
        "loss_floor": final["loss_floor"],
        "predictions_passed": sum(p["passed"] for p in preds),
        "predictions_total": len(preds),
        "predictions": preds,
        "setting": setting,
    }
    summary.update(headline_intervals(preds, main["per_step"]))
    if config.verdict_table or config.n_seeds > 1:
        summary.update(seeds_and_table(config, folder, final, preds))
    if config.sweep:
        rows = run_sweep(config, folder)
        plot_sweep(rows, "d", "strength", folder.figure("sweep_d_strength"), config)
        plot_sweep(rows, "m", "lr", folder.figure("sweep_m_lr"), config)
        summary["sweep_runs"] = len(rows)
        summary["sweep_pass_fraction"] = {k: float(np.mean([r[f"pass_{k}"] for r in rows])) for k in lv.PREDICTION_KEYS}
    if gpt is not None:
        plot_gpt(gpt, folder.figure("gpt_case_cosines"))
        write_json(folder.root / "gpt_case.json", {"run": config.gpt_run, **gpt})
        summary["gpt_case_within_cos_first"] = float(gpt["within_mean"][0])
        summary["gpt_case_within_cos_last"] = float(gpt["within_mean"][-1])
        summary["gpt_case_random_abs_cos_last"] = float(gpt["random_abs_mean"][-1])
        summary["gpt_case_pairs"] = gpt["n_pairs"]
        summary["gpt_case_steps"] = [int(gpt["steps"][0]), int(gpt["steps"][-1])]
    require_finite(summary)
    return summary


def findings(summary: dict) -> list[str]:
    """One to three sentences: the headline numbers with their intervals and the verdicts
    against the two baselines (the report opens with them)."""
    if summary.get("mode") == "run":
        return on_run.findings(summary)
    s, ci = summary, lambda k: f"[{summary[k + '_ci'][0]:.3f}, {summary[k + '_ci'][1]:.3f}]"
    seeds = ""
    if "within_concept_cos_mean_seed_ci" in s:
        lo_, hi_ = s["within_concept_cos_mean_seed_ci"]
        seeds = f"; [{lo_:.2f}, {hi_:.2f}] over {s['n_seeds']} seeds"
    out = [f"Latent-concept learner ({s.get('setting', '')}): within-concept cosine "
           f"{s['within_concept_cos_mean']:.3f} {ci('within_concept_cos_mean')} over concepts{seeds}, against "
           f"{s['within_concept_cos_mean_random']:.3f} for random directions and "
           f"{s['within_concept_cos_mean_step0']:.3f} untrained; cross-concept |cos| "
           f"{s['cross_concept_abs_cos_mean']:.3f} {ci('cross_concept_abs_cos_mean')} against "
           f"{s['cross_concept_abs_cos_mean_random']:.3f} random and {s['cross_concept_abs_cos_mean_step0']:.3f} "
           f"untrained at the same d."]
    failed = [p["key"] for p in s["predictions"] if not p["passed"]]
    out.append(f"{s['predictions_passed']}/{s['predictions_total']} predictions pass, each only if its "
               f"95% interval beats both baselines by its margin" + (f" (failing: {', '.join(failed)})" if failed
                                                                      else "")
               + f"; embedding side {s['embedding_within_cos_mean']:.3f} {ci('embedding_within_cos_mean')} vs "
               f"{s['embedding_within_cos_mean_step0']:.3f} untrained, log-odds error {s['logodds_error']:.3f} "
               f"{ci('logodds_error')} nats vs {s['logodds_error_step0']:.3f} untrained.")
    if "verdict_table_predicted" in s:
        out.append(f"Over the cases where the theory says the checks hold or fail (dependent concepts, Adam, d < m, "
                   f"too few steps, large init), {s['verdict_table_agree']} of {s['verdict_table_predicted']} "
                   f"predicted verdicts come out as predicted (verdicts.md).")
    return out
