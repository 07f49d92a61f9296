"""OLMo-2 (AI2; transformers' `Olmo2ForCausalLM`): config, forward pass and Hugging Face
converter of one family (`models.family`).

A LLaMA (`models.llama`: RMSNorm, SwiGLU, rotate-half RoPE, grouped-query attention, the same
hyperparameters) with the norms moved: no norm before a sublayer; an RMSNorm after attention
and one after the MLP, each applied to the sublayer's output before the residual add,

    x = x + norm_attn(attn(x)),   x = x + norm_mlp(mlp(x));

and q and k each pass an RMSNorm over the whole projection (H*E, resp. G*E wide, before the split
into heads and before RoPE). Layout after import (as LLaMA's, L layers):

    wte: [V, D]
    blocks/attn/w_q: [L, D, H*E]  w_k, w_v: [L, D, G*E]  w_out: [L, H*E, D]  (b_* with attention_bias)
    blocks/attn/q_norm/scale: [L, H*E]   k_norm/scale: [L, G*E]
    blocks/attn_norm/scale: [L, D]       (post_attention_layernorm, on the attention output)
    blocks/mlp/w_gate, w_up: [L, D, F]  w_out: [L, F, D]
    blocks/mlp_norm/scale: [L, D]        (post_feedforward_layernorm, on the MLP output)
    ln_f/scale: [D]                      lm_head: [D, V]  (absent when tied)

[choice] The capture `attn_out` is the normed attention output, the term added to the residual
stream (as for every family); `mlp_hidden` is the SwiGLU hidden, the input of the down projection.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

from models import family, layers, llama
from models.errors import require

NAME, TITLE, HF_MODEL_TYPES = "olmo2", "OLMo-2", ("olmo2",)


@dataclasses.dataclass(frozen=True)
class Olmo2Config(llama.LlamaConfig):
    """LLaMA's hyperparameters (`models.llama.LlamaConfig`); the block differs, not the settings."""
    family: str = "olmo2"            # recorded in model.json; picks this class

    def __post_init__(self):
        super().__post_init__()
        require(not self.mlp_bias, "OLMo-2's MLP has no biases; mlp_bias must be false")


Config = Olmo2Config


def block(p, x_BSD, config: Olmo2Config, cos_SE, sin_SE):
    eps, a = config.rms_eps, p["attn"]
    q_norm = lambda q: layers.rms_norm(q, a["q_norm"], eps)
    k_norm = lambda k: layers.rms_norm(k, a["k_norm"], eps)
    attn, probs = llama.attention(a, x_BSD, config, cos_SE, sin_SE, q_norm, k_norm)
    attn_out = layers.rms_norm(attn, p["attn_norm"], eps)
    x_BSD = x_BSD + attn_out
    mlp_out, hidden = llama.swiglu(p["mlp"], x_BSD, config)
    x_BSD = x_BSD + layers.rms_norm(mlp_out, p["mlp_norm"], eps)
    return x_BSD, {"resid": x_BSD, "attn_out": attn_out, "mlp_hidden": hidden, "attn_probs": probs}


def run_blocks(blocks, x_BSD, config: Olmo2Config, *, collect: Iterable[str] = (), unroll: bool = True):
    cos, sin = llama.rope(config, x_BSD.shape[1])
    return layers.scan_blocks(lambda p, x, _: block(p, x, config, cos, sin), blocks, x_BSD,
                              collect=collect, unroll=unroll)


final_norm, unembedding_matrix, weight_matrices = llama.final_norm, llama.unembedding_matrix, llama.weight_matrices


apply, logits_from_resid = layers.token_embedding_forward(NAME, run_blocks, final_norm, unembedding_matrix)


# ----------------------------------------------------------------------------- Hugging Face
def config_from_hf(hf: dict, remote_code=None) -> Olmo2Config:
    return Olmo2Config(**{**llama.hf_settings(hf), "mlp_bias": False})


def convert(take: family.Weights, c: Olmo2Config) -> dict:
    L, p = c.n_layer, "model.layers.{i}."
    attn = llama.take_projections(take, c, (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("out", "o_proj")),
                                  p + "self_attn.", c.attention_bias)
    attn.update(q_norm=take.norm(p + "self_attn.q_norm", L, bias=False),
                k_norm=take.norm(p + "self_attn.k_norm", L, bias=False))
    return llama.take_ends(take, c, {"blocks": {
        "attn": attn, "attn_norm": take.norm(p + "post_attention_layernorm", L, bias=False),
        "mlp": llama.take_projections(take, c, llama.MLP_NAMES, p + "mlp.", False),
        "mlp_norm": take.norm(p + "post_feedforward_layernorm", L, bias=False)}})
