"""Building blocks shared by the model families (GPT-NeoX, LLaMA, OLMo-2, Baichuan, GPT-2).

Pure functions on arrays; the axis letters follow the house convention (B batch, S positions,
D width, H query heads, E head width, L layers, V vocabulary), plus two of this module's own:
G key/value heads (grouped-query attention) and P the rotary part of a head (a prefix of E).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from models import family
from models.errors import require

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


def rope_inv_freq(rotary_dims: int, theta: float, kind: str = "default", factor: float = 1.0,
                  low_freq_factor: float = 1.0, high_freq_factor: float = 4.0,
                  original_context: int = 8192) -> np.ndarray:
    """Inverse frequencies [P / 2] (float32) of RoPE: theta^(-2i/P), and for kind "llama3"
    (Llama 3.1; transformers' `_compute_llama3_parameters`) wavelengths 2 pi / f longer than
    original_context / low_freq_factor divided by `factor`, shorter than original_context /
    high_freq_factor kept, and those between interpolated with
    s = (original_context / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor):
    (1 - s) f / factor + s f. Float32 throughout, as transformers computes them, so the rounding matches."""
    f32 = np.float32
    inv = f32(1.0) / f32(theta) ** (np.arange(0, rotary_dims, 2).astype(f32) / f32(rotary_dims))
    if kind == "llama3":
        low_wavelength, high_wavelength = f32(original_context / low_freq_factor), f32(original_context / high_freq_factor)
        wavelength = f32(2 * math.pi) / inv
        scaled = np.where(wavelength > low_wavelength, inv / f32(factor), inv)
        smooth = (f32(original_context) / wavelength - f32(low_freq_factor)) / f32(high_freq_factor - low_freq_factor)
        smoothed = (f32(1) - smooth) * scaled / f32(factor) + smooth * scaled
        inv = np.where((wavelength >= high_wavelength) & (wavelength <= low_wavelength), smoothed, scaled)
    return inv.astype(f32)


def rope_cos_sin(n_positions: int, inv_freq):
    """(cos, sin) [S, P] of the rotate-half convention: frequencies repeated as cat(f, f)."""
    freqs = jnp.arange(n_positions, dtype=jnp.float32)[:, None] * jnp.asarray(inv_freq, jnp.float32)[None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rotary(x_BHSE, cos_SP, sin_SP):
    """Rotate the first P dims of each head (rotate-half); the rest pass through."""
    P = cos_SP.shape[-1]
    rot, rest = x_BHSE[..., :P], x_BHSE[..., P:]
    half = P // 2
    rotated = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    return jnp.concatenate([rot * cos_SP + rotated * sin_SP, rest], axis=-1)


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
    mask_SS = jnp.tril(jnp.ones((S, S), bool))
    scores = jnp.where(mask_SS, scores, jnp.finfo(scores.dtype).min)
    probs_BHSS = jax.nn.softmax(scores, axis=-1)
    out_BHSE = jnp.einsum("bhst,bhte->bhse", probs_BHSS, v_BHSE)
    return (out_BHSE, probs_BHSS) if return_probs else out_BHSE


def scan_blocks(block_fn, blocks, x_BSD, extra=None, *, collect=(), unroll: bool = True):
    """Run `block_fn(p, x, extra_l) -> (x, {name: array for name in family.PER_LAYER})` over the layer
    axis with `lax.scan`; returns (x, per-layer outputs for the names in `collect`)."""
    collect = tuple(collect)

    def step(x, inputs):
        p, e = inputs
        x, outs = block_fn(p, x, e)
        return x, {name: outs[name] for name in collect}

    return jax.lax.scan(step, x_BSD, (blocks, extra), unroll=unroll)


def decode(params, x_BSD, config, capture, run_blocks, final_norm, unembedding_matrix):
    """The shared tail of a family's apply: blocks, final norm, logits [B, S, V], and the
    requested captures ("embed" is x_BSD as given, after any position embedding)."""
    capture = tuple(capture)
    acts = {"embed": x_BSD} if "embed" in capture else {}
    per_layer = tuple(c for c in capture if c in family.PER_LAYER)
    x_BSD, layer_acts = run_blocks(params["blocks"], x_BSD, config, collect=per_layer)
    acts.update(layer_acts)
    h_BSD = final_norm(params, x_BSD, config)
    if "final_hidden" in capture:
        acts["final_hidden"] = h_BSD
    return h_BSD @ unembedding_matrix(params, config).T, acts


def finish(params, resid_BSD, layer: int, config, run_blocks, final_norm, unembedding_matrix, **extra):
    """Logits [B, S, V] from the residual stream after block `layer`: the blocks after it, the
    final norm and the unembedding (`extra` goes to `run_blocks`)."""
    rest = jax.tree.map(lambda a: a[layer + 1:], params["blocks"])
    x_BSD, _ = run_blocks(rest, resid_BSD, config, **extra)
    return final_norm(params, x_BSD, config) @ unembedding_matrix(params, config).T


def token_embedding_forward(name: str, run_blocks, final_norm, unembedding_matrix):
    """`apply` and `logits_from_resid` of a family without learned positions (the residual
    stream starts as the token embedding `wte[tokens]`), from its blocks, final norm and
    unembedding: the members `models.family` asks for."""
    def apply(params, tokens_BS, config, *, capture=(), dropout_key=None):
        """Logits [B, S, V] and the requested intermediates (names in `models.family.CAPTURES`)."""
        family.no_dropout(dropout_key, name)
        return decode(params, params["wte"][tokens_BS], config, capture, run_blocks, final_norm, unembedding_matrix)

    def logits_from_resid(params, resid_BSD, layer: int, config):
        """Logits [B, S, V] from the residual stream after block `layer`."""
        return finish(params, resid_BSD, layer, config, run_blocks, final_norm, unembedding_matrix)

    return apply, logits_from_resid


def unembedding_matrix(params, config=None) -> jax.Array:
    """[V, D]: row y is the output embedding of token y: the untied head `lm_head` [D, V]
    transposed, else (tied embeddings) the token embedding `wte` itself."""
    return params["lm_head"].T if "lm_head" in params else params["wte"]


def fused_weight_matrices(params) -> dict:
    """The family-neutral weight description of a model that stores `models.gpt`'s layout
    (w_qkv [L, D, 3D] as [Q | K | V], w_out, MLP w_in / w_out): those very arrays."""
    b = params["blocks"]
    return {"blocks": {"attn": {"w_qkv": b["attn"]["w_qkv"], "w_out": b["attn"]["w_out"]},
                       "mlp": {"w_in": b["mlp"]["w_in"], "w_out": b["mlp"]["w_out"]}}}
