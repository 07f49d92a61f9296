"""GPT-NeoX (Pythia) as a pure function of a plain params pytree.

Layout after import (`dynamics.hf_import`), blocks stacked on a layer axis L like `models.gpt`:

    wte: [V, D]                 (V is the padded vocabulary, e.g. 50304 for Pythia)
    blocks/ln1/{scale,bias}: [L, D]      blocks/attn/w_qkv: [L, D, 3D]  b_qkv: [L, 3D]
    blocks/attn/w_out: [L, D, D]  b_out: [L, D]   blocks/ln2/{scale,bias}: [L, D]
    blocks/mlp/w_in: [L, D, F]  b_in: [L, F]  w_out: [L, F, D]  b_out: [L, D]
    ln_f/{scale,bias}: [D]      lm_head: [D, V]  (untied)

[choice] The checkpoint's qkv rows are interleaved per head (H, 3, E); the importer reorders
them to gpt.py's [Q | K | V] (each H x E, heads contiguous), so code that splits `w_qkv` in
thirds reads any family alike. Rotary embedding (rotate-half) on the first
int(E * rotary_pct) dims of each head, base `rotary_base`; parallel residual
x + attn(ln1(x)) + mlp(ln2(x)) when `parallel_residual`, else sequential; exact-erf GELU.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable

import jax.numpy as jnp

from models import layers
from models.errors import require
from models.gpt import CAPTURES  # the same capture names for every family


@dataclasses.dataclass(frozen=True)
class NeoXConfig:
    vocab_size: int                 # rows of the (padded) embedding, e.g. 50304 for Pythia
    context: int                    # max_position_embeddings
    n_layer: int                    # transformer blocks
    n_head: int                     # attention heads
    d_model: int                    # residual-stream width
    d_mlp: int                      # MLP hidden width (intermediate_size)
    rotary_pct: float = 0.25        # fraction of each head's dims that rotate (rotary_pct / partial_rotary_factor)
    rotary_base: float = 10000.0    # RoPE base (rotary_emb_base / rope_theta)
    parallel_residual: bool = True  # x + attn(ln1(x)) + mlp(ln2(x)) rather than sequential
    layer_norm_eps: float = 1e-5    # LayerNorm epsilon
    activation: str = "gelu"         # hidden_act (gelu: exact erf)
    family: str = "gpt_neox"         # recorded in model.json; picks this class

    def __post_init__(self):
        require(self.family == "gpt_neox", f"NeoXConfig.family must be 'gpt_neox', got {self.family!r}")
        require(self.d_model % self.n_head == 0, f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        require(0.0 < self.rotary_pct <= 1.0, f"rotary_pct={self.rotary_pct} must be in (0, 1]")
        layers.activation(self.activation)

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_head

    @property
    def rotary_dims(self) -> int:
        return int(self.d_head * self.rotary_pct)


def block(p, x_BSD, config: NeoXConfig, cos_SR, sin_SR):
    eps, act = config.layer_norm_eps, layers.activation(config.activation)
    qkv = layers.layer_norm(x_BSD, p["ln1"], eps) @ p["attn"]["w_qkv"] + p["attn"]["b_qkv"]
    q, k, v = (layers.heads(t, config.n_head) for t in jnp.split(qkv, 3, axis=-1))
    q, k = layers.apply_rotary(q, cos_SR, sin_SR), layers.apply_rotary(k, cos_SR, sin_SR)
    attn, probs = layers.attention(q, k, v, 1.0 / math.sqrt(config.d_head), return_probs=True)
    attn_out = layers.merge(attn) @ p["attn"]["w_out"] + p["attn"]["b_out"]
    mlp_in = x_BSD if config.parallel_residual else x_BSD + attn_out
    hidden = act(layers.layer_norm(mlp_in, p["ln2"], eps) @ p["mlp"]["w_in"] + p["mlp"]["b_in"])
    x_BSD = x_BSD + attn_out + hidden @ p["mlp"]["w_out"] + p["mlp"]["b_out"]
    return x_BSD, {"resid": x_BSD, "attn_out": attn_out, "mlp_hidden": hidden, "attn_probs": probs}


def run_blocks(blocks, x_BSD, config: NeoXConfig, *, collect: Iterable[str] = (), unroll: bool = True):
    cos, sin = layers.rope_cos_sin(x_BSD.shape[1], config.rotary_dims, config.rotary_base)
    return layers.scan_blocks(lambda p, x, _: block(p, x, config, cos, sin), blocks, x_BSD,
                              collect=collect, unroll=unroll)


def final_norm(params, x_BSD, config: NeoXConfig):
    return layers.layer_norm(x_BSD, params["ln_f"], config.layer_norm_eps)


def unembedding_matrix(params) -> jnp.ndarray:
    """[V, D]: row y is the output embedding of token y."""
    return params["lm_head"].T


def apply(params, tokens_BS, config: NeoXConfig, *, capture: Iterable[str] = ()):
    """Logits [B, S, V] and the requested intermediates (names in `CAPTURES`)."""
    x = params["wte"][tokens_BS]
    return layers.decode(params, x, config, capture, run_blocks, final_norm, unembedding_matrix)


__all__ = ["CAPTURES", "NeoXConfig", "apply", "run_blocks", "final_norm", "unembedding_matrix"]
