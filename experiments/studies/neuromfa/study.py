"""NeuroMFA study: multifractal spectra of the neuron-interaction network over training and size.

Trains (or reuses) character GPTs of several widths with log-spaced checkpoints, computes the
spectrum (alpha0, width) and the degree of emergence E for every checkpoint x network sample
in one vmapped pass per model, and relates E to validation loss and next-word accuracy with
Spearman correlations, beside two controls: the same analysis on Gaussian weights of each
matrix's std (E should stay near 0), and simple weight baselines (mean |w|, weighted degree).

The method (network, spectrum, E, control, baselines, correlations, intervals) lives in
`probes.neuromfa`; this module trains or reuses the models, runs it per model and logs it;
the figures are `experiments.studies.neuromfa.figures`.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

import models

from dynamics import checkpoints
from dynamics import data as data_lib
from dynamics import run_tokenizer
from dynamics import stacks, stats
from dynamics import train as train_lib
from models.errors import OntogenyError
from dynamics.runlog import RunFolder
from . import figures
from experiments.studies.pretrain import study as pretrain
from experiments.cli.config import all_keys
from experiments.studies import run_inputs as suite
from models.errors import require
from models import gpt
from probes.neuromfa import measures, network, spectrum

DESCRIPTION = "NeuroMFA: multifractal spectrum and degree of emergence of the neuron network over training and size"


@dataclasses.dataclass(frozen=True)
class Config:
    widths: tuple[int, ...] = (32, 64, 128)   # d_model of the models trained here, smallest first
    n_layer: int = 2                          # blocks of every model trained here
    n_head: int = 4                           # attention heads of every model (must divide each width)
    context: int = 64                         # context of every model trained here (eval window on `run`)
    train: train_lib.TrainConfig = train_lib.TrainConfig()
    data: data_lib.DataConfig = data_lib.DataConfig()
    mfa: spectrum.MFAConfig = spectrum.MFAConfig()
    n_samples: int = 4          # network samples per checkpoint (paper: 10)
    n_resid: int = 32           # sampled neurons per residual/attention layer (paper: 32)
    n_mlp: int = 64             # sampled MLP neurons (paper: 64)
    sample_seed: int = 0        # draws the sampled neurons
    eval_windows: int = 64      # val windows (of `context` chars) for loss and accuracies
    control_seed: int = 1       # draws the Gaussian-control weights
    control_draws: int = 3      # Gaussian-control draws per checkpoint (averaged with the samples)
    pretrain_run: str = ""      # optional: an existing pretrain run, analysed as one more size
    run: str = ""               # a run folder of any family (imported suite or trained here) analysed alone, streamed
    text: str = ""              # on run=...: text file or folder scored whole ("" = a run trained here's val split, else Shakespeare's held-out works)
    memory_budget_gb: float = 0.0  # host memory for streamed checkpoint chunks (0 = a quarter of free memory)

    def __post_init__(self):
        require(self.memory_budget_gb >= 0, f"memory_budget_gb={self.memory_budget_gb} must be >= 0 (0 = automatic)")
        require(self.n_resid >= 1 and self.n_mlp >= 1, "n_resid and n_mlp must be >= 1")
        if not self.run:  # the models trained here; a run's own widths are checked by `resolve`
            require(len(self.widths) + bool(self.pretrain_run) >= 3,
                    f"widths={self.widths}: NeuroMFA compares at least 3 model sizes; give 3 or more widths")
            require(list(self.widths) == sorted(set(self.widths)),
                    f"widths={self.widths} must be distinct and increasing")
            require(all(w % self.n_head == 0 for w in self.widths),
                    f"every width in {self.widths} must be a multiple of n_head={self.n_head}")
            require(self.n_resid <= min(self.widths),
                    f"n_resid={self.n_resid} must be between 1 and the smallest width {min(self.widths)}")
            require(self.n_mlp <= 4 * min(self.widths), f"n_mlp={self.n_mlp} must be in 1..4 x the smallest width")
        require(self.n_samples >= 1 and self.eval_windows >= 1 and self.control_draws >= 1,
                "n_samples, eval_windows and control_draws must be positive")
        require(self.mfa.min_degree < min(self.n_resid, self.n_mlp),
                f"mfa.min_degree={self.mfa.min_degree} leaves no usable node with n_resid={self.n_resid}; lower it")

    def unused(self) -> dict[str, str]:
        """Keys the chosen mode leaves without effect (setting one is refused): on `run` the
        models trained here (widths, their shape, training and corpus); otherwise `text`."""
        if not self.run:
            keys = {"text": "text is read on run=...; the models trained here are scored on data's held-out split"}
            if self.pretrain_run:
                keys["run"] = "pretrain_run adds one more size to the models trained here; give run alone instead"
            return keys
        why = "run=... analyses that run alone; no model is trained here"
        keys = {k: why for k in all_keys(self) if k.split(".")[0] in ("widths", "n_layer", "n_head", "train",
                                                                          "data", "pretrain_run")}
        return {**keys, "run": "give run or pretrain_run, not both"} if self.pretrain_run else keys


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
    # Xiao et al.'s protocol, for `--set run=RUN` on an imported suite (their 27 steps: `import
    # --steps xiao2025`): 10 samples of 32 residual / 64 MLP neurons, direct edges, 1 < d <= 150,
    # degree > 10, q in -3..3 by 0.1. [choice] 16 eval windows of 128 tokens (the paper uses benchmarks;
    # the logits of a 50k vocabulary are 0.4 GB a snapshot per 16 windows).
    "xiao2025": Config(n_samples=10, n_resid=32, n_mlp=64, mfa=spectrum.MFAConfig(), context=128,
                       eval_windows=16, control_draws=3),
}


# ----------------------------------------------------------------------------- study
def resolve(config: Config) -> dict:
    """What `run` runs, references checked before anything is created: one pretrain run per width
    (as `experiments.studies.pretrain.study.resolve` sees it: model, every training key, corpus settings), the
    optional extra run (checked: model, tokenizer, a step-0 checkpoint, width >= n_resid), the
    multifractal settings and the study's own keys."""
    if config.run:
        require(not config.pretrain_run, "give run (analysed alone) or pretrain_run (one more size), not both")
        ref = suite.run_reference(config.run)
        require(ref["steps"][0] == 0, f"run={config.run!r} has no step-0 checkpoint; E(t) is defined relative to "
                                      f"initialisation (import step 0 too)")
        require(config.n_resid <= ref["model"].d_model and config.n_mlp <= ref["model"].d_mlp,
                f"n_resid={config.n_resid} / n_mlp={config.n_mlp} exceed the run's d_model / d_mlp")
        require(config.context <= ref["model"].context, f"context={config.context} exceeds the run's context of "
                                                        f"{ref['model'].context}; lower context")
        suite.check_text(config.text)
        folded = ("widths", "n_layer", "n_head", "train", "data", "run", "mfa")
        study = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in folded}
        return {"runs": {"run": {k: v for k, v in ref.items() if k != "steps"}}, "mfa": config.mfa, "study": study,
                "text_source": suite.text_source(config.run, config.text)}
    runs = {f"d{w}": pretrain.resolve(_pretrain_config(config, w)) for w in config.widths}
    if config.pretrain_run:
        ref = pretrain.pretrain_reference(config.pretrain_run, "")
        require(ref["steps"][0] == 0, f"pretrain_run={config.pretrain_run!r} has no step-0 checkpoint; E(t) "
                                      f"is defined relative to initialisation")
        require(config.n_resid <= ref["model"].d_model,
                f"n_resid={config.n_resid} exceeds d_model={ref['model'].d_model} of pretrain_run")
        runs["pretrain_run"] = {k: v for k, v in ref.items() if k != "steps"}
    folded = ("widths", "n_layer", "n_head", "context", "train", "data", "mfa", "pretrain_run", "text")
    study = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in folded}
    return {"runs": runs, "mfa": config.mfa, "study": study}


def _pretrain_config(config: Config, width: int) -> pretrain.PretrainConfig:
    model = gpt.GPTConfig(context=config.context, n_layer=config.n_layer, n_head=config.n_head, d_model=width)
    return pretrain.PretrainConfig(model=model, train=config.train, data=config.data)


def _models(config: Config, folder: RunFolder):
    """[(label, run folder)] for every size, training the missing ones."""
    if config.run:
        return [("run", Path(config.run))]
    if config.pretrain_run:  # check it before minutes of training, not after
        checkpoints.load_model_config(config.pretrain_run)
        data_lib.load_tokenizer(config.pretrain_run)
    runs = [(f"d{w}", pretrain.ensure_pretrain(folder.sub(f"model-d{w}").root, _pretrain_config(config, w),
                                               preset=f"neuromfa-d{w}")) for w in config.widths]
    if config.pretrain_run:
        runs.append(("pretrain_run", Path(config.pretrain_run)))
    return runs


def analyse_model(run_dir: Path, config: Config, val_text: str) -> dict:
    """Everything per checkpoint for one model: spectra, control spectra, evaluation (the
    result `probes.neuromfa.measures` reads)."""
    model_config = checkpoints.load_model_config(run_dir)
    tokenizer = data_lib.load_tokenizer(run_dir)
    steps, stacked = checkpoints.load_stack(run_dir)
    if steps[0] != 0:
        raise OntogenyError(f"{run_dir} has no step-0 checkpoint; E(t) is defined relative to initialisation")
    require(config.n_resid <= model_config.d_model, f"n_resid={config.n_resid} exceeds d_model of {run_dir}")
    idx = network.sample_indices(config.sample_seed, model_config, config.n_samples, config.n_resid, config.n_mlp)
    spectra = spectrum.series_spectra(stacked, idx, config.mfa)
    # Fresh noise per checkpoint and per draw; the draws are pooled with the samples.
    rng = np.random.default_rng(config.control_seed)
    draws = [spectrum.series_spectra(spectrum.gaussian_like(stacked, rng), idx, config.mfa)
             for _ in range(config.control_draws)]
    control = {k: np.concatenate([d[k] for d in draws], axis=1) for k in draws[0]}
    evals = measures.evaluate_series(stacked, model_config, tokenizer, val_text, config.eval_windows,
                                     model_config.context)
    first = stacks.unstack_tree(stacked, 0)
    n_params = gpt.n_params(first, non_embedding=True) - first["wte"].size  # blocks + final norm
    return {"steps": steps, "model": model_config, "n_params": int(n_params), "spectra": spectra,
            "summary": spectrum.summarize(spectra), "control": spectrum.summarize(control),
            "control_spectra": control, "eval": {k: np.asarray(v, float) for k, v in evals.items()}}


@functools.lru_cache(maxsize=None)
def _suite_network_fn(model_config, variant: str, control_draws: int):
    """One checkpoint's networks and those of `control_draws` Gaussian controls, any family.
    [choice] The control noise is drawn on the device from a per-checkpoint key (a streamed
    series never holds every checkpoint on the host); draws run one after another (lax.map)."""
    def fn(p, idx):
        w = network.family_weights(p["model"], model_config)
        leaves, tree = jax.tree.flatten(w)

        def control(key):
            keys = jax.random.split(key, len(leaves))
            noisy = [jnp.std(x, axis=(-2, -1), keepdims=True) * jax.random.normal(k, x.shape, x.dtype)
                     for k, x in zip(keys, leaves)]
            return spectrum.checkpoint_network(jax.tree.unflatten(tree, noisy), idx, variant)

        return {"real": spectrum.checkpoint_network(w, idx, variant),
                "control": jax.lax.map(control, jax.random.split(p["key"], control_draws))}
    return fn


@functools.lru_cache(maxsize=None)
def _suite_eval_fn(model_config):
    def evaluate(params, batch):
        logits, _ = models.apply(params, batch["x"], model_config)
        logp = jax.nn.log_softmax(logits, -1)
        nll = -jnp.take_along_axis(logp, batch["y"][..., None], -1)[..., 0]
        return {"val_loss": nll.mean(), "right": jnp.argmax(logits, -1) == batch["y"]}
    return evaluate


def word_accuracy(right_CBS: np.ndarray, starts_BS: np.ndarray) -> np.ndarray:
    """[C]: the fraction of words whose every token is predicted right. [choice] A word starts at a
    target token that begins with a non-alphanumeric character (BPE's leading space, a space
    character); each window's first, possibly cut, word is dropped. A tokenizer that drops spaces
    (a `Whitespace` pre-tokenizer) marks no start at all: then every token is a word ([choice]),
    and the measure is the token accuracy rather than undefined."""
    if not starts_BS.any():
        starts_BS = np.ones_like(starts_BS)
    B, S = starts_BS.shape
    word_BS = np.cumsum(starts_BS, axis=1) + (np.arange(B) * (S + 1))[:, None]
    keep = (np.cumsum(starts_BS, axis=1) > 0).reshape(-1)
    ids = np.unique(word_BS.reshape(-1)[keep], return_inverse=True)[1]
    wrong = np.stack([np.bincount(ids, weights=~r.reshape(-1)[keep]) for r in right_CBS])
    return (wrong == 0).mean(axis=1)


def analyse_run(run_dir: Path, config: Config, val_text: str) -> dict:
    """`analyse_model` for a run of any family, its checkpoints streamed from disk (`open_stack`):
    the network from `models.families.weight_matrices`, loss and next-token / word accuracy from
    `models.apply` with the run's tokenizer on `eval_windows` windows of `context` tokens."""
    model_config = checkpoints.load_model_config(run_dir)
    tokenizer = run_tokenizer.load_tokenizer(run_dir)
    steps, disk = checkpoints.open_stack(run_dir)
    if steps[0] != 0:
        raise OntogenyError(f"{run_dir} has no step-0 checkpoint; E(t) is defined relative to initialisation")
    idx = network.sample_indices(config.sample_seed, model_config, config.n_samples, config.n_resid, config.n_mlp)
    idx = {k: jnp.asarray(v) for k, v in idx.items()}
    keys = np.asarray(jax.random.split(jax.random.PRNGKey(config.control_seed), len(steps)))
    net = checkpoints.map_stack(_suite_network_fn(model_config, config.mfa.variant, config.control_draws),
                                {"model": disk, "key": keys}, idx)
    spectra_fn = spectrum.spectra_fn(config.mfa)
    spectra = {**checkpoints.map_stack(spectra_fn, net["real"]["dist"]), "mean_abs_w": net["real"]["mean_abs_w"]}
    C, K, M = net["control"]["dist"].shape[:3]
    flat = lambda x: x.reshape(C, K * M, *x.shape[3:])
    control = {**checkpoints.map_stack(spectra_fn, flat(net["control"]["dist"])),
               "mean_abs_w": flat(net["control"]["mean_abs_w"])}
    ids = tokenizer.encode(val_text)
    require(len(ids) > config.context + 1, f"the val text has {len(ids)} tokens; it needs more than context={config.context}")
    x, y = data_lib.eval_batches(ids, 1, config.eval_windows, config.context, seed=1234)[0]
    scores = checkpoints.map_stack(_suite_eval_fn(model_config), disk, {"x": x, "y": y})
    uniq, inverse = np.unique(y, return_inverse=True)
    starts = np.array([not tokenizer.decode([int(t)])[:1].isalnum() for t in uniq])[inverse].reshape(y.shape)
    evals = {"val_loss": scores["val_loss"], "char_acc": scores["right"].mean(axis=(1, 2)),
             "word_acc": word_accuracy(scores["right"], starts)}
    shapes = jax.eval_shape(lambda p: network.family_weights(p, model_config), disk.template())
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))  # [choice] the network's matrices
    return {"steps": steps, "model": model_config, "n_params": n_params, "spectra": spectra,
            "summary": spectrum.summarize(spectra), "control": spectrum.summarize(control),
            "control_spectra": control, "eval": {k: np.asarray(v, float) for k, v in evals.items()}}


def _log_model(folder: RunFolder, label: str, res: dict, logged: set) -> None:
    """One metrics row per checkpoint of a model (rows already logged by an earlier try are skipped)."""
    s, c, e = res["summary"], res["control"], res["eval"]
    for i, step in enumerate(res["steps"]):
        if (label, int(step)) in logged:
            continue
        folder.log({"model": label, "n_params": res["n_params"], "step": int(step),
                    "alpha0": s["alpha0"][i], "width": s["width"][i], "emergence": s["emergence"][i],
                    "control_alpha0": c["alpha0"][i], "control_width": c["width"][i],
                    "control_emergence": c["emergence"][i], "mean_abs_w": s["mean_abs_w"][i],
                    "strength": s["strength"][i], "n_used": s["n_used"][i], **{k: v[i] for k, v in e.items()}})


def run(config: Config, folder: RunFolder) -> dict:
    """Train (or reuse) every size, analyse each, log per checkpoint, draw, summarise."""
    t0 = time.perf_counter()
    checkpoints.set_memory_budget(int(config.memory_budget_gb * 2**30))
    if config.run:  # [choice] a user's text is scored whole; a run's own corpus and Shakespeare, held out
        val_text, source = suite.held_out_text(config.run, config.text), suite.text_source(config.run, config.text)
    else:
        val_text, source = data_lib.load_corpus(config.data).val_text, f"the data's validation split ({_data_name(config.data)})"
    results = {}
    logged = {(r.get("model"), r.get("step")) for r in folder.read_metrics()}  # a rerun does not log twice
    for label, run_dir in tqdm(_models(config, folder), desc="neuromfa analysis", unit="model", leave=False):
        analyse = analyse_run if label == "run" else analyse_model
        results[label] = analyse(run_dir, config, val_text)
        _log_model(folder, label, results[label], logged)
    order = sorted(results, key=lambda k: results[k]["n_params"])
    figures.plot_all(results, order, folder)
    return {**measures.summary_numbers(results, order), "text_source": source, "wall_s": time.perf_counter() - t0}


def _data_name(data: data_lib.DataConfig) -> str:
    return data.path or data.corpus


def findings(summary: dict) -> list[str]:
    """The conclusions of a NeuroMFA summary, with intervals and verdicts."""
    n = summary.get("n_network_samples", "?")
    model = f"{summary.get('largest_model', 'the largest model')} ({summary.get('largest_n_params', 0):,} params)"

    def change(key, rises_word, falls_word):
        ci = summary.get(f"{key}_change_ci")
        if ci is None:
            return "no interval for the change"
        return (rises_word if ci[0] > 0 else falls_word) if stats.excludes(ci) else "the change is within the noise"

    text = f"; losses and accuracies scored on {summary['text_source']}" if "text_source" in summary else ""
    out = [f"In {model}, alpha0 went {stats.ci_text(summary, 'alpha0_first', 3)} -> "
           f"{stats.ci_text(summary, 'alpha0_last', 3)} ({change('alpha0', 'it rose', 'it fell: more regular')}) and "
           f"the spectrum width {stats.ci_text(summary, 'width_first', 3)} -> {stats.ci_text(summary, 'width_last', 3)} "
           f"({change('width', 'it widened: more heterogeneous', 'it narrowed')}); bootstrap over {n} network "
           f"samples of one training seed per size, so the intervals are coarse{text}."]
    diff = stats.ci_text(summary, "emergence_minus_control_last", 3) if "emergence_minus_control_last" in summary else ""
    verdict = stats.verdict_above_zero(
        summary, "emergence_minus_control_last", above=f"E exceeds the control by {diff}",
        otherwise=f"the difference {diff} does not exclude 0: weight-scale growth alone (what the control has) "
                  f"may explain E",
        missing="no interval for the difference")
    out.append(f"Degree of emergence E = {stats.ci_text(summary, 'emergence_last', 3)} against "
               f"{stats.ci_text(summary, 'emergence_control_last', 3)} for Gaussian weights of the same scales: {verdict}.")
    rho = summary.get("spearman_emergence_vs_val_loss")
    if rho is not None and np.isfinite(rho):
        ci = summary.get("spearman_emergence_vs_val_loss_ci")
        sign = ("E rises as validation loss falls" if ci[1] < 0 else "E rises with validation loss") \
            if ci is not None and stats.excludes(ci) else "no monotone relation with validation loss is shown"
        out.append(f"Across checkpoints, Spearman of E with validation loss is "
                   f"{stats.ci_text(summary, 'spearman_emergence_vs_val_loss')} (bootstrap over checkpoints): {sign}.")
    return out
