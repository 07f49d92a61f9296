"""Hugging Face GPT-2 checkpoints (OpenAI's and the stanford-crfm / Mistral suites): config,
forward pass and converter of one family (`models.family`), a pure function of a params pytree
in exactly `models.gpt`'s layout (Conv1D weights are already
[in, out]; `c_attn` is [Q | K | V]; tied unembedding):

    wte: [V, D]  wpe: [C, D]  blocks/ln1, attn/{w_qkv [L, D, 3D], b_qkv, w_out, b_out}, ln2,
    mlp/{w_in [L, D, F], b_in, w_out [L, F, D], b_out}  ln_f   (lm_head only if untied)

What differs from `models.gpt` is configuration: `scale_attn_by_inverse_layer_idx` (scores
also divided by layer index + 1, the stanford-crfm suites), `scale_attn_weights`, the
activation and LayerNorm eps, and an MLP width that need not be a multiple of D.
`reorder_and_upcast_attn` only changes the order of fp16 operations in transformers; in fp32
it is the same function, so it is recorded but not needed here ([choice]: this module
computes in fp32 whatever the stored dtype).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable

import jax.numpy as jnp

from models import family, layers
from models.errors import require

NAME, TITLE, HF_MODEL_TYPES = "gpt2", "GPT-2", ("gpt2",)


@dataclasses.dataclass(frozen=True)
class HFGPT2Config:
    vocab_size: int                 # embedding rows
    context: int                    # n_positions (rows of wpe)
    n_layer: int                    # transformer blocks
    n_head: int                     # attention heads
    d_model: int                    # residual-stream width (n_embd)
    d_mlp: int                      # MLP hidden width (n_inner or 4 * n_embd)
    layer_norm_eps: float = 1e-5    # layer_norm_epsilon
    activation: str = "gelu_new"     # activation_function (gelu_new: tanh GELU)
    scale_attn_weights: bool = True  # scores divided by sqrt(head width)
    scale_attn_by_inverse_layer_idx: bool = False  # scores also divided by layer index + 1
    reorder_and_upcast_attn: bool = False  # fp16 operation order in transformers; same function in fp32
    tied_embeddings: bool = True    # output head shares the token embedding
    family: str = "gpt2"             # recorded in model.json; picks this class

    def __post_init__(self):
        require(self.family == NAME, f"HFGPT2Config.family must be {NAME!r}, got {self.family!r}")
        require(self.d_model % self.n_head == 0, f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        layers.activation(self.activation)

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_head


Config = HFGPT2Config


def block(p, x_BSD, config: HFGPT2Config, layer_index):
    eps, act = config.layer_norm_eps, layers.activation(config.activation)
    qkv = layers.layer_norm(x_BSD, p["ln1"], eps) @ p["attn"]["w_qkv"] + p["attn"]["b_qkv"]
    q, k, v = (layers.heads(t, config.n_head) for t in jnp.split(qkv, 3, axis=-1))
    scale = 1.0 / math.sqrt(config.d_head) if config.scale_attn_weights else 1.0
    if config.scale_attn_by_inverse_layer_idx:
        scale = scale / (layer_index + 1.0)
    attn, probs = layers.attention(q, k, v, scale, return_probs=True)
    attn_out = layers.merge(attn) @ p["attn"]["w_out"] + p["attn"]["b_out"]
    x_BSD = x_BSD + attn_out
    hidden = act(layers.layer_norm(x_BSD, p["ln2"], eps) @ p["mlp"]["w_in"] + p["mlp"]["b_in"])
    x_BSD = x_BSD + hidden @ p["mlp"]["w_out"] + p["mlp"]["b_out"]
    return x_BSD, {"resid": x_BSD, "attn_out": attn_out, "mlp_hidden": hidden, "attn_probs": probs}


def run_blocks(blocks, x_BSD, config: HFGPT2Config, *, first_layer: int = 0,
               collect: Iterable[str] = (), unroll: bool = True):
    n = jnp.shape(blocks["ln1"]["scale"])[0]
    index = jnp.arange(first_layer, first_layer + n, dtype=jnp.float32)
    return layers.scan_blocks(lambda p, x, i: block(p, x, config, i), blocks, x_BSD, index,
                              collect=collect, unroll=unroll)


def final_norm(params, x_BSD, config: HFGPT2Config):
    return layers.layer_norm(x_BSD, params["ln_f"], config.layer_norm_eps)


unembedding_matrix = layers.unembedding_matrix  # the untied head, else the tied embedding


def apply(params, tokens_BS, config: HFGPT2Config, *, capture: Iterable[str] = (), dropout_key=None):
    """Logits [B, S, V] and the requested intermediates (names in `CAPTURES`)."""
    family.no_dropout(dropout_key, NAME)
    S = tokens_BS.shape[1]
    require(S <= config.context, f"{S} positions exceed the model's context of {config.context}")
    x = params["wte"][tokens_BS] + params["wpe"][:S]
    return layers.decode(params, x, config, capture, run_blocks, final_norm, unembedding_matrix)


def logits_from_resid(params, resid_BSD, layer: int, config: HFGPT2Config):
    """The layer-index attention scaling continues from block `layer` + 1."""
    return layers.finish(params, resid_BSD, layer, config, run_blocks, final_norm, unembedding_matrix,
                         first_layer=layer + 1)


def weight_matrices(params, config: HFGPT2Config) -> dict:
    """Already `models.gpt`'s layout: the stored matrices themselves."""
    return layers.fused_weight_matrices(params)


# ----------------------------------------------------------------------------- Hugging Face
def config_from_hf(hf: dict, remote_code=None) -> HFGPT2Config:
    D = hf["n_embd"]
    return HFGPT2Config(
        vocab_size=hf["vocab_size"], context=hf["n_positions"], n_layer=hf["n_layer"], n_head=hf["n_head"],
        d_model=D, d_mlp=hf.get("n_inner") or 4 * D, layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        activation=hf.get("activation_function", "gelu_new"),
        scale_attn_weights=bool(hf.get("scale_attn_weights", True)),
        scale_attn_by_inverse_layer_idx=bool(hf.get("scale_attn_by_inverse_layer_idx", False)),
        reorder_and_upcast_attn=bool(hf.get("reorder_and_upcast_attn", False)),
        tied_embeddings=bool(hf.get("tie_word_embeddings", True)))


def convert(take: family.Weights, c: HFGPT2Config) -> dict:
    """Conv1D weights are already [in, out]; the `transformer.` prefix may be absent."""
    take.rename(lambda k: k.removeprefix("transformer."))
    L, p = c.n_layer, "h.{i}."
    params = {
        "wte": take.one("wte.weight"), "wpe": take.one("wpe.weight"),
        "blocks": {
            "ln1": take.norm(p + "ln_1", L),
            "attn": {"w_qkv": take.layers(p + "attn.c_attn.weight", L), "b_qkv": take.layers(p + "attn.c_attn.bias", L),
                     "w_out": take.layers(p + "attn.c_proj.weight", L), "b_out": take.layers(p + "attn.c_proj.bias", L)},
            "ln2": take.norm(p + "ln_2", L),
            "mlp": {"w_in": take.layers(p + "mlp.c_fc.weight", L), "b_in": take.layers(p + "mlp.c_fc.bias", L),
                    "w_out": take.layers(p + "mlp.c_proj.weight", L), "b_out": take.layers(p + "mlp.c_proj.bias", L)},
        },
        "ln_f": take.norm("ln_f"),
    }
    head = take.one("lm_head.weight", transpose=True, optional=True)
    if not c.tied_embeddings:
        require(head is not None, f"{take.where}: untied GPT-2 without lm_head.weight")
        params["lm_head"] = head
    return params
