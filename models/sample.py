"""Batched, jitted generation: greedy, temperature and top-k, with a KV cache (`generate`, the
character GPT) or without one for any family (`generate_any`: every registered family, `models.families`).

While the sequence fits in the context, each new token costs one single-position pass
through the blocks against cached keys and values. Beyond the context the model (learned
absolute positions) sees a sliding window of the last `context` tokens at positions
0..context-1, as nanoGPT does; that branch recomputes the window for every token.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from models import gpt
from models.errors import require


def pick(logits_BV, key, temperature: float, top_k: int | None):
    """Next tokens [B]: argmax when temperature == 0, else a (top-k) softmax sample."""
    if temperature == 0.0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    logits_BV = logits_BV / temperature
    if top_k is not None and top_k < logits_BV.shape[-1]:
        kth = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
        logits_BV = jnp.where(logits_BV < kth, -jnp.inf, logits_BV)
    return jax.random.categorical(key, logits_BV, axis=-1).astype(jnp.int32)


def prefill(params, tokens_BS, config: gpt.GPTConfig):
    """Forward over the prompt; returns last-position logits and K/V caches [L, B, H, context, E]."""
    B, S = tokens_BS.shape
    x = gpt.embed(params, tokens_BS, config)

    def layer(x, p):
        x, _, _, (k, v), _ = gpt.block(p, x, config)
        pad = ((0, 0), (0, 0), (0, config.context - S), (0, 0))
        return x, (jnp.pad(k, pad), jnp.pad(v, pad))

    x, (k_cache, v_cache) = jax.lax.scan(layer, x, params["blocks"])
    logits = gpt.unembed(params, gpt.layer_norm(x[:, -1:], params["ln_f"]))[:, 0]
    return logits, k_cache, v_cache


def decode_one(params, token_B, position, k_cache, v_cache, config: gpt.GPTConfig):
    """One new token at `position` against the caches; returns (logits [B, V], caches).

    The layer loop is unrolled and each layer writes its new key/value into the carried
    caches with a dynamic_update_slice, which XLA performs in place; routing the caches
    through a scan over layers instead materialised a fresh copy of them for every token.
    """
    x = params["wte"][token_B][:, None] + jax.lax.dynamic_slice_in_dim(params["wpe"], position, 1)[None]
    visible_SS = (jnp.arange(config.context) <= position)[None, :]  # one query position, every cached key
    for layer in range(config.n_layer):
        p = jax.tree.map(lambda a: a[layer], params["blocks"])
        h = gpt.layer_norm(x, p["ln1"])
        qkv = h @ p["attn"]["w_qkv"] + p["attn"]["b_qkv"]
        q, k, v = (gpt.split_heads(t, config.n_head) for t in jnp.split(qkv, 3, axis=-1))
        start = (layer, 0, 0, position, 0)
        k_cache = jax.lax.dynamic_update_slice(k_cache, k[None], start)
        v_cache = jax.lax.dynamic_update_slice(v_cache, v[None], start)
        attn = gpt.merge_heads(gpt.causal_attention(q, k_cache[layer], v_cache[layer], visible_SS))
        x = x + attn @ p["attn"]["w_out"] + p["attn"]["b_out"]
        hidden = jax.nn.gelu(gpt.layer_norm(x, p["ln2"]) @ p["mlp"]["w_in"] + p["mlp"]["b_in"], approximate=True)
        x = x + hidden @ p["mlp"]["w_out"] + p["mlp"]["b_out"]
    logits = gpt.unembed(params, gpt.layer_norm(x, params["ln_f"]))[:, 0]
    return logits, k_cache, v_cache


@partial(jax.jit, static_argnames=("config", "n_new", "temperature", "top_k"))
def generate(params, config: gpt.GPTConfig, prompt_BS, n_new: int, key, temperature: float = 1.0,
             top_k: int | None = None):
    """Prompt [B, S0] -> tokens [B, S0 + n_new]. Same key, same text."""
    full_prompt = jnp.asarray(prompt_BS, jnp.int32)
    S0, context = full_prompt.shape[1], config.context
    S1 = min(S0, context)
    prompt_BS = full_prompt[:, S0 - S1:]  # the model sees at most `context` tokens
    cached = min(n_new, context - S1)  # tokens produced with the cache

    logits, k_cache, v_cache = prefill(params, prompt_BS[:, -S1:], config)

    def cached_step(carry, i):
        logits, k_cache, v_cache = carry
        token = pick(logits, jax.random.fold_in(key, i), temperature, top_k)
        logits, k_cache, v_cache = decode_one(params, token, S1 + i, k_cache, v_cache, config)
        return (logits, k_cache, v_cache), token

    (logits, _, _), new = jax.lax.scan(cached_step, (logits, k_cache, v_cache), jnp.arange(cached))
    out = jnp.concatenate([full_prompt, new.T], axis=1) if cached else full_prompt
    if n_new == cached:
        return out

    def window_step(carry, i):
        window, logits = carry
        token = pick(logits, jax.random.fold_in(key, cached + i), temperature, top_k)
        window = jnp.concatenate([window[:, 1:], token[:, None]], axis=1)
        logits_all, _ = gpt.apply(params, window, config)
        return (window, logits_all[:, -1]), token

    first = pick(logits, jax.random.fold_in(key, cached), temperature, top_k)
    window = jnp.concatenate([out[:, out.shape[1] - (context - 1):], first[:, None]], axis=1)
    logits_all, _ = gpt.apply(params, window, config)
    (_, _), rest = jax.lax.scan(window_step, (window, logits_all[:, -1]), jnp.arange(1, n_new - cached))
    return jnp.concatenate([out, first[:, None], rest.T], axis=1)


@partial(jax.jit, static_argnames=("config", "n_new", "temperature", "top_k"))
def generate_any(params, config, prompt_BS, n_new: int, key, temperature: float = 1.0,
                 top_k: int | None = None):
    """Prompt [B, S0] -> tokens [B, S0 + n_new] for any family (`models.apply`), same key
    convention as `generate` (token i drawn with fold_in(key, i)).

    [choice] No cache: every new token recomputes the whole buffer of S0 + n_new positions
    (causal attention makes the not-yet-written tail irrelevant), so it costs n_new full
    forwards; one compile serves every step. The buffer must fit the model's context: sliding a
    window under rotary positions is not the model's training distribution, so it is refused.
    """
    from models import apply  # the package-level family dispatch

    B, S0 = prompt_BS.shape
    require(S0 + n_new <= config.context, f"prompt of {S0} plus {n_new} new tokens exceeds the model's context "
                                          f"of {config.context}; shorten the prompt or generate fewer tokens")
    buf_BS = jnp.zeros((B, S0 + n_new), jnp.int32).at[:, :S0].set(jnp.asarray(prompt_BS, jnp.int32))

    def step(i, buf_BS):
        logits_BSV, _ = apply(params, buf_BS, config)
        logits_BV = jax.lax.dynamic_index_in_dim(logits_BSV, S0 + i - 1, axis=1, keepdims=False)
        token_B = pick(logits_BV, jax.random.fold_in(key, i), temperature, top_k)
        return jax.lax.dynamic_update_slice_in_dim(buf_BS, token_B[:, None], S0 + i, axis=1)

    return jax.lax.fori_loop(0, n_new, step, buf_BS)
