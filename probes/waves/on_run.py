"""Hong's waves and spelling samples on a model of any family (`models.apply`, `generate_any`).

`probes.waves.channels.make_wave_fn` serves the character GPT (KV-cached `generate`, windows slid past
the context). This module gives the same per-checkpoint result for every family (GPT-NeoX,
LLaMA, GPT-2, the character GPT), so a streamed imported suite goes through the same
`probes.waves.channels` statistics:

- passages come from `models.sample.generate_any` (no cache; the whole passage must fit the
  model's context: sliding a window under rotary positions is not the model's distribution);
- the hidden states are one `models.apply` pass with a capture over the generated tokens (by
  causality, the state the model had when it produced the next token);
- character classes of a token ([choice], tokens of several characters): at t, the class of the
  *last* character of token t (what the model has just read), at t+1 the class of the *first*
  character of token t+1 (what it predicts: BPE's leading space marks a word start). For a
  character tokenizer both are the character's class, so the indicators equal `make_wave_fn`'s.

Axis letters as in `probes.waves.channels`: P passages, S positions, D channels, K classes, V vocabulary,
M samples.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import models
from models.sample import generate_any
from probes.waves import channels as waves


def token_strings(tokenizer, vocab_size: int) -> list[str]:
    """The text of every token id 0..vocab_size-1 ("" past the tokenizer's vocabulary, e.g. the
    padded rows of Pythia's 50304-row embedding)."""
    chars = getattr(tokenizer, "chars", None)
    if chars is not None:
        return [chars[i] if i < len(chars) else "" for i in range(vocab_size)]
    n = min(vocab_size, tokenizer.vocab_size)
    return [tokenizer.decode([i]) for i in range(n)] + [""] * (vocab_size - n)


def token_class_tables(strings: list[str], classes=waves.CHAR_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """([V, K] classes of each token's last character, [V, K] of its first character); an empty
    token belongs to no class."""
    last = [s[-1] if s else "\0" for s in strings]
    first = [s[0] if s else "\0" for s in strings]
    return waves.class_table("".join(last), classes), waves.class_table("".join(first), classes)


def passage_hidden_any(params, tokens_PS, config, layer: int = -1):
    """[P, S, D]: the final normalised hidden state (layer -1) or the residual after block `layer`."""
    capture = "final_hidden" if layer < 0 else "resid"
    _, acts = models.apply(params, tokens_PS, config, capture=(capture,))
    return acts["final_hidden"] if layer < 0 else acts["resid"][layer]


def make_wave_fn_any(config, n_prompt_tokens: tuple[int, ...], *, seeds_per_prompt: int, passage_length: int,
                     temperature: float, layer: int, max_lag: int, min_period: float, max_period: float):
    """fn(params, prompts, keys, last_VK, first_VK) -> one checkpoint's passages and statistics,
    the keys of `probes.waves.channels.make_wave_fn` (leaves [P, ...]), for a model of any family."""

    def fn(params, prompts, keys, last_VK, first_VK):
        sample = lambda batch, n_new, key: generate_any(params, config, batch, n_new, key, temperature)
        tokens_PS = waves.sampled_passages(sample, prompts, keys, n_prompt_tokens, seeds_per_prompt, passage_length)
        x_PSD = passage_hidden_any(params, tokens_PS, config, layer)[:, :-1]
        ind_PSK = jnp.concatenate([last_VK[tokens_PS[:, :-1]], first_VK[tokens_PS[:, 1:]]], axis=-1)
        return waves.passage_statistics(tokens_PS, x_PSD, ind_PSK, max_lag=max_lag, min_period=min_period,
                                        max_period=max_period)

    return fn


def make_sample_fn_any(config, sample_length: int, temperature: float):
    """fn(params, prompt_M1, key) -> [M, T0 + sample_length] sampled tokens of one checkpoint."""
    def fn(params, prompt_MT, key):
        return generate_any(params, config, prompt_MT, sample_length, key, temperature)
    return fn
