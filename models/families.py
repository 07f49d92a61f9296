"""One family-neutral entry point over every registered model family.

`apply(params, tokens_BS, config, capture=...) -> (logits_BSV, captures)` dispatches on the
config's class to its family module: Ontogeny's own character GPT (`models.gpt`) and the
imported Hugging Face families (`models.neox`, `models.llama`, `models.olmo2`, `models.baichuan`,
`models.hf_gpt2`). Each family is one module written against the interface documented in
`models.family`; this module knows none of them in particular. Every family returns the same
capture names (`CAPTURES`), keeps its blocks stacked on a layer axis, and so works unchanged
under `jax.vmap` over a checkpoint axis (`map_stack`).

Adding a family: write its module, then `register(module)` (the tuple at the foot of this file,
or the same call from your own code). A run folder records the family and hyperparameters in
`model.json`; `config_from_dict` rebuilds the right config class from it.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

import jax
import jax.numpy as jnp

from models import baichuan, gpt, hf_gpt2, llama, neox, olmo2
from models.errors import OntogenyError
from models.family import CAPTURES, missing_members

FAMILIES: dict = {}        # family name -> module
_BY_CONFIG: dict = {}      # config class -> module
_BY_MODEL_TYPE: dict = {}  # Hugging Face model_type -> module


def register(module):
    """Make a family module known (returns it): its NAME, its Config class and its Hugging Face
    model types must be new. A module lacking a member of the interface raises TypeError."""
    missing = missing_members(module)
    if missing:
        raise TypeError(f"{module.__name__} is not a model family: it lacks {missing} (see models.family)")
    taken = [t for t in getattr(module, "HF_MODEL_TYPES", ()) if _BY_MODEL_TYPE.get(t, module) is not module]
    if FAMILIES.get(module.NAME, module) is not module or _BY_CONFIG.get(module.Config, module) is not module or taken:
        raise TypeError(f"{module.__name__}: family {module.NAME!r}, its config class or model types {taken} "
                        f"are already registered by another module")
    FAMILIES[module.NAME] = _BY_CONFIG[module.Config] = module
    _BY_MODEL_TYPE.update({t: module for t in getattr(module, "HF_MODEL_TYPES", ())})
    return module


def unregister(module) -> None:
    """Forget a family registered with `register` (tests of throwaway families)."""
    for table in (FAMILIES, _BY_CONFIG, _BY_MODEL_TYPE):
        for key in [k for k, m in table.items() if m is module]:
            del table[key]


def module_of(config):
    """The family module that serves `config`."""
    module = _BY_CONFIG.get(type(config))
    if module is None:
        raise OntogenyError(f"{type(config).__name__} is the config of no registered model family; known: "
                            f"{sorted(FAMILIES)}")
    return module


def family_of(config) -> str:
    return module_of(config).NAME


def for_model_type(model_type):
    """The family that imports Hugging Face checkpoints of `model_type`, or None."""
    return _BY_MODEL_TYPE.get(model_type)


def imported_families() -> dict:
    """{model_type: module} of every family that reads Hugging Face checkpoints."""
    return dict(_BY_MODEL_TYPE)


def config_from_dict(data: dict):
    """The config object of the family named in `data["family"]` (absent: Ontogeny's GPT)."""
    name = data.get("family", gpt.NAME)
    if name not in FAMILIES:
        raise OntogenyError(f"model family {name!r} is unknown; known: {sorted(FAMILIES)}")
    cls = FAMILIES[name].Config
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
    return module_of(config).apply(_upcast(params, compute_dtype), tokens_BS, config, capture=capture,
                                   dropout_key=dropout_key)


def logits_from_resid(params, resid_BSD, layer: int, config, *, compute_dtype=jnp.float32):
    """Finish the forward pass from the residual stream after block `layer` (for splicing)."""
    return module_of(config).logits_from_resid(_upcast(params, compute_dtype), resid_BSD, layer, config)


def final_norm(params, x_BSD, config, *, compute_dtype=jnp.float32):
    """The family's final normalisation of a residual stream [..., D] (what the unembedding
    reads); `final_norm(x) @ unembedding_matrix.T` are the logits (the logit lens of a layer)."""
    return module_of(config).final_norm(_upcast(params, compute_dtype), x_BSD, config)


def unembedding_matrix(params, config) -> jax.Array:
    """[V, D]: row y is the output embedding of token y, as the logits use it, any family."""
    return module_of(config).unembedding_matrix(params, config)


def weight_matrices(params, config) -> dict:
    """The family-neutral description of a model's weight matrices, in `models.gpt`'s layout:
    {"blocks": {"attn": {"w_qkv": [L, D, 3*H*E], "w_out": [L, H*E, D]},
                "mlp": {"w_in": [L, D, F], "w_out": [L, F, D]}}}
    with w_qkv as [Q | K | V], head j's q, k and v columns at the same offset in each third.
    GPT-NeoX and GPT-2 already store this; each family says how it describes itself (e.g.
    LLaMA's grouped-query K/V columns repeated per query head, its SwiGLU MLP by the up projection)."""
    return module_of(config).weight_matrices(params, config)


for _family in (gpt, neox, llama, olmo2, baichuan, hf_gpt2):  # the registered families: one line each
    register(_family)
