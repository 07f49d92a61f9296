"""Crosscoders across training snapshots (Ge et al., arXiv 2509.17196): when do features form?

One sparse dictionary is trained on the residual stream after block `layer` of C snapshots of a
pretrain run or an imported suite (`crosscoder.n_snapshots`, 0 = every checkpoint of the series, at
most 16) (activations from the vmapped forward pass over the stacked checkpoints, streamed
through a shuffling buffer, each snapshot normalised to mean norm sqrt(D)). Several
crosscoders (one per entry of `ks` / `l1s`, same seed) train together in one vmapped program;
the first is analysed. Analyses:

- per-snapshot explained variance, L0, dead fraction, loss recovered (splice the
  reconstruction into that snapshot's forward pass; CE_ablated = `ablation` of the residual:
  "zero" (default) or "mean" over tokens);
- decoder norm of every feature at every snapshot, emergence step by `emergence_rule` read from
  `emergence_strength` (`aligned` [choice], the default: the decoder's part along the feature's
  final direction, so a decoder that reconstructs an untrained network's random token lookup
  does not count as the feature; `norm`: the decoder norm, Ge et al.'s; `contribution`: the
  norm times the mean activation there; `probes.crosscoders.emergence`)
  (`half_max`: first snapshot at >= `emergence_frac` of the feature's maximum norm, Ge et al.'s;
  `relative_mean`: first snapshot at >= `emergence_frac` of that snapshot's mean feature norm;
  `steepest`: the snapshot of steepest growth; `probes.crosscoders.emergence.emergence`),
  initialisation features (emerged at snapshot 0 and ending below `init_fade` x max),
  decoder-direction cosines across snapshots;
- emergence histogram beside the loss and the KL from the model's next-token distribution to
  corpus unigram and bigram statistics, and what makes features look present early: each
  snapshot's linear CKA to the first and the share of its variance the current token explains;
- attribution attr_i = f_i dm/df_i of an induction metric (log-prob on the repeated half of
  random-token spans), top-`n_ablate` features ablated vs as many random alive features
  (selection and ablation use different sequences);
- complexity: the n-gram order that best predicts each feature's activation, correlated with
  emergence step (Spearman, p-value); a text file with the top contexts of the top features.

`series=planted` trains the same crosscoder on `probes.crosscoders.planted` (activations built from
known features switching on at known snapshots, over a drifting dense background) and scores
the recovered emergence against the truth (`planted_mode`); `--preset planted` is that check.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from dynamics import data as data_lib
from dynamics import stats
from dynamics.checkpoints import (Series, load_model_config, load_stack, open_stack, outputs_budget_bytes,
                                  reserve_memory, set_memory_budget)
from dynamics.runlog import RunFolder
from . import measures
from . import planted_mode
from . import streams
from experiments.studies import run_inputs as suite
from models.errors import require
from experiments.studies.pretrain.study import ensure_pretrain, pretrain_reference
from probes.crosscoders import emergence as em
from probes.crosscoders import metrics as cm
from probes.crosscoders import model as cc
from probes.crosscoders.planted import PlantedConfig

DESCRIPTION = "crosscoders across training snapshots (Ge et al. 2025): when features form, attribution, ablation"


# [choice] the study's crosscoder: JumpReLU as Ge et al., a small dictionary and run for a CPU
# (batchtopk at tiny left 33% of features dead); d_model is set from the run's width, and
# n_snapshots = 0 takes every checkpoint of the series, at most MAX_AUTO_SNAPSHOTS.
MAX_AUTO_SNAPSHOTS = 16
STUDY_CROSSCODER = cc.CrosscoderConfig(n_snapshots=0, arch="jumprelu", n_features=512, steps=800, batch_size=256,
                                       lr=2e-3, aux_k=64, dead_tokens=20_000)


# [choice] the planted presets' crosscoder: twice as many features as planted ones, 400 steps
PLANTED_CROSSCODER = dataclasses.replace(STUDY_CROSSCODER, n_features=64, steps=400, lr=3e-3, aux_k=16)

# keys that describe a model's snapshots and what is measured on them: refused with series=planted
_MODEL_ONLY = {k: "series=planted trains on the planted series, not on a model's snapshots" for k in (
    "pretrain_run", "pretrain_preset", "run", "site", "text", "context", "direct", "direct_sweep", "memory_budget_gb",
    "layer", "buffer_tokens", "windows_per_fetch", "reuse", "eval_windows", "ablation", "n_induction", "n_ablate",
    "n_random", "max_order", "n_text_features", "n_contexts")}
_MODEL_ONLY["crosscoder.n_snapshots"] = "series=planted spans planted.n_snapshots"


@dataclasses.dataclass(frozen=True)
class Config:
    series: str = "model"            # model: snapshots of a run; planted: the synthetic series with known emergence
    pretrain_run: str = ""           # "" = train the pretrain preset into OUT/pretrain
    pretrain_preset: str = "tiny"    # pretrain preset trained into OUT/pretrain when pretrain_run is empty
    run: str = ""                    # a run of any family (an imported suite), its snapshots streamed from disk
    site: str = ""                   # resid_post.N = residual after block N (from 0); "" = use `layer`
    text: str = ""                   # text file or folder for activations on `run` ("" = Shakespeare), run's tokenizer
    context: int = 0                 # tokens per window on `run` (0 = the model's, at most 128; a pretrain run: its own)
    direct: bool = False             # each step's tokens go through every snapshot straight into the step (no buffer)
    direct_sweep: int = 0            # direct: batches per pass over the snapshots (0 = fit 1/8 of the memory budget)
    memory_budget_gb: float = 0.0    # host memory for streamed snapshot chunks (0 = a quarter of free memory)
    layer: int = -1                  # -1 = the middle block, (n_layer - 1) // 2
    crosscoder: cc.CrosscoderConfig = STUDY_CROSSCODER  # the dictionaries (crosscoder.d_model is the run's width)
    ks: tuple[int, ...] = (24,)      # batchtopk: one crosscoder per k, trained together (vmapped)
    l1s: tuple[float, ...] = (0.3,)  # relu / jumprelu: one crosscoder per sparsity weight
    seed: int = 0                    # crosscoder init, activation windows and the random ablation draws
    buffer_tokens: int = 16384       # activation rows held in the shuffle buffer
    windows_per_fetch: int = 16      # training-text windows run through the snapshots per buffer refill
    reuse: float = 8.0               # each activation row is drawn about this many times
    eval_windows: int = 128          # held-out windows (val text) for metrics and analyses
    ablation: str = "zero"           # ablate features to zero or to their mean activation ("zero" | "mean")
    emergence_rule: str = "half_max"  # half_max | relative_mean | steepest (probes.crosscoders.emergence.emergence)
    emergence_frac: float = 0.5      # half_max: x the feature's max norm; relative_mean: x the snapshot's mean norm
    emergence_strength: str = "aligned"  # emergence reads: aligned (decoder on its final direction) | norm | contribution
    init_fade: float = 0.5           # an initialisation feature ends below this x its max decoder norm
    n_induction: int = 64            # induction sequences (half for selection, half for ablation)
    n_ablate: int = 16               # top-attribution features ablated together (and as many random ones)
    n_random: int = 16               # random draws of features for the ablation baseline
    max_order: int = 6               # longest n-gram in the n-gram complexity of a feature
    n_text_features: int = 10        # features shown with their top contexts
    n_contexts: int = 6              # top contexts shown per feature
    planted: PlantedConfig = PlantedConfig()  # series=planted: the planted series (probes.crosscoders.planted)
    match_cos: float = 0.8           # series=planted: decoder cosine at which a planted feature counts as recovered

    def __post_init__(self):
        require(self.series in ("model", "planted"), f"series={self.series!r} must be model or planted")
        require(self.crosscoder.n_snapshots != 1, "crosscoder.n_snapshots=1 spans no training: give >= 2 or 0 (all)")
        require(self.emergence_rule in em.EMERGENCE_RULES,
                f"emergence_rule={self.emergence_rule!r}; choose one of {', '.join(em.EMERGENCE_RULES)}")
        require(0 < self.match_cos <= 1, f"match_cos={self.match_cos} must lie in (0, 1]")
        require(self.emergence_strength in ("norm", "contribution", "aligned"),
                f"emergence_strength={self.emergence_strength!r} must be norm, contribution or aligned")
        require(not (self.run and self.pretrain_run), "give run (any family, streamed) or pretrain_run, not both")
        require(self.context >= 0, f"context={self.context} must be 0 (automatic) or a window length")
        require(self.direct_sweep >= 0, f"direct_sweep={self.direct_sweep} must be >= 0 (0 = automatic)")
        require(self.memory_budget_gb >= 0, f"memory_budget_gb={self.memory_budget_gb} must be >= 0 (0 = automatic)")
        if self.site:
            suite.parse_site(self.site)
        require(self.ablation in ("zero", "mean"), f"ablation={self.ablation!r} must be zero or mean")
        require(0 < self.emergence_frac and (self.emergence_frac <= 1 or self.emergence_rule != "half_max")
                and 0 < self.init_fade <= 1, "emergence_frac must be > 0 (<= 1 for half_max) and init_fade in (0, 1]")
        require(len(self.ks) >= 1 and min(self.ks) >= 1, "ks must hold positive k values")
        require(len(self.l1s) >= 1 and min(self.l1s) >= 0, "l1s must hold non-negative sparsity weights")
        require(self.reuse >= 1 and self.buffer_tokens >= self.crosscoder.batch_size,
                "reuse must be >= 1 and buffer_tokens >= crosscoder.batch_size")
        require(self.eval_windows >= 4 and self.n_induction >= 4 and self.max_order >= 1, "eval sizes too small")

    def snapshot_count(self, available: int) -> int:
        """Snapshots the dictionary spans on a series of `available` checkpoints: the count asked
        for, or (0) all of them up to MAX_AUTO_SNAPSHOTS; asking for more than there are is an error."""
        n = self.crosscoder.n_snapshots
        require(n <= available, f"crosscoder.n_snapshots={n} exceeds the {available} checkpoints of the series; "
                                f"give at most {available} or 0 (all of them)")
        require(n or available >= 2, f"the series has {available} checkpoint; a crosscoder across training needs >= 2")
        return n or min(available, MAX_AUTO_SNAPSHOTS)

    def crosscoder_config(self, d_model: int, n_snapshots: int) -> cc.CrosscoderConfig:
        """The embedded crosscoder config at the series' width and snapshot count."""
        return dataclasses.replace(self.crosscoder, d_model=d_model, n_snapshots=n_snapshots)

    def unused(self) -> dict[str, str]:
        """Keys the chosen series, arch or rule (or a given run) leaves without effect: setting one is refused."""
        keys = {"crosscoder.d_model": "the crosscoder's width is the series' d_model"}
        if self.emergence_rule == "steepest":
            keys["emergence_frac"] = "emergence_rule=steepest has no threshold"
        if self.crosscoder.arch == "batchtopk":
            keys["l1s"] = "crosscoder.arch=batchtopk has no L1 weight; its sparsity is ks"
        else:
            keys["ks"] = f"crosscoder.arch={self.crosscoder.arch} has no k; its sparsity weights are l1s"
        if self.series == "planted":
            return {**keys, **_MODEL_ONLY}
        keys.update({f"planted.{f.name}": "planted.* describes series=planted" for f in dataclasses.fields(PlantedConfig)})
        keys["match_cos"] = "match_cos scores series=planted"
        if self.pretrain_run or self.run:
            keys["pretrain_preset"] = "a run is given, so no pretrain preset is trained"
        if not self.run:
            keys["text"] = "text is read on an imported run (run=...); a pretrain run uses its own corpus"
            keys["context"] = "context sets the windows on run=...; a pretrain run uses its model's context"
        if self.site:
            keys["layer"] = f"site={self.site} names the block"
        if not self.direct:
            keys["direct_sweep"] = "direct_sweep sets the passes of direct=true; the shuffle buffer has its own refills"
        if self.direct:
            for k in ("buffer_tokens", "windows_per_fetch", "reuse"):
                keys[k] = "direct=true feeds each step's tokens straight in, with no shuffle buffer"
        return keys

    def hps(self) -> list[dict]:
        if self.crosscoder.arch == "batchtopk":
            return [{"k": k} for k in self.ks]
        return [{"l1": l1} for l1 in self.l1s]


PRESETS = {
    "tiny": Config(),
    "full": Config(pretrain_preset="shakespeare-char", l1s=(0.1, 0.3, 1.0, 3.0), buffer_tokens=1 << 19,
                   windows_per_fetch=64, reuse=4.0, eval_windows=256, n_induction=256, n_ablate=32,
                   crosscoder=dataclasses.replace(STUDY_CROSSCODER, n_snapshots=24, n_features=4096, steps=20000,
                                                  batch_size=4096, dead_tokens=2_000_000)),
    # Ge et al. on an imported suite (`--set run=RUN --set site=resid_post.6`; their 32 Pythia
    # snapshots: `import --steps ge2025`): JumpReLU with the tanh sparsity penalty (probes.crosscoders.model),
    # straight-through window 4 as quoted, all 32 snapshots, activations fed straight from the
    # vmapped forward. [choice] dictionary size, steps, batch and sparsity weight are ours (the
    # paper's run used 16+ GPUs); shorten with --set crosscoder.steps=... for a CPU.
    "ge2025": Config(l1s=(1.0,), direct=True, context=128, eval_windows=64, n_induction=64, n_ablate=32, n_random=4,
                     crosscoder=dataclasses.replace(STUDY_CROSSCODER, n_snapshots=32, jump_eps=4.0, n_features=16384,
                                                    steps=20000, batch_size=4096, dead_tokens=2_000_000)),
    # the planted check (probes.crosscoders.planted): 32 features of 5 groups over 8 snapshots in
    # width 32, switching on at snapshots 0, 4 and 6, under a drifting dense background; the
    # study's JumpReLU at a size for seconds on a CPU (`--set crosscoder.arch=relu|batchtopk`
    # for the other variants; `--set planted.all_at_zero=true` for the control)
    "planted": Config(series="planted", crosscoder=PLANTED_CROSSCODER, ks=(4,)),
    # a larger planted series: 16 snapshots in width 64 with nested features (later features that
    # fire only inside an earlier one, the case in which absorption can hide an onset)
    "planted-large": Config(series="planted", ks=(4,), planted=PlantedConfig(
        n_snapshots=16, d_model=64, n_init=16, n_fading=8, n_turning=8, n_middle=16, n_late=16, n_nested=16),
        crosscoder=dataclasses.replace(PLANTED_CROSSCODER, n_features=256, steps=2000, batch_size=512)),
}


def resolve(config: Config) -> dict:
    """What `run` runs, with every reference checked before anything is created: the series (a
    given run, the pretrain preset trained into OUT/pretrain, or the planted series), the block,
    the crosscoder config (at the series' width and snapshot count), one hyperparameter set per
    crosscoder, the study's keys. Keys `Config.unused` names appear nowhere here."""
    folded = {"crosscoder", "pretrain_run", "pretrain_preset", "layer", "ks", "l1s", "run", "site", "planted"}
    folded |= set(config.unused())
    study = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in folded}
    if config.series == "planted":
        pcfg = config.planted
        ccfg = config.crosscoder_config(pcfg.d_model, pcfg.n_snapshots)
        return {"planted": {k: v for k, v in dataclasses.asdict(pcfg).items() if k not in pcfg.unused()},
                "crosscoder": {k: v for k, v in dataclasses.asdict(ccfg).items() if k not in ccfg.unused()},
                "hps": config.hps(), "study": study}
    ref = suite.run_reference(config.run) if config.run else pretrain_reference(config.pretrain_run,
                                                                                config.pretrain_preset)
    n_layer, d_model = (ref["model"][k] if isinstance(ref["model"], dict) else getattr(ref["model"], k)
                        for k in ("n_layer", "d_model"))
    layer = suite.parse_site(config.site) if config.site else (n_layer - 1) // 2 if config.layer < 0 else config.layer
    typed = f"site={config.site}" if config.site else f"layer={layer}"
    model = "the imported model" if config.run else "the pretrain model"
    require(layer < n_layer, f"{typed} must be < {model}'s n_layer={n_layer} (blocks count from 0)")
    if config.run and config.context:
        require(config.context <= ref["model"].context,
                f"context={config.context} exceeds the model's context of {ref['model'].context}; lower it")
    ccfg = config.crosscoder_config(d_model, config.snapshot_count(len(ref["steps"])))
    crosscoder = {k: v for k, v in dataclasses.asdict(ccfg).items() if k not in ccfg.unused()}
    pretrain = {k: v for k, v in ref.items() if k != "steps"}
    return {"pretrain": pretrain, "layer": layer, "crosscoder": crosscoder, "hps": config.hps(), "study": study}


def choose_snapshots(available: list[int], n: int) -> list[int]:
    """n steps evenly spread over the series' index (log-spaced series stay log-spaced)."""
    return [available[i] for i in data_lib.spread(len(available), n)]


def run(config: Config, folder: RunFolder) -> dict:
    """Load the snapshots, train the crosscoders, then measure the first on held-out text:
    quality, CE / KL, decoder geometry, attribution and ablation, complexity; write figures,
    features.json and top_features.md; return the summary."""
    if config.series == "planted":
        return planted_mode.run(config, folder)
    t_start = time.perf_counter()
    plan = resolve(config)  # references were checked by the CLI before the folder was claimed
    run_dir = config.run or config.pretrain_run or ensure_pretrain(folder.sub("pretrain"), preset=config.pretrain_preset)
    model_config, layer = load_model_config(run_dir), plan["layer"]
    available = Series(run_dir, "pretrain", create=False).steps()
    steps = choose_snapshots(available, config.snapshot_count(len(available)))
    C, D = len(steps), model_config.d_model
    ccfg, hps = config.crosscoder_config(D, C), config.hps()
    # the budget covers the crosscoders too: the snapshots stream in what they leave ([choice]
    # at least a quarter of the budget, so a dictionary larger than the budget still runs); on
    # an accelerator the dictionaries take their share of the device's memory, not the host's
    set_memory_budget(int(config.memory_budget_gb * 2**30))
    training = cc.training_bytes(ccfg, len(hps))
    budget = reserve_memory(training)
    try:
        steps, stacked = open_stack(run_dir, steps) if config.run else load_stack(run_dir, steps)
        S = (config.context or min(model_config.context, 128)) if config.run else model_config.context
        corpus = suite.text_corpus(run_dir, config.text) if config.run else suite.own_corpus(run_dir)
        site = cm.site_fn(model_config, layer)
        if config.direct:
            t0 = time.perf_counter()
            sweep = streams.direct_sweep(config, C, D, outputs_budget_bytes(C))
            buffer = streams.DirectStream(config, corpus.train_ids, stacked, site, C, D, S, sweep)
            fill_s = time.perf_counter() - t0
        else:
            buffer, fill_s = streams.activation_buffer(config, corpus.train_ids, stacked, site, C, D, S)
        t0 = time.perf_counter()
        state, history = streams.train_resumable(ccfg, hps, [config.seed] * len(hps), buffer, folder)
        train_s = time.perf_counter() - t0
        for row in history:
            folder.log({"phase": "train", **{k: np.asarray(v).tolist() for k, v in row.items()}})

        m = measures.measure(config, folder, model_config, layer, steps, stacked, corpus, site, buffer.scale_C, state, ccfg, hps, S)
        measures.write_outputs(config, folder, steps, m, corpus.tokenizer.decode)
        timing = {"buffer_fill_s": fill_s, "train_s": train_s, "max_resident_snapshots": getattr(stacked, "max_resident", C),
                  "memory_budget_gib": budget / 2**30, "crosscoder_training_gib": training / 2**30,
                  **({"forward_s": buffer.seconds, "direct_sweep": buffer.sweep, "forward_passes": buffer.passes,
                      "forward_s_per_token": buffer.seconds / buffer.tokens}
                     if config.direct else {}),
                  "train_tokens_per_s": config.crosscoder.steps * config.crosscoder.batch_size * len(hps) / train_s}
        return {**measures.summarize(config, steps, layer, ccfg, m), **timing, "wall_s": time.perf_counter() - t_start}
    finally:  # the next study in this process starts from the default budget
        set_memory_budget()


def findings(summary: dict) -> list[str]:
    """The conclusions of a crosscoders summary, with intervals and verdicts."""
    s = summary
    if s.get("series") == "planted":
        return planted_mode.findings(s)
    diff = stats.ci_text(s, "ablation_top_minus_random", 3, signed=True) if "ablation_top_minus_random" in s else ""
    verdict = stats.verdict_above_zero(
        s, "ablation_top_minus_random",
        above=f"ablating the features attribution picks hurts induction more than random ones ({diff})",
        otherwise=f"top minus random, {diff}, does not exclude 0: attribution is not shown to pick the features "
                  f"induction needs",
        missing="no interval for top minus random")
    out = [f"One {s.get('arch', '')} crosscoder of {s.get('n_features', '?')} features over {s.get('n_snapshots', '?')} "
           f"snapshots, scored on {s.get('text', '?')} text, explains at least "
           f"{stats.ci_text(s, 'explained_variance_min', 3)} of the variance on every "
           f"snapshot after step 0 with L0 {stats.ci_text(s, 'l0_mean', 1)} (bootstrap over "
           f"{s.get('n_eval_windows', '?')} held-out windows); {stats.ci_text(s, 'dead_fraction', 3)} of features are dead.",
           f"At the last snapshot ablating the top features drops the induction log-prob by "
           f"{stats.ci_text(s, 'ablation_drop_top', 3)} against {stats.ci_text(s, 'ablation_drop_random', 3)} for random "
           f"ones (over {s.get('n_ablation_sequences', '?')} test sequences): {verdict}."]
    third = f"Median emergence step {stats.ci_text(s, 'median_emergence_step', 0)}"
    if "frac_emerge_first" in s and s.get("token_r2") is not None:
        third += measures.emergence_finding(s)
    if s.get("complexity_spearman_r") is not None and np.isfinite(s["complexity_spearman_r"]):
        ci = s.get("complexity_spearman_r_ci")
        rel = ("later features are more complex" if ci[0] > 0 else "later features are simpler") \
            if ci and stats.excludes(ci) else "no relation between complexity and emergence is shown"
        third += (f"; n-gram complexity against emergence: Spearman {stats.ci_text(s, 'complexity_spearman_r')} over "
                  f"{s.get('complexity_n_features')} features: {rel}")
    return out + [third + ". Intervals are over units of one training seed."]
