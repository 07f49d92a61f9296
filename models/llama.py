"""LLaMA-family decoders (Llama-2, Llama-3, TinyLlama, SmolLM, ...): config, forward pass and
Hugging Face converter of one family (`models.family`), a pure function of a params pytree.

Layout after import, blocks stacked on a layer axis L (H query heads, G key/value heads, E head
width, F MLP width):

    wte: [V, D]
    blocks/ln1/scale: [L, D]       blocks/attn/w_q: [L, D, H*E]  w_k, w_v: [L, D, G*E]
    blocks/attn/w_out: [L, H*E, D]  (b_q, b_k, b_v, b_out when the config has attention_bias)
    blocks/ln2/scale: [L, D]       blocks/mlp/w_gate, w_up: [L, D, F]  w_out: [L, F, D]
                                   (b_gate, b_up, b_out when mlp_bias)
    ln_f/scale: [D]                lm_head: [D, V]  (absent when embeddings are tied)

RMSNorm, SwiGLU (`mlp_hidden` is act(gate) * up, the input of the down projection), RoPE on
the whole head in the rotate-half convention (Hugging Face checkpoints already permute the q/k
rows for it), grouped-query attention. RoPE is the default one or Llama-3.1's "llama3" scaling
(`rope_type`); other scaled variants (linear, dynamic, yarn, longrope) are refused at import
rather than silently mis-served ([choice]).

OLMo-2 (`models.olmo2`) and Baichuan (`models.baichuan`) share this config and these pieces.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable

import jax.numpy as jnp

from models import family, layers
from models.errors import require

NAME, TITLE, HF_MODEL_TYPES = "llama", "LLaMA family", ("llama",)


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int                 # embedding rows
    context: int                    # max_position_embeddings
    n_layer: int                    # transformer blocks
    n_head: int                     # query heads
    n_kv_head: int                  # key/value heads (grouped-query attention)
    d_model: int                    # residual-stream width
    d_head: int                     # head width (head_dim)
    d_mlp: int                      # SwiGLU hidden width (intermediate_size)
    rope_theta: float = 10000.0     # RoPE base
    rms_eps: float = 1e-6           # RMSNorm epsilon
    tied_embeddings: bool = False   # output head shares the token embedding
    attention_bias: bool = False    # q/k/v/o projections carry biases
    mlp_bias: bool = False          # gate/up/down projections carry biases
    activation: str = "silu"         # hidden_act of the gate
    family: str = "llama"            # recorded in model.json; picks this class
    rope_type: str = "default"       # "default" RoPE, or "llama3" (Llama-3.1's frequency-dependent scaling)
    rope_factor: float = 1.0         # llama3: the low frequencies are divided by this
    rope_low_freq_factor: float = 1.0   # llama3: wavelengths above original_context / this are scaled
    rope_high_freq_factor: float = 4.0  # llama3: wavelengths below original_context / this are kept
    rope_original_context: int = 8192   # llama3: the context of the unscaled pretraining

    def __post_init__(self):
        own = type(self).__dataclass_fields__["family"].default
        require(self.family == own, f"{type(self).__name__}.family must be {own!r}, got {self.family!r}")
        require(self.n_head % self.n_kv_head == 0,
                f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        require(self.d_head % 2 == 0, f"d_head={self.d_head} must be even for rotary embeddings")
        require(self.rope_type in ("default", "llama3"), f"rope_type={self.rope_type!r} must be default or llama3")
        require(self.rope_high_freq_factor > self.rope_low_freq_factor > 0 and self.rope_factor > 0,
                f"llama3 rope needs high_freq_factor > low_freq_factor > 0 and factor > 0, got "
                f"{self.rope_high_freq_factor}, {self.rope_low_freq_factor}, {self.rope_factor}")
        layers.activation(self.activation)


Config = LlamaConfig


def rope(config: LlamaConfig, n_positions: int):
    """(cos, sin) [S, E] of the config's RoPE."""
    inv_freq = layers.rope_inv_freq(config.d_head, config.rope_theta, config.rope_type, config.rope_factor,
                                    config.rope_low_freq_factor, config.rope_high_freq_factor,
                                    config.rope_original_context)
    return layers.rope_cos_sin(n_positions, inv_freq)


def linear(x, p, name):
    """x @ w_name (+ b_name when the params hold it)."""
    y = x @ p["w_" + name]
    return y + p["b_" + name] if "b_" + name in p else y


def attention(a, h_BSD, config: LlamaConfig, cos_SE, sin_SE, q_norm=None, k_norm=None):
    """Grouped-query attention from the normed input; `q_norm` / `k_norm` (OLMo-2) act on the
    whole q / k projection before it is split into heads. Returns (output [B, S, D], attention
    probabilities [B, H, S, S])."""
    q, k = linear(h_BSD, a, "q"), linear(h_BSD, a, "k")
    if q_norm is not None:
        q, k = q_norm(q), k_norm(k)
    q = layers.apply_rotary(layers.heads(q, config.n_head), cos_SE, sin_SE)
    k = layers.apply_rotary(layers.heads(k, config.n_kv_head), cos_SE, sin_SE)
    v = layers.heads(linear(h_BSD, a, "v"), config.n_kv_head)
    out, probs = layers.attention(q, k, v, 1.0 / math.sqrt(config.d_head), return_probs=True)
    return linear(layers.merge(out), a, "out"), probs


def swiglu(m, h_BSD, config: LlamaConfig):
    """(MLP output [B, S, D], hidden act(gate) * up [B, S, F])."""
    hidden = layers.activation(config.activation)(linear(h_BSD, m, "gate")) * linear(h_BSD, m, "up")
    return linear(hidden, m, "out"), hidden


def block(p, x_BSD, config: LlamaConfig, cos_SE, sin_SE):
    attn_out, probs = attention(p["attn"], layers.rms_norm(x_BSD, p["ln1"], config.rms_eps), config, cos_SE, sin_SE)
    x_BSD = x_BSD + attn_out
    mlp_out, hidden = swiglu(p["mlp"], layers.rms_norm(x_BSD, p["ln2"], config.rms_eps), config)
    x_BSD = x_BSD + mlp_out
    return x_BSD, {"resid": x_BSD, "attn_out": attn_out, "mlp_hidden": hidden, "attn_probs": probs}


def run_blocks(blocks, x_BSD, config: LlamaConfig, *, collect: Iterable[str] = (), unroll: bool = True):
    cos, sin = rope(config, x_BSD.shape[1])
    return layers.scan_blocks(lambda p, x, _: block(p, x, config, cos, sin), blocks, x_BSD,
                              collect=collect, unroll=unroll)


def final_norm(params, x_BSD, config: LlamaConfig):
    return layers.rms_norm(x_BSD, params["ln_f"], config.rms_eps)


unembedding_matrix = layers.unembedding_matrix  # the untied head, else the tied embedding


apply, logits_from_resid = layers.token_embedding_forward(NAME, run_blocks, final_norm, unembedding_matrix)


def weight_matrices(params, config: LlamaConfig) -> dict:
    """`models.gpt`'s layout: grouped-query K/V columns are repeated so every query head has its
    own ([choice]: the weights a head actually uses), and the SwiGLU MLP is described by its up
    projection ([choice]: the linear path; the gate is elementwise)."""
    b = params["blocks"]
    a, E, group = b["attn"], config.d_head, config.n_head // config.n_kv_head

    def per_query_head(w_LDX):
        L, D, _ = w_LDX.shape
        return jnp.repeat(w_LDX.reshape(L, D, config.n_kv_head, E), group, axis=2).reshape(L, D, config.n_head * E)

    w_qkv = jnp.concatenate([a["w_q"], per_query_head(a["w_k"]), per_query_head(a["w_v"])], axis=-1)
    return {"blocks": {"attn": {"w_qkv": w_qkv, "w_out": a["w_out"]},
                       "mlp": {"w_in": b["mlp"]["w_up"], "w_out": b["mlp"]["w_out"]}}}


# ----------------------------------------------------------------------------- Hugging Face
def hf_settings(hf: dict) -> dict:
    """The LlamaConfig keyword arguments a LLaMA-like config.json gives (OLMo-2 and Baichuan too)."""
    rope_hf = family.rope_from_hf(hf, ("default", "llama3"))
    require(rope_hf["pct"] in (None, 1.0), "partial rotary LLaMA-like checkpoints are not supported")
    H, D = hf["num_attention_heads"], hf["hidden_size"]
    scaling = {}
    if rope_hf["type"] == "llama3":
        scaling = dict(rope_factor=rope_hf["factor"], rope_low_freq_factor=rope_hf["low_freq_factor"],
                       rope_high_freq_factor=rope_hf["high_freq_factor"],
                       rope_original_context=rope_hf["original_context"])
    return dict(vocab_size=hf["vocab_size"], context=hf.get("max_position_embeddings", 2048),
                n_layer=hf["num_hidden_layers"], n_head=H, n_kv_head=hf.get("num_key_value_heads") or H,
                d_model=D, d_head=hf.get("head_dim") or D // H, d_mlp=hf["intermediate_size"],
                rope_theta=rope_hf["theta"], rms_eps=float(hf.get("rms_norm_eps", 1e-6)),
                tied_embeddings=bool(hf.get("tie_word_embeddings", False)),
                attention_bias=bool(hf.get("attention_bias", False)), mlp_bias=bool(hf.get("mlp_bias", False)),
                activation=hf.get("hidden_act", "silu"), rope_type=rope_hf["type"], **scaling)


def config_from_hf(hf: dict, remote_code=None) -> LlamaConfig:
    return LlamaConfig(**hf_settings(hf))


def take_projections(take: family.Weights, c: LlamaConfig, names, prefix: str, bias: bool) -> dict:
    """{"w_ours": [L, in, out] (, "b_ours")} for (ours, theirs) in names, from `prefix + theirs`."""
    out = {}
    for ours, theirs in names:
        out["w_" + ours] = take.layers(prefix + theirs + ".weight", c.n_layer, transpose=True)
        if bias:
            out["b_" + ours] = take.layers(prefix + theirs + ".bias", c.n_layer)
    return out


MLP_NAMES = (("gate", "gate_proj"), ("up", "up_proj"), ("out", "down_proj"))


def take_ends(take: family.Weights, c: LlamaConfig, params: dict) -> dict:
    """Embedding, final norm and (untied) head around `params["blocks"]`."""
    params = {"wte": take.one("model.embed_tokens.weight"), **params, "ln_f": take.norm("model.norm", bias=False)}
    head = take.one("lm_head.weight", transpose=True, optional=c.tied_embeddings)
    if not c.tied_embeddings:
        params["lm_head"] = head
    return params


def convert(take: family.Weights, c: LlamaConfig) -> dict:
    L, p = c.n_layer, "model.layers.{i}."
    attn = take_projections(take, c, (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("out", "o_proj")),
                            p + "self_attn.", c.attention_bias)
    mlp = take_projections(take, c, MLP_NAMES, p + "mlp.", c.mlp_bias)
    return take_ends(take, c, {"blocks": {"ln1": take.norm(p + "input_layernorm", L, bias=False), "attn": attn,
                                          "ln2": take.norm(p + "post_attention_layernorm", L, bias=False),
                                          "mlp": mlp}})
