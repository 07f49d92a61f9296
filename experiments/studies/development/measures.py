"""The development study's passes over a series: its inputs (windows of held-out and training
text, CKA positions, repeated random sequences), the forward measures of every checkpoint and
the LLC of the chosen ones, each one `map_stack` over the checkpoints streamed from disk."""
from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from dynamics import data as data_lib
from dynamics import run_tokenizer
from dynamics.checkpoints import Series, auto_chunk_size, load_model_config, map_stack, open_stack
from dynamics.runlog import RunFolder
from experiments.studies import run_inputs as suite
from models.errors import require
from probes.development import heads
from probes.development.llc import next_token_loss, sgld_chains
from probes.development.series import forward_measures_fn
from probes.development.weights import weight_stats


def shapes(config, context: int) -> dict:
    """The lengths the model's context must hold, each checked: window, period, ICL positions,
    LLC window."""
    window = config.window or context
    period = config.period or context // 2
    late = config.icl_late or window - 1
    early = config.icl_early or min(window // 10, late - 1)
    fix = "lower it (or give run=... with a longer context)"
    require(window <= context, f"window={window} exceeds the model's context of {context}; {fix}")
    require(2 * period <= context, f"period={period} needs sequences of {2 * period} > context {context}; {fix}")
    require(period >= 2, f"period={period} must be >= 2")
    require(config.llc_window <= context, f"llc_window={config.llc_window} exceeds the model's context of {context}; {fix}")
    require(early < late < window, f"need icl_early={early} < icl_late={late} < window={window}")
    require(config.cka_examples <= config.n_windows * window,
            f"cka_examples={config.cka_examples} exceeds the {config.n_windows * window} positions of the windows")
    return {"window": window, "period": period, "icl_early": early, "icl_late": late, "llc_window": config.llc_window}


def token_splits(config, run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(train ids, held-out ids): `text` when given (on run=...), else the run's own corpus (a run
    trained here), else Shakespeare, read with the run's tokenizer."""
    if not config.text and suite.trained_here(run_dir):
        corpus = suite.own_corpus(run_dir)
    else:
        corpus = suite.text_corpus(str(run_dir), config.text)
    return np.asarray(corpus.train_ids), np.asarray(corpus.val_ids)


def random_windows(ids: np.ndarray, n: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """[n, length] int32 windows starting at uniform random offsets of `ids`."""
    require(len(ids) > length, f"the text holds {len(ids)} tokens, fewer than one window of {length + 1}; "
                               f"give a longer text (--set text=...)")
    starts = rng.integers(0, len(ids) - length, n)
    return np.stack([np.asarray(ids[s:s + length]) for s in starts]).astype(np.int32)


def inputs(config, run_dir: Path) -> dict:
    """Everything the passes read, drawn once from `seed` (the same at every checkpoint)."""
    model = load_model_config(run_dir)
    shape = shapes(config, model.context)
    train_ids, val_ids = token_splits(config, run_dir)
    rng = np.random.default_rng(config.seed)
    windows = random_windows(val_ids, config.n_windows, shape["window"] + 1, rng)
    per_window = config.cka_examples // config.n_windows
    positions = np.stack([np.sort(rng.choice(shape["window"], per_window, replace=False))
                          for _ in range(config.n_windows)]).astype(np.int32)
    key_rep, key_ctl = jax.random.split(jax.random.PRNGKey(config.seed))
    vocab = min(run_tokenizer.load_tokenizer(run_dir).vocab_size, model.vocab_size)   # no padding rows
    repeated = heads.repeated_random_tokens(key_rep, config.n_sequences, shape["period"], vocab)
    control = heads.repeated_random_tokens(key_ctl, config.n_sequences, shape["period"], vocab, repeat=False)
    llc_windows = random_windows(train_ids, config.llc_examples, config.llc_window + 1, rng)
    return {"model": model, "shape": shape, "forward": {"windows": windows, "positions": positions,
                                                         "repeated": np.asarray(repeated), "control": np.asarray(control)},
            "groups": np.repeat(np.arange(config.n_windows), per_window), "llc_windows": llc_windows}


def chosen_steps(config, run_dir: Path) -> list[int]:
    """The checkpoints analysed: all, or `max_checkpoints` spread over the series."""
    steps = Series(run_dir, "pretrain", create=False).steps()
    return [steps[i] for i in data_lib.spread(len(steps), config.max_checkpoints)]


def forward_pass(config, run_dir: Path, data: dict) -> dict:
    """The forward measures and the weight statistics of every analysed checkpoint (leaves
    [C, ...]), each a pass over the series streamed from disk (`forward_measures_fn` says why two)."""
    steps, disk = open_stack(run_dir, chosen_steps(config, run_dir))
    t0 = time.perf_counter()
    out = map_stack(forward_measures_fn(data["model"], config.batch_size), disk, data["forward"],
                    chunk_size=config.chunk_size or None)
    resident, seconds = disk.max_resident, time.perf_counter() - t0
    _, disk = open_stack(run_dir, [int(s) for s in steps])
    model = data["model"]
    out["weights"] = map_stack(lambda params: weight_stats(params, model), disk, chunk_size=config.chunk_size or None)
    return {"steps": np.asarray(steps), **out, "seconds": seconds, "weights_seconds": time.perf_counter() - t0 - seconds,
            "max_resident": max(resident, disk.max_resident)}


def llc_fn(model_config, sgld):
    """`fn(params, windows, key)`: the SGLD chains of one checkpoint (`sgld_chains`)."""
    loss_fn = next_token_loss(model_config)
    return lambda params, windows, key: sgld_chains(loss_fn, params, windows, key, sgld)


def llc_pass(config, run_dir: Path, data: dict, steps) -> dict:
    """The LLC of `llc_checkpoints` of the analysed checkpoints, spread: leaves [C', ...]. The
    same key at every checkpoint ([choice]: the same minibatches and noise, so the differences
    between checkpoints are not differences of the draws)."""
    chosen = [int(steps[i]) for i in data_lib.spread(len(steps), config.llc_checkpoints)]
    llc_steps, disk = open_stack(run_dir, chosen)
    fn = llc_fn(data["model"], config.llc)
    key = jax.random.PRNGKey(config.seed + 1)
    t0 = time.perf_counter()
    # [choice] the chains' activations, not the checkpoint, fill memory: always ask XLA for one
    # checkpoint's temporaries (one extra compile), whatever the stack's size
    chunk = config.chunk_size or auto_chunk_size(fn, disk, data["llc_windows"], key, scratch_above=0)
    out = map_stack(fn, disk, data["llc_windows"], key, chunk_size=chunk)
    bad = [int(s) for s, k in zip(llc_steps, out["llc_K"]) if not np.isfinite(k).all()]
    require(not bad, f"the SGLD chains diverged (a non-finite loss) at checkpoint steps {bad}; lower llc.eps "
                     f"or raise llc.gamma")
    return {"steps": np.asarray(llc_steps), **out, "seconds": time.perf_counter() - t0,
            "max_resident": disk.max_resident}


def save_arrays(folder: RunFolder, series: dict, llc: dict, cka: dict) -> None:
    """measures.npz in the run folder: every per-checkpoint array behind the summary and the
    figures (lens losses per token, head scores per sequence, weight statistics, CKA maps, the
    LLC chains and their traces), for a notebook."""
    flat = {"steps": series["steps"], "llc_steps": llc["steps"], **{f"cka/{k}": v for k, v in cka.items()}}
    for key in ("lens_nll", "prev_token", "induction", "induction_control"):
        flat[key] = series[key]
    for name, st in series["weights"].items():
        for stat, value in st.items():
            flat[f"weights/{name}/{stat}"] = value
    for key in ("llc_K", "trace_KT", "init_loss", "nbeta"):
        flat[f"llc/{key}"] = llc[key]
    np.savez_compressed(folder.root / "measures.npz", **flat)
