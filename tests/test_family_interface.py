"""The family interface (`models.family`): a throwaway family defined in ONE new file outside the
package, registered with one call, imports from a tiny safetensors folder and runs through
`models.apply`, `generate_any`, `weight_matrices` and an imported run folder, against a numpy
forward pass written here."""
from __future__ import annotations

import importlib
import json
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from dynamics import hf_import
from models import families, family
from models.sample import generate_any

# One file: config, forward pass and converter of a toy family (pre-RMSNorm attention without
# positions, a ReLU MLP, a tied head), written only against models.family and models.layers.
TOY_FAMILY = '''
"""A toy family: pre-RMSNorm blocks of position-free causal attention and a ReLU MLP, tied head."""
import dataclasses
import math

import jax

from models import family, layers

NAME, TITLE, HF_MODEL_TYPES = "toy", "Toy", ("toy",)


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int          # tokens
    context: int             # positions
    n_layer: int             # blocks
    n_head: int              # heads
    d_model: int             # width
    d_mlp: int               # MLP width
    family: str = "toy"      # recorded in model.json


def block(p, x, config):
    h = layers.rms_norm(x, p["ln1"], 1e-6)
    q, k, v = (layers.heads(t, config.n_head) for t in jax.numpy.split(h @ p["w_qkv"], 3, axis=-1))
    attn, probs = layers.attention(q, k, v, 1 / math.sqrt(config.d_model // config.n_head), return_probs=True)
    attn_out = layers.merge(attn) @ p["w_out"]
    x = x + attn_out
    hidden = jax.nn.relu(layers.rms_norm(x, p["ln2"], 1e-6) @ p["w_in"])
    x = x + hidden @ p["w_down"]
    return x, {"resid": x, "attn_out": attn_out, "mlp_hidden": hidden, "attn_probs": probs}


def run_blocks(blocks, x, config, *, collect=()):
    return layers.scan_blocks(lambda p, x, _: block(p, x, config), blocks, x, collect=collect)


def final_norm(params, x, config):
    return layers.rms_norm(x, params["ln_f"], 1e-6)


def unembedding_matrix(params, config=None):
    return params["wte"]


def apply(params, tokens_BS, config, *, capture=(), dropout_key=None):
    family.no_dropout(dropout_key, NAME)
    return layers.decode(params, params["wte"][tokens_BS], config, capture, run_blocks, final_norm,
                         unembedding_matrix)


def logits_from_resid(params, resid_BSD, layer, config):
    return layers.finish(params, resid_BSD, layer, config, run_blocks, final_norm, unembedding_matrix)


def weight_matrices(params, config):
    b = params["blocks"]
    return {"blocks": {"attn": {"w_qkv": b["w_qkv"], "w_out": b["w_out"]},
                       "mlp": {"w_in": b["w_in"], "w_out": b["w_down"]}}}


def config_from_hf(hf, remote_code):
    return Config(vocab_size=hf["vocab_size"], context=hf["context"], n_layer=hf["layers"], n_head=hf["heads"],
                  d_model=hf["width"], d_mlp=hf["mlp"])


def convert(take, c):
    L, p = c.n_layer, "toy.{i}."
    return {"wte": take.one("toy.embed.weight"), "ln_f": take.norm("toy.norm", bias=False),
            "blocks": {"ln1": take.norm(p + "ln1", L, bias=False), "ln2": take.norm(p + "ln2", L, bias=False),
                       "w_qkv": take.layers(p + "qkv.weight", L, transpose=True),
                       "w_out": take.layers(p + "out.weight", L, transpose=True),
                       "w_in": take.layers(p + "up.weight", L, transpose=True),
                       "w_down": take.layers(p + "down.weight", L, transpose=True)}}
'''

V, S_MAX, L, H, D, F = 23, 16, 2, 2, 8, 12


def toy_checkpoint(folder, seed=0):
    """A Hugging Face-style folder of the toy family: config.json and model.safetensors ([out, in])."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    w = {"toy.embed.weight": rng.normal(0, 1, (V, D)), "toy.norm.weight": 1 + 0.3 * rng.normal(size=D)}
    for i in range(L):
        w.update({f"toy.{i}.ln1.weight": 1 + 0.3 * rng.normal(size=D), f"toy.{i}.ln2.weight": 1 + 0.3 * rng.normal(size=D),
                  f"toy.{i}.qkv.weight": 0.4 * rng.normal(size=(3 * D, D)), f"toy.{i}.out.weight": 0.4 * rng.normal(size=(D, D)),
                  f"toy.{i}.up.weight": 0.4 * rng.normal(size=(F, D)), f"toy.{i}.down.weight": 0.4 * rng.normal(size=(D, F))})
    folder.mkdir(parents=True)
    save_file({k: np.asarray(v, np.float32) for k, v in w.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "toy", "vocab_size": V, "context": S_MAX,
                                                    "layers": L, "heads": H, "width": D, "mlp": F}))
    return w


def numpy_forward(w, tokens_BS):
    """The toy family's logits [B, S, V], one loop over positions and heads, from the raw tensors."""
    rms = lambda x, g: x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6) * g
    x = w["toy.embed.weight"][tokens_BS].astype(np.float64)
    E = D // H
    for i in range(L):
        h = rms(x, w[f"toy.{i}.ln1.weight"])
        q, k, v = np.split(h @ w[f"toy.{i}.qkv.weight"].T, 3, axis=-1)
        out = np.zeros_like(x)
        for s in range(x.shape[1]):
            for j in range(H):
                cols = slice(j * E, (j + 1) * E)
                scores = np.einsum("be,bte->bt", q[:, s, cols], k[:, :s + 1, cols]) / np.sqrt(E)
                p = np.exp(scores - scores.max(-1, keepdims=True))
                p /= p.sum(-1, keepdims=True)
                out[:, s, cols] = np.einsum("bt,bte->be", p, v[:, :s + 1, cols])
        x = x + out @ w[f"toy.{i}.out.weight"].T
        x = x + np.maximum(rms(x, w[f"toy.{i}.ln2.weight"]) @ w[f"toy.{i}.up.weight"].T, 0) @ w[f"toy.{i}.down.weight"].T
    return rms(x, w["toy.norm.weight"]) @ w["toy.embed.weight"].T


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy family written as one file of a throwaway package and registered with one call."""
    pkg = tmp_path / "toypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "toy_family.py").write_text(textwrap.dedent(TOY_FAMILY))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("toypkg.toy_family")
    families.register(module)  # the one registration call
    yield module
    families.unregister(module)


def test_a_family_in_one_file_imports_and_runs(toy, tmp_path):
    w = toy_checkpoint(tmp_path / "suite" / "step0")
    config, params = hf_import.load_checkpoint(tmp_path / "suite" / "step0")
    assert isinstance(config, toy.Config) and families.family_of(config) == "toy"
    tokens = np.random.default_rng(1).integers(0, V, (2, 9))
    logits, caps = models.apply(params, tokens, config, capture=tuple(family.CAPTURES))
    np.testing.assert_allclose(np.asarray(logits), numpy_forward(w, tokens), atol=1e-4)
    assert caps["resid"].shape == (L, 2, 9, D) and caps["mlp_hidden"].shape == (L, 2, 9, F)
    for layer in range(L):  # the rest of the pass from any block
        np.testing.assert_allclose(np.asarray(families.logits_from_resid(params, caps["resid"][layer], layer, config)),
                                   np.asarray(logits), atol=1e-4)

    out = np.asarray(generate_any(params, config, jnp.asarray(tokens[:, :3]), 4, jax.random.PRNGKey(0), temperature=0.0))
    ref = tokens[:, :3]
    for _ in range(4):  # greedy: the argmax of the numpy forward at the last position
        ref = np.concatenate([ref, numpy_forward(w, ref)[:, -1].argmax(-1)[:, None]], 1)
    np.testing.assert_array_equal(out, ref)

    m = families.weight_matrices(params, config)["blocks"]
    np.testing.assert_array_equal(m["attn"]["w_qkv"][1], w["toy.1.qkv.weight"].T.astype(np.float32))
    np.testing.assert_array_equal(m["mlp"]["w_out"][0], w["toy.0.down.weight"].T.astype(np.float32))


def test_an_imported_run_of_the_new_family_serves_the_stacked_core(toy, tmp_path):
    from dynamics.checkpoints import load_model_config, load_stack, map_stack, stages
    from experiments.tools.import_suite import main

    ws = [toy_checkpoint(tmp_path / "suite" / f"step{s}", seed=s) for s in (0, 5)]
    assert main(["--from", str(tmp_path / "suite"), "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "model.json").read_text())["family"] == "toy"
    config = load_model_config(tmp_path / "run")
    steps, stacked = load_stack(tmp_path / "run")
    tokens = np.arange(10).reshape(2, 5) % V
    logits_C = map_stack(lambda p, t: models.apply(p, t, config)[0], stacked, tokens)
    for c, w in enumerate(ws):
        np.testing.assert_allclose(logits_C[c], numpy_forward(w, tokens), atol=1e-4)
    assert list(steps) == [0, 5] and stages(tmp_path / "run") == {"pretrain": [0, 5]}


def test_register_refuses_an_incomplete_or_clashing_family(toy):
    import types

    half = types.ModuleType("half")
    half.NAME, half.HF_MODEL_TYPES, half.apply = "half", ("half",), lambda *a, **k: None
    with pytest.raises(TypeError, match="lacks .*config_from_hf.*convert"):
        families.register(half)
    clash = types.ModuleType("clash")
    for name in family.members(family.ImportedFamily):
        setattr(clash, name, getattr(toy, name))
    clash.NAME, clash.Config = "clash", type("ClashConfig", (), {})
    with pytest.raises(TypeError, match=r"model types \['toy'\] are already registered"):
        families.register(clash)
    assert families.for_model_type("toy") is toy and "clash" not in families.FAMILIES


def test_every_builtin_family_implements_the_interface():
    for module in families.FAMILIES.values():
        assert family.missing_members(module) == [], module.__name__
        assert isinstance(module, family.Family)
    assert set(families.imported_families()) == {"gpt_neox", "llama", "olmo2", "baichuan", "gpt2"}
