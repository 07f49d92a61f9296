"""Batched, jitted generation: greedy, temperature and top-k, with a KV cache (`generate`, the
character GPT) or without one for any family (`generate_any`: imported GPT-NeoX, LLaMA, GPT-2).

While the sequence fits in the context, each new token costs one single-position pass
through the blocks against cached keys and values. Beyond the context the model (learned
absolute positions) sees a sliding window of the last `context` tokens at positions
0..C-1, as nanoGPT does; that branch recomputes the window for every token.
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


def prefill(params, tokens_BT, config: gpt.GPTConfig):
    """Forward over the prompt; returns last-position logits and K/V caches [L, B, H, C, K]."""
    B, T = tokens_BT.shape
    x = gpt.embed(params, tokens_BT, config)

    def layer(x, p):
        x, _, _, (k, v), _ = gpt.block(p, x, config)
        pad = ((0, 0), (0, 0), (0, config.context - T), (0, 0))
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
    visible = (jnp.arange(config.context) <= position)[None, :]
    for layer in range(config.n_layer):
        p = jax.tree.map(lambda a: a[layer], params["blocks"])
        h = gpt.layer_norm(x, p["ln1"])
        qkv = h @ p["attn"]["w_qkv"] + p["attn"]["b_qkv"]
        q, k, v = (gpt.split_heads(t, config.n_head) for t in jnp.split(qkv, 3, axis=-1))
        start = (layer, 0, 0, position, 0)
        k_cache = jax.lax.dynamic_update_slice(k_cache, k[None], start)
        v_cache = jax.lax.dynamic_update_slice(v_cache, v[None], start)
        attn = gpt.merge_heads(gpt.causal_attention(q, k_cache[layer], v_cache[layer], visible))
        x = x + attn @ p["attn"]["w_out"] + p["attn"]["b_out"]
        hidden = jax.nn.gelu(gpt.layer_norm(x, p["ln2"]) @ p["mlp"]["w_in"] + p["mlp"]["b_in"], approximate=True)
        x = x + hidden @ p["mlp"]["w_out"] + p["mlp"]["b_out"]
    logits = gpt.unembed(params, gpt.layer_norm(x, params["ln_f"]))[:, 0]
    return logits, k_cache, v_cache


@partial(jax.jit, static_argnames=("config", "n_new", "temperature", "top_k"))
def generate(params, config: gpt.GPTConfig, prompt_BT, n_new: int, key, temperature: float = 1.0,
             top_k: int | None = None):
    """Prompt [B, T0] -> tokens [B, T0 + n_new]. Same key, same text."""
    full_prompt = jnp.asarray(prompt_BT, jnp.int32)
    T0, C = full_prompt.shape[1], config.context
    T1 = min(T0, C)
    prompt_BT = full_prompt[:, T0 - T1:]  # the model sees at most C tokens
    cached = min(n_new, C - T1)  # tokens produced with the cache

    logits, k_cache, v_cache = prefill(params, prompt_BT[:, -T1:], config)

    def cached_step(carry, i):
        logits, k_cache, v_cache = carry
        token = pick(logits, jax.random.fold_in(key, i), temperature, top_k)
        logits, k_cache, v_cache = decode_one(params, token, T1 + i, k_cache, v_cache, config)
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
    window = jnp.concatenate([out[:, out.shape[1] - (C - 1):], first[:, None]], axis=1)
    logits_all, _ = gpt.apply(params, window, config)
    (_, _), rest = jax.lax.scan(window_step, (window, logits_all[:, -1]), jnp.arange(1, n_new - cached))
    return jnp.concatenate([out, first[:, None], rest.T], axis=1)


@partial(jax.jit, static_argnames=("config", "n_new", "temperature", "top_k"))
def generate_any(params, config, prompt_BT, n_new: int, key, temperature: float = 1.0,
                 top_k: int | None = None):
    """Prompt [B, T0] -> tokens [B, T0 + n_new] for any family (`models.apply`), same key
    convention as `generate` (token i drawn with fold_in(key, i)).

    [choice] No cache: every new token recomputes the whole buffer of T0 + n_new positions
    (causal attention makes the not-yet-written tail irrelevant), so it costs n_new full
    forwards; one compile serves every step. The buffer must fit the model's context: sliding a
    window under rotary positions is not the model's training distribution, so it is refused.
    """
    from models import apply  # the package-level family dispatch

    B, T0 = prompt_BT.shape
    require(T0 + n_new <= config.context, f"prompt of {T0} plus {n_new} new tokens exceeds the model's context "
                                          f"of {config.context}; shorten the prompt or generate fewer tokens")
    buf_BS = jnp.zeros((B, T0 + n_new), jnp.int32).at[:, :T0].set(jnp.asarray(prompt_BT, jnp.int32))

    def step(i, buf_BS):
        logits_BSV, _ = apply(params, buf_BS, config)
        logits_BV = jax.lax.dynamic_index_in_dim(logits_BSV, T0 + i - 1, axis=1, keepdims=False)
        token_B = pick(logits_BV, jax.random.fold_in(key, i), temperature, top_k)
        return jax.lax.dynamic_update_slice_in_dim(buf_BS, token_B[:, None], T0 + i, axis=1)

    return jax.lax.fori_loop(0, n_new, step, buf_BS)
