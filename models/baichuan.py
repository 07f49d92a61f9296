"""Baichuan-7B and Baichuan2-7B (Baichuan Inc.; remote code, not in transformers): config,
forward pass and Hugging Face converter of one family (`models.family`).

Both are LLaMA decoders (`models.llama`: RMSNorm, SwiGLU, rotate-half RoPE with base 10000, no
grouped-query attention, untied head) whose q, k and v projections are one fused
`self_attn.W_pack.weight` [3D, D], stacked [Q | K | V] along the output rows. Baichuan2 adds a
NormHead: the head's rows are L2-normalised before the product, logits = h @ normalize(W)^T;
checkpoints store the head un-normalised (training normalises on every step). [choice] The
converter splits W_pack into LLaMA's w_q, w_k, w_v (so the forward pass and `weight_matrices` are
LLaMA's) and keeps the head as stored; `unembedding_matrix` normalises it, so every analysis sees
the head the logits use, and the stored norms stay available.

Telling the versions apart. They share `model_type: "baichuan"`, and serving one as the other
gives wrong logits silently, so [choice] the checkpoint's own remote code decides: the folder's
`modeling_baichuan.py` defines `class NormHead` (Baichuan2) or not (Baichuan-7B). Without that
file the import is refused with one line saying how to supply it; an `architectures` entry that
contradicts the code (Baichuan-7B's `BaiChuanForCausalLM` with a NormHead) is refused too. The
13B models (Baichuan-13B, Baichuan2-13B) use ALiBi position biases instead of RoPE: their code
builds an ALiBi mask, and they are refused with one line ([choice]: not served).
"""
from __future__ import annotations

import dataclasses
import re

import jax.numpy as jnp
import numpy as np

from models import family, layers, llama
from models.errors import OntogenyError, require

NAME, TITLE, HF_MODEL_TYPES = "baichuan", "Baichuan-7B / Baichuan2-7B", ("baichuan",)
REMOTE_CODE = "modeling_baichuan.py"
NORM_HEAD = re.compile(r"^class\s+NormHead\b", re.M)
ALIBI = re.compile(r"alibi_mask|_get_interleave|def\s+\w*alibi", re.I)


@dataclasses.dataclass(frozen=True)
class BaichuanConfig(llama.LlamaConfig):
    """LLaMA's hyperparameters plus the head's normalisation."""
    family: str = "baichuan"         # recorded in model.json; picks this class
    norm_head: bool = False          # Baichuan2's NormHead: the head's rows are L2-normalised


Config = BaichuanConfig
run_blocks, final_norm, weight_matrices = llama.run_blocks, llama.final_norm, llama.weight_matrices


def unembedding_matrix(params, config: BaichuanConfig) -> jnp.ndarray:
    """[V, D] as the logits use it: the stored head, each row divided by its L2 norm (floored at
    1e-12, as torch's `normalize`) when `norm_head`."""
    w_VD = params["lm_head"].T
    if not config.norm_head:
        return w_VD
    return w_VD / jnp.maximum(jnp.linalg.norm(w_VD, axis=-1, keepdims=True), 1e-12)


apply, logits_from_resid = layers.token_embedding_forward(NAME, run_blocks, final_norm, unembedding_matrix)


# ----------------------------------------------------------------------------- Hugging Face
def version(hf: dict, remote_code) -> bool:
    """True for Baichuan2 (NormHead), False for Baichuan-7B, from the checkpoint's remote code;
    refuses a folder without it, an ALiBi (13B) model and contradictory signals."""
    code = (remote_code or {}).get(REMOTE_CODE)
    if code is None:
        raise OntogenyError(f"a Baichuan checkpoint must carry its {REMOTE_CODE}, which tells Baichuan-7B (plain "
                            f"head) from Baichuan2 (NormHead); copy that file from the model's hub repository "
                            f"into the step folder")
    require(not ALIBI.search(code), "this Baichuan model uses ALiBi position biases (the 13B models), which "
                                    "Ontogeny does not serve; import a 7B Baichuan (RoPE)")
    norm_head = bool(NORM_HEAD.search(code))
    if norm_head and "BaiChuanForCausalLM" in (hf.get("architectures") or []):
        raise OntogenyError(f"config.json names Baichuan-7B (BaiChuanForCausalLM) but {REMOTE_CODE} defines "
                            f"Baichuan2's NormHead; put the step's own {REMOTE_CODE} beside its config.json")
    return norm_head


def config_from_hf(hf: dict, remote_code=None) -> BaichuanConfig:
    norm_head = version(hf, remote_code)
    require(not hf.get("tie_word_embeddings", False), "tied Baichuan embeddings are not supported")
    settings = llama.hf_settings(hf)
    if "max_position_embeddings" not in hf and "model_max_length" in hf:  # Baichuan2's name for it
        settings["context"] = int(hf["model_max_length"])
    return BaichuanConfig(**settings, norm_head=norm_head)


def convert(take: family.Weights, c: BaichuanConfig) -> dict:
    L, p, D = c.n_layer, "model.layers.{i}.", c.d_model
    w_pack = take.layers(p + "self_attn.W_pack.weight", L, transpose=True)               # [L, D, 3D]
    require(w_pack.shape[-1] == 3 * c.n_head * c.d_head, f"{take.where}: W_pack is {w_pack.shape[1:]}, "
                                                          f"not [{D}, {3 * c.n_head * c.d_head}]")
    w_q, w_k, w_v = (np.ascontiguousarray(w_pack[..., j * D:(j + 1) * D]) for j in range(3))
    attn = {"w_q": w_q, "w_k": w_k, "w_v": w_v, "w_out": take.layers(p + "self_attn.o_proj.weight", L, True)}
    return llama.take_ends(take, c, {"blocks": {
        "ln1": take.norm(p + "input_layernorm", L, bias=False), "attn": attn,
        "ln2": take.norm(p + "post_attention_layernorm", L, bias=False),
        "mlp": llama.take_projections(take, c, llama.MLP_NAMES, p + "mlp.", False)}})
