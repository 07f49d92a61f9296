"""Coherent waves of hidden channels and Poisson statistics of spelling (Hong, arXiv 2305.05061).

Waves, for every checkpoint in one vmapped pass (`map_stack`). Each checkpoint generates
P passages (prompts x sampling seeds; the same keys at every checkpoint) of
`passage_length` tokens with `models.sample.generate`; `gpt.apply` with capture then
re-reads the generated tokens (`probes.waves.channels.passage_hidden`). By causality the hidden state at
position t depends only on tokens <= t, so it is the state the model had when it produced
token t+1 during generation; beyond the context, where `generate` slides a window, each
position is read from that same window. So passages may be longer than the context.
Waves are the final-LayerNorm output (`layer=-1`) or the residual after block `layer`, on
positions 0..S-2 so that every position has a next character for the class indicators
(space, newline, punctuation, vowel, capital, at t and t+1). `probes.waves.channels` gives C,
coherence, autocorrelation, coherence time and period; channels are clustered (average
linkage on 1 - |C| of the passage-mean C) and clusters labelled by class; repeatability
compares the P passages. The dominant period is the peak of the spectrum averaged over
channels and passages, searched over word-scale periods from min_period to max_period
[reconstructed]: passages all start at position 0, so the positional embedding adds a
slow drift shared by every passage that would otherwise always win.

Spelling, for `spelling_checkpoints` checkpoints spread over the series (first and last
included; another vmapped pass). Each samples `n_samples` continuations of
`sample_length` characters after a newline. Fixed-length variant: all complete words of a
sample (a word cut by the end is dropped). Fixed-word-count variant: the same samples cut
after their `n_words`-th complete word, so the total is fixed and only which words are
misspelled is random; samples with fewer words are dropped and counted (`n_dropped`: keep
it near 0, since dropping selects samples with long words). `probes.waves.spelling` gives the
dispersion, binomial baseline, excess and the verdict on the paper's claim (rule in
`claim_survives_baseline`), taken between the earliest spelling checkpoint where both
counts have a nonzero mean in both variants (Q is undefined otherwise) and the last.

On `run=RUN` (any family: an imported GPT-NeoX / LLaMA / GPT-2 suite or a run trained here) the
checkpoints stay on disk and stream through `map_stack` in chunks under `memory_budget_gb`;
passages and samples come from `generate_any` (`probes.waves.on_run`; they must fit the context),
and the spelling vocabulary is the words of `text` read through the run's tokenizer (default: a
run trained here, its own corpus; an imported suite, Shakespeare). A `pretrain_run` keeps the path above, number for number.

This module orchestrates (config, the passes, the summary, the findings); the method is in
`probes.waves.channels`, `probes.waves.on_run` and `probes.waves.spelling`, the figures in `experiments.studies.waves.figures`.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from dynamics import stats
from dynamics.checkpoints import Series, load_model_config, load_stack, map_stack, set_memory_budget
from dynamics import data as data_lib
from dynamics import run_tokenizer
from models.errors import OntogenyError
from dynamics.runlog import RunFolder
from experiments.studies.pretrain import study as pretrain
from experiments.studies import run_inputs as suite
from . import figures
from . import on_run as waves_suite
from models.errors import require
from probes.waves import spelling
from probes.waves import channels as waves

DESCRIPTION = "wave dynamics of hidden channels and spelling-error statistics over training (Hong 2023)"


@dataclasses.dataclass(frozen=True)
class Config:
    pretrain_run: str = ""                      # empty: train `pretrain_preset` into OUT/pretrain
    pretrain_preset: str = "tiny"               # the preset trained when pretrain_run is empty
    run: str = ""                               # a run of any family (imported suite or trained here), streamed from disk
    text: str = ""                              # on `run`: text file or folder of the spelling vocabulary ("" = the run's corpus, else Shakespeare)
    memory_budget_gb: float = 0.0               # host memory for the checkpoint chunks (0 = a quarter of free memory)
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
        require(self.memory_budget_gb >= 0, f"memory_budget_gb={self.memory_budget_gb} must be >= 0 (0 = automatic)")
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
        """Keys a given pretrain_run (or run) leaves without effect: setting one is refused."""
        keys = {"pretrain_preset": "a run is given, so no pretrain preset is trained"} if self.pretrain_run or self.run else {}
        if not self.run:
            keys["text"] = "text is read on run=...; a pretrain run's spelling vocabulary is its own corpus"
        if self.run and self.pretrain_run:
            keys["run"] = keys["pretrain_run"] = "give run (any family, streamed) or pretrain_run, not both"
        return keys


def resolve(config: Config) -> dict:
    """What `run` runs, references checked before anything is created: the pretrain series (a
    given run, or the preset trained into OUT/pretrain; or `run` of any family), the layer read,
    and the study's keys. On `run` the passages and samples must fit the model's context."""
    if config.run:
        require(not config.pretrain_run, "give run (any family, streamed) or pretrain_run, not both")
        suite.check_text(config.text)
        ref = suite.run_reference(config.run)
        waves_suite.check_run_shapes(config, ref["model"], run_tokenizer.load_tokenizer(config.run))
    else:
        ref = pretrain.pretrain_reference(config.pretrain_run, config.pretrain_preset)
    model = ref["model"] if isinstance(ref["model"], dict) else dataclasses.asdict(ref["model"])
    require(config.layer < model["n_layer"], f"layer={config.layer} must be < the pretrain model's "
                                             f"n_layer={model['n_layer']} (or -1, the final hidden state)")
    folded = {"pretrain_run", "pretrain_preset", "run"} | set(config.unused())
    study = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in folded}
    return {"pretrain": {k: v for k, v in ref.items() if k != "steps"}, "study": study}


PRESETS = {
    "tiny": Config(),
    "full": Config(pretrain_preset="shakespeare-char", prompts=("\n", "KING", "ROMEO:\n", "First Citizen:\n"), seeds_per_prompt=4,
                   passage_length=256, n_samples=1000, sample_length=250, n_words=30, n_boot=2000),
}


# ----------------------------------------------------------------------------- the run's pieces

def resolve_run(config: Config, folder: RunFolder) -> Path:
    """The pretrain run analysed: pretrain_run, or the preset trained (or reused) in OUT/pretrain."""
    if config.pretrain_run:
        return Path(config.pretrain_run)
    if config.pretrain_preset not in pretrain.PRESETS:
        raise OntogenyError(f"pretrain_preset={config.pretrain_preset!r} is unknown; choose one of "
                            f"{', '.join(pretrain.PRESETS)} or give pretrain_run")
    return pretrain.ensure_pretrain(folder.sub("pretrain"), preset=config.pretrain_preset)


# ----------------------------------------------------------------------------- the study

def _load(config: Config, folder: RunFolder) -> dict:
    """The series analysed (the checkpoints chosen by max_checkpoints), its model, tokenizer and
    the spelling vocabulary; refuses a layer or sample length the model cannot serve."""
    run_dir = resolve_run(config, folder)
    tokenizer = data_lib.load_tokenizer(run_dir)
    steps = np.asarray(Series(run_dir, "pretrain", create=False).steps())
    steps, stacked = load_stack(run_dir, steps[data_lib.spread(len(steps), config.max_checkpoints)])
    model = load_model_config(run_dir)
    if config.layer >= model.n_layer:
        raise OntogenyError(f"layer={config.layer} but the model has {model.n_layer} layers; use -1..{model.n_layer - 1}")
    if config.sample_length + 1 > model.context:
        raise OntogenyError(f"sample_length+1={config.sample_length + 1} exceeds the model context {model.context}, "
                            f"where generation would recompute a sliding window per character; lower sample_length")
    vocab = spelling.build_vocabulary(suite.own_corpus(run_dir).train_text, config.case_sensitive)
    return {"tokenizer": tokenizer, "steps": steps, "stacked": stacked, "model": model, "vocab": vocab,
            "text_source": suite.text_source(run_dir)}


def _wave_pass(config: Config, run: dict) -> tuple[dict, float]:
    """Generate, capture and measure the passages of every checkpoint in one vmapped pass:
    leaves [C, P, ...], and the seconds it took."""
    tokenizer = run["tokenizer"]
    prompts = tuple(jnp.asarray(tokenizer.encode(p)) for p in config.prompts)
    keys = tuple(jax.random.split(jax.random.PRNGKey(config.seed), len(prompts)))
    table = jnp.asarray(waves.class_table(tokenizer.chars))
    wave_fn = waves.make_wave_fn(run["model"], tuple(len(p) for p in prompts),
                                 seeds_per_prompt=config.seeds_per_prompt, passage_length=config.passage_length,
                                 temperature=config.temperature, layer=config.layer, max_lag=config.max_lag,
                                 min_period=config.min_period, max_period=config.max_period)
    t0 = time.perf_counter()
    W = map_stack(wave_fn, run["stacked"], prompts, keys, table, chunk_size=config.chunk_size or None)
    return W, time.perf_counter() - t0


def _sample_pass(config: Config, run: dict) -> tuple[dict, float]:
    """M spelling samples for each of `spelling_checkpoints` checkpoints spread over the series
    (one vmapped pass): {checkpoint index: [M texts]}, and the seconds it took."""
    tokenizer = run["tokenizer"]
    spell_idx = data_lib.spread(len(run["steps"]), config.spelling_checkpoints)
    prompt_M1 = jnp.broadcast_to(jnp.asarray(tokenizer.encode("\n")), (config.n_samples, 1))
    t0 = time.perf_counter()
    samples = map_stack(spelling.make_sample_fn(run["model"], config.sample_length, config.temperature),
                        jax.tree.map(lambda a: a[spell_idx], run["stacked"]), prompt_M1,
                        jax.random.PRNGKey(config.seed + 1), chunk_size=config.chunk_size or None)
    texts = {int(i): [tokenizer.decode(t[1:]) for t in samples[j]] for j, i in enumerate(spell_idx)}
    return texts, time.perf_counter() - t0


def _per_checkpoint(config: Config, folder: RunFolder, steps, W: dict, texts: dict, vocab, names) -> dict:
    """Host work per checkpoint (clustering, counting, bootstrap), one metrics row each."""
    records, clusters, orders, spell = [], [], [], {}
    for c in tqdm(range(len(steps)), desc="clusters+spelling", leave=False):
        record, named, order = waves.checkpoint_structure(jax.tree.map(lambda a: a[c], W), names, config.n_clusters,
                                                          config.min_period, config.max_period)
        record = {"step": int(steps[c]), **record}
        clusters.append(named)
        orders.append(order)
        if c in texts:
            spell[c] = spelling.checkpoint_spelling(texts[c], vocab, n_words=config.n_words,
                                                    case_sensitive=config.case_sensitive, n_boot=config.n_boot,
                                                    level=config.ci_level, seed=config.seed + 1000 * c)
            for variant, s in spell[c].items():
                if s is not None:
                    record[variant] = {k: v for k, v in s.items() if not k.startswith(("draws", "counts", "poisson"))}
                    record[variant]["poisson_p_correct"] = s["poisson_correct"]["p_value"]
                    record[variant]["poisson_p_misspelled"] = s["poisson_misspelled"]["p_value"]
        records.append(record)
        folder.log(record)
    return {"records": records, "clusters": clusters, "orders": orders, "spell": spell}


def run(config: Config, folder: RunFolder) -> dict:
    """Load the series (on `run`: left on disk, streamed in chunks under memory_budget_gb), the
    wave and sample passes, the host work per checkpoint, the verdict, the figures and the summary."""
    t_start = time.perf_counter()
    set_memory_budget(int(config.memory_budget_gb * 2**30))
    loaded = waves_suite.load(config) if config.run else _load(config, folder)
    steps, names = loaded["steps"], waves.class_names()
    W, wave_s = (waves_suite.wave_pass if config.run else _wave_pass)(config, loaded)
    texts, sample_s = (waves_suite.sample_pass if config.run else _sample_pass)(config, loaded)
    per = _per_checkpoint(config, folder, steps, W, texts, loaded["vocab"], names)
    i0, i1, verdict, checks = spelling.claim_verdict(per["spell"], len(steps), config.ci_level)
    figures.plot_all(folder, config, steps, W, per, names, loaded["tokenizer"], i0, i1)
    summary = _summary(config, steps, W, per, names)
    summary.update({"claim_survives_baseline": bool(verdict), "claim_checkpoints": [int(steps[i0]), int(steps[i1])],
                    "claim_checks": checks, "wave_pass_s": wave_s, "sample_pass_s": sample_s,
                    "wall_s": time.perf_counter() - t_start})
    summary["text_source"] = loaded["text_source"]
    if config.run:
        summary["max_resident_checkpoints"] = int(loaded["max_resident"])
    spell, C = per["spell"], len(steps)
    summary.update(intervals(W["coherence"], spell[0]["fixed_length"], spell[C - 1]["fixed_length"],
                             config.n_boot, config.ci_level))
    return summary


FIXED_WORDS_KEYS = ("p", "q_correct", "q_correct_baseline", "q_correct_excess", "q_correct_excess_ci", "q_misspelled",
                    "q_misspelled_baseline", "q_misspelled_excess", "q_misspelled_excess_ci", "n_dropped")


def _summary(config: Config, steps, W: dict, per: dict, names) -> dict:
    """The headline numbers: waves at the first and last checkpoint, spelling at the last."""
    records, spell, C = per["records"], per["spell"], len(steps)
    last, first = records[-1], records[0]
    fl_first, fl_last, fw_last = spell[0]["fixed_length"], spell[C - 1]["fixed_length"], spell[C - 1]["fixed_words"]
    out = {"steps": [int(s) for s in steps], "layer": "final_hidden" if config.layer < 0 else f"resid[{config.layer}]"}
    for key, name in (("coherence", "coherence"), ("eig_ratio", "eig_ratio"), ("period", "autocorr_period"),
                      ("coherence_time", "coherence_time")):
        out[f"{name}_first"], out[f"{name}_last"] = first[key], last[key]
    out.update({
        "repeatability_corr_last": last["repeat_corr"], "repeatability_mode_last": last["repeat_mode"],
        "cluster_agreement_last": last["cluster_agreement"], "clusters_last": per["clusters"][-1],
        "space_channel_corr_last": float(np.abs(W["class_corr"][-1].mean(0)[:, names.index("space@t")]).max()),
        "fraction_correct_first": fl_first["p"] if fl_first else None, "fraction_correct_last": fl_last["p"]})
    for w in ("correct", "misspelled"):
        out.update({f"q_{w}_last": fl_last[f"q_{w}"], f"q_{w}_last_ci": fl_last[f"q_{w}_ci"],
                    f"q_{w}_baseline_last": fl_last[f"q_{w}_baseline"], f"q_{w}_excess_last": fl_last[f"q_{w}_excess"],
                    f"q_{w}_excess_last_ci": fl_last[f"q_{w}_excess_ci"],
                    f"poisson_p_{w}_last": fl_last[f"poisson_{w}"]["p_value"]})
    out["fixed_words"] = {k: fw_last[k] for k in FIXED_WORDS_KEYS} if fw_last else None
    # Q and the Poisson test are undefined without correct (or misspelled) words, e.g. a random
    # model: null, as the summary contract has it, not NaN
    return {k: _null_if_undefined(v) if k.startswith(("q_", "poisson_p_", "fixed_words")) else v for k, v in out.items()}


def _null_if_undefined(x):
    if isinstance(x, dict):
        return {k: _null_if_undefined(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return None if any(v is None or not np.isfinite(v) for v in np.ravel(np.asarray(x, dtype=object))) else x
    return None if x is not None and not np.isfinite(x) else x


def intervals(coherence_CP, fl_first, fl_last, n_boot: int = 2000, level: float = 0.95) -> dict:
    """Intervals of the headline numbers (one training seed; units within it): coherence over
    the P passages (`probes.waves.channels.coherence_intervals`), the fraction of correct words over the
    spelling samples (`probes.waves.spelling.fraction_correct_intervals`)."""
    return {**waves.coherence_intervals(coherence_CP, level),
            **spelling.fraction_correct_intervals(fl_first, fl_last, n_boot, level)}


def _change(summary: dict, key: str, what: str, digits: int = 3) -> str:
    """'<what> went a [ci] -> b [ci]: it rose by d [ci]' or '... the change d [ci] is within the noise'."""
    d, ci = summary.get(f"{key}_change"), summary.get(f"{key}_change_ci")
    text = f"{what} went {stats.ci_text(summary, key + '_first', digits)} -> {stats.ci_text(summary, key + '_last', digits)}"
    if d is None or ci is None:
        return text + " (no interval for the change)"
    verdict = ("it rose" if ci[0] > 0 else "it fell") if stats.excludes(ci) else "the interval of the change includes 0, so no change is shown"
    return f"{text}: {verdict} ({stats.format_ci(d, ci, digits, signed=True)})"


def _fmt(x) -> str:
    return "undefined" if x is None else f"{x:.3f}"


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
        f"baseline {_fmt(summary['q_correct_baseline_last'])} (excess {excess}), so the sub-Poisson claim "
        f"{'survives' if survives else 'does not survive'} the baseline; intervals are over units of one "
        f"training seed" + (f"; words spelled against {summary['text_source']}" if "text_source" in summary else "")
        + ".",
    ]
