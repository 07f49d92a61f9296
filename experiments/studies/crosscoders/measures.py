"""The crosscoders study's measures on a model's snapshots: each member's quality, the first
member's CE / KL, decoder geometry and emergence, attribution and ablation, complexity, the
snapshots' similarity to the first and how much the current token explains; then the outputs
(figures, features.json, top_features.md) and the summary. `config` is the study's Config."""
from __future__ import annotations

import numpy as np

from dynamics import data as data_lib
from dynamics import distributed
from dynamics import stats
from dynamics.checkpoints import map_stack
from dynamics.runlog import RunFolder, write_json
from models.families import logits_from_resid
from probes.crosscoders import emergence as em
from probes.crosscoders import metrics as cm
from probes.crosscoders import model as cc
from probes.crosscoders import training as cct
from . import figures


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


def feature_geometry(config, w_dec_FCD, f, alive, steps) -> dict:
    """`probes.crosscoders.emergence.decoder_features` with the strength `config.emergence_strength`
    names, plus each feature's fire rate and mean activation per snapshot."""
    fire_rate, mean_act = em.snapshot_activity(f, len(steps))
    strength = strengths(em.decoder_features(w_dec_FCD, alive, steps, 0.5, 1.0), mean_act)[config.emergence_strength]
    geo = em.decoder_features(w_dec_FCD, alive, steps, config.emergence_frac, config.init_fade, config.emergence_rule,
                              strength)
    return {**geo, "fire_rate": fire_rate, "mean_act": mean_act}


def strengths(geo: dict, mean_act_FC) -> dict:
    """Every `emergence_strength` [F, C]: the decoder norm (Ge et al.), the contribution (norm x
    mean activation at the snapshot) and the aligned norm (the part along the final direction)."""
    return {"norm": geo["norms"], "contribution": em.contribution(geo["norms"], mean_act_FC),
            "aligned": em.aligned(geo["norms"], geo["cos_to_final"])}


def measure(config, folder: RunFolder, model_config, layer: int, steps, stacked, corpus, site, scale_C,
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
    geo = feature_geometry(config, np.asarray(params["W_dec"]), f, alive, steps)
    # why features look present early: the snapshots' CKA to the first, the current token's share
    similarity = em.similarity_to_first(x_eval)
    tok_r2 = em.token_r2(eval_tokens, np.moveaxis(np.asarray(raw), 0, 2))
    f_last_NF = cm.per_snapshot_f(f, C)[-1]
    purity = em.token_purity(eval_tokens, f_last_NF)
    logits_fn = lambda p, resid: logits_from_resid(p, resid, layer, model_config)
    abl = cm.induction_ablation(stacked, site, logits_fn, params, main["threshold"], ccfg, scale_C, counts, alive, S,
                                config.seed, config.n_induction, config.n_ablate, config.n_random)
    cx = cm.complexity(eval_tokens, f_last_NF.reshape(config.eval_windows, S, -1), config.max_order, alive,
                       geo["init_feature"], geo["emerge_idx"])
    return {"eval_tokens": eval_tokens, "x_eval": x_eval, "members": members, "f": f, "x_hat": x_hat,
            "f_last_NF": f_last_NF, "alive": alive, "ce": ce, "loss_rec": loss_rec, "geo": geo, "abl": abl, "cx": cx,
            "similarity": similarity, "token_r2": tok_r2, "purity": purity, "text": corpus.name}


def write_outputs(config, folder: RunFolder, steps, m: dict, decode) -> None:
    """top_features.md, the figures and features.json."""
    geo, abl, cx, alive = m["geo"], m["abl"], m["cx"], m["alive"]
    if distributed.is_primary():
        (folder.root / "top_features.md").write_text(figures.top_features_markdown(
            abl["attr"], geo["emerge_step"], cx["order"], m["f_last_NF"], m["eval_tokens"], decode, steps[-1],
            config.n_text_features, config.n_contexts))
    drop_top, drop_rand = abl["seq_top"].mean(-1), abl["seq_rand"].mean(-1)
    by_norm = np.bincount(em.emergence(geo["norms"], 0.5, "half_max", alive)[alive], minlength=len(steps))
    figures.draw(folder, steps, geo["norms"], geo["emerge_idx"], alive, geo["cos"], m["ce"], drop_top, drop_rand,
                 cx["order"], cx["usable"], geo["init_feature"], m["similarity"], m["token_r2"],
                 by_norm if config.emergence_strength != "norm" else None)
    write_json(folder.root / "features.json", {
        "steps": steps, "decoder_norms": geo["norms"], "emergence_step": geo["emerge_step"], "alive": alive,
        "init_feature": geo["init_feature"], "ngram_order": cx["order"], "attribution": abl["attr"],
        "consecutive_cos": geo["cos"], "token_purity": m["purity"], "fire_rate": geo["fire_rate"],
        "mean_activation": geo["mean_act"], "cos_to_final": geo["cos_to_final"]})
    np.save(folder.root / "decoder.npy", np.asarray(m["members"][0]["params"]["W_dec"]))   # [F, C, D], normalised units


def emergence_summary(geo: dict, alive, n_snapshots: int, frac: float) -> dict:
    """How many alive features emerge where: the histogram over snapshots (by the chosen rule and
    strength, and by every rule and both strengths on the same dictionary, `frac` for the
    thresholds), the share that emerges at the first (Wilson interval over alive features), the
    share of the features that half the maximum decoder norm puts at the first snapshot which
    never fire there, and the median cosine of each alive feature's decoder at the first and
    the last snapshot."""
    n_alive = max(int(alive.sum()), 1)
    first = int((geo["emerge_idx"][alive] == 0).sum())
    by_rule = {name: {rule: np.bincount(em.emergence(s, frac if rule != "steepest" else 0.5, rule, alive)[alive],
                                        minlength=n_snapshots) for rule in em.EMERGENCE_RULES}
               for name, s in strengths(geo, geo["mean_act"]).items()}
    # features the decoder norm puts at the first snapshot although they never fire there
    norm_first = alive & (em.emergence(geo["norms"], 0.5, "half_max", alive) == 0)
    silent = norm_first & (geo["fire_rate"][:, 0] == 0)
    return {"emergence_histogram": np.bincount(geo["emerge_idx"][alive], minlength=n_snapshots),
            "emergence_histograms": by_rule,
            "frac_emerge_first": first / n_alive, "frac_emerge_first_ci": stats.wilson_ci(first, n_alive),
            "n_norm_first": int(norm_first.sum()),
            "frac_norm_first_silent": float(silent.sum() / norm_first.sum()) if norm_first.any() else None,
            "frac_norm_first_silent_ci": stats.wilson_ci(int(silent.sum()), int(norm_first.sum()))
            if norm_first.any() else None,
            "decoder_cos_first_last_median": float(np.median(geo["cos_first_last"][alive])) if alive.any() else None}


def purity_summary(purity_F, emerge_idx_F, alive, level: float = 0.95) -> dict:
    """Median token purity (`probes.crosscoders.emergence.token_purity`) of the alive features that
    emerge at the first snapshot and of those emerging later, and a bootstrap interval of the
    difference of the medians (each group resampled on its own); None where a group is empty."""
    first, later = purity_F[alive & (emerge_idx_F == 0)], purity_F[alive & (emerge_idx_F > 0)]
    out = {"purity_first_median": float(np.median(first)) if len(first) else None,
           "purity_later_median": float(np.median(later)) if len(later) else None, "purity_first_minus_later": None,
           "purity_first_minus_later_ci": None}
    if len(first) and len(later):
        rng = np.random.default_rng(0)
        draws = [np.median(rng.choice(first, len(first))) - np.median(rng.choice(later, len(later)))
                 for _ in range(2000)]
        out["purity_first_minus_later"] = float(np.median(first) - np.median(later))
        out["purity_first_minus_later_ci"] = stats.quantile_ci(np.asarray(draws), level)
    return out


def summarize(config, steps, layer: int, ccfg, m: dict) -> dict:
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
        "text": m["text"], "n_snapshots": len(steps), "snapshot_steps": steps, "layer": layer, "arch": ccfg.arch,
        "hp": main["hp"], "emergence_rule": config.emergence_rule, "emergence_strength": config.emergence_strength,
        **emergence_summary(geo, alive, len(steps), config.emergence_frac),
        **purity_summary(m["purity"], geo["emerge_idx"], alive),
        "similarity_to_first": m["similarity"], "token_r2": m["token_r2"],
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


def emergence_finding(s: dict) -> str:
    """The findings' clause on when features form and why they may look present at the first
    snapshot: the chosen reading against the decoder norm's on the same dictionary, the first
    decoders' cosine to the last, the snapshots' CKA to the first, the current token's share."""
    sim, tok = np.asarray(s["similarity_to_first"]), np.asarray(s["token_r2"])
    hist = s.get("emergence_histograms", {})
    alive = max(sum(hist.get("norm", {}).get("half_max", [1])), 1)
    norm_first = hist.get("norm", {}).get("half_max", [0])[0] / alive
    text = (f" ({s.get('emergence_rule')} rule on the {s.get('emergence_strength', 'norm')} decoder strength): "
            f"{stats.ci_text(s, 'frac_emerge_first')} of alive features emerge at the first snapshot, against "
            f"{norm_first:.2f} by the decoder norm alone (half its maximum, Ge et al.'s reading). The first "
            f"snapshot's decoders point elsewhere than the last's (median cosine "
            f"{s.get('decoder_cos_first_last_median', float('nan')):.2f}), the snapshots' linear CKA to the first "
            f"falls to {sim.min():.2f}, and the current token explains {tok[0]:.2f} of the first snapshot's variance "
            f"({tok[-1]:.2f} of the last's): a latent shared by the snapshots reconstructs whatever its tokens look "
            f"like at each, an untrained network's random lookup included")
    if s.get("purity_first_minus_later_ci"):
        text += (f". Features emerging at the first snapshot put a median {s['purity_first_median']:.2f} of their "
                 f"activation on one current token, later ones {s['purity_later_median']:.2f} (difference "
                 f"{stats.ci_text(s, 'purity_first_minus_later', signed=True)})")
    return text
