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
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from dynamics import data as data_lib
from dynamics import distributed
from dynamics import stats
from dynamics.checkpoints import Series, load_model_config, load_stack, map_stack
from dynamics.runlog import RunFolder, write_json
from experiments.config import require
from experiments.plots import plt, save
from models import gpt
from probes import attribution as attr_lib
from probes import crosscoder as cc
from probes import metrics as mt

DESCRIPTION = "crosscoders across training snapshots (Ge et al. 2025): when features form, attribution, ablation"


@dataclasses.dataclass(frozen=True)
class Config:
    pretrain_run: str = ""           # "" = train the pretrain preset into OUT/pretrain
    pretrain_preset: str = "tiny"    # pretrain preset trained into OUT/pretrain when pretrain_run is empty
    layer: int = -1                  # -1 = the middle block, (n_layer - 1) // 2
    n_snapshots: int = 16            # spread evenly over the series' index (0 and last included)
    arch: str = "jumprelu"           # relu | jumprelu (the paper's) | batchtopk; tiny: batchtopk left 33% dead
    n_features: int = 512            # dictionary size (features shared by all snapshots)
    ks: tuple[int, ...] = (24,)      # batchtopk: one crosscoder per k, trained together (vmapped)
    l1s: tuple[float, ...] = (0.3,)  # relu / jumprelu: one crosscoder per sparsity weight
    seed: int = 0                    # crosscoder init, activation windows and the random ablation draws
    steps: int = 800                 # crosscoder optimizer steps
    batch_size: int = 256            # activation rows (tokens) per crosscoder step
    lr: float = 2e-3                 # crosscoder peak learning rate
    aux_k: int = 64                  # AuxK: dead latents that reconstruct the residual (0 = off)
    dead_tokens: int = 20_000        # a feature silent for this many tokens counts as dead
    resample_every: int = 0          # resample dead features every this many steps (0 = off)
    jump_eps: float = 0.1            # jumprelu: straight-through kernel bandwidth
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
        require(self.n_snapshots >= 2, f"n_snapshots={self.n_snapshots} must be >= 2")
        require(self.ablation in ("zero", "mean"), f"ablation={self.ablation!r} must be zero or mean")
        require(0 < self.emergence_frac <= 1 and 0 < self.init_fade <= 1, "emergence_frac and init_fade lie in (0, 1]")
        require(len(self.ks) >= 1 and min(self.ks) >= 1, "ks must hold positive k values")
        require(len(self.l1s) >= 1 and min(self.l1s) >= 0, "l1s must hold non-negative sparsity weights")
        require(self.reuse >= 1 and self.buffer_tokens >= self.batch_size, "reuse >= 1 and buffer_tokens >= batch_size")
        require(self.eval_windows >= 4 and self.n_induction >= 4 and self.max_order >= 1, "eval sizes too small")
        self.crosscoder_config()

    def crosscoder_config(self, d_model: int = 128) -> cc.CrosscoderConfig:
        return cc.CrosscoderConfig(n_snapshots=self.n_snapshots, d_model=d_model, n_features=self.n_features,
                                   arch=self.arch, steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                                   aux_k=self.aux_k, dead_tokens=self.dead_tokens, jump_eps=self.jump_eps,
                                   resample_every=self.resample_every)

    def unused(self) -> dict[str, str]:
        """Keys the chosen arch (or a given pretrain_run) leaves without effect: setting one is refused."""
        keys = {}
        if self.pretrain_run:
            keys["pretrain_preset"] = "pretrain_run is given, so no pretrain preset is trained"
        if self.arch == "batchtopk":
            keys["l1s"] = "arch=batchtopk has no L1 weight; its sparsity is ks"
        else:
            keys["ks"] = f"arch={self.arch} has no k; its sparsity weights are l1s"
        if self.arch != "jumprelu":
            keys["jump_eps"] = f"jump_eps is the jumprelu kernel bandwidth and arch={self.arch}"
        return keys

    def hps(self) -> list[dict]:
        if self.arch == "batchtopk":
            return [{"k": k} for k in self.ks]
        return [{"l1": l1} for l1 in self.l1s]


PRESETS = {
    "tiny": Config(),
    "full": Config(pretrain_preset="shakespeare-char", n_snapshots=24, n_features=4096, l1s=(0.1, 0.3, 1.0, 3.0),
                   steps=20000, batch_size=4096, buffer_tokens=1 << 19, windows_per_fetch=64, reuse=4.0,
                   eval_windows=256, n_induction=256, n_ablate=32, dead_tokens=2_000_000),
}


def resolve(config: Config) -> dict:
    """What `run` runs, with every reference checked before anything is created: the pretrain
    series (a given run, or the preset trained into OUT/pretrain), the block, the crosscoder
    config (at the series' width), one hyperparameter set per crosscoder, the study's keys.
    Keys `Config.unused` names appear nowhere here."""
    from experiments.pretrain import pretrain_reference

    ref = pretrain_reference(config.pretrain_run, config.pretrain_preset)
    n_layer, d_model = (ref["model"][k] if isinstance(ref["model"], dict) else getattr(ref["model"], k)
                        for k in ("n_layer", "d_model"))
    layer = (n_layer - 1) // 2 if config.layer < 0 else config.layer
    require(layer < n_layer, f"layer={config.layer} must be < the pretrain model's n_layer={n_layer} (or -1)")
    require(config.n_snapshots <= len(ref["steps"]), f"n_snapshots={config.n_snapshots} exceeds the "
                                                     f"{len(ref['steps'])} checkpoints of the pretrain series")
    crosscoder = dataclasses.asdict(config.crosscoder_config(d_model))
    if config.arch != "jumprelu":
        crosscoder.pop("jump_eps")  # probes.crosscoder reads the kernel width in the jumprelu encoder only
    folded = set(crosscoder) | {"pretrain_run", "pretrain_preset", "layer", "ks", "l1s"}
    study = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in folded}
    pretrain = {k: v for k, v in ref.items() if k != "steps"}
    return {"pretrain": pretrain, "layer": layer, "crosscoder": crosscoder, "hps": config.hps(), "study": study}


def choose_snapshots(available: list[int], n: int) -> list[int]:
    """n steps evenly spread over the series' index (log-spaced series stay log-spaced)."""
    index = np.unique(np.round(np.linspace(0, len(available) - 1, min(n, len(available)))).astype(int))
    return [available[i] for i in index]


def site_fn(model_config: gpt.GPTConfig, layer: int):
    """fn(params, tokens_BC) -> residual after block `layer` [B, C, D] (stops the forward there)."""
    def fn(params, tokens):
        x = gpt.embed(params, tokens, model_config)
        x, _ = gpt.run_blocks(gpt.layer_slice(params["blocks"], 0, layer + 1), x, model_config)
        return x
    return fn


def run_corpus(run_dir) -> data_lib.Corpus:
    """The corpus the run was trained on (config.json's data section; Shakespeare if absent)."""
    import json
    from pathlib import Path

    from experiments.config import from_dict

    try:
        data = json.loads((Path(run_dir) / "config.json").read_text())["config"]["data"]
        return data_lib.load_corpus(from_dict(data_lib.DataConfig, data))
    except (OSError, ValueError, KeyError, TypeError):
        return data_lib.load_shakespeare()


def emergence(norms_FS: np.ndarray, frac: float) -> np.ndarray:
    """[F] index of the first snapshot at >= frac x the feature's maximum decoder norm."""
    return (norms_FS >= frac * norms_FS.max(1, keepdims=True)).argmax(1)


def consecutive_cosines(w_dec_FSD: np.ndarray) -> np.ndarray:
    """[F, S-1] cosine of each feature's decoder vectors at consecutive snapshots."""
    w = w_dec_FSD / np.maximum(np.linalg.norm(w_dec_FSD, axis=-1, keepdims=True), 1e-12)
    return np.sum(w[:, 1:] * w[:, :-1], axis=-1)


def per_snapshot_f(f, S: int) -> np.ndarray:
    """[S, N, F] latents per snapshot (shared latents repeated)."""
    return np.broadcast_to(f[None], (S,) + f.shape) if f.ndim == 2 else np.moveaxis(f, 2, 0)


def train_resumable(ccfg: cc.CrosscoderConfig, hps: list[dict], seeds: list[int], buffer, folder: RunFolder):
    """`cc.train` that survives SIGINT/SIGTERM: it stops after the current step, saves the state
    and the metrics so far to OUT/_resume/crosscoder.npz and raises `Interrupted`; the same
    command continues from there (the shuffle buffer replays its draws) to the result of an
    uninterrupted run. In a multi-process job the processes agree on the stop step (checked
    every 50 steps, since the buffer's refreshes are collective)."""
    from dynamics import checkpoints, train as train_lib

    path = folder.root / "_resume" / "crosscoder.npz"
    resume = None
    if path.exists():
        template = cc.state_template(ccfg, len(hps), np.zeros((ccfg.batch_size, ccfg.n_snapshots, ccfg.d_model)))
        state, record = checkpoints.load_tree(path, template)
        resume = (record["step"], state, record["history"])
    multi = jax.process_count() > 1
    with train_lib.stop_on_signals() as flag:
        def should_stop(i):
            if multi:
                return i % 50 == 49 and distributed.any_process(flag["signal"] is not None)
            return flag["signal"] is not None

        try:
            state, history = cc.train(ccfg, hps, seeds, buffer, progress=True, should_stop=should_stop, resume=resume)
        except cc.Stopped as stopped:
            checkpoints.save_tree(path, stopped.state, {"step": stopped.step, "history": stopped.history})
            distributed.barrier("crosscoder-interrupted")
            raise train_lib.Interrupted(flag["signal"] or signal.SIGTERM, stopped.step) from None
    if distributed.is_primary() and path.exists():
        path.unlink()
    return state, history


def run(config: Config, folder: RunFolder) -> dict:
    from experiments.pretrain import ensure_pretrain

    t_start = time.perf_counter()
    plan = resolve(config)  # references were checked by the CLI before the folder was claimed
    run_dir = config.pretrain_run or ensure_pretrain(folder.sub("pretrain"), preset=config.pretrain_preset)
    model_config = load_model_config(run_dir)
    layer = plan["layer"]
    steps = choose_snapshots(Series(run_dir, "pretrain", create=False).steps(), config.n_snapshots)
    require(len(steps) == config.n_snapshots,
            f"the run has only {len(steps)} checkpoints; set n_snapshots <= {len(steps)}")
    steps, stacked = load_stack(run_dir, steps)
    S, D, C = len(steps), model_config.d_model, model_config.context
    ccfg = config.crosscoder_config(D)

    corpus = run_corpus(run_dir)
    train_ids, val_ids = corpus.train_ids, corpus.val_ids
    site = site_fn(model_config, layer)

    def source(i):
        tokens, _ = data_lib.get_batch(train_ids, config.seed + 17, i, config.windows_per_fetch, C)
        acts = map_stack(site, stacked, tokens)                       # [S, B, C, D]
        return np.moveaxis(acts.reshape(S, -1, D), 0, 1)              # [B*C, S, D]

    fetch = config.windows_per_fetch * C
    refresh_every = max(1, int(round(config.reuse * fetch / config.batch_size)))
    t0 = time.perf_counter()
    buffer = cc.ShuffleBuffer(source, config.buffer_tokens, config.batch_size, fetch, refresh_every, config.seed)
    fill_s = time.perf_counter() - t0

    hps = config.hps()
    t0 = time.perf_counter()
    state, history = train_resumable(ccfg, hps, [config.seed] * len(hps), buffer, folder)
    train_s = time.perf_counter() - t0
    for row in history:
        folder.log({"phase": "train", **{k: np.asarray(v).tolist() for k, v in row.items()}})

    # ---------------------------------------------------------------- evaluation on held-out text
    eval_tokens, eval_targets = data_lib.get_batch(val_ids, config.seed + 1, 0, config.eval_windows, C, stream=1)
    raw = map_stack(site, stacked, eval_tokens)                       # [S, B, C, D]
    scale = buffer.scale_S
    x_eval = np.moveaxis(raw.reshape(S, -1, D), 0, 1) * scale[None, :, None]
    members = []
    for m, hp in enumerate(hps):
        params_m = cc.member(state["params"], m)
        threshold = state["threshold"][m] if ccfg.arch == "batchtopk" else None
        ev = mt.evaluate(params_m, x_eval, ccfg, threshold)
        members.append({"hp": hp, "params": params_m, "threshold": threshold, **ev})
        folder.log({"phase": "eval", "member": m, "hp": hp, "explained_variance": ev["explained_variance"],
                    "l0": ev["l0"], "dead_fraction": ev["dead_fraction"]})
    main = members[0]
    params, f, x_hat = main["params"], main["f"], main["x_hat"]

    # loss recovered, clean CE and KL to unigram / bigram statistics per snapshot
    counts = np.bincount(train_ids, minlength=model_config.vocab_size).astype(np.float64) + 1.0
    log_uni = np.log(counts / counts.sum())
    bi = np.ones((model_config.vocab_size, model_config.vocab_size))
    np.add.at(bi, (train_ids[:-1], train_ids[1:]), 1.0)
    log_bi = np.log(bi / bi.sum(1, keepdims=True))
    mean_resid = raw.mean(axis=(1, 2))                                 # [S, D]

    def ce_fn(snap, tokens, targets, log_uni, log_bi):
        p, hat = snap["model"], snap["hat"]
        logits, _ = gpt.apply(p, tokens, model_config)
        ablated = jnp.zeros_like(hat) if config.ablation == "zero" else jnp.broadcast_to(snap["mean"], hat.shape)
        logp = jax.nn.log_softmax(logits, -1)
        prob = jnp.exp(logp)
        kl_uni = jnp.sum(prob * (logp - log_uni), -1).mean()
        kl_bi = jnp.sum(prob * (logp - log_bi[tokens]), -1).mean()
        return {"clean": gpt.cross_entropy(logits, targets),
                "spliced": gpt.cross_entropy(gpt.logits_from_resid(p, hat, layer, model_config), targets),
                "ablated": gpt.cross_entropy(gpt.logits_from_resid(p, ablated, layer, model_config), targets),
                "kl_unigram": kl_uni, "kl_bigram": kl_bi}

    hat_SBCD = np.moveaxis(x_hat / scale[None, :, None], 1, 0).reshape(S, config.eval_windows, C, D)
    ce = map_stack(ce_fn, {"model": stacked, "hat": hat_SBCD, "mean": mean_resid}, eval_tokens, eval_targets,
                   jnp.asarray(log_uni, jnp.float32), jnp.asarray(log_bi, jnp.float32))
    loss_rec = mt.loss_recovered(ce["clean"], ce["spliced"], ce["ablated"])

    # ---------------------------------------------------------------- decoder norms, emergence, cosines
    w_dec = np.asarray(params["W_dec"])
    norms = np.linalg.norm(w_dec, axis=-1)                             # [F, S]
    alive = mt.fire_counts(f, S) > 0
    emerge_idx = emergence(norms, config.emergence_frac)
    emerge_step = steps[emerge_idx]
    init_feature = (emerge_idx == 0) & (norms[:, -1] <= config.init_fade * norms.max(1)) & alive
    cos = consecutive_cosines(w_dec)

    # ---------------------------------------------------------------- attribution and ablation
    rng = np.random.default_rng(config.seed + 3)
    half = C // 2
    common = np.argsort(-counts)[:min(40, model_config.vocab_size)]
    induction = attr_lib.induction_tokens(rng, config.n_induction, half, common)
    select_tokens, test_tokens = induction[: config.n_induction // 2], induction[config.n_induction // 2:]
    metric = attr_lib.induction_metric(half)
    logits_fn = lambda p, resid: gpt.logits_from_resid(p, resid, layer, model_config)
    threshold = main["threshold"]

    def snapshots_for(tokens):
        acts = map_stack(site, stacked, tokens)
        x = np.moveaxis(acts.reshape(S, -1, D), 0, 1) * scale[None, :, None]
        f_ind, x_hat_ind = mt.encode_all(params, x, ccfg, threshold)
        return {"model": stacked, "W_dec": np.moveaxis(w_dec, 1, 0), "b_dec": np.asarray(params["b_dec"]),
                "err": np.moveaxis(x - x_hat_ind, 1, 0), "scale": scale, "f": per_snapshot_f(f_ind, S)}

    sel = snapshots_for(select_tokens)
    m_clean_sel, attr = map_stack(attr_lib.attribution_fn(metric, logits_fn), sel, select_tokens)  # [S], [S, F]
    test = snapshots_for(test_tokens)
    ablate = attr_lib.ablation_fn(attr_lib.induction_metric(half, per_sequence=True), logits_fn)  # [B] per sequence
    F = ccfg.n_features
    zero_mask = np.zeros((S, F), np.float32)
    m_clean = map_stack(ablate, {**test, "mask": zero_mask}, test_tokens)
    top = np.argsort(-attr, axis=1)[:, : config.n_ablate]
    top_mask = zero_mask.copy()
    np.put_along_axis(top_mask, top, 1.0, axis=1)
    m_top = map_stack(ablate, {**test, "mask": top_mask}, test_tokens)
    alive_ids = np.flatnonzero(alive)
    m_rand = []
    for r in range(config.n_random):
        mask = zero_mask.copy()
        for s in range(S):
            mask[s, rng.choice(alive_ids, size=min(config.n_ablate, len(alive_ids)), replace=False)] = 1.0
        m_rand.append(map_stack(ablate, {**test, "mask": mask}, test_tokens))
    seq_top, seq_rand = m_clean - m_top, m_clean - np.mean(m_rand, axis=0)     # [S, B]: per test sequence
    drop_top, drop_rand, m_clean = seq_top.mean(-1), seq_rand.mean(-1), m_clean.mean(-1)

    # ---------------------------------------------------------------- complexity: best n-gram order
    f_last = per_snapshot_f(f, S)[-1].reshape(config.eval_windows, C, F)
    half_rows = np.arange(0, config.eval_windows, 2)
    r2 = attr_lib.ngram_r2(eval_tokens, f_last, config.max_order, half_rows)
    order = attr_lib.best_order(r2)
    usable = alive & (r2.max(0) > 0.05) & ~init_feature
    if usable.sum() >= 3 and np.ptp(order[usable]) > 0 and np.ptp(emerge_idx[usable]) > 0:
        rho, p_value = scipy.stats.spearmanr(order[usable], emerge_idx[usable])
    else:
        rho, p_value = float("nan"), float("nan")

    # ---------------------------------------------------------------- top features as text
    text_ids = np.argsort(-attr[-1])[: config.n_text_features]
    f_flat = per_snapshot_f(f, S)[-1]
    lines = [f"# Top features by attribution to the induction metric (snapshot step {steps[-1]})\n"]
    for i in text_ids:
        lines.append(f"## feature {i}: attr {attr[-1, i]:.4f}, emerges at step {emerge_step[i]}, "
                     f"best n-gram order {order[i]}, fires on {np.mean(f_flat[:, i] > 0):.3%} of tokens")
        for n in np.argsort(-f_flat[:, i])[: config.n_contexts]:
            if f_flat[n, i] <= 0:
                break
            b, c = divmod(int(n), C)
            before = corpus.tokenizer.decode(eval_tokens[b, max(0, c - 30): c])
            lines.append(f"    {f_flat[n, i]:7.2f}  {before!r} [{corpus.tokenizer.decode(eval_tokens[b, c:c + 1])!r}]")
        lines.append("")
    if distributed.is_primary():
        (folder.root / "top_features.md").write_text("\n".join(lines))

    # ---------------------------------------------------------------- figures
    _figures(folder, steps, norms, emerge_idx, alive, cos, ce, drop_top, drop_rand, order, usable, init_feature)
    write_json(folder.root / "features.json", {
        "steps": steps, "decoder_norms": norms, "emergence_step": emerge_step, "alive": alive,
        "init_feature": init_feature, "ngram_order": order, "attribution": attr, "consecutive_cos": cos})

    ev_all = main["explained_variance"]
    after0 = ev_all[1:] if steps[0] == 0 else ev_all
    cis = {**window_intervals(x_eval, x_hat, f, S, config.eval_windows, steps[0] == 0),
           **feature_intervals(alive, init_feature, emerge_step, order, emerge_idx, usable, seq_top, seq_rand)}
    return {
        **cis,
        "n_snapshots": S, "snapshot_steps": steps, "layer": layer, "arch": ccfg.arch, "hp": main["hp"],
        "n_features": F,
        "explained_variance_min": float(after0.min()), "explained_variance_mean": float(after0.mean()),
        "explained_variance_step0": float(ev_all[0]), "explained_variance": ev_all,
        "l0_mean": float(np.mean(main["l0"])), "dead_fraction": float(1.0 - alive.mean()),
        "loss_recovered_mean": float(np.mean(loss_rec)), "loss_recovered": loss_rec,
        "ablation": config.ablation, "ce_clean": ce["clean"], "kl_unigram": ce["kl_unigram"], "kl_bigram": ce["kl_bigram"],
        "median_emergence_step": float(np.median(emerge_step[alive])),
        "frac_init_features": float(init_feature.sum() / max(alive.sum(), 1)),
        "ablation_drop_top": float(drop_top[-1]), "ablation_drop_random": float(drop_rand[-1]),
        "ablation_drop_top_per_snapshot": drop_top, "ablation_drop_random_per_snapshot": drop_rand,
        "induction_logprob": m_clean,
        "complexity_spearman_r": stats.defined(rho), "complexity_p_value": stats.defined(p_value), "complexity_n_features": int(usable.sum()),
        "members": [{"hp": mm["hp"], "explained_variance_min": float(mm["explained_variance"][1:].min()),
                     "l0_mean": float(np.mean(mm["l0"])), "dead_fraction": float(np.mean(mm["dead_fraction"]))}
                    for mm in members],
        "buffer_fill_s": fill_s, "train_s": train_s,
        "train_tokens_per_s": config.steps * config.batch_size * len(hps) / train_s,
        "wall_s": time.perf_counter() - t_start,
    }


def window_intervals(x_NSD, x_hat_NSD, f, S: int, n_windows: int, skip_first: bool, level: float = 0.95) -> dict:
    """Explained variance (min over snapshots) and L0, bootstrap over the held-out windows (the
    tokens of a window are correlated; windows are drawn apart): each is a ratio of per-window
    sums, so all resamples are one matrix product. [choice] Windows, not features, are the unit
    here: EV and L0 are properties of tokens."""
    N = len(x_NSD)
    x = np.asarray(x_NSD, np.float32).reshape(n_windows, N // n_windows, S, -1)
    err = ((x - np.asarray(x_hat_NSD, np.float32).reshape(x.shape)) ** 2).sum((1, 3), dtype=np.float64)  # [W, S]
    sq, total_x = (x ** 2).sum((1, 3), dtype=np.float64), x.sum(1, dtype=np.float64)                    # [W, S], [W, S, D]
    counts = stats.resample_counts(n_windows)
    n_tok = counts.sum(1)[:, None] * (N // n_windows)
    sums = (counts @ total_x.reshape(n_windows, -1)).reshape(len(counts), S, -1)                       # [B, S, D]
    total = counts @ sq - (sums ** 2).sum(-1) / n_tok
    ev = 1.0 - (counts @ err) / total                                                                   # [B, S]
    l0_w = mt.active(f, S).sum(1).reshape(n_windows, -1).mean(1)                                       # [W]
    return {"explained_variance_min_ci": stats.quantile_ci(ev[:, 1:].min(1) if skip_first else ev.min(1), level),
            "l0_mean_ci": stats.mean_ci(l0_w, level=level), "n_eval_windows": int(n_windows)}


def feature_intervals(alive, init_feature, emerge_step, order, emerge_idx, usable, seq_top, seq_rand,
                      level: float = 0.95) -> dict:
    """Feature-level numbers over the dictionary's features: Wilson for the dead and initial
    fractions, bootstrap for the median emergence step and the complexity Spearman; ablation
    drops at the last snapshot over the test induction sequences (top vs random paired)."""
    n_alive = max(int(alive.sum()), 1)
    out = {"dead_fraction_ci": stats.wilson_ci(int((~alive).sum()), len(alive), level),
           "frac_init_features_ci": stats.wilson_ci(int(init_feature.sum()), n_alive, level),
           "median_emergence_step_ci": stats.bootstrap_ci(emerge_step[alive], np.median, level=level)
           if alive.any() else None,
           "complexity_spearman_r_ci": stats.correlation_ci(order[usable], emerge_idx[usable], "spearman", level=level)
           if usable.sum() >= 3 else None,
           "ablation_drop_top_ci": stats.mean_ci(seq_top[-1], level=level),
           "ablation_drop_random_ci": stats.mean_ci(seq_rand[-1], level=level),
           "ablation_top_minus_random": float((seq_top[-1] - seq_rand[-1]).mean()),
           "ablation_top_minus_random_ci": stats.mean_ci(seq_top[-1] - seq_rand[-1], level=level),
           "n_ablation_sequences": int(seq_top.shape[-1])}
    return out


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


def _figures(folder, steps, norms, emerge_idx, alive, cos, ce, drop_top, drop_rand, order, usable, init_feature):
    rel = norms[alive] / norms[alive].max(1, keepdims=True)
    sort = np.lexsort((-rel[:, -1], emerge_idx[alive]))
    fig, ax = plt.subplots(figsize=(7, 5))
    im = ax.imshow(rel[sort], aspect="auto", interpolation="nearest", cmap="viridis")
    ax.set_xticks(range(len(steps)), [str(s) for s in steps], rotation=90, fontsize=7)
    ax.set_xlabel("checkpoint step")
    ax.set_ylabel("feature (sorted by emergence)")
    ax.set_title("decoder norm / max norm")
    fig.colorbar(im)
    save(fig, folder.figure("decoder_norms"))

    fig, axes = plt.subplots(3, 1, figsize=(7, 8), sharex=True)
    x = np.maximum(steps, 0.5)
    counts = np.bincount(emerge_idx[alive & ~init_feature], minlength=len(steps))
    axes[0].bar(range(len(steps)), counts)
    axes[0].bar(0, int(init_feature.sum()), color="tab:red", label="init features")
    axes[0].set_ylabel("features emerging")
    axes[0].legend()
    axes[1].plot(range(len(steps)), ce["clean"], "o-", label="val CE")
    axes[1].set_ylabel("nats")
    axes[1].legend()
    axes[2].plot(range(len(steps)), ce["kl_unigram"], "o-", label="KL(model || unigram)")
    axes[2].plot(range(len(steps)), ce["kl_bigram"], "o-", label="KL(model || bigram)")
    axes[2].set_ylabel("nats")
    axes[2].legend()
    axes[2].set_xticks(range(len(steps)), [str(s) for s in steps], rotation=90, fontsize=7)
    axes[2].set_xlabel("checkpoint step")
    save(fig, folder.figure("emergence"))

    fig, ax = plt.subplots(figsize=(7, 4))
    q = np.percentile(cos[alive], [10, 50, 90], axis=0)
    ax.plot(range(1, len(steps)), q[1], "o-", label="median")
    ax.fill_between(range(1, len(steps)), q[0], q[2], alpha=0.3, label="10-90%")
    ax.set_xticks(range(1, len(steps)), [str(s) for s in steps[1:]], rotation=90, fontsize=7)
    ax.set_ylabel("cos(decoder_t, decoder_t-1)")
    ax.legend()
    save(fig, folder.figure("decoder_cosines"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].plot(steps, drop_top, "o-", label="top features ablated")
    axes[0].plot(steps, drop_rand, "o-", label="random features ablated")
    axes[0].set_xscale("symlog", linthresh=10)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("induction log-prob drop")
    axes[0].legend()
    jitter = np.random.default_rng(0).uniform(-0.2, 0.2, usable.sum())
    axes[1].scatter(emerge_idx[usable], order[usable] + jitter, s=6)
    axes[1].set_xlabel("emergence snapshot index")
    axes[1].set_ylabel("best n-gram order")
    save(fig, folder.figure("ablation_complexity"))


# ----------------------------------------------------------------------------- benchmark
def bench(quick: bool = False) -> dict:
    """Crosscoder training tokens/s (the tiny preset's architecture, random data): one crosscoder;
    K=4 in one vmapped program; and the same 4 trained one after another with the unvmapped
    step, in one run."""
    S, D, F, B = (4, 64, 256, 256) if quick else (16, 128, 512, 512)
    n_steps, K = (3 if quick else 10), 4
    rng = np.random.default_rng(0)
    data = jnp.asarray(rng.normal(size=(B, S, D)).astype(np.float32))
    arch = Config().arch
    ccfg = cc.CrosscoderConfig(n_snapshots=S, d_model=D, n_features=F, arch=arch, steps=1000, batch_size=B)
    hp1 = cc.one_hp({"k": 16, "l1": 0.3})
    init1, step1 = cc.make_init(ccfg), cc.make_train_step(ccfg)
    initK, stepK = cc.make_init(ccfg, K), cc.make_train_step(ccfg, K)
    hpK = cc.stack_hps([{"k": 16, "l1": 0.3}] * K)

    states = [init1(jax.random.PRNGKey(i), data, hp1) for i in range(K)]
    states = [step1(s, data, hp1)[0] for s in states]                       # compile + warm up
    jax.block_until_ready(states)
    t0 = time.perf_counter()
    for _ in range(n_steps):
        states[0], m = step1(states[0], data, hp1)
    jax.block_until_ready(m)
    one = (time.perf_counter() - t0) / n_steps
    t0 = time.perf_counter()
    for i in range(K):                                                     # K sequential trainings
        for _ in range(n_steps):
            states[i], m = step1(states[i], data, hp1)
        jax.block_until_ready(m)
    sequential = (time.perf_counter() - t0) / n_steps

    stateK = initK(jnp.stack([jax.random.PRNGKey(i) for i in range(K)]), data, hpK)
    stateK, m = stepK(stateK, data, hpK)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(n_steps):
        stateK, m = stepK(stateK, data, hpK)
    jax.block_until_ready(m)
    vmapped = (time.perf_counter() - t0) / n_steps
    result = {"crosscoder_shape": {"arch": arch, "snapshots": S, "d_model": D, "features": F, "batch": B,
                                   "members": K},
              "crosscoder_one_tokens_per_s": B / one, "crosscoder_vmapped4_tokens_per_s": K * B / vmapped,
              "crosscoder_sequential4_tokens_per_s": K * B / sequential, "crosscoder_vmap_speedup": sequential / vmapped}
    print(f"crosscoder ({arch}, S={S}, D={D}, F={F}, batch {B}): one {B / one:,.0f} tokens/s; K={K} vmapped "
          f"{K * B / vmapped:,.0f} tokens/s against {K * B / sequential:,.0f} sequential (speed-up "
          f"{sequential / vmapped:.2f}x)", flush=True)
    return result
