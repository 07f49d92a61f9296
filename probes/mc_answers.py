"""The expressive side of Yan et al. on any model family, for one checkpoint: what the model
answers to a lettered multiple-choice prompt.

Rows are right-padded token arrays [N, S] with their lengths [N] (causal attention keeps the
padding out of every real position, so no attention mask is needed, for learned and rotary
positions alike). Texts are processed `batch_size` rows at a time
(`probes.layer_probes.map_rows`), and logits are formed only at the positions read (the final
hidden state times the unembedding), never [S, V] for every position.

- `letter_logprobs`: log p(letter | prompt) of each answer letter in one forward per prompt
  (the letters' shared prefix, " " for a character tokenizer, is part of the row). This is the
  documented second measure of expression: the letter the model would most likely write.
- `decode_rows`: the next `n_new` tokens of each row, greedy (temperature 0) or sampled, per row;
  each new token costs one forward over the row buffer ([choice] no KV cache: a short answer of 1-2
  tokens needs 1-2 forwards, and one compiled program serves every family through
  `models.apply`).
- `letter_continuations` / `parse_answers`: the tokens of " A", " B", ... under a tokenizer, and
  which option a decoded continuation names (by its letter or by its text).

Axis letters: N rows, S positions, B rows of a batch, D width, V vocabulary, K options, T new tokens.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import models
from models.errors import require
from models.families import unembedding_matrix
from probes.layer_probes import map_rows


def logits_at(params, tokens_BS, positions_B, config):
    """Next-token logits [B, V] (float32) at one position of each row: the final hidden state
    there times the unembedding, so only B x V logits are formed."""
    _, acts = models.apply(params, tokens_BS, config, capture=("final_hidden",))
    h_BD = acts["final_hidden"][jnp.arange(tokens_BS.shape[0]), positions_B].astype(jnp.float32)
    return h_BD @ unembedding_matrix(params, config).astype(jnp.float32).T


def letter_logprobs(params, tokens_NS, lengths_N, letter_ids_K, config, batch_size: int = 16):
    """[N, K]: log p(letter k's token | row) at each row's last token, normalised over the whole
    vocabulary (so the K values need not sum to one)."""
    def one(tokens_BS, lengths_B):
        logp_BV = jax.nn.log_softmax(logits_at(params, tokens_BS, lengths_B - 1, config), axis=-1)
        return logp_BV[:, letter_ids_K]
    return map_rows(one, (tokens_NS, lengths_N), batch_size)


def draw(logits_BV, keys_B, temperature_B):
    """Next tokens [B]: argmax where the row's temperature is 0, else a softmax sample at it."""
    greedy = jnp.argmax(logits_BV, -1)
    scaled = logits_BV / jnp.maximum(temperature_B, 1e-6)[:, None]
    sampled = jax.vmap(lambda k, lg: jax.random.categorical(k, lg))(keys_B, scaled)
    return jnp.where(temperature_B > 0, sampled, greedy).astype(jnp.int32)


def decode_rows(params, tokens_NS, lengths_N, config, n_new: int, key, temperature=0.0, batch_size: int = 16):
    """[N, n_new]: tokens written after each row's last token, one forward per new token.

    `temperature` is one value or one per row [N] (0: greedy), so greedy and sampled rows share
    one program. Row n's token t is drawn with `fold_in(fold_in(key, n), t)` ([choice]: a row's
    draws do not depend on its batch). Needs S + n_new positions within the model's context
    (`tokens_NS` is widened by n_new columns here).
    """
    N, S = tokens_NS.shape
    buffer_NS = jnp.concatenate([tokens_NS, jnp.zeros((N, n_new), tokens_NS.dtype)], axis=1)
    keys_N = jax.vmap(lambda n: jax.random.fold_in(key, n))(jnp.arange(N))
    temperature_N = jnp.broadcast_to(jnp.asarray(temperature, jnp.float32), (N,))

    def one(buf_BS, lengths_B, keys_B, temperature_B):
        rows = jnp.arange(buf_BS.shape[0])

        def step(t, buf):
            logits_BV = logits_at(params, buf, lengths_B + t - 1, config)
            step_keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(keys_B)
            return buf.at[rows, lengths_B + t].set(draw(logits_BV, step_keys, temperature_B).astype(buf.dtype))

        buf = jax.lax.fori_loop(0, n_new, step, buf_BS)
        return buf[rows[:, None], lengths_B[:, None] + jnp.arange(n_new)[None, :]]

    return map_rows(one, (buffer_NS, lengths_N, keys_N, temperature_N), batch_size)


# --------------------------------------------------------------------------- host side
def letter_continuations(tokenizer, n_letters: int, letters: str, anchor: str = "Answer:"):
    """(prefix ids, letter ids [n_letters]): the tokens of `anchor + " " + letter` after those of
    `anchor` (the tokenizer's own split at that boundary), as a shared prefix plus one distinct
    token per letter; refused with one line when a tokenizer writes the letters otherwise."""
    base = list(tokenizer.encode(anchor))
    tails = []
    for letter in letters[:n_letters]:
        full = list(tokenizer.encode(f"{anchor} {letter}"))
        tails.append(full[len(base):] if full[:len(base)] == base else list(tokenizer.encode(f" {letter}")))
    common = 0
    while all(len(t) > common + 1 for t in tails) and len({t[common] for t in tails}) == 1:
        common += 1
    heads = [t[common:] for t in tails]
    require(all(len(h) == 1 for h in heads) and len({h[0] for h in heads}) == n_letters,
            f"the run's tokenizer does not write the answer letters {letters[:n_letters]} as one distinct token each "
            f"after a shared prefix; this study needs a tokenizer that can write \" A\", \" B\", ...")
    return np.asarray(tails[0][:common], np.int32), np.array([h[0] for h in heads], np.int32)


def named_option(text: str, choices, letters: str) -> int:
    """The option a decoded continuation names, -1 for none. [choice] Leading whitespace and an
    opening "(" are skipped; a letter of the item not followed by another letter names its option
    ("B", "B.", "(B)"); otherwise the continuation names the one option whose text it begins
    (or begins with): an answer written as the option's text counts, as an instruction-tuned
    model often writes it, and a continuation that two options share names none."""
    text = text.lstrip().lstrip("(")
    if not text:
        return -1
    if text[0] in letters[:len(choices)] and not text[1:2].isalpha():
        return letters.index(text[0])
    text = text.rstrip()
    matches = [k for k, c in enumerate(choices) if c.startswith(text) or text.startswith(c)]
    return matches[0] if len(matches) == 1 else -1


def parse_answers(new_NT, choices_N, tokenizer, letters: str) -> np.ndarray:
    """[N]: `named_option` of each row's continuation, decoded up to the first id outside the
    tokenizer (the padded part of a model's vocabulary)."""
    out = np.full(len(new_NT), -1, np.int64)
    for n, (ids, choices) in enumerate(zip(np.asarray(new_NT), choices_N)):
        valid = ids < tokenizer.vocab_size
        cut = len(ids) if valid.all() else int(np.argmin(valid))
        out[n] = named_option(tokenizer.decode(ids[:cut]), choices, letters)
    return out
