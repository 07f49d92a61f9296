"""Coherent waves of hidden channels and Poisson statistics of spelling (Hong, arXiv 2305.05061).

Waves, for every checkpoint in one vmapped pass (`map_stack`). Each checkpoint generates
P passages (prompts x sampling seeds; the same keys at every checkpoint) of
`passage_length` tokens with `models.sample.generate`; `gpt.apply` with capture then
re-reads the generated tokens (`passage_hidden`). By causality the hidden state at
position t depends only on tokens <= t, so it is the state the model had when it produced
token t+1 during generation; beyond the context, where `generate` slides a window, each
position is read from that same window. So passages may be longer than the context.
Waves are the final-LayerNorm output (`layer=-1`) or the residual after block `layer`, on
positions 0..S-2 so that every position has a next character for the class indicators
(space, newline, punctuation, vowel, capital, at t and t+1). `dynamics.waves` gives C,
coherence, autocorrelation, coherence time and period; channels are clustered (average
linkage on 1 - |C| of the passage-mean C) and clusters labelled by class; repeatability
compares the P passages. The dominant period is the peak of the spectrum averaged over
channels and passages, searched over word-scale periods [min_period, max_period]
[reconstructed]: passages all start at position 0, so the positional embedding adds a
slow drift shared by every passage that would otherwise always win.

Spelling, for `spelling_checkpoints` checkpoints spread over the series (first and last
included; another vmapped pass). Each samples `n_samples` continuations of
`sample_length` characters after a newline. Fixed-length variant: all complete words of a
sample (a word cut by the end is dropped). Fixed-word-count variant: the same samples cut
after their `n_words`-th complete word, so the total is fixed and only which words are
misspelled is random; samples with fewer words are dropped and counted (`n_dropped`: keep
it near 0, since dropping selects samples with long words). `dynamics.spelling` gives the
dispersion, binomial baseline, excess and the verdict on the paper's claim (rule in
`claim_survives_baseline`), taken between the earliest spelling checkpoint where both
counts have a nonzero mean in both variants (Q is undefined otherwise) and the last.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from dynamics import spelling, stats, waves
from dynamics.checkpoints import Series, load_model_config, load_stack, map_stack
from dynamics.errors import OntogenyError
from dynamics.runlog import RunFolder
from experiments import plots
from experiments.config import require
from models import gpt
from models.sample import generate

DESCRIPTION = "wave dynamics of hidden channels and spelling-error statistics over training (Hong 2023)"


@dataclasses.dataclass(frozen=True)
class Config:
    pretrain_run: str = ""                      # empty: train `pretrain_preset` into OUT/pretrain
    pretrain_preset: str = "tiny"               # the preset trained when pretrain_run is empty
    layer: int = -1                             # -1: final normalised hidden state; l: residual after block l
    prompts: tuple[str, ...] = ("\n", "KING")   # wave passages start from these ...
    seeds_per_prompt: int = 2                   # ... with this many independent samples each
    passage_length: int = 96                    # tokens per passage, prompt included (may exceed the context)
    max_lag: int = 64                           # longest lag of the autocorrelation / coherence time
    min_period: float = 2.0                     # spectral peak searched over periods [min_period, max_period]:
    max_period: float = 16.0                    # word scale; longer periods carry the positional drift
    n_clusters: int = 6                         # channel clusters (labelled by character classes)
    temperature: float = 1.0                    # sampling temperature of passages and spelling samples
    n_heatmaps: int = 3                         # checkpoints shown as correlation heatmaps
    n_samples: int = 200                        # spelling: samples per checkpoint (M)
    sample_length: int = 63                     # spelling: characters per sample (L; <= context - 1)
    n_words: int = 6                            # spelling: words per sample, fixed-word-count variant
    case_sensitive: bool = False                # spelling: match words against the corpus with case
    n_boot: int = 500                           # bootstrap resamples of the Mandel Q intervals
    ci_level: float = 0.95                      # confidence level of those intervals
    max_checkpoints: int = 0                    # waves: 0 = all checkpoints, else this many spread over the series
    spelling_checkpoints: int = 10              # spelling: this many of those (first and last included); 0 = all
    chunk_size: int = 0                         # checkpoints per vmapped chunk (0: automatic)
    seed: int = 0                               # sampling seed of passages and spelling samples

    def __post_init__(self):
        require(len(self.prompts) >= 1 and all(len(p) >= 1 for p in self.prompts),
                "prompts must hold at least one non-empty prompt, e.g. --set prompts=KING")
        require(self.layer >= -1, f"layer={self.layer}: use -1 (final normalised hidden state) or a block index")
        require(self.seeds_per_prompt >= 1, f"seeds_per_prompt={self.seeds_per_prompt} must be >= 1")
        require(len(self.prompts) * self.seeds_per_prompt >= 2,
                "repeatability needs at least two passages: raise seeds_per_prompt or add prompts")
        require(self.max_lag >= 1 and self.passage_length >= self.max_lag + 2,
                f"passage_length={self.passage_length} must be at least max_lag + 2 = {self.max_lag + 2} "
                f"(waves use passage_length - 1 positions); lower max_lag or raise passage_length")
        require(self.passage_length > max(map(len, self.prompts)),
                f"passage_length={self.passage_length} leaves nothing to generate after the longest prompt")
        require(2 <= self.min_period < self.max_period < self.passage_length - 1,
                f"need 2 <= min_period < max_period < passage_length - 1 (got {self.min_period}, {self.max_period})")
        require(self.n_clusters >= 2, f"n_clusters={self.n_clusters} must be >= 2")
        require(self.temperature > 0, f"temperature={self.temperature} must be > 0 (sampling, not greedy)")
        require(self.n_samples >= 10, f"n_samples={self.n_samples} must be >= 10 for dispersion statistics")
        require(self.sample_length >= 8 and self.n_words >= 1, "sample_length must be >= 8 and n_words >= 1")
        require(self.n_boot >= 50, f"n_boot={self.n_boot} must be >= 50")
        require(0.5 < self.ci_level < 1, f"ci_level={self.ci_level} must lie in (0.5, 1)")
        for name in ("max_checkpoints", "spelling_checkpoints"):
            require(getattr(self, name) == 0 or getattr(self, name) >= 2, f"{name} must be 0 (all) or >= 2")
        require(self.n_heatmaps >= 1 and self.chunk_size >= 0, "n_heatmaps must be >= 1 and chunk_size >= 0")

    def unused(self) -> dict[str, str]:
        """Keys a given pretrain_run leaves without effect: setting one is refused."""
        return {"pretrain_preset": "pretrain_run is given, so no pretrain preset is trained"} if self.pretrain_run else {}


def resolve(config: Config) -> dict:
    """What `run` runs, references checked before anything is created: the pretrain series (a
    given run, or the preset trained into OUT/pretrain), the layer read, and the study's keys."""
    from experiments.pretrain import pretrain_reference

    ref = pretrain_reference(config.pretrain_run, config.pretrain_preset)
    model = ref["model"] if isinstance(ref["model"], dict) else dataclasses.asdict(ref["model"])
    require(config.layer < model["n_layer"], f"layer={config.layer} must be < the pretrain model's "
                                             f"n_layer={model['n_layer']} (or -1, the final hidden state)")
    study = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
             if f.name not in ("pretrain_run", "pretrain_preset")}
    return {"pretrain": {k: v for k, v in ref.items() if k != "steps"}, "study": study}


PRESETS = {
    "tiny": Config(),
    "full": Config(pretrain_preset="shakespeare-char", prompts=("\n", "KING", "ROMEO:\n", "First Citizen:\n"), seeds_per_prompt=4,
                   passage_length=256, n_samples=1000, sample_length=250, n_words=30, n_boot=2000),
}


# ----------------------------------------------------------------------------- the run's pieces

def resolve_run(config: Config, folder: RunFolder) -> Path:
    if config.pretrain_run:
        return Path(config.pretrain_run)
    from experiments.pretrain import PRESETS as PRETRAIN_PRESETS, ensure_pretrain
    if config.pretrain_preset not in PRETRAIN_PRESETS:
        raise OntogenyError(f"pretrain_preset={config.pretrain_preset!r} is unknown; choose one of "
                            f"{', '.join(PRETRAIN_PRESETS)} or give pretrain_run")
    return ensure_pretrain(folder.sub("pretrain"), preset=config.pretrain_preset)


def run_corpus_text(run_dir: Path) -> str:
    """Training text of the run's corpus: its word list is the spelling vocabulary."""
    from dynamics import data as data_lib
    from experiments.config import from_dict

    try:
        record = json.loads((run_dir / "config.json").read_text())["config"].get("data", {})
    except (OSError, ValueError, KeyError):
        record = {}
    return data_lib.load_corpus(from_dict(data_lib.DataConfig, record)).train_text


def spread(n_total: int, n: int) -> np.ndarray:
    """n indices spread evenly over range(n_total), first and last included (0: all)."""
    if n == 0 or n >= n_total:
        return np.arange(n_total)
    return np.unique(np.round(np.linspace(0, n_total - 1, n)).astype(int))


def passage_hidden(params, tokens_PS, model: gpt.GPTConfig, layer: int = -1):
    """[P, S, D] hidden states as the generating model had them at every position.

    Positions t < C (the context) come from one causal pass over the first C tokens (equal
    to the KV-cached generation by causality). Positions t >= C come from the window of
    tokens t-C+1..t at positions 0..C-1, the window `generate` slides to produce token t+1.
    `layer` -1 is the final normalised hidden state, else the residual after that block.
    """
    P, S = tokens_PS.shape
    C = model.context
    capture = "final_hidden" if layer < 0 else "resid"

    def read(tokens_BT):
        _, acts = gpt.apply(params, tokens_BT, model, capture=(capture,))
        return acts["final_hidden"] if layer < 0 else acts["resid"][layer]

    head = read(tokens_PS[:, :min(S, C)])
    if S <= C:
        return head
    windows = tokens_PS[:, jnp.arange(C, S)[:, None] + jnp.arange(1 - C, 1)[None, :]]  # [P, S-C, C]
    tail = read(windows.reshape(P * (S - C), C))[:, -1]
    return jnp.concatenate([head, tail.reshape(P, S - C, -1)], axis=1)


def make_wave_fn(model: gpt.GPTConfig, config: Config, n_prompt_tokens: tuple[int, ...]):
    """fn(params, prompts, keys, table_VC) -> per-checkpoint waves and statistics (jnp, vmappable)."""

    def fn(params, prompts, keys, table_VC):
        tokens = []
        for prompt_T, key, n0 in zip(prompts, keys, n_prompt_tokens):
            batch = jnp.broadcast_to(prompt_T, (config.seeds_per_prompt, n0))
            tokens.append(generate(params, model, batch, config.passage_length - n0, key, config.temperature))
        tokens_PS = jnp.concatenate(tokens, axis=0)
        x_PTD = passage_hidden(params, tokens_PS, model, config.layer)[:, :-1]
        ind_PTC = jnp.concatenate([table_VC[tokens_PS[:, :-1]], table_VC[tokens_PS[:, 1:]]], axis=-1)
        stats = jax.vmap(lambda x, i: waves.wave_statistics(
            x, i, max_lag=config.max_lag, min_period=config.min_period, max_period=config.max_period))(x_PTD, ind_PTC)
        stats["repeat_corr"], stats["repeat_mode"] = waves.repeatability(stats["corr"], stats["top_mode"])
        stats["tokens"], stats["waves"] = tokens_PS, x_PTD
        return stats

    return fn


def make_sample_fn(model: gpt.GPTConfig, config: Config):
    def fn(params, prompt_M1, key):
        return generate(params, model, prompt_M1, config.sample_length, key, config.temperature)
    return fn


def spelling_at(texts, vocab, config: Config, seed: int) -> dict:
    """Both variants' statistics (with bootstrap draws) and Poisson tests for one checkpoint."""
    out = {}
    for variant, n_words in (("fixed_length", None), ("fixed_words", config.n_words)):
        k, m, dropped = spelling.sample_counts(texts, vocab, n_words=n_words, case_sensitive=config.case_sensitive)
        if len(k) < 2:
            out[variant] = None
            continue
        s = spelling.spelling_statistics(k, m, n_boot=config.n_boot, seed=seed, level=config.ci_level,
                                         keep_draws=True)
        s["n_dropped"] = dropped
        s["counts_correct"], s["counts_misspelled"] = k, m
        s["poisson_correct"] = spelling.poisson_histogram(k)
        s["poisson_misspelled"] = spelling.poisson_histogram(m)
        out[variant] = s
    return out


def _finite(s) -> bool:
    return s is not None and s["mean_correct"] > 0 and s["mean_misspelled"] > 0


# ----------------------------------------------------------------------------- the study

def run(config: Config, folder: RunFolder) -> dict:
    t_start = time.perf_counter()
    run_dir = resolve_run(config, folder)
    from dynamics.data import load_tokenizer
    tokenizer = load_tokenizer(run_dir)
    steps = np.asarray(Series(run_dir, "pretrain", create=False).steps())
    steps = steps[spread(len(steps), config.max_checkpoints)]
    steps, stacked = load_stack(run_dir, steps)
    model = load_model_config(run_dir)
    if config.layer >= model.n_layer:
        raise OntogenyError(f"layer={config.layer} but the model has {model.n_layer} layers; use -1..{model.n_layer - 1}")
    if config.sample_length + 1 > model.context:
        raise OntogenyError(f"sample_length+1={config.sample_length + 1} exceeds the model context {model.context}, "
                            f"where generation would recompute a sliding window per character; lower sample_length")
    vocab = spelling.build_vocabulary(run_corpus_text(run_dir), config.case_sensitive)
    chunk = config.chunk_size or None

    # -------- waves: generate, capture, statistics, all checkpoints in one vmapped pass
    prompts = tuple(jnp.asarray(tokenizer.encode(p)) for p in config.prompts)
    keys = tuple(jax.random.split(jax.random.PRNGKey(config.seed), len(prompts)))
    table = jnp.asarray(waves.class_table(tokenizer.chars))
    names = waves.class_names()
    wave_fn = make_wave_fn(model, config, tuple(len(p) for p in prompts))
    t0 = time.perf_counter()
    W = map_stack(wave_fn, stacked, prompts, keys, table, chunk_size=chunk)
    wave_s = time.perf_counter() - t0

    # -------- spelling: M samples per checkpoint (of a spread subset), one vmapped pass
    spell_idx = spread(len(steps), config.spelling_checkpoints)
    prompt_M1 = jnp.broadcast_to(jnp.asarray(tokenizer.encode("\n")), (config.n_samples, 1))
    t0 = time.perf_counter()
    samples = map_stack(make_sample_fn(model, config), jax.tree.map(lambda a: a[spell_idx], stacked), prompt_M1,
                        jax.random.PRNGKey(config.seed + 1), chunk_size=chunk)
    sample_s = time.perf_counter() - t0
    texts = {int(i): [tokenizer.decode(t[1:]) for t in samples[j]] for j, i in enumerate(spell_idx)}

    # -------- per-checkpoint host work: clustering, counting, bootstrap
    K, P, T = len(steps), W["corr"].shape[1], W["waves"].shape[2]
    records, clusters, orders, spell = [], [], [], {}
    for i in tqdm(range(K), desc="clusters+spelling", leave=False):
        labels, order = waves.cluster_channels(W["corr"][i].mean(0), config.n_clusters)
        named = waves.label_clusters(W["class_corr"][i].mean(0), labels, names)
        agreement = waves.cluster_agreement([waves.cluster_channels(W["corr"][i, p], config.n_clusters)[0]
                                             for p in range(P)])
        clusters.append(named)
        orders.append(order)
        # period of the spectrum averaged over channels and passages (per-passage peaks are noisy)
        period = waves.dominant_period(jnp.asarray(W["spectrum"][i].mean(0)), T, config.min_period,
                                       config.max_period)
        record = {"step": int(steps[i]), "coherence": float(W["coherence"][i].mean()),
                  "coherence_sd": float(W["coherence"][i].std()), "eig_ratio": float(W["eig_ratio"][i].mean()),
                  "period": float(period), "coherence_time": float(np.median(W["coherence_time"][i])),
                  "repeat_corr": float(W["repeat_corr"][i]), "repeat_mode": float(W["repeat_mode"][i]),
                  "cluster_agreement": agreement,
                  "clusters": [(c["label"], c["size"], round(c["strength"], 3)) for c in named]}
        if i in texts:
            spell[i] = spelling_at(texts[i], vocab, config, seed=config.seed + 1000 * i)
            for variant, s in spell[i].items():
                if s is not None:
                    record[variant] = {k: v for k, v in s.items() if not k.startswith(("draws", "counts", "poisson"))}
                    record[variant]["poisson_p_correct"] = s["poisson_correct"]["p_value"]
                    record[variant]["poisson_p_misspelled"] = s["poisson_misspelled"]["p_value"]
        records.append(record)
        folder.log(record)

    # -------- the verdict on the paper's claim
    valid = [i for i in sorted(spell) if all(_finite(spell[i][v]) for v in ("fixed_length", "fixed_words"))]
    if len(valid) >= 2:
        i0, i1 = valid[0], valid[-1]
        verdict, checks = spelling.claim_survives_baseline(spell[i0], spell[i1], config.ci_level)
    else:
        i0, i1, verdict, checks = 0, K - 1, False, {"error": "fewer than two checkpoints with defined Q"}

    figures(folder, config, steps, W, records, spell, orders, clusters, names, tokenizer, i0, i1)

    last, first = records[-1], records[0]
    fl_first, fl_last, fw_last = spell[0]["fixed_length"], spell[K - 1]["fixed_length"], spell[K - 1]["fixed_words"]
    space_idx = names.index("space@t")
    summary = {
        "steps": [int(s) for s in steps],
        "layer": "final_hidden" if config.layer < 0 else f"resid[{config.layer}]",
        "coherence_first": first["coherence"], "coherence_last": last["coherence"],
        "eig_ratio_first": first["eig_ratio"], "eig_ratio_last": last["eig_ratio"],
        "autocorr_period_first": first["period"], "autocorr_period_last": last["period"],
        "coherence_time_first": first["coherence_time"], "coherence_time_last": last["coherence_time"],
        "repeatability_corr_last": last["repeat_corr"], "repeatability_mode_last": last["repeat_mode"],
        "cluster_agreement_last": last["cluster_agreement"],
        "clusters_last": clusters[-1],
        "space_channel_corr_last": float(np.abs(W["class_corr"][-1].mean(0)[:, space_idx]).max()),
        "fraction_correct_first": fl_first["p"] if fl_first else None,
        "fraction_correct_last": fl_last["p"],
        "q_correct_last": fl_last["q_correct"], "q_correct_last_ci": fl_last["q_correct_ci"],
        "q_correct_baseline_last": fl_last["q_correct_baseline"],
        "q_correct_excess_last": fl_last["q_correct_excess"],
        "q_correct_excess_last_ci": fl_last["q_correct_excess_ci"],
        "q_misspelled_last": fl_last["q_misspelled"], "q_misspelled_last_ci": fl_last["q_misspelled_ci"],
        "q_misspelled_baseline_last": fl_last["q_misspelled_baseline"],
        "q_misspelled_excess_last": fl_last["q_misspelled_excess"],
        "q_misspelled_excess_last_ci": fl_last["q_misspelled_excess_ci"],
        "poisson_p_correct_last": fl_last["poisson_correct"]["p_value"],
        "poisson_p_misspelled_last": fl_last["poisson_misspelled"]["p_value"],
        "fixed_words": {k: fw_last[k] for k in ("p", "q_correct", "q_correct_baseline", "q_correct_excess",
                                                "q_correct_excess_ci", "q_misspelled", "q_misspelled_baseline",
                                                "q_misspelled_excess", "q_misspelled_excess_ci", "n_dropped")}
        if fw_last else None,
        "claim_survives_baseline": bool(verdict),
        "claim_checkpoints": [int(steps[i0]), int(steps[i1])],
        "claim_checks": checks,
        "wave_pass_s": wave_s, "sample_pass_s": sample_s, "wall_s": time.perf_counter() - t_start,
    }
    summary.update(intervals(W["coherence"], fl_first, fl_last, config.n_boot, config.ci_level))
    return summary


def intervals(coherence_KP, fl_first, fl_last, n_boot: int = 2000, level: float = 0.95) -> dict:
    """Intervals of the headline numbers (one training seed; units within it).

    Coherence: over the P passages, paired across checkpoints (the same prompts and keys at
    every checkpoint). [choice] Student t, not the bootstrap: P is a handful (4 at tiny), where
    percentile-bootstrap intervals come out too narrow. Fraction of correct words: bootstrap
    over the spelling samples (ratio of sums; `spelling_statistics`'s p_ci), and its change
    between the first and last checkpoint from independent resamples of the two sample sets.
    """
    c = np.asarray(coherence_KP, np.float64)
    t = (lambda v: stats.t_ci(v, level)) if c.shape[1] >= 2 else (lambda v: None)
    out = {"n_passages": int(c.shape[1]), "coherence_first_ci": t(c[0]), "coherence_last_ci": t(c[-1]),
           "coherence_change": float(c[-1].mean() - c[0].mean()), "coherence_change_ci": t(c[-1] - c[0]),
           "fraction_correct_last_ci": fl_last["p_ci"], "n_spelling_samples": int(fl_last["n_samples"])}
    if fl_first is not None:
        draws = [stats.ratio_draws(s["counts_correct"], s["counts_correct"] + s["counts_misspelled"],
                                   n_boot=n_boot, seed=seed) for seed, s in enumerate((fl_first, fl_last))]
        out.update({"fraction_correct_first_ci": fl_first["p_ci"],
                    "fraction_correct_change": float(fl_last["p"] - fl_first["p"]),
                    "fraction_correct_change_ci": stats.quantile_ci(draws[1] - draws[0], level)})
    return out


def _change(summary: dict, key: str, what: str, digits: int = 3) -> str:
    """'<what> went a [ci] -> b [ci]: it rose by d [ci]' or '... the change d [ci] is within the noise'."""
    d, ci = summary.get(f"{key}_change"), summary.get(f"{key}_change_ci")
    text = f"{what} went {stats.ci_text(summary, key + '_first', digits)} -> {stats.ci_text(summary, key + '_last', digits)}"
    if d is None or ci is None:
        return text + " (no interval for the change)"
    verdict = ("it rose" if ci[0] > 0 else "it fell") if stats.excludes(ci) else "the interval of the change includes 0, so no change is shown"
    return f"{text}: {verdict} ({stats.format_ci(d, ci, digits, signed=True)})"


def findings(summary: dict) -> list[str]:
    """The conclusions of a waves summary, with intervals and verdicts."""
    n_p, n_s = summary.get("n_passages", "?"), summary.get("n_spelling_samples", "?")
    s = dict(summary)
    if s.get("fraction_correct_first") is None:
        s["fraction_correct_first"] = float("nan")
    excess = stats.ci_text(summary, "q_correct_excess_last", 3)
    survives = summary["claim_survives_baseline"]
    return [
        _change(s, "coherence", f"Channel coherence (mean off-diagonal |C|, t interval over {n_p} passages)") + ".",
        _change(s, "fraction_correct", f"The fraction of correctly spelled words (bootstrap over {n_s} samples)",
                2) + ".",
        f"Mandel Q of correct-word counts is {stats.ci_text(summary, 'q_correct_last', 3)} against the binomial "
        f"baseline {summary['q_correct_baseline_last']:.3f} (excess {excess}), so the sub-Poisson claim "
        f"{'survives' if survives else 'does not survive'} the baseline; intervals are over units of one "
        f"training seed.",
    ]


# ----------------------------------------------------------------------------- figures

def figures(folder, config, steps, W, records, spell, orders, clusters, names, tokenizer, i0, i1):
    import matplotlib.pyplot as plt

    K = len(steps)
    sx = steps.astype(float)

    def symlog(ax):  # step 0 sits at the origin of a symlog axis
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(0, max(sx[-1], 1) * 1.3)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)

    # correlation heatmaps, ordered by each checkpoint's clustering
    show = np.unique(np.round(np.linspace(0, K - 1, min(config.n_heatmaps, K))).astype(int))
    fig, axes = plt.subplots(1, len(show), figsize=(4 * len(show), 3.8), squeeze=False)
    for ax, i in zip(axes[0], show):
        C = W["corr"][i].mean(0)[np.ix_(orders[i], orders[i])]
        im = ax.imshow(C, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_title(f"step {steps[i]}: mean|C|={records[i]['coherence']:.2f}", fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    plots.save(fig, folder.figure("correlation_heatmaps"), tight=False)  # the shared colorbar defeats tight_layout

    # coherence, eigen-ratio and repeatability over steps
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    coh, sd = np.array([r["coherence"] for r in records]), np.array([r["coherence_sd"] for r in records])
    ax[0].plot(sx, coh, "o-", ms=3, label="mean off-diagonal |C|")
    ax[0].fill_between(sx, coh - sd, coh + sd, alpha=0.2)
    ax[0].plot(sx, [r["eig_ratio"] for r in records], "s-", ms=3, label="top eigenvalue / trace")
    ax[0].set_title("coherence (band: sd over passages)")
    ax[1].plot(sx, [r["repeat_corr"] for r in records], "o-", ms=3, label="corr of C across passages")
    ax[1].plot(sx, [r["repeat_mode"] for r in records], "s-", ms=3, label="|cos| of top modes")
    ax[1].plot(sx, [r["cluster_agreement"] for r in records], "^-", ms=3, label="cluster ARI")
    ax[1].set_title("repeatability across prompts and seeds")
    for a in ax:
        symlog(a)
        a.legend(fontsize=8)
    plots.save(fig, folder.figure("coherence"))

    # autocorrelation curves (mean |A| over channels and passages)
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    cmap = plt.get_cmap("viridis")
    for i in range(K):
        ax[0].plot(W["mean_abs_autocorr"][i].mean(0), color=cmap(i / max(K - 1, 1)), lw=1,
                   label=f"step {steps[i]}" if i in (0, K // 2, K - 1) else None)
    ax[0].axhline(1 / np.e, color="k", ls=":", lw=1)
    ax[0].set_xlabel("lag (characters)"), ax[0].set_ylabel("mean |A|"), ax[0].legend(fontsize=8)
    ax[0].set_title("autocorrelation of channels")
    ax[1].plot(sx, [r["period"] for r in records], "o-", ms=3, label="dominant period")
    ax[1].plot(sx, [r["coherence_time"] for r in records], "s-", ms=3, label="coherence time (median)")
    ax[1].set_ylabel("characters")
    symlog(ax[1])
    ax[1].legend(fontsize=8)
    plots.save(fig, folder.figure("autocorrelation"))

    # space channels along a generated passage at the last checkpoint
    R = W["class_corr"][-1].mean(0)
    space = np.maximum(np.abs(R[:, names.index("space@t")]), np.abs(R[:, names.index("space@t+1")]))
    top = np.argsort(-space)[:4]
    tokens = W["tokens"][-1, 0]
    shown = 64  # characters: each tick label stays legible at the report's width
    text = tokenizer.decode(tokens[:-1])[:shown]
    x = W["waves"][-1, 0][:shown]
    fig, ax = plt.subplots(figsize=(12, 4.5))
    for j, c in enumerate(top):
        z = (x[:, c] - x[:, c].mean()) / (x[:, c].std() + 1e-8)
        ax.plot(z + 4 * j, lw=1, label=f"channel {c} (|r| space = {space[c]:.2f})")
    for t, ch in enumerate(text):
        if ch == " ":
            ax.axvline(t, color="grey", lw=0.5, alpha=0.5)
    ax.set_xticks(range(len(text)))
    ax.set_xticklabels([repr(ch)[1:-1] for ch in text], fontsize=5)
    ax.set_title(f"space-related channels at step {steps[-1]} (grey: spaces)")
    ax.legend(fontsize=7, loc="upper right")
    plots.save(fig, folder.figure("space_waves"))

    # Mandel Q over steps with the binomial baseline
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, variant in zip(axes, ("fixed_length", "fixed_words")):
        for what, color in (("correct", "C0"), ("misspelled", "C3")):
            rows = [(sx[i], spell[i][variant]) for i in sorted(spell) if spell[i][variant] is not None]
            if not rows:
                continue
            xs = np.array([r[0] for r in rows])
            q = np.array([r[1][f"q_{what}"] for r in rows], float)
            ci = np.array([r[1][f"q_{what}_ci"] for r in rows], float)
            base = np.array([r[1][f"q_{what}_baseline"] for r in rows], float)
            bci = np.array([r[1][f"q_{what}_baseline_ci"] for r in rows], float)
            ax.plot(xs, q, "o-", ms=3, color=color, label=f"Q {what}")
            ax.fill_between(xs, ci[:, 0], ci[:, 1], color=color, alpha=0.2)
            ax.plot(xs, base, "--", color=color, lw=1, label=f"binomial baseline ({what})")
            ax.fill_between(xs, bci[:, 0], bci[:, 1], color=color, alpha=0.1, hatch="//")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_title(f"Mandel Q, {variant.replace('_', ' ')}")
        symlog(ax)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("Q = var/mean - 1")
    plots.save(fig, folder.figure("mandel_q"))

    # count histograms against Poisson at the verdict's first and last checkpoints
    from scipy import stats as st
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for row, i in enumerate((i0, i1)):
        s = spell[i]["fixed_length"]
        if s is None:
            continue
        for col, what in enumerate(("correct", "misspelled")):
            counts = s[f"counts_{what}"]
            ax = axes[row, col]
            v = np.arange(counts.max() + 2)
            ax.bar(v, np.bincount(counts, minlength=len(v))[: len(v)] / len(counts), alpha=0.6, label="samples")
            ax.plot(v, st.poisson.pmf(v, counts.mean()), "ko-", ms=3, label="Poisson(mean)")
            p = s[f"poisson_{what}"]["p_value"]
            ax.set_title(f"step {steps[i]}: {what}, Q={s[f'q_{what}']:.2f}, chi2 p={p:.2g}", fontsize=9)
            ax.set_xlabel("words per sample"), ax.legend(fontsize=7)
    plots.save(fig, folder.figure("count_histograms"))
