"""The one interface every model family implements, and the helpers its Hugging Face import shares.

A model family is ONE module of `models/` holding its config, its forward pass and (for families
read from Hugging Face checkpoints) its converter, written against the `Family` protocol below;
`models.families` registers it with one line and dispatches on it with no per-family case. A new
family is a new file plus `families.register(module)` (the tuple at the foot of `families.py`),
or the same call from user code for a family kept outside the package.

Forward members (every family, `Family`):

    NAME                 the family name recorded in a run's model.json ("gpt" is Ontogeny's
                         character GPT, whose configs carry no `family` field)
    Config               its frozen, hashable config dataclass (a static argument under jit);
                         it needs at least vocab_size, context, n_layer and d_model
    apply(params, tokens_BS, config, *, capture=(), dropout_key=None) -> (logits_BSV, captures)
                         the forward pass; captures are the names of `CAPTURES`, with a layer axis
                         L leading the per-layer ones; imported families have no dropout and
                         refuse a key
    logits_from_resid(params, resid_BSD, layer, config) -> logits_BSV
                         the rest of the pass from the residual stream after block `layer`
    final_norm(params, x_BSD, config) -> [B, S, D]
                         the final normalisation, what the unembedding reads (the logit lens)
    unembedding_matrix(params, config) -> [V, D]: row y is the output embedding of token y,
                         exactly as the logits use it (normalised rows for a NormHead)
    weight_matrices(params, config) -> {"blocks": {"attn": {"w_qkv": [L, D, 3*H*E],
                         "w_out": [L, H*E, D]}, "mlp": {"w_in": [L, D, F], "w_out": [L, F, D]}}}
                         the family-neutral description that NeuroMFA and other weight analyses
                         read: [Q | K | V] columns, head j at the same offset in each third

Import members (families read from Hugging Face checkpoints, `ImportedFamily`):

    TITLE                a short human name for error messages ("GPT-NeoX / Pythia")
    HF_MODEL_TYPES       the `model_type` values of config.json it reads
    config_from_hf(hf, remote_code) -> Config
                         the translation of a config.json dict (transformers 4.x or 5.x names;
                         a missing key may raise KeyError, a refused setting OntogenyError);
                         `remote_code` maps the names of the checkpoint folder's *.py files
                         (Hugging Face "remote code") to their text, for families whose versions
                         only that code tells apart
    convert(weights, config) -> params
                         the params pytree (numpy, fp32, matrices [in, out], blocks stacked on a
                         leading layer axis L) from a `Weights` of the checkpoint's tensors; it
                         takes every tensor it uses, and whatever it leaves is refused

Shared pieces for writing one: `models.layers` (norms, RoPE, attention, `scan_blocks`, `decode`,
`finish`, and `token_embedding_forward`, which makes `apply` and `logits_from_resid` from a
family's blocks, final norm and unembedding). Reading files, shards, dtypes and checksums stays
in `dynamics.hf_import`, which is the same for every family. Axis letters as in `models/__init__.py`.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Protocol, runtime_checkable

import numpy as np

from models.errors import OntogenyError, require

CAPTURES = {
    "embed": "[B, S, D] the residual stream before block 0 (token embedding, plus positions where learned)",
    "resid": "[L, B, S, D] residual stream after every block",
    "attn_out": "[L, B, S, D] attention sublayer output, as it is added to the residual stream",
    "mlp_hidden": "[L, B, S, F] MLP hidden units: the input of the MLP's output projection",
    "attn_probs": "[L, B, H, S, S] attention probabilities of every head (query position, key position)",
    "final_hidden": "[B, S, D] final hidden state after the last norm",
}

PER_LAYER = ("resid", "attn_out", "mlp_hidden", "attn_probs")  # the captures with a leading layer axis L

@runtime_checkable
class Family(Protocol):
    """What every model family module provides (see the module docstring for each member)."""

    NAME: str
    Config: type

    def apply(self, params, tokens_BS, config, *, capture: Iterable[str] = (), dropout_key=None): ...

    def logits_from_resid(self, params, resid_BSD, layer: int, config): ...

    def final_norm(self, params, x_BSD, config): ...

    def unembedding_matrix(self, params, config): ...

    def weight_matrices(self, params, config) -> dict: ...


@runtime_checkable
class ImportedFamily(Family, Protocol):
    """A family that also reads Hugging Face checkpoints."""

    TITLE: str
    HF_MODEL_TYPES: tuple

    def config_from_hf(self, hf: dict, remote_code: Mapping[str, str]): ...

    def convert(self, weights: "Weights", config) -> dict: ...


def members(protocol) -> list[str]:
    """The names a module must define to implement `protocol`."""
    names = set()
    for klass in protocol.__mro__:
        if klass.__module__ != __name__:
            continue
        names |= set(getattr(klass, "__annotations__", {}))
        names |= {n for n, v in vars(klass).items() if callable(v) and not n.startswith("_")}
    return sorted(names)


def missing_members(module) -> list[str]:
    """Members of `Family` (and of `ImportedFamily` when it names HF model types) that `module` lacks."""
    wanted = members(ImportedFamily if getattr(module, "HF_MODEL_TYPES", ()) else Family)
    return [name for name in wanted if not hasattr(module, name)]


def no_dropout(dropout_key, name: str) -> None:
    """Imported families run their checkpoints as published: no dropout."""
    require(dropout_key is None, f"the {name} family has no dropout; call apply without dropout_key")


# ----------------------------------------------------------------------------- import helpers
class Weights:
    """A checkpoint's tensors by Hugging Face name, taken one by one (as fp32) by a converter;
    per-layer tensors are stacked on a leading layer axis L. `where` names the checkpoint in errors."""

    def __init__(self, weights: dict, where: str):
        self.weights, self.where = dict(weights), where

    def one(self, *names, transpose=False, optional=False):
        """The first of `names` present ([out, in] -> [in, out] when `transpose`)."""
        for name in names:
            if name in self.weights:
                x = np.asarray(self.weights.pop(name), np.float32)
                return x.T if transpose else x
        if optional:
            return None
        raise OntogenyError(f"{self.where}: weight {names[0]!r} is missing; the checkpoint does not match its "
                            f"config.json (or is incomplete): download that step again")

    def layers(self, template: str, n: int, transpose=False, optional=False):
        """`template.format(i=i)` for i < n, stacked: [L, ...]."""
        parts = [self.one(template.format(i=i), transpose=transpose, optional=optional) for i in range(n)]
        return None if parts[0] is None else np.stack(parts)

    def norm(self, prefix: str, n: int | None = None, bias: bool = True) -> dict:
        """A norm's {"scale"[, "bias"]} from `prefix.weight` (and `prefix.bias`), per layer when n is given."""
        get = (lambda name: self.layers(name, n)) if n is not None else self.one
        out = {"scale": get(prefix + ".weight")}
        if bias:
            out["bias"] = get(prefix + ".bias")
        return out

    def rename(self, fn) -> None:
        """Rename every remaining tensor (e.g. drop a prefix some checkpoints lack)."""
        self.weights = {fn(k): v for k, v in self.weights.items()}

    def finish(self, params: dict) -> dict:
        """`params`, once every tensor has found its place (else the checkpoint is refused)."""
        if self.weights:
            extra = sorted(self.weights)
            raise OntogenyError(f"{self.where}: {len(extra)} weights have no place in the model (e.g. {extra[0]!r}); "
                                f"the checkpoint does not match its config.json's architecture")
        return params


def rope_from_hf(cfg: dict, supported: Iterable[str] = ("default",)) -> dict:
    """RoPE settings of a config.json under transformers 5 (`rope_parameters`) or 4.x names
    (`rope_scaling`, `rope_theta`, `rotary_emb_base`, `rotary_pct`): {"type", "theta", "pct"
    (None when absent)}, and for type "llama3" also "factor", "low_freq_factor",
    "high_freq_factor" and "original_context". A type outside `supported` is refused."""
    rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    kind = rope.get("rope_type", rope.get("type", "default"))
    supported = tuple(supported)
    require(kind in supported, f"rope type {kind!r} is not supported here (only {', '.join(supported)}); "
                               f"import a checkpoint without that rope scaling")
    out = {"type": kind,
           "theta": float(rope.get("rope_theta", cfg.get("rope_theta", cfg.get("rotary_emb_base", 10000.0)))),
           "pct": rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", cfg.get("rotary_pct")))}
    if kind == "llama3":
        out.update(factor=float(rope["factor"]), low_freq_factor=float(rope["low_freq_factor"]),
                   high_freq_factor=float(rope["high_freq_factor"]),
                   original_context=int(rope["original_max_position_embeddings"]))
    return out
