"""GPT-NeoX (Pythia) as a pure function of a plain params pytree: config, forward pass and the
Hugging Face converter of one family (`models.family`).

Layout after import, blocks stacked on a layer axis L like `models.gpt`:

    wte: [V, D]                 (V is the padded vocabulary, e.g. 50304 for Pythia)
    blocks/ln1/{scale,bias}: [L, D]      blocks/attn/w_qkv: [L, D, 3D]  b_qkv: [L, 3D]
    blocks/attn/w_out: [L, D, D]  b_out: [L, D]   blocks/ln2/{scale,bias}: [L, D]
    blocks/mlp/w_in: [L, D, F]  b_in: [L, F]  w_out: [L, F, D]  b_out: [L, D]
    ln_f/{scale,bias}: [D]      lm_head: [D, V]  (untied)

[choice] The checkpoint's qkv rows are interleaved per head (H, 3, E); the converter reorders
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
import numpy as np

from models import family, layers
from models.errors import require

NAME, TITLE, HF_MODEL_TYPES = "gpt_neox", "GPT-NeoX / Pythia", ("gpt_neox",)


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
        require(self.family == NAME, f"NeoXConfig.family must be {NAME!r}, got {self.family!r}")
        require(self.d_model % self.n_head == 0, f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        require(0.0 < self.rotary_pct <= 1.0, f"rotary_pct={self.rotary_pct} must be in (0, 1]")
        layers.activation(self.activation)

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_head

    @property
    def rotary_dims(self) -> int:
        return int(self.d_head * self.rotary_pct)


Config = NeoXConfig


def block(p, x_BSD, config: NeoXConfig, cos_SP, sin_SP):
    eps, act = config.layer_norm_eps, layers.activation(config.activation)
    qkv = layers.layer_norm(x_BSD, p["ln1"], eps) @ p["attn"]["w_qkv"] + p["attn"]["b_qkv"]
    q, k, v = (layers.heads(t, config.n_head) for t in jnp.split(qkv, 3, axis=-1))
    q, k = layers.apply_rotary(q, cos_SP, sin_SP), layers.apply_rotary(k, cos_SP, sin_SP)
    attn, probs = layers.attention(q, k, v, 1.0 / math.sqrt(config.d_head), return_probs=True)
    attn_out = layers.merge(attn) @ p["attn"]["w_out"] + p["attn"]["b_out"]
    mlp_in = x_BSD if config.parallel_residual else x_BSD + attn_out
    hidden = act(layers.layer_norm(mlp_in, p["ln2"], eps) @ p["mlp"]["w_in"] + p["mlp"]["b_in"])
    x_BSD = x_BSD + attn_out + hidden @ p["mlp"]["w_out"] + p["mlp"]["b_out"]
    return x_BSD, {"resid": x_BSD, "attn_out": attn_out, "mlp_hidden": hidden, "attn_probs": probs}


def run_blocks(blocks, x_BSD, config: NeoXConfig, *, collect: Iterable[str] = (), unroll: bool = True):
    inv_freq = layers.rope_inv_freq(config.rotary_dims, config.rotary_base)
    cos, sin = layers.rope_cos_sin(x_BSD.shape[1], inv_freq)
    return layers.scan_blocks(lambda p, x, _: block(p, x, config, cos, sin), blocks, x_BSD,
                              collect=collect, unroll=unroll)


def final_norm(params, x_BSD, config: NeoXConfig):
    return layers.layer_norm(x_BSD, params["ln_f"], config.layer_norm_eps)


def unembedding_matrix(params, config=None) -> jnp.ndarray:
    """[V, D]: row y is the output embedding of token y."""
    return params["lm_head"].T


apply, logits_from_resid = layers.token_embedding_forward(NAME, run_blocks, final_norm, unembedding_matrix)


def weight_matrices(params, config: NeoXConfig) -> dict:
    """Already `models.gpt`'s layout: the stored matrices themselves."""
    return layers.fused_weight_matrices(params)


# ----------------------------------------------------------------------------- Hugging Face
def config_from_hf(hf: dict, remote_code=None) -> NeoXConfig:
    rope = family.rope_from_hf(hf)
    require(not hf.get("tie_word_embeddings", False), "tied GPT-NeoX embeddings are not supported")
    return NeoXConfig(
        vocab_size=hf["vocab_size"], context=hf.get("max_position_embeddings", 2048),
        n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], d_model=hf["hidden_size"],
        d_mlp=hf["intermediate_size"], rotary_pct=float(0.25 if rope["pct"] is None else rope["pct"]),
        rotary_base=rope["theta"], parallel_residual=bool(hf.get("use_parallel_residual", True)),
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-5)), activation=hf.get("hidden_act", "gelu"))


def convert(take: family.Weights, c: NeoXConfig) -> dict:
    L, H, E, D = c.n_layer, c.n_head, c.d_head, c.d_model
    p = "gpt_neox.layers.{i}."
    w = take.layers(p + "attention.query_key_value.weight", L, transpose=True)        # [L, D, H*3*E]
    b = take.layers(p + "attention.query_key_value.bias", L, optional=True)
    b = np.zeros((L, 3 * D), np.float32) if b is None else b
    w_qkv = w.reshape(L, D, H, 3, E).transpose(0, 1, 3, 2, 4).reshape(L, D, 3 * D)  # per-head -> [Q|K|V]
    b_qkv = b.reshape(L, H, 3, E).transpose(0, 2, 1, 3).reshape(L, 3 * D)
    b_out = take.layers(p + "attention.dense.bias", L, optional=True)
    return {
        "wte": take.one("gpt_neox.embed_in.weight"),
        "blocks": {
            "ln1": take.norm(p + "input_layernorm", L),
            "attn": {"w_qkv": w_qkv, "b_qkv": b_qkv, "w_out": take.layers(p + "attention.dense.weight", L, True),
                     "b_out": np.zeros((L, D), np.float32) if b_out is None else b_out},
            "ln2": take.norm(p + "post_attention_layernorm", L),
            "mlp": {"w_in": take.layers(p + "mlp.dense_h_to_4h.weight", L, True),
                    "b_in": take.layers(p + "mlp.dense_h_to_4h.bias", L),
                    "w_out": take.layers(p + "mlp.dense_4h_to_h.weight", L, True),
                    "b_out": take.layers(p + "mlp.dense_4h_to_h.bias", L)},
        },
        "ln_f": take.norm("gpt_neox.final_layer_norm"),
        "lm_head": take.one("embed_out.weight", "lm_head.weight", transpose=True),
    }
