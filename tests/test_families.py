"""Imported families (GPT-NeoX, LLaMA with and without Llama-3's rope scaling, OLMo-2,
Baichuan-7B, Baichuan2-7B, GPT-2) against transformers' own outputs.

The references under tests/fixtures/hf/*/refs/ were computed by transformers (made by
tests/fixtures/make_hf_fixtures.py, which randomises every parameter, norms and biases
included; Baichuan's from its published architecture, see that script). Every capture of every
step must match in fp32 to 1e-5 of the array's largest magnitude (and never looser than 1e-4),
through one checkpoint folder and through an imported run's stacked series (load_stack +
map_stack + models.apply).
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import numpy as np
import pytest

import models
from dynamics import hf_import
from models import families, gpt

HF = Path(__file__).parent / "fixtures" / "hf"
TOKENS = np.load(HF / "tokens.npy")
CASES = sorted(p.name for p in HF.iterdir() if p.is_dir())
STEP_FOLDERS = [(case, folder.name) for case in CASES for _, folder in hf_import.find_steps(HF / case)]
# attention probabilities: against transformers' own in tests/test_development_heads.py
ALL = tuple(c for c in families.CAPTURES if c != "attn_probs")


@functools.partial(jax.jit, static_argnames=("config", "capture"))
def forward(params, tokens, config, capture=()):
    """One compile per (config, captures): the steps of a case share it."""
    return models.apply(params, tokens, config, capture=capture)


@functools.partial(jax.jit, static_argnames=("config",))
def resumed(params, tokens, config):
    """Logits finished from every layer's residual stream: [L, B, S, V]."""
    _, caps = models.apply(params, tokens, config, capture=("resid",))
    return jax.numpy.stack([families.logits_from_resid(params, caps["resid"][layer], layer, config)
                            for layer in range(config.n_layer)])


def tolerance(ref, rel=1e-5, cap=1e-4):
    """1e-5 of the array's largest magnitude (float32 rounding grows with it), at most 1e-4."""
    return min(cap, rel * max(1.0, float(np.abs(ref).max())))


def assert_matches(logits, caps, ref):
    np.testing.assert_allclose(np.asarray(logits), ref["logits"], atol=tolerance(ref["logits"]), rtol=0)
    for name in ALL:
        np.testing.assert_allclose(np.asarray(caps[name]), ref[name], atol=tolerance(ref[name]), rtol=0, err_msg=name)


@pytest.mark.parametrize("case,step", STEP_FOLDERS)
def test_every_step_matches_transformers(case, step):
    config, params = hf_import.load_checkpoint(HF / case / step)
    logits, caps = forward(params, TOKENS, config, capture=ALL)
    assert_matches(logits, caps, np.load(HF / case / "refs" / f"{step}.npz"))


def test_fixtures_cover_the_variants():
    configs = {case: hf_import.load_checkpoint(HF / case / step)[0] for case, step in STEP_FOLDERS}
    neox = [c for c in configs.values() if c.family == "gpt_neox"]
    assert {c.rotary_pct for c in neox} == {0.25, 1.0} and {c.parallel_residual for c in neox} == {True, False}
    assert any(c.family == "llama" and c.n_kv_head < c.n_head for c in configs.values())
    assert any(c.family == "gpt2" and c.scale_attn_by_inverse_layer_idx for c in configs.values())
    assert all(c.n_head >= 2 for c in configs.values())
    assert (HF / "neox_rot25_parallel" / "step200" / "model.safetensors.index.json").exists()
    assert any(c.family == "llama" and c.rope_type == "llama3" for c in configs.values())
    assert any(c.family == "olmo2" and c.n_kv_head < c.n_head for c in configs.values())
    assert {c.norm_head for c in configs.values() if c.family == "baichuan"} == {False, True}


@pytest.mark.parametrize("case,change", [
    ("neox_rot25_parallel", {"parallel_residual": False}),
    ("neox_rot25_parallel", {"rotary_pct": 0.5}),
    ("neox_rot100_sequential", {"rotary_base": 10000.0}),
    ("gpt2_mistral", {"scale_attn_by_inverse_layer_idx": False}),
    ("llama_gqa", {"rope_theta": 10000.0}),
    ("llama3_rope", {"rope_type": "default"}),
    ("llama3_rope", {"rope_factor": 4.0}),
    ("llama3_rope", {"rope_low_freq_factor": 2.0}),
    ("llama3_rope", {"rope_high_freq_factor": 8.0}),
    ("llama3_rope", {"rope_original_context": 64}),
    ("olmo2_gqa", {"rms_eps": 1e-2}),
    ("baichuan7b", {"norm_head": True}),
    ("baichuan2_7b", {"norm_head": False}),
])
def test_a_wrong_setting_is_caught(case, change):
    """The fixtures are sensitive to each setting the forward pass reads (a test that can fail)."""
    step = hf_import.find_steps(HF / case)[0][1]
    config, params = hf_import.load_checkpoint(step)
    logits, _ = forward(params, TOKENS, dataclasses.replace(config, **change))
    assert np.abs(np.asarray(logits) - np.load(HF / case / "refs" / f"{step.name}.npz")["logits"]).max() > 1e-2


@pytest.mark.parametrize("case", CASES)
def test_imported_series_serves_the_stacked_core(case, tmp_path):
    """The README's stacked-checkpoint example, unchanged, on an imported run."""
    from dynamics.checkpoints import load_model_config, load_stack, map_stack
    from experiments.tools.import_suite import main

    assert main(["--from", str(HF / case), "--out", str(tmp_path / "run")]) == 0
    steps, params = load_stack(tmp_path / "run")
    config = load_model_config(tmp_path / "run")

    def forward(p, tokens):
        return models.apply(p, tokens, config, capture=ALL)

    logits_T, caps_T = map_stack(forward, params, TOKENS, chunk_size=2)
    names = dict((s, f.name) for s, f in hf_import.find_steps(HF / case))
    assert list(steps) == sorted(names)
    for t, step in enumerate(steps):
        assert_matches(logits_T[t], {k: v[t] for k, v in caps_T.items()},
                       np.load(HF / case / "refs" / f"{names[int(step)]}.npz"))


def test_bf16_storage_computes_in_fp32(tmp_path):
    """bf16 halves disk; the forward pass upcasts, so it equals fp32 on the bf16-rounded weights."""
    from dynamics.checkpoints import load_model_config, load_stack
    from experiments.tools.import_suite import main

    case = HF / "llama_gqa"
    assert main(["--from", str(case), "--out", str(tmp_path / "run"), "--dtype", "bfloat16", "--steps", "10"]) == 0
    _, params = load_stack(tmp_path / "run")
    config = load_model_config(tmp_path / "run")
    one = jax.tree.map(lambda x: x[0], params)
    assert all(str(x.dtype) == "bfloat16" for x in jax.tree.leaves(one))
    rounded = jax.tree.map(lambda x: np.asarray(x, np.float32), one)
    np.testing.assert_array_equal(np.asarray(forward(one, TOKENS, config)[0]),
                                  np.asarray(forward(rounded, TOKENS, config)[0]))
    ref = np.load(case / "refs" / "step10.npz")["logits"]
    err = np.abs(np.asarray(forward(one, TOKENS, config)[0]) - ref).max()
    assert 1e-4 < err < 0.5  # rounded, not wrong


@pytest.mark.parametrize("case", ["neox_rot25_parallel", "llama_tied_bias", "gpt2_mistral", "olmo2_gqa",
                                  "baichuan2_7b"])
def test_logits_from_resid_finishes_the_pass(case):
    config, params = hf_import.load_checkpoint(hf_import.find_steps(HF / case)[-1][1])
    logits, _ = forward(params, TOKENS, config)
    for finished in resumed(params, TOKENS, config):
        np.testing.assert_allclose(finished, logits, atol=1e-4)


def test_native_gpt_dispatch_and_model_json_roundtrip():
    config = gpt.GPTConfig(vocab_size=11, context=8, n_layer=2, n_head=2, d_model=16)
    rng = np.random.default_rng(0)  # random values on init's shapes (eager init compiles op by op: slow)
    params = jax.tree.map(lambda x: rng.normal(0, 0.3, x.shape).astype(np.float32),
                          jax.eval_shape(lambda k: gpt.init_params(config, k), jax.random.key(0)))
    tokens = np.arange(12).reshape(2, 6) % 11
    want = jax.jit(lambda p, t: gpt.apply(p, t, config, capture=("resid",)))(params, tokens)
    got = forward(params, tokens, config, capture=("resid",))
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
    assert families.config_from_dict(dataclasses.asdict(config)) == config
    for case, step in STEP_FOLDERS[:: max(1, len(STEP_FOLDERS) // 4)]:
        other = hf_import.load_checkpoint(HF / case / step)[0]
        assert families.config_from_dict(families.config_to_dict(other)) == other


def test_live_transformers_comparison():
    """Where transformers is importable, build the fixture model live and compare (else skipped)."""
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    folder = HF / "llama_gqa" / "step20"
    model = tf.AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        want = model(torch.tensor(TOKENS, dtype=torch.long)).logits.numpy()
    config, params = hf_import.load_checkpoint(folder)
    np.testing.assert_allclose(np.asarray(models.apply(params, TOKENS, config)[0]), want, atol=1e-4)


def test_weight_matrices_are_family_neutral():
    """gpt.py's layout for every family; LLaMA's GQA heads expanded so q_j, k_j, v_j align."""
    config, params = hf_import.load_checkpoint(HF / "llama_gqa" / "step0")
    w = families.weight_matrices(params, config)["blocks"]
    H, G, E, D = config.n_head, config.n_kv_head, config.d_head, config.d_model
    assert w["attn"]["w_qkv"].shape == (config.n_layer, D, 3 * H * E)
    for h in range(H):
        g = h // (H // G)
        for third, name in ((1, "w_k"), (2, "w_v")):
            np.testing.assert_array_equal(w["attn"]["w_qkv"][:, :, third * H * E + h * E:third * H * E + (h + 1) * E],
                                          params["blocks"]["attn"][name][:, :, g * E:(g + 1) * E])
    np.testing.assert_array_equal(w["mlp"]["w_in"], params["blocks"]["mlp"]["w_up"])
    config, params = hf_import.load_checkpoint(HF / "neox_rot25_parallel" / "step0")
    w = families.weight_matrices(params, config)["blocks"]
    assert w["attn"]["w_qkv"] is params["blocks"]["attn"]["w_qkv"] and w["mlp"]["w_out"] is params["blocks"]["mlp"]["w_out"]
