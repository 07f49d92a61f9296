"""One family-neutral entry point over every model family Ontogeny serves.

`apply(params, tokens_BS, config, capture=...) -> (logits_BSV, captures)` dispatches on the
config's family: Ontogeny's own character GPT (`models.gpt`, configs without a `family`
field), and the imported Hugging Face families `gpt_neox` (Pythia), `llama` and `gpt2`. Every
family returns the same capture names (`models.gpt.CAPTURES`), keeps its blocks stacked on a
layer axis, and so works unchanged under `jax.vmap` over a checkpoint axis (`map_stack`).

A run folder records the family and hyperparameters in `model.json`; `config_from_dict`
rebuilds the right config class from it.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

import jax
import jax.numpy as jnp

from models import gpt, hf_gpt2, llama, neox
from models.errors import OntogenyError
from models.gpt import CAPTURES

FAMILIES = {
    "gpt": (gpt.GPTConfig, gpt),
    "gpt_neox": (neox.NeoXConfig, neox),
    "llama": (llama.LlamaConfig, llama),
    "gpt2": (hf_gpt2.HFGPT2Config, hf_gpt2),
}


def family_of(config) -> str:
    return getattr(config, "family", "gpt")


def module_of(config):
    family = family_of(config)
    if family not in FAMILIES:
        raise OntogenyError(f"model family {family!r} is unknown; known: {sorted(FAMILIES)}")
    return FAMILIES[family][1]


def config_from_dict(data: dict):
    """The config object of the family named in `data["family"]` (absent: Ontogeny's GPT)."""
    family = data.get("family", "gpt")
    if family not in FAMILIES:
        raise OntogenyError(f"model family {family!r} is unknown; known: {sorted(FAMILIES)}")
    cls = FAMILIES[family][0]
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def config_to_dict(config) -> dict:
    return {**dataclasses.asdict(config), "family": family_of(config)}


def _upcast(params, dtype):
    """[choice] Compute in fp32 whatever the stored dtype (bf16/fp16 runs halve disk only)."""
    def cast(x):
        x = jnp.asarray(x)
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype else x
    return jax.tree.map(cast, params)


def apply(params, tokens_BS, config, *, capture: Iterable[str] = (), dropout_key=None,
          compute_dtype=jnp.float32):
    """Logits [B, S, V] and the requested intermediates (names in `CAPTURES`), any family."""
    capture = tuple(capture)
    unknown = set(capture) - set(CAPTURES)
    if unknown:
        raise ValueError(f"unknown capture {sorted(unknown)}; choose from {sorted(CAPTURES)}")
    module = module_of(config)
    params = _upcast(params, compute_dtype)
    if module is gpt:
        return gpt.apply(params, tokens_BS, config, capture=capture, dropout_key=dropout_key)
    return module.apply(params, tokens_BS, config, capture=capture)


def logits_from_resid(params, resid_BSD, layer: int, config, *, compute_dtype=jnp.float32):
    """Finish the forward pass from the residual stream after block `layer` (for splicing)."""
    module = module_of(config)
    params = _upcast(params, compute_dtype)
    if module is gpt:
        return gpt.logits_from_resid(params, resid_BSD, layer, config)
    rest = jax.tree.map(lambda a: a[layer + 1:], params["blocks"])
    extra = {"first_layer": layer + 1} if module is hf_gpt2 else {}
    x, _ = module.run_blocks(rest, resid_BSD, config, **extra)
    return module.final_norm(params, x, config) @ module.unembedding_matrix(params).T


def final_norm(params, x_BSD, config, *, compute_dtype=jnp.float32):
    """The family's final normalisation of a residual stream [..., D] (what the unembedding
    reads); `final_norm(x) @ unembedding_matrix.T` are the logits (the logit lens of a layer)."""
    module = module_of(config)
    params = _upcast(params, compute_dtype)
    if module is gpt:
        return gpt.layer_norm(x_BSD, params["ln_f"])
    return module.final_norm(params, x_BSD, config)


def unembedding_matrix(params, config) -> jax.Array:
    """[V, D]: row y is the output embedding of token y, any family."""
    return module_of(config).unembedding_matrix(params)


def weight_matrices(params, config) -> dict:
    """The family-neutral description of a model's weight matrices, in `models.gpt`'s layout:
    {"blocks": {"attn": {"w_qkv": [L, D, 3*H*E], "w_out": [L, H*E, D]},
                "mlp": {"w_in": [L, D, F], "w_out": [L, F, D]}}}
    with w_qkv as [Q | K | V], head j's q, k and v columns at the same offset in each third.
    GPT-NeoX and GPT-2 already store this. For LLaMA, grouped-query K/V columns are repeated so
    every query head has its own ([choice]: the weights a head actually uses), and the SwiGLU
    MLP is described by its up projection ([choice]: the linear path; the gate is elementwise)."""
    b = params["blocks"]
    if family_of(config) != "llama":
        return {"blocks": {"attn": {"w_qkv": b["attn"]["w_qkv"], "w_out": b["attn"]["w_out"]},
                           "mlp": {"w_in": b["mlp"]["w_in"], "w_out": b["mlp"]["w_out"]}}}
    a, E, group = b["attn"], config.d_head, config.n_head // config.n_kv_head

    def per_query_head(w_LDX):
        L, D, _ = w_LDX.shape
        return jnp.repeat(w_LDX.reshape(L, D, config.n_kv_head, E), group, axis=2).reshape(L, D, config.n_head * E)

    w_qkv = jnp.concatenate([a["w_q"], per_query_head(a["w_k"]), per_query_head(a["w_v"])], axis=-1)
    return {"blocks": {"attn": {"w_qkv": w_qkv, "w_out": a["w_out"]},
                       "mlp": {"w_in": b["mlp"]["w_up"], "w_out": b["mlp"]["w_out"]}}}
