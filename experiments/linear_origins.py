"""Origins of linear representations (Jiang et al., ICML 2024): the theory's checks and sweeps.

`run` trains the latent-concept learner (models/latent.py) with its own jitted loop, keeps a
log-spaced checkpoint series (saved with `dynamics.checkpoints.Series`, stage "latent"),
computes every geometry measure over the stacked series with `map_stack`, and prints each
prediction of the theory with its measured value, threshold and PASS/FAIL. With `sweep`, a
grid over (m, d, dependence strength, optimizer, weight decay, lr, seed) runs with one
compiled, vmapped training call per shape group (m, d, optimizer); results go to sweep.csv and
heatmaps. With `gpt_run`, the same unembedding check runs on a character GPT's series, with
lower/upper-case letter pairs as the concept (our analogue of the paper's LLaMA-2 check).

Predictions (thresholds are config fields; defaults are for GD on independent concepts):
  linearity        within-concept cosine of g(y1) - g(y0), mean >= within_threshold
  orthogonality    cross-concept |cosine| of concept directions, mean <= cross_threshold
  concept-specific within-concept mean exceeds the random-pair |cos| baseline by random_margin
  embedding side   within-concept cosine of f(x1) - f(x0), mean >= embedding_threshold
  log-odds match   mean |learned - exact log-odds| (finite cells) <= logodds_threshold nats
"""
from __future__ import annotations

import csv
import dataclasses
import itertools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from dynamics import distributed
from dynamics.checkpoints import Series, load_stack, map_stack
from dynamics.errors import OntogenyError
from dynamics.runlog import RunFolder, write_json
from dynamics.schedule import checkpoint_steps
from experiments.config import require
from experiments.plots import plt, save
from models import latent
from probes import geometry

DESCRIPTION = "Origins of linear representations (Jiang et al. 2024): latent-concept model, theory checks, sweeps"
STAGE = "latent"


@dataclasses.dataclass(frozen=True)
class Config:
    # generator (models.latent.LatentConfig)
    n_concepts: int = 4
    independent: bool = True
    edge_density: float = 0.5
    strength: float = 0.0
    marginal_scale: float = 0.5
    p_fix: float = 0.5
    dag_seed: int = 0
    # learner (models.latent.LearnerConfig)
    d: int = 16
    f_kind: str = "mlp"
    hidden: int = 64
    n_hidden: int = 1
    init_scale: float = 0.01
    # training (models.latent.TrainConfig); checkpoints at 0, 1, 2, 4, ..., n_steps
    optimizer: str = "gd"
    lr: float = 1.0
    weight_decay: float = 0.0
    n_steps: int = 4096
    batch_size: int = 64
    n_samples: int = 0
    seed: int = 0
    # measures
    within_mode: str = "pairwise"
    n_random_pairs: int = 64
    # predictions
    within_threshold: float = 0.9
    cross_threshold: float = 0.2
    random_margin: float = 0.3
    embedding_threshold: float = 0.9
    logodds_threshold: float = 0.15
    # sweep: m x d x strength x optimizer x weight decay x lr x seed (seed also draws the DAG)
    sweep: bool = False
    sweep_steps: int = 1024
    sweep_m: tuple[int, ...] = (3, 4)
    sweep_d: tuple[int, ...] = (4, 16)
    sweep_strength: tuple[float, ...] = (0.0, 2.0)
    sweep_optimizers: tuple[str, ...] = ("gd", "adam")
    sweep_weight_decay: tuple[float, ...] = (0.0, 0.01)
    sweep_lr_gd: tuple[float, ...] = (0.5, 1.0)
    sweep_lr_sgd: tuple[float, ...] = (0.5, 1.0)
    sweep_lr_adam: tuple[float, ...] = (0.003, 0.01)
    sweep_seeds: tuple[int, ...] = (0, 1)
    # character GPT run folder for the case-pair check ("" = skip)
    gpt_run: str = ""

    def __post_init__(self):
        self.latent_config()
        self.learner_config()
        self.train_config()
        require(self.n_concepts >= 2 and min(self.sweep_m) >= 2,
                "n_concepts and sweep_m must be >= 2: cross-concept orthogonality needs two concepts")
        require(self.within_mode in ("pairwise", "to_mean"),
                f"within_mode={self.within_mode!r} must be pairwise or to_mean")
        require(self.n_random_pairs >= 2, f"n_random_pairs={self.n_random_pairs} must be >= 2")
        require(self.sweep_steps >= 1, f"sweep_steps={self.sweep_steps} must be >= 1")
        for name in ("sweep_m", "sweep_d", "sweep_strength", "sweep_optimizers", "sweep_weight_decay", "sweep_seeds"):
            require(len(getattr(self, name)) >= 1, f"{name} is empty; give at least one value, e.g. --set {name}=1")
        for m in self.sweep_m:
            latent.LatentConfig(n_concepts=m)
        for d in self.sweep_d:
            latent.LearnerConfig(d=d)
        for kind in self.sweep_optimizers:
            require(kind in latent.OPTIMIZERS,
                    f"sweep_optimizers has {kind!r}; choose from {', '.join(latent.OPTIMIZERS)}")
            require(len(self.sweep_lrs(kind)) >= 1 and min(self.sweep_lrs(kind)) > 0,
                    f"sweep_lr_{kind} must hold positive learning rates")
        require(min(self.sweep_strength) >= 0 and min(self.sweep_weight_decay) >= 0,
                "sweep_strength and sweep_weight_decay values must be >= 0")

    def latent_config(self, **changes) -> latent.LatentConfig:
        base = dict(n_concepts=self.n_concepts, independent=self.independent, edge_density=self.edge_density,
                    strength=self.strength, marginal_scale=self.marginal_scale, p_fix=self.p_fix, seed=self.dag_seed)
        return latent.LatentConfig(**{**base, **changes})

    def learner_config(self, **changes) -> latent.LearnerConfig:
        base = dict(d=self.d, f_kind=self.f_kind, hidden=self.hidden, n_hidden=self.n_hidden,
                    init_scale=self.init_scale)
        return latent.LearnerConfig(**{**base, **changes})

    def train_config(self) -> latent.TrainConfig:
        return latent.TrainConfig(optimizer=self.optimizer, lr=self.lr, weight_decay=self.weight_decay,
                                  n_steps=self.n_steps, batch_size=self.batch_size, n_samples=self.n_samples,
                                  seed=self.seed)

    def sweep_lrs(self, kind: str) -> tuple[float, ...]:
        return getattr(self, f"sweep_lr_{kind}")


PRESETS = {
    "tiny": Config(sweep=True),
    "full": Config(n_concepts=5, d=32, n_steps=16384, sweep_steps=8192, sweep_m=(3, 4, 5, 6), sweep_d=(4, 8, 16, 64),
                   sweep_strength=(0.0, 0.5, 1.0, 2.0), sweep_optimizers=("gd", "sgd", "adam"),
                   sweep_weight_decay=(0.0, 0.01), sweep_lr_gd=(0.5, 1.0), sweep_lr_sgd=(0.5, 1.0),
                   sweep_lr_adam=(0.003, 0.01), sweep_seeds=(0, 1, 2)),
}
FLAGS = {"sweep": "sweep"}


# ----------------------------------------------------------------------------- measures
SCALARS = ("within_cos_mean", "within_cos_min", "cross_abs_cos_mean", "cross_abs_cos_max", "random_abs_cos_mean",
           "emb_within_cos_mean", "emb_within_cos_min", "emb_cross_abs_cos_mean", "emb_random_abs_cos_mean",
           "alignment_mean", "logodds_error", "g_norm_mean")


def _checks_pairwise(bundle, inputs, tok_pairs, ctx_pairs, tok_random, ctx_random):
    return geometry.latent_checks(bundle["params"], inputs, tok_pairs, ctx_pairs, tok_random, ctx_random,
                                  bundle["logodds"], bundle["finite"], mode="pairwise")


def _checks_to_mean(bundle, inputs, tok_pairs, ctx_pairs, tok_random, ctx_random):
    return geometry.latent_checks(bundle["params"], inputs, tok_pairs, ctx_pairs, tok_random, ctx_random,
                                  bundle["logodds"], bundle["finite"], mode="to_mean")


_CHECKS = {"pairwise": _checks_pairwise, "to_mean": _checks_to_mean}  # one fn object per mode: compiled once
MEASURE_CHUNK = 16


def measure(params_T, logodds_TKPX, finite_TKPX, m: int, config: Config) -> dict:
    """Every check for a stack of learners (leading axis T: checkpoints or runs), via map_stack."""
    bundle = {"params": params_T, "logodds": np.asarray(logodds_TKPX, np.float32), "finite": np.asarray(finite_TKPX)}
    shared = (jnp.asarray(latent.context_inputs(m)), latent.token_pairs(m), latent.context_pairs(m),
              geometry.random_pairs(2 ** m, config.n_random_pairs, seed=0),
              geometry.random_pairs(3 ** m, config.n_random_pairs, seed=1))
    # Everything here is small: a fixed chunk (no memory probing) also gives the main series and
    # the sweep of the same m one compiled shape (map_stack pads the last chunk).
    return map_stack(_CHECKS[config.within_mode], bundle, *shared, chunk_size=MEASURE_CHUNK)


def predictions(values: dict, config: Config) -> list[dict]:
    """[{name, measured, threshold, relation, passed}] for one run's final measures."""
    gap = values["within_cos_mean"] - values["random_abs_cos_mean"]
    rows = [("linearity: within-concept cos(g(y1)-g(y0))", values["within_cos_mean"], ">=", config.within_threshold),
            ("orthogonality: cross-concept |cos|", values["cross_abs_cos_mean"], "<=", config.cross_threshold),
            ("concept-specific: within minus random-pair |cos|", gap, ">=", config.random_margin),
            ("embedding side: within-concept cos(f(x1)-f(x0))", values["emb_within_cos_mean"], ">=",
             config.embedding_threshold),
            ("log-odds matching: mean |error| (nats)", values["logodds_error"], "<=", config.logodds_threshold)]
    return [{"name": n, "measured": float(v), "relation": r, "threshold": t,
             "passed": bool(v >= t if r == ">=" else v <= t)} for n, v, r, t in rows]


# ----------------------------------------------------------------------------- the default run
def train_or_load(problem: latent.LatentProblem, config: Config, folder: RunFolder):
    """The main run's series: reuse a finished one in the folder, else train and save every snapshot."""
    steps = checkpoint_steps(config.n_steps, log_until=config.n_steps, every=0)
    series = Series(folder.root, STAGE)
    if series.steps() == steps:
        loaded_steps, params = load_stack(folder.root, stage=STAGE)
        losses = np.array([series.meta(s)["loss"] for s in steps])
        return np.asarray(loaded_steps), params, losses, False
    series.delete_after(-1)  # a partial series (interrupted run) is retrained from scratch
    with tqdm(total=len(steps), desc="latent learner (checkpoints)", leave=False) as bar:
        params, losses = latent.train(problem, config.learner_config(), config.train_config(), steps, progress=bar)
    for t, step in enumerate(steps):
        series.save(step, jax.tree.map(lambda x: x[t], params), meta={"loss": float(losses[t])})
    distributed.barrier("latent-series-saved")  # process 0 wrote it; every process may read it next
    return np.asarray(steps), params, losses, True


def run_default(config: Config, folder: RunFolder) -> dict:
    problem = latent.build_problem(config.latent_config())
    steps, params, losses, fresh = train_or_load(problem, config, folder)
    logodds, finite = latent.pair_logodds(problem)
    T, m = len(steps), problem.n_concepts
    res = measure(params, np.broadcast_to(logodds, (T,) + logodds.shape),
                  np.broadcast_to(finite, (T,) + finite.shape), m, config)
    if fresh:
        for t, step in enumerate(steps):
            folder.log({"step": int(step), "loss": float(losses[t]), **{k: float(res[k][t]) for k in SCALARS}})
    final = {k: float(res[k][-1]) for k in SCALARS}
    final["loss"], final["loss_floor"] = float(losses[-1]), latent.conditional_entropy(problem.weight_XY)

    plot_histograms(np.asarray(params["g"][-1]), res["embedding"][-1], m, config, folder.figure("cosine_histograms"))
    plot_over_training(steps, res, losses, final["loss_floor"], folder.figure("measures_over_training"))
    plot_concept_matrix(res["cross_cos"][-1], folder.figure("concept_cosine_matrix"))
    return {"steps": steps, "final": final, "per_step": res}


# ----------------------------------------------------------------------------- sweep
SWEEP_KEYS = ("m", "d", "strength", "optimizer", "weight_decay", "lr", "seed")


def sweep_grid(config: Config) -> list[dict]:
    runs = []
    for m, d, strength, kind, wd, seed in itertools.product(config.sweep_m, config.sweep_d, config.sweep_strength,
                                                            config.sweep_optimizers, config.sweep_weight_decay,
                                                            config.sweep_seeds):
        for lr in config.sweep_lrs(kind):
            runs.append({"m": m, "d": d, "strength": float(strength), "optimizer": kind, "weight_decay": float(wd),
                         "lr": float(lr), "seed": int(seed)})
    return runs


def run_sweep(config: Config, folder: RunFolder) -> list[dict]:
    """Train every grid point. All runs of one m train together in one vmapped, compiled call:
    seed, lr, weight decay, optimizer, dependence strength and width d (zero-padded to the
    largest d, which is exact: see `latent.init_learner`) are per-run values."""
    path = folder.root / "sweep.csv"
    grid = sweep_grid(config)
    if path.exists():
        rows = read_csv(path)
        if [tuple(str(r[k]) for k in SWEEP_KEYS) for r in rows] == [tuple(str(g[k]) for k in SWEEP_KEYS) for g in grid]:
            return rows
    groups: dict[int, list[dict]] = {}
    for run in grid:
        groups.setdefault(run["m"], []).append(run)
    learner = config.learner_config(d=max(config.sweep_d))
    rows = []
    for m, runs in tqdm(groups.items(), desc="sweep (one compiled call per m)", leave=False):
        problems = [latent.build_problem(config.latent_config(n_concepts=m, strength=r["strength"],
                                                              independent=r["strength"] == 0,
                                                              seed=config.dag_seed + r["seed"])) for r in runs]
        weights = np.stack([latent.training_weight(p, dataclasses.replace(config.train_config(), seed=r["seed"]))
                            for p, r in zip(problems, runs)])
        params, losses = latent.train_runs(m, learner, [config.sweep_steps], seeds=[r["seed"] for r in runs],
                                           lrs=[r["lr"] for r in runs], weight_decays=[r["weight_decay"] for r in runs],
                                           optimizers=[r["optimizer"] for r in runs], widths=[r["d"] for r in runs],
                                           weights_RXY=weights, batch_size=config.batch_size)
        lo = [latent.pair_logodds(p) for p in problems]
        res = measure(jax.tree.map(lambda x: x[:, -1], params), np.stack([a for a, _ in lo]),
                      np.stack([b for _, b in lo]), m, config)
        for i, (run, problem) in enumerate(zip(runs, problems)):
            values = {k: float(res[k][i]) for k in SCALARS}
            row = {**run, "loss": float(losses[i, -1]), "loss_floor": latent.conditional_entropy(problem.weight_XY),
                   **values}
            for key, pred in zip(PREDICTION_KEYS, predictions(values, config)):
                row[f"pass_{key}"] = int(pred["passed"])
            rows.append(row)
    write_csv(path, rows)
    distributed.barrier("linear-origins-sweep-csv")  # process 0 wrote it; all read it back alike
    return read_csv(path)


PREDICTION_KEYS = ("linearity", "orthogonality", "concept_specific", "embedding", "logodds")


def write_csv(path: Path, rows: list[dict]) -> None:
    """Atomically (temp file + rename); only process 0 of a multi-process job writes."""
    if not distributed.is_primary():
        return
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def read_csv(path: Path) -> list[dict]:
    def parse(value: str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
        return value
    with open(path, newline="") as f:
        return [{k: parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


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


# ----------------------------------------------------------------------------- figures
def plot_histograms(G_YD, F_XD, m: int, config: Config, path) -> None:
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


def plot_sweep(rows: list[dict], x: str, y: str, path, config: Config) -> None:
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


# ----------------------------------------------------------------------------- the study
def run(config: Config, folder: RunFolder) -> dict:
    gpt = gpt_case_check(config.gpt_run, config.n_random_pairs) if config.gpt_run else None  # bad input fails fast
    main = run_default(config, folder)
    final = main["final"]
    preds = predictions(final, config)
    print(f"Jiang et al. predictions ({config.optimizer}, m={config.n_concepts}, d={config.d}, "
          f"{'independent' if config.independent or config.strength == 0 else f'strength {config.strength:g}'}, "
          f"{config.n_steps} steps):")
    for p in preds:
        verdict = "PASS" if p["passed"] else "FAIL"
        print(f"  {verdict}  {p['name']:<52} {p['measured']:.3f} {p['relation']} {p['threshold']:g}")
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
    }
    if config.sweep:
        rows = run_sweep(config, folder)
        plot_sweep(rows, "d", "strength", folder.figure("sweep_d_strength"), config)
        plot_sweep(rows, "m", "lr", folder.figure("sweep_m_lr"), config)
        summary["sweep_runs"] = len(rows)
        summary["sweep_pass_fraction"] = {k: float(np.mean([r[f"pass_{k}"] for r in rows])) for k in PREDICTION_KEYS}
    if gpt is not None:
        plot_gpt(gpt, folder.figure("gpt_case_cosines"))
        write_json(folder.root / "gpt_case.json", {"run": config.gpt_run, **gpt})
        summary["gpt_case_within_cos_first"] = float(gpt["within_mean"][0])
        summary["gpt_case_within_cos_last"] = float(gpt["within_mean"][-1])
        summary["gpt_case_random_abs_cos_last"] = float(gpt["random_abs_mean"][-1])
        summary["gpt_case_pairs"] = gpt["n_pairs"]
        summary["gpt_case_steps"] = [int(gpt["steps"][0]), int(gpt["steps"][-1])]
    return summary
