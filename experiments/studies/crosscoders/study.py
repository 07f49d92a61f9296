"""Crosscoders across training snapshots (Ge et al., arXiv 2509.17196): when do features form?

One sparse dictionary is trained on the residual stream after block `layer` of S snapshots of a
pretrain run (activations from the vmapped forward pass over the stacked checkpoints, streamed
through a shuffling buffer, each snapshot normalised to mean norm sqrt(D)). Several
crosscoders (one per entry of `ks` / `l1s`, same seed) train together in one vmapped program;
the first is analysed. Analyses:

- per-snapshot explained variance, L0, dead fraction, loss recovered (splice the
  reconstruction into that snapshot's forward pass; CE_ablated = `ablation` of the residual:
  "zero" (default) or "mean" over tokens);
- decoder norm of every feature at every snapshot, emergence step (first snapshot at >=
  `emergence_frac` of the feature's maximum norm), initialisation features (emerged at
  snapshot 0 and ending below `init_fade` x max), decoder-direction cosines across snapshots;
- emergence histogram beside the loss and the KL from the model's next-token distribution to
  corpus unigram and bigram statistics;
- attribution attr_i = f_i dm/df_i of an induction metric (log-prob on the repeated half of
  random-token spans), top-`n_ablate` features ablated vs as many random alive features
  (selection and ablation use different sequences);
- complexity: the n-gram order that best predicts each feature's activation, correlated with
  emergence step (Spearman, p-value); a text file with the top contexts of the top features.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from dynamics import data as data_lib
from dynamics import distributed
from dynamics import stats
from dynamics.checkpoints import (Series, load_model_config, load_stack, map_stack, open_stack,
                                  outputs_budget_bytes, reserve_memory, set_memory_budget)
from dynamics.runlog import RunFolder, write_json
from . import figures
from . import streams
from experiments.studies import run_inputs as suite
from models.errors import require
from experiments.studies.pretrain.study import ensure_pretrain, pretrain_reference
from models.families import logits_from_resid
from probes.crosscoders import model as cc
from probes.crosscoders import training as cct
from probes.crosscoders import metrics as cm

DESCRIPTION = "crosscoders across training snapshots (Ge et al. 2025): when features form, attribution, ablation"


# [choice] the study's crosscoder: JumpReLU as Ge et al., a small dictionary and run for a CPU
# (batchtopk at tiny left 33% of features dead); d_model is set from the run's width.
STUDY_CROSSCODER = cc.CrosscoderConfig(n_snapshots=16, arch="jumprelu", n_features=512, steps=800, batch_size=256,
                                       lr=2e-3, aux_k=64, dead_tokens=20_000)


@dataclasses.dataclass(frozen=True)
class Config:
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
    emergence_frac: float = 0.5      # a feature emerges at the first snapshot its decoder norm passes this x its max
    init_fade: float = 0.5           # an initialisation feature ends below this x its max decoder norm
    n_induction: int = 64            # induction sequences (half for selection, half for ablation)
    n_ablate: int = 16               # top-attribution features ablated together (and as many random ones)
    n_random: int = 16               # random draws of features for the ablation baseline
    max_order: int = 6               # longest n-gram in the n-gram complexity of a feature
    n_text_features: int = 10        # features shown with their top contexts
    n_contexts: int = 6              # top contexts shown per feature

    def __post_init__(self):
        require(self.crosscoder.n_snapshots >= 2, f"crosscoder.n_snapshots={self.crosscoder.n_snapshots} must be >= 2")
        require(not (self.run and self.pretrain_run), "give run (any family, streamed) or pretrain_run, not both")
        require(self.context >= 0, f"context={self.context} must be 0 (automatic) or a window length")
        require(self.direct_sweep >= 0, f"direct_sweep={self.direct_sweep} must be >= 0 (0 = automatic)")
        require(self.memory_budget_gb >= 0, f"memory_budget_gb={self.memory_budget_gb} must be >= 0 (0 = automatic)")
        if self.site:
            suite.parse_site(self.site)
        require(self.ablation in ("zero", "mean"), f"ablation={self.ablation!r} must be zero or mean")
        require(0 < self.emergence_frac <= 1 and 0 < self.init_fade <= 1, "emergence_frac and init_fade lie in (0, 1]")
        require(len(self.ks) >= 1 and min(self.ks) >= 1, "ks must hold positive k values")
        require(len(self.l1s) >= 1 and min(self.l1s) >= 0, "l1s must hold non-negative sparsity weights")
        require(self.reuse >= 1 and self.buffer_tokens >= self.crosscoder.batch_size,
                "reuse must be >= 1 and buffer_tokens >= crosscoder.batch_size")
        require(self.eval_windows >= 4 and self.n_induction >= 4 and self.max_order >= 1, "eval sizes too small")

    def crosscoder_config(self, d_model: int) -> cc.CrosscoderConfig:
        """The embedded crosscoder config at the run's width."""
        return dataclasses.replace(self.crosscoder, d_model=d_model)

    def unused(self) -> dict[str, str]:
        """Keys the chosen arch (or a given pretrain_run) leaves without effect: setting one is refused."""
        keys = {"crosscoder.d_model": "the crosscoder's width is the run's d_model"}
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
        if self.crosscoder.arch == "batchtopk":
            keys["l1s"] = "crosscoder.arch=batchtopk has no L1 weight; its sparsity is ks"
        else:
            keys["ks"] = f"crosscoder.arch={self.crosscoder.arch} has no k; its sparsity weights are l1s"
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
}


def resolve(config: Config) -> dict:
    """What `run` runs, with every reference checked before anything is created: the pretrain
    series (a given run, or the preset trained into OUT/pretrain), the block, the crosscoder
    config (at the series' width), one hyperparameter set per crosscoder, the study's keys.
    Keys `Config.unused` names appear nowhere here."""
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
    require(config.crosscoder.n_snapshots <= len(ref["steps"]), f"crosscoder.n_snapshots={config.crosscoder.n_snapshots} exceeds the "
                                                     f"{len(ref['steps'])} checkpoints of the pretrain series")
    ccfg = config.crosscoder_config(d_model)
    crosscoder = {k: v for k, v in dataclasses.asdict(ccfg).items() if k not in ccfg.unused()}
    folded = {"crosscoder", "pretrain_run", "pretrain_preset", "layer", "ks", "l1s", "run", "site"}
    folded |= set(config.unused())
    study = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in folded}
    pretrain = {k: v for k, v in ref.items() if k != "steps"}
    return {"pretrain": pretrain, "layer": layer, "crosscoder": crosscoder, "hps": config.hps(), "study": study}


def choose_snapshots(available: list[int], n: int) -> list[int]:
    """n steps evenly spread over the series' index (log-spaced series stay log-spaced)."""
    return [available[i] for i in data_lib.spread(len(available), n)]


def evaluate_members(state, hps: list[dict], ccfg: cc.CrosscoderConfig, x_eval, folder: RunFolder) -> list[dict]:
    """Each crosscoder's per-snapshot EV, L0 and dead fraction on the held-out rows (logged)."""
    members = []
    for m, hp in enumerate(hps):
        params_m = cct.member(state["params"], m)
        threshold = state["threshold"][m] if ccfg.arch == "batchtopk" else None
        ev = cm.evaluate(params_m, x_eval, ccfg, threshold)
        members.append({"hp": hp, "params": params_m, "threshold": threshold, **ev})
        folder.log({"phase": "eval", "member": m, "hp": hp, "explained_variance": ev["explained_variance"],
                    "l0": ev["l0"], "dead_fraction": ev["dead_fraction"]})
    return members


def run(config: Config, folder: RunFolder) -> dict:
    """Load the snapshots, train the crosscoders, then measure the first on held-out text:
    quality, CE / KL, decoder geometry, attribution and ablation, complexity; write figures,
    features.json and top_features.md; return the summary."""
    t_start = time.perf_counter()
    plan = resolve(config)  # references were checked by the CLI before the folder was claimed
    run_dir = config.run or config.pretrain_run or ensure_pretrain(folder.sub("pretrain"), preset=config.pretrain_preset)
    model_config, layer = load_model_config(run_dir), plan["layer"]
    steps = choose_snapshots(Series(run_dir, "pretrain", create=False).steps(), config.crosscoder.n_snapshots)
    require(len(steps) == config.crosscoder.n_snapshots,
            f"the run has only {len(steps)} checkpoints; set crosscoder.n_snapshots <= {len(steps)}")
    C, D = len(steps), model_config.d_model
    ccfg, hps = config.crosscoder_config(D), config.hps()
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

        m = measure(config, folder, model_config, layer, steps, stacked, corpus, site, buffer.scale_S, state, ccfg, hps, S)
        write_outputs(config, folder, steps, m, corpus.tokenizer.decode)
        timing = {"buffer_fill_s": fill_s, "train_s": train_s, "max_resident_snapshots": getattr(stacked, "max_resident", C),
                  "memory_budget_gib": budget / 2**30, "crosscoder_training_gib": training / 2**30,
                  **({"forward_s": buffer.seconds, "direct_sweep": buffer.sweep, "forward_passes": buffer.passes,
                      "forward_s_per_token": buffer.seconds / buffer.tokens}
                     if config.direct else {}),
                  "train_tokens_per_s": config.crosscoder.steps * config.crosscoder.batch_size * len(hps) / train_s}
        return {**summarize(config, steps, layer, ccfg, m), **timing, "wall_s": time.perf_counter() - t_start}
    finally:  # the next study in this process starts from the default budget
        set_memory_budget()


def measure(config: Config, folder: RunFolder, model_config, layer: int, steps, stacked, corpus, site, scale_C,
            state, ccfg: cc.CrosscoderConfig, hps: list[dict], S: int) -> dict:
    """Every measure of the trained crosscoders on held-out text (windows of S tokens), in the
    buffer's normalised units."""
    C, D = len(steps), model_config.d_model
    eval_tokens, eval_targets = data_lib.get_batch(corpus.val_ids, config.seed + 1, 0, config.eval_windows, S, stream=1)
    raw = map_stack(site, stacked, eval_tokens)                                  # [C, B, S, D]
    x_eval = np.moveaxis(raw.reshape(C, -1, D), 0, 1) * scale_C[None, :, None]
    members = evaluate_members(state, hps, ccfg, x_eval, folder)
    main = members[0]
    params, f, x_hat = main["params"], main["f"], main["x_hat"]
    counts, log_uni, log_bi = cm.corpus_statistics(corpus.train_ids, model_config.vocab_size)
    hat_CBSD = np.moveaxis(x_hat / scale_C[None, :, None], 1, 0).reshape(C, config.eval_windows, S, D)
    ce, loss_rec = cm.loss_and_kl(model_config, layer, config.ablation, stacked, hat_CBSD, raw, eval_tokens,
                                  eval_targets, log_uni, log_bi)
    alive = cm.fire_counts(f, C) > 0
    geo = cm.decoder_features(np.asarray(params["W_dec"]), alive, steps, config.emergence_frac, config.init_fade)
    logits_fn = lambda p, resid: logits_from_resid(p, resid, layer, model_config)
    abl = cm.induction_ablation(stacked, site, logits_fn, params, main["threshold"], ccfg, scale_C, counts, alive, S,
                                config.seed, config.n_induction, config.n_ablate, config.n_random)
    f_last_NF = cm.per_snapshot_f(f, C)[-1]
    cx = cm.complexity(eval_tokens, f_last_NF.reshape(config.eval_windows, S, -1), config.max_order, alive,
                       geo["init_feature"], geo["emerge_idx"])
    return {"eval_tokens": eval_tokens, "x_eval": x_eval, "members": members, "f": f, "x_hat": x_hat,
            "f_last_NF": f_last_NF, "alive": alive, "ce": ce, "loss_rec": loss_rec, "geo": geo, "abl": abl, "cx": cx}


def write_outputs(config: Config, folder: RunFolder, steps, m: dict, decode) -> None:
    """top_features.md, the figures and features.json."""
    geo, abl, cx, alive = m["geo"], m["abl"], m["cx"], m["alive"]
    if distributed.is_primary():
        (folder.root / "top_features.md").write_text(figures.top_features_markdown(
            abl["attr"], geo["emerge_step"], cx["order"], m["f_last_NF"], m["eval_tokens"], decode, steps[-1],
            config.n_text_features, config.n_contexts))
    drop_top, drop_rand = abl["seq_top"].mean(-1), abl["seq_rand"].mean(-1)
    figures.draw(folder, steps, geo["norms"], geo["emerge_idx"], alive, geo["cos"], m["ce"], drop_top, drop_rand,
                 cx["order"], cx["usable"], geo["init_feature"])
    write_json(folder.root / "features.json", {
        "steps": steps, "decoder_norms": geo["norms"], "emergence_step": geo["emerge_step"], "alive": alive,
        "init_feature": geo["init_feature"], "ngram_order": cx["order"], "attribution": abl["attr"],
        "consecutive_cos": geo["cos"]})


def summarize(config: Config, steps, layer: int, ccfg, m: dict) -> dict:
    """The headline numbers of the first crosscoder with their intervals (and EV / L0 / dead
    fraction of every member)."""
    members, alive, loss_rec, ce, geo, abl, cx = (m[k] for k in ("members", "alive", "loss_rec", "ce", "geo", "abl", "cx"))
    cis = {**cm.window_intervals(m["x_eval"], m["x_hat"], m["f"], len(steps), config.eval_windows, steps[0] == 0),
           **cm.feature_intervals(alive, geo["init_feature"], geo["emerge_step"], cx["order"], geo["emerge_idx"],
                                  cx["usable"], abl["seq_top"], abl["seq_rand"])}
    main = members[0]
    ev_all = main["explained_variance"]
    after0 = ev_all[1:] if steps[0] == 0 else ev_all
    drop_top, drop_rand = abl["seq_top"].mean(-1), abl["seq_rand"].mean(-1)
    init_feature = geo["init_feature"]
    return {
        **cis,
        "n_snapshots": len(steps), "snapshot_steps": steps, "layer": layer, "arch": ccfg.arch, "hp": main["hp"],
        "n_features": ccfg.n_features,
        "explained_variance_min": float(after0.min()), "explained_variance_mean": float(after0.mean()),
        "explained_variance_step0": float(ev_all[0]), "explained_variance": ev_all,
        "l0_mean": float(np.mean(main["l0"])), "dead_fraction": float(1.0 - alive.mean()),
        "loss_recovered_mean": float(np.mean(loss_rec)), "loss_recovered": loss_rec,
        "ablation": config.ablation, "ce_clean": ce["clean"], "kl_unigram": ce["kl_unigram"], "kl_bigram": ce["kl_bigram"],
        "median_emergence_step": float(np.median(geo["emerge_step"][alive])),
        "frac_init_features": float(init_feature.sum() / max(alive.sum(), 1)),
        "ablation_drop_top": float(drop_top[-1]), "ablation_drop_random": float(drop_rand[-1]),
        "ablation_drop_top_per_snapshot": drop_top, "ablation_drop_random_per_snapshot": drop_rand,
        "induction_logprob": abl["m_clean"].mean(-1),
        "complexity_spearman_r": stats.defined(cx["rho"]), "complexity_p_value": stats.defined(cx["p_value"]),
        "complexity_n_features": int(cx["usable"].sum()),
        "members": [{"hp": mm["hp"], "explained_variance_min": float(mm["explained_variance"][1:].min()),
                     "l0_mean": float(np.mean(mm["l0"])), "dead_fraction": float(np.mean(mm["dead_fraction"]))}
                    for mm in members],
    }


def findings(summary: dict) -> list[str]:
    """The conclusions of a crosscoders summary, with intervals and verdicts."""
    s = summary
    d = s.get("ablation_top_minus_random_ci")
    diff = stats.ci_text(s, "ablation_top_minus_random", 3, signed=True) if "ablation_top_minus_random" in s else ""
    if d is None:
        verdict = "no interval for top minus random"
    elif d[0] > 0:
        verdict = f"ablating the features attribution picks hurts induction more than random ones ({diff})"
    else:
        verdict = (f"top minus random, {diff}, does not exclude 0: attribution is not shown to pick the features "
                   f"induction needs")
    out = [f"One {s.get('arch', '')} crosscoder of {s.get('n_features', '?')} features over {s.get('n_snapshots', '?')} "
           f"snapshots explains at least {stats.ci_text(s, 'explained_variance_min', 3)} of the variance on every "
           f"snapshot after step 0 with L0 {stats.ci_text(s, 'l0_mean', 1)} (bootstrap over "
           f"{s.get('n_eval_windows', '?')} held-out windows); {stats.ci_text(s, 'dead_fraction', 3)} of features are dead.",
           f"At the last snapshot ablating the top features drops the induction log-prob by "
           f"{stats.ci_text(s, 'ablation_drop_top', 3)} against {stats.ci_text(s, 'ablation_drop_random', 3)} for random "
           f"ones (over {s.get('n_ablation_sequences', '?')} test sequences): {verdict}."]
    third = f"Median emergence step {stats.ci_text(s, 'median_emergence_step', 0)}"
    if s.get("complexity_spearman_r") is not None and np.isfinite(s["complexity_spearman_r"]):
        ci = s.get("complexity_spearman_r_ci")
        rel = ("later features are more complex" if ci[0] > 0 else "later features are simpler") \
            if ci and stats.excludes(ci) else "no relation between complexity and emergence is shown"
        third += (f"; n-gram complexity against emergence: Spearman {stats.ci_text(s, 'complexity_spearman_r')} over "
                  f"{s.get('complexity_n_features')} features: {rel}")
    return out + [third + ". Intervals are over units of one training seed."]
