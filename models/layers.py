"""Building blocks shared by the imported families (GPT-NeoX, LLaMA, Hugging Face GPT-2).

Pure functions on arrays; the axis letters follow the house convention (B batch, S positions,
D width, H query heads, G key/value heads, E head width, R rotary dims).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from einops import rearrange

from models.errors import require
from models.gpt import PER_LAYER

# Hugging Face `hidden_act` / `activation_function` names -> functions.
ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),        # exact erf GELU (GPT-NeoX, Pythia)
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),     # tanh GELU (GPT-2)
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


def activation(name: str):
    require(name in ACTIVATIONS, f"activation {name!r} is not supported; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def layer_norm(x, p, eps: float):
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def rms_norm(x, p, eps: float):
    """LLaMA's RMSNorm: weight only, no mean subtraction."""
    return x * jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + eps) * p["scale"]


def rope_cos_sin(n_positions: int, rotary_dims: int, base: float):
    """(cos, sin) [S, R] of the rotate-half convention: frequencies repeated as cat(f, f)."""
    inv_freq = 1.0 / (base ** (jnp.arange(0, rotary_dims, 2, dtype=jnp.float32) / rotary_dims))
    freqs = jnp.arange(n_positions, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rotary(x_BHSE, cos_SR, sin_SR):
    """Rotate the first R dims of each head (rotate-half); the rest pass through."""
    R = cos_SR.shape[-1]
    rot, rest = x_BHSE[..., :R], x_BHSE[..., R:]
    half = R // 2
    rotated = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    return jnp.concatenate([rot * cos_SR + rotated * sin_SR, rest], axis=-1)


def heads(x_BSX, n_head: int):
    """[B, S, n*E] -> [B, n, S, E]."""
    return rearrange(x_BSX, "b s (h e) -> b h s e", h=n_head)


def merge(x_BHSE):
    """[B, H, S, E] -> [B, S, H*E]."""
    return rearrange(x_BHSE, "b h s e -> b s (h e)")


def attention(q_BHSE, k_BGSE, v_BGSE, scale, *, return_probs: bool = False):
    """Causal softmax attention; G key/value heads each serve H/G consecutive query heads (GQA).

    `scale` multiplies the scores (a scalar or traced value, e.g. GPT-2's inverse layer index).
    With `return_probs`, also the attention probabilities [B, H, S, S] (query, key).
    """
    H, G, S = q_BHSE.shape[1], k_BGSE.shape[1], q_BHSE.shape[2]
    k_BHSE = jnp.repeat(k_BGSE, H // G, axis=1)
    v_BHSE = jnp.repeat(v_BGSE, H // G, axis=1)
    scores = jnp.einsum("bhse,bhte->bhst", q_BHSE, k_BHSE) * scale
    mask = jnp.tril(jnp.ones((S, S), bool))
    scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bhst,bhte->bhse", probs, v_BHSE)
    return (out, probs) if return_probs else out


def scan_blocks(block_fn, blocks, x_BSD, extra=None, *, collect=(), unroll: bool = True):
    """Run `block_fn(p, x, extra_l) -> (x, {"resid", "attn_out", "mlp_hidden", "attn_probs"})` over the layer
    axis with `lax.scan`; returns (x, per-layer outputs for the names in `collect`)."""
    collect = tuple(collect)

    def step(x, inputs):
        p, e = inputs
        x, outs = block_fn(p, x, e)
        return x, {name: outs[name] for name in collect}

    return jax.lax.scan(step, x_BSD, (blocks, extra), unroll=unroll)


def decode(params, x_BSD, config, capture, run_blocks, final_norm, unembedding_matrix):
    """The shared tail of every family's apply: blocks, final norm, logits [B, S, V], and the
    requested captures ("embed" is x_BSD as given, after any position embedding)."""
    capture = tuple(capture)
    acts = {"embed": x_BSD} if "embed" in capture else {}
    per_layer = tuple(c for c in capture if c in PER_LAYER)
    x_BSD, layer_acts = run_blocks(params["blocks"], x_BSD, config, collect=per_layer)
    acts.update(layer_acts)
    h_BSD = final_norm(params, x_BSD, config)
    if "final_hidden" in capture:
        acts["final_hidden"] = h_BSD
    return h_BSD @ unembedding_matrix(params).T, acts
