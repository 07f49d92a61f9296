"""The waves study on `run=RUN`, a run of any family (`experiments.studies.waves.study` with `run` set): the
checkpoints left on disk and streamed through `map_stack`, passages and spelling samples from
`generate_any` (`probes.waves.on_run`), the spelling vocabulary from a text read through the run's
tokenizer. The statistics, summary and figures are `experiments.studies.waves.study`'s."""
from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import run_tokenizer
from dynamics.checkpoints import Series, load_model_config, map_stack, open_stack
from dynamics.data import spread
from models.errors import OntogenyError
from experiments.studies import run_inputs as suite
from models.errors import require
from probes.waves import spelling
from probes.waves import on_run as waves_any


def check_run_shapes(config, model, tokenizer) -> None:
    """On `run` (sampling without a cache, `generate_any`): every prompt encodes to a token,
    and passages and spelling samples (after the first prompt, [choice]) fit the context."""
    for p in config.prompts:
        try:
            n = len(tokenizer.encode(p))
        except OntogenyError:  # a character tokenizer without these characters
            n = 0
        require(n >= 1, f"prompt {p!r} is not text the run's tokenizer can encode; give prompts it can read, "
                        f"e.g. --set prompts=the")
    n0 = len(tokenizer.encode(config.prompts[0]))
    require(config.passage_length <= model.context,
            f"passage_length={config.passage_length} exceeds the model's context of {model.context} (on run=..., "
            f"passages are not slid past the context); lower passage_length")
    require(n0 + config.sample_length <= model.context,
            f"the first prompt's {n0} tokens plus sample_length={config.sample_length} exceed the model's context "
            f"of {model.context}; lower sample_length")


def load(config) -> dict:
    """`waves._load` for `run` (any family): the chosen checkpoints left on disk (`open_stack`), the
    token class tables, and the spelling vocabulary: the words of `text` as the run's tokenizer
    reads it back ([choice] decode(encode(text)), so a word the tokenizer cannot spell never
    counts as misspelled); with no `text`, a run trained here uses its own training corpus."""
    run_dir = Path(config.run)
    tokenizer, model = run_tokenizer.load_tokenizer(run_dir), load_model_config(run_dir)
    steps = np.asarray(Series(run_dir, "pretrain", create=False).steps())
    steps, disk = open_stack(run_dir, steps[spread(len(steps), config.max_checkpoints)])
    if not config.text and suite.trained_here(run_dir):  # [choice] a run trained here: its own corpus
        text = suite.own_corpus(run_dir).train_text
    else:
        text = tokenizer.decode(suite.text_corpus(str(run_dir), config.text).train_ids)
    vocab = spelling.build_vocabulary(text, config.case_sensitive)
    tables = waves_any.token_class_tables(waves_any.token_strings(tokenizer, model.vocab_size))
    return {"tokenizer": tokenizer, "steps": steps, "stacked": disk, "model": model, "vocab": vocab,
            "tables": tables, "run_dir": run_dir, "text_source": suite.text_source(run_dir, config.text)}


def wave_pass(config, run: dict) -> tuple[dict, float]:
    """`waves._wave_pass` on a streamed run of any family (`probes.waves.on_run`): same keys, same draws."""
    tokenizer = run["tokenizer"]
    prompts = tuple(jnp.asarray(tokenizer.encode(p)) for p in config.prompts)
    keys = tuple(jax.random.split(jax.random.PRNGKey(config.seed), len(prompts)))
    wave_fn = waves_any.make_wave_fn_any(run["model"], tuple(len(p) for p in prompts),
                                         seeds_per_prompt=config.seeds_per_prompt,
                                         passage_length=config.passage_length, temperature=config.temperature,
                                         layer=config.layer, max_lag=config.max_lag, min_period=config.min_period,
                                         max_period=config.max_period)
    t0 = time.perf_counter()
    last_VK, first_VK = (jnp.asarray(t) for t in run["tables"])
    W = map_stack(wave_fn, run["stacked"], prompts, keys, last_VK, first_VK, chunk_size=config.chunk_size or None)
    return W, time.perf_counter() - t0


def sample_pass(config, run: dict) -> tuple[dict, float]:
    """`waves._sample_pass` on a streamed run (`generate_any`): samples start after the first prompt
    ([choice]; tiny's is the newline a pretrain run's samples start from)."""
    tokenizer = run["tokenizer"]
    spell_idx = spread(len(run["steps"]), config.spelling_checkpoints)
    _, disk = open_stack(run["run_dir"], run["steps"][spell_idx])
    prompt = np.asarray(tokenizer.encode(config.prompts[0]))
    prompt_MT = jnp.broadcast_to(jnp.asarray(prompt), (config.n_samples, len(prompt)))
    t0 = time.perf_counter()
    samples = map_stack(waves_any.make_sample_fn_any(run["model"], config.sample_length, config.temperature), disk,
                        prompt_MT, jax.random.PRNGKey(config.seed + 1), chunk_size=config.chunk_size or None)
    texts = {int(i): [tokenizer.decode(t[len(prompt):]) for t in samples[j]] for j, i in enumerate(spell_idx)}
    run["max_resident"] = max(run["stacked"].max_resident, disk.max_resident)
    return texts, time.perf_counter() - t0
