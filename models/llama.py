"""LLaMA-family decoders (Llama-2, TinyLlama, SmolLM, ...) as a pure function of a params pytree.

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
rows for it), grouped-query attention. Only the default RoPE is supported ([choice]: scaled
variants such as Llama-3's are refused at import rather than silently mis-served).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable

import jax.numpy as jnp

from models import layers
from models.errors import require
from models.gpt import CAPTURES


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

    def __post_init__(self):
        require(self.family == "llama", f"LlamaConfig.family must be 'llama', got {self.family!r}")
        require(self.n_head % self.n_kv_head == 0,
                f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        require(self.d_head % 2 == 0, f"d_head={self.d_head} must be even for rotary embeddings")
        layers.activation(self.activation)


def _linear(x, p, name):
    y = x @ p["w_" + name]
    return y + p["b_" + name] if "b_" + name in p else y


def block(p, x_BSD, config: LlamaConfig, cos_SE, sin_SE):
    eps, act = config.rms_eps, layers.activation(config.activation)
    h = layers.rms_norm(x_BSD, p["ln1"], eps)
    a = p["attn"]
    q = layers.apply_rotary(layers.heads(_linear(h, a, "q"), config.n_head), cos_SE, sin_SE)
    k = layers.apply_rotary(layers.heads(_linear(h, a, "k"), config.n_kv_head), cos_SE, sin_SE)
    v = layers.heads(_linear(h, a, "v"), config.n_kv_head)
    attn, probs = layers.attention(q, k, v, 1.0 / math.sqrt(config.d_head), return_probs=True)
    attn_out = _linear(layers.merge(attn), a, "out")
    x_BSD = x_BSD + attn_out
    h = layers.rms_norm(x_BSD, p["ln2"], eps)
    hidden = act(_linear(h, p["mlp"], "gate")) * _linear(h, p["mlp"], "up")
    x_BSD = x_BSD + _linear(hidden, p["mlp"], "out")
    return x_BSD, {"resid": x_BSD, "attn_out": attn_out, "mlp_hidden": hidden, "attn_probs": probs}


def run_blocks(blocks, x_BSD, config: LlamaConfig, *, collect: Iterable[str] = (), unroll: bool = True):
    cos, sin = layers.rope_cos_sin(x_BSD.shape[1], config.d_head, config.rope_theta)
    return layers.scan_blocks(lambda p, x, _: block(p, x, config, cos, sin), blocks, x_BSD,
                              collect=collect, unroll=unroll)


def final_norm(params, x_BSD, config: LlamaConfig):
    return layers.rms_norm(x_BSD, params["ln_f"], config.rms_eps)


def unembedding_matrix(params) -> jnp.ndarray:
    return params["lm_head"].T if "lm_head" in params else params["wte"]


def apply(params, tokens_BS, config: LlamaConfig, *, capture: Iterable[str] = ()):
    """Logits [B, S, V] and the requested intermediates (names in `CAPTURES`)."""
    x = params["wte"][tokens_BS]
    return layers.decode(params, x, config, capture, run_blocks, final_norm, unembedding_matrix)


__all__ = ["CAPTURES", "LlamaConfig", "apply", "run_blocks", "final_norm", "unembedding_matrix"]
