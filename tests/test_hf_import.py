"""Reading Hugging Face checkpoint folders, the `import` tool's integrity checks and resume,
named step sets and the offline hub cache (no torch, transformers or network needed)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dynamics import hf_hub, hf_import
from models.errors import OntogenyError
from experiments.__main__ import cli

HF = Path(__file__).parent / "fixtures" / "hf"
NEOX = HF / "neox_rot25_parallel"


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def suite(tmp_path, *steps, case=NEOX, source="step0") -> Path:
    """A suite folder whose stepN folders are copies of one fixture step."""
    root = tmp_path / "suite"
    for step in steps:
        shutil.copytree(case / source, root / f"step{step}")
    return root


def test_config_names_of_transformers_4_and_5_agree():
    v5 = json.loads((NEOX / "step0" / "config.json").read_text())
    assert "rope_parameters" in v5 and "rotary_pct" not in v5
    v4 = {k: v for k, v in v5.items() if k != "rope_parameters"}
    v4.update(rotary_pct=0.25, rotary_emb_base=10000.0)
    assert hf_import.family_config(v5) == hf_import.family_config(v4)
    legacy = hf_import.family_config(json.loads((HF / "neox_rot100_sequential" / "step1" / "config.json").read_text()))
    assert (legacy.rotary_pct, legacy.rotary_base, legacy.parallel_residual) == (1.0, 500.0, False)


def test_buffers_dropped_and_both_head_names_read(tmp_path):
    from safetensors.numpy import load_file, save_file

    raw = load_file(HF / "neox_rot100_sequential" / "step1" / "model.safetensors")
    assert any(k.endswith("attention.bias") for k in raw) and any("inv_freq" in k for k in raw)
    weights = hf_import.read_weights(HF / "neox_rot100_sequential" / "step1")
    assert not any(k.endswith(("attention.bias", "masked_bias", "inv_freq")) for k in weights)
    assert "gpt_neox.layers.0.attention.dense.bias" in weights  # a parameter, not a buffer
    root = suite(tmp_path, 0)
    w = load_file(root / "step0" / "model.safetensors")
    w["lm_head.weight"] = w.pop("embed_out.weight")
    save_file(w, root / "step0" / "model.safetensors")
    _, a = hf_import.load_checkpoint(root / "step0")
    _, b = hf_import.load_checkpoint(NEOX / "step0")
    assert hf_import.checksum(a) == hf_import.checksum(b)


def test_qkv_reordered_from_per_head_interleaving():
    """Column h*3E + j*E + e of HF's fused qkv becomes column j*D + h*E + e ([Q | K | V])."""
    config, params = hf_import.load_checkpoint(NEOX / "step0")
    w = hf_import.read_weights(NEOX / "step0")["gpt_neox.layers.1.attention.query_key_value.weight"].T
    H, E, D = config.n_head, config.d_head, config.d_model
    for h in range(H):
        for j in range(3):
            np.testing.assert_array_equal(params["blocks"]["attn"]["w_qkv"][1][:, j * D + h * E:j * D + (h + 1) * E],
                                          w[:, h * 3 * E + j * E:h * 3 * E + (j + 1) * E].astype(np.float32))


def test_bf16_safetensors_read_without_torch(tmp_path):
    import ml_dtypes

    values = np.array([[1.5, -2.0, 3.25], [0.0, 1e-3, -7.0]], np.float32)
    payload = values.astype(ml_dtypes.bfloat16).tobytes()
    header = json.dumps({"w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, len(payload)]}}).encode()
    path = tmp_path / "bf.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + payload)
    got = hf_import.read_safetensors(path)["w"]
    np.testing.assert_array_equal(got.astype(np.float32), values.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_checksum_and_nonfinite():
    _, a = hf_import.load_checkpoint(NEOX / "step0")
    _, b = hf_import.load_checkpoint(NEOX / "step0")
    assert hf_import.checksum(a) == hf_import.checksum(b) and hf_import.nonfinite(a) == []
    b["blocks"]["mlp"]["b_in"][1, 3] += 1e-3
    assert hf_import.checksum(a) != hf_import.checksum(b)
    b["ln_f"]["bias"][0] = np.inf
    assert hf_import.nonfinite(b) == ["ln_f/bias"]


def _break_shard(root):
    next(iter(sorted((root / "step0").glob("model-0000*.safetensors")))).unlink()


def _corrupt(root):
    path = root / "step0" / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _unknown(root):
    cfg = json.loads((root / "step0" / "config.json").read_text())
    cfg.update(model_type="bert", architectures=["BertForMaskedLM"])
    (root / "step0" / "config.json").write_text(json.dumps(cfg))


def _nan(root):
    from safetensors.numpy import load_file, save_file

    w = load_file(root / "step5" / "model.safetensors")
    w["gpt_neox.layers.1.mlp.dense_h_to_4h.bias"] = np.full_like(w["gpt_neox.layers.1.mlp.dense_h_to_4h.bias"], np.nan)
    save_file(w, root / "step5" / "model.safetensors")


def _torch_bin(root):
    (root / "step0" / "model.safetensors").rename(root / "step0" / "pytorch_model.bin")


@pytest.mark.parametrize("steps,source,damage,match,allow", [
    ((0,), "step200", _break_shard, "shard model-00001-of-00003.safetensors named in", None),
    ((0,), "step0", _corrupt, "is corrupt or unreadable", None),
    ((0,), "step0", _unknown, "unknown architecture model_type='bert' (BertForMaskedLM)", None),
    ((0, 5), "step0", lambda root: None, "steps 0 and 5 have identical weights", "--allow-duplicates"),
    ((0, 5), "step100", _nan, "step 5 has NaN/inf weights in 1 tensors", "--allow-nonfinite"),
])
def test_integrity_failures_exit_2_with_one_line(tmp_path, capsys, steps, source, damage, match, allow):
    root = suite(tmp_path, *steps, source=source)
    if damage is _nan:  # step 5 must differ from step 0 before it is poisoned
        shutil.rmtree(root / "step5")
        shutil.copytree(NEOX / "step0", root / "step5")
        shutil.rmtree(root / "step0")
        shutil.copytree(NEOX / "step100", root / "step0")
    damage(root)
    assert cli(["import", "--from", str(root), "--out", str(tmp_path / "run")]) == 2
    assert match in error_line(capsys)
    if allow:  # the user may say otherwise; the import then resumes and completes
        assert cli(["import", "--from", str(root), "--out", str(tmp_path / "run"), allow]) == 0
        manifest = json.loads((tmp_path / "run" / "import.json").read_text())
        assert sorted(manifest["stages"]["pretrain"], key=int) == [str(s) for s in steps]


def test_pytorch_bin_needs_torch(tmp_path, capsys):
    pytest.importorskip("safetensors")
    try:
        import torch  # noqa: F401
        pytest.skip("torch is importable here: the .bin path is live")
    except ImportError:
        pass
    root = suite(tmp_path, 0)
    _torch_bin(root)
    assert cli(["import", "--from", str(root), "--out", str(tmp_path / "run")]) == 2
    assert "has only pytorch_model.bin, which needs torch" in error_line(capsys)


def test_partial_import_resumes_to_the_same_run(tmp_path, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli(["import", "--from", str(NEOX), "--out", str(full)]) == 0
    assert cli(["import", "--from", str(NEOX), "--out", str(part), "--steps", "0,200"]) == 0
    capsys.readouterr()
    assert cli(["import", "--from", str(NEOX), "--out", str(part)]) == 0
    assert "imported 1 new steps (3 in stage pretrain)" in capsys.readouterr().out
    a, b = (json.loads((r / "import.json").read_text())["stages"]["pretrain"] for r in (full, part))
    assert {s: r["checksum"] for s, r in a.items()} == {s: r["checksum"] for s, r in b.items()}
    assert cli(["import", "--from", str(HF / "llama_gqa"), "--out", str(part), "--stage", "sft"]) == 2
    assert "its config differs from" in error_line(capsys)
    assert cli(["import", "--from", str(NEOX), "--out", str(part), "--dtype", "bfloat16"]) == 2
    assert "was imported as float32, not bfloat16" in error_line(capsys)


def test_stage_tags_serve_load_stages(tmp_path):
    from dynamics.checkpoints import load_stages

    run = tmp_path / "run"
    assert cli(["import", "--from", str(HF / "llama_gqa"), "--out", str(run), "--steps", "0,10"]) == 0
    assert cli(["import", "--from", str(HF / "llama_gqa"), "--out", str(run), "--steps", "20", "--stage", "sft"]) == 0
    labels, params = load_stages(run, ["pretrain", "sft"])
    assert labels == [("pretrain", 0), ("pretrain", 10), ("sft", 20)]
    assert params["wte"].shape[0] == 3


def test_step_folder_patterns(tmp_path):
    assert [s for s, _ in hf_import.find_steps(HF / "gpt2_mistral")] == [0, 400]
    for name in ("global_step7", "global_step12", "other"):
        (tmp_path / name).mkdir()
    assert [s for s, _ in hf_import.find_steps(tmp_path, "global_step{step}")] == [7, 12]
    with pytest.raises(OntogenyError, match="has no step folders"):
        hf_import.find_steps(tmp_path)


def test_named_step_sets():
    sets = hf_hub.STEP_SETS
    assert len(sets["pythia-all"]) == 154 and len(set(sets["pythia-all"])) == 154
    assert sets["pythia-all"][:12] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]
    assert sets["pythia-all"][-1] == 143000 and all(s % 1000 == 0 for s in sets["pythia-all"][11:])
    ge = sets["ge2025"]
    assert len(ge) == 32 and ge[:3] == [0, 2, 4] and 1 not in ge and ge[-5:] == [87000, 100000, 114000, 127000, 143000]
    xiao = sets["xiao2025"]
    assert len(xiao) == 27 and xiao[11:14] == [1000, 3000, 13000] and xiao[-1] == 143000
    for name in sets:  # every named step is a published Pythia revision
        assert set(sets[name]) <= set(sets["pythia-all"])
    assert hf_hub.expand_steps("2000, 0,1000") == [0, 1000, 2000]
    with pytest.raises(OntogenyError, match="neither a named set"):
        hf_hub.expand_steps("pythia-most")


def fake_cache(tmp_path, repo="EleutherAI/pythia-tiny", steps=((0, "step0"), (100, "step100"))) -> Path:
    """The hub cache layout: models--ORG--NAME/refs/REV -> commit; snapshots/COMMIT/files."""
    cache = tmp_path / "hub"
    base = cache / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True)
    for step, folder in steps:
        commit = f"{step:040x}"
        shutil.copytree(NEOX / folder, base / "snapshots" / commit)
        (base / "refs" / f"step{step}").write_text(commit)
    return cache


def test_offline_hub_cache_import(tmp_path, capsys):
    cache = fake_cache(tmp_path)
    assert hf_hub.cached_snapshot(cache, "EleutherAI/pythia-tiny", "step100").name == f"{100:040x}"
    assert hf_hub.cached_snapshot(cache, "EleutherAI/pythia-tiny", "step200") is None
    run = tmp_path / "run"
    argv = ["import", "--model", "EleutherAI/pythia-tiny", "--cache-dir", str(cache), "--offline", "--out", str(run)]
    assert cli(argv + ["--steps", "0,100"]) == 0
    got = json.loads((run / "import.json").read_text())["stages"]["pretrain"]
    _, want = hf_import.load_checkpoint(NEOX / "step100")
    assert got["100"]["checksum"] == hf_import.checksum(want)
    capsys.readouterr()
    assert cli(argv + ["--steps", "0,100,200"]) == 2
    assert "EleutherAI/pythia-tiny@step200 is not in the hub cache" in error_line(capsys)


def test_run_tokenizer_is_read_with_tokenizers(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    assert cli(["import", "--from", str(HF / "gpt2_plain"), "--out", str(tmp_path / "run")]) == 0
    from dynamics.run_tokenizer import load_tokenizer

    tok = load_tokenizer(tmp_path / "run")
    direct = tokenizers.Tokenizer.from_file(str(HF / "tokenizer.json"))
    text = "the cat sat on the mat"
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and list(ids) == direct.encode(text).ids and ids.max() < tok.vocab_size
    assert tok.decode(ids).replace(" ", "") == text.replace(" ", "")


def test_a_bf16_checkpoint_imports(tmp_path):
    """Most LLaMA-family checkpoints are bf16, which numpy cannot name: the whole path, sharded."""
    import ml_dtypes
    from safetensors.numpy import load_file

    src = HF / "llama_gqa" / "step10"
    weights = {k: v.astype(ml_dtypes.bfloat16) for k, v in load_file(src / "model.safetensors").items()}
    folder = tmp_path / "step10"
    folder.mkdir()
    shutil.copy(src / "config.json", folder / "config.json")
    names = sorted(weights)
    index = {}
    for shard, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        header, payload = {}, b""
        for name in part:
            raw = weights[name].tobytes()
            header[name] = {"dtype": "BF16", "shape": list(weights[name].shape),
                            "data_offsets": [len(payload), len(payload) + len(raw)]}
            payload += raw
        text = json.dumps(header).encode()
        (folder / f"s{shard}.safetensors").write_bytes(len(text).to_bytes(8, "little") + text + payload)
        index.update({name: f"s{shard}.safetensors" for name in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
    _, got = hf_import.load_checkpoint(folder)
    _, want = hf_import.load_checkpoint(src)
    import jax

    rounded = jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32), want)
    assert hf_import.checksum(got) == hf_import.checksum(rounded)


def test_download_without_huggingface_hub_is_one_line(tmp_path, capsys):
    try:
        import huggingface_hub  # noqa: F401
        pytest.skip("huggingface_hub is installed: a download would be attempted")
    except ImportError:
        pass
    argv = ["import", "--model", "EleutherAI/pythia-14m", "--steps", "0", "--cache-dir", str(tmp_path / "hub"),
            "--out", str(tmp_path / "run")]
    assert cli(argv) == 2
    assert "needs huggingface_hub: pip install 'ontogeny[hub]'" in error_line(capsys)


def test_download_path_with_a_stubbed_hub(tmp_path, monkeypatch):
    """The non-offline path, with huggingface_hub's two calls replaced (no network in tests)."""
    hub = pytest.importorskip("huggingface_hub")
    calls = []

    def snapshot_download(repo_id, revision, cache_dir, allow_patterns):
        calls.append((repo_id, revision, tuple(allow_patterns)))
        commit = f"{len(calls):040x}"
        base = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
        shutil.copytree(NEOX / revision, base / "snapshots" / commit)
        (base / "refs").mkdir(parents=True, exist_ok=True)
        (base / "refs" / revision).write_text(commit)
        return str(base / "snapshots" / commit)

    monkeypatch.setattr(hub, "list_repo_files", lambda repo_id, revision: ["config.json", "model.safetensors"])
    monkeypatch.setattr(hub, "snapshot_download", snapshot_download)
    argv = ["import", "--model", "org/tiny", "--steps", "0,100", "--cache-dir", str(tmp_path / "hub"),
            "--out", str(tmp_path / "run")]
    assert cli(argv) == 0
    assert [c[:2] for c in calls] == [("org/tiny", "step0"), ("org/tiny", "step100")]
    assert "*.safetensors" in calls[0][2] and not any(".bin" in p for p in calls[0][2])
    assert cli(argv[:4] + ["0,100,200"] + argv[5:]) == 0  # cached revisions are not fetched again
    assert [c[1] for c in calls] == ["step0", "step100", "step200"]


# ----------------------------------------------------------------------------- new families
def test_llama3_rope_names_of_transformers_4_and_5_agree_and_other_scalings_are_refused(tmp_path, capsys):
    v5 = json.loads((HF / "llama3_rope" / "step0" / "config.json").read_text())
    config = hf_import.family_config(v5)
    assert (config.rope_type, config.rope_factor, config.rope_original_context) == ("llama3", 8.0, 32)
    rope = dict(v5["rope_parameters"])
    v4 = {k: v for k, v in v5.items() if k != "rope_parameters"}
    v4.update(rope_theta=rope.pop("rope_theta"), rope_scaling={**rope, "type": rope.pop("rope_type")})
    assert hf_import.family_config(v4) == config
    root = suite(tmp_path, 0, case=HF / "llama3_rope")
    v5["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    (root / "step0" / "config.json").write_text(json.dumps(v5))
    assert cli(["import", "--from", str(root), "--out", str(tmp_path / "run")]) == 2
    assert "rope type 'yarn' is not supported here (only default, llama3)" in error_line(capsys)


def test_olmo2_norms_are_read_from_their_own_names():
    """q/k norms span the whole projection (H*E and G*E wide); the post-sublayer norms are kept apart."""
    from safetensors.numpy import load_file

    config, params = hf_import.load_checkpoint(HF / "olmo2_gqa" / "step1000")
    raw = load_file(HF / "olmo2_gqa" / "step1000" / "model.safetensors")
    b = params["blocks"]
    assert b["attn"]["q_norm"]["scale"].shape == (config.n_layer, config.n_head * config.d_head)
    assert b["attn"]["k_norm"]["scale"].shape == (config.n_layer, config.n_kv_head * config.d_head)
    for i in range(config.n_layer):
        np.testing.assert_array_equal(b["attn_norm"]["scale"][i], raw[f"model.layers.{i}.post_attention_layernorm.weight"])
        np.testing.assert_array_equal(b["mlp_norm"]["scale"][i], raw[f"model.layers.{i}.post_feedforward_layernorm.weight"])
        np.testing.assert_array_equal(b["attn"]["k_norm"]["scale"][i], raw[f"model.layers.{i}.self_attn.k_norm.weight"])


@pytest.mark.parametrize("case,step,norm_head", [("baichuan7b", "step0", False), ("baichuan2_7b", "train_00220B", True)])
def test_baichuan_versions_told_apart_by_their_remote_code(case, step, norm_head):
    """W_pack rows are [Q | K | V]; Baichuan2's head is served normalised, the stored one kept."""
    from safetensors.numpy import load_file
    from models import families

    folder = HF / case / step
    config, params = hf_import.load_checkpoint(folder)
    assert config.family == "baichuan" and config.norm_head is norm_head
    raw = load_file(folder / "model.safetensors")
    D = config.d_model
    w_pack = raw["model.layers.1.self_attn.W_pack.weight"]                       # [3D, D]
    for j, name in enumerate(("w_q", "w_k", "w_v")):
        np.testing.assert_array_equal(params["blocks"]["attn"][name][1], w_pack[j * D:(j + 1) * D].T)
    head = raw["lm_head.weight"]
    np.testing.assert_array_equal(params["lm_head"], head.T)  # stored as published
    served = np.asarray(families.unembedding_matrix(params, config))
    want = head / np.linalg.norm(head, axis=1, keepdims=True) if norm_head else head
    np.testing.assert_allclose(served, want, rtol=1e-6, atol=1e-7)
    assert np.abs(np.linalg.norm(head, axis=1) - 1).max() > 0.1  # the fixture's head is not normalised already


def _no_remote_code(root):
    (root / "step0" / "modeling_baichuan.py").unlink()


def _alibi(root):
    path = root / "step0" / "modeling_baichuan.py"
    path.write_text(path.read_text() + "\ndef _gen_alibi_mask(tensor, n_head, max_pos): ...\n")


def _contradiction(root):
    code = (HF / "baichuan2_7b" / "train_00220B" / "modeling_baichuan.py").read_text()
    (root / "step0" / "modeling_baichuan.py").write_text(code)  # Baichuan2's code beside Baichuan-7B's config


@pytest.mark.parametrize("damage,match", [
    (_no_remote_code, "must carry its modeling_baichuan.py, which tells Baichuan-7B (plain head) from Baichuan2"),
    (_alibi, "uses ALiBi position biases (the 13B models), which Ontogeny does not serve"),
    (_contradiction, "names Baichuan-7B (BaiChuanForCausalLM) but modeling_baichuan.py defines Baichuan2's NormHead"),
])
def test_a_baichuan_that_cannot_be_told_apart_is_refused_with_one_line(tmp_path, capsys, damage, match):
    root = suite(tmp_path, 0, case=HF / "baichuan7b")
    damage(root)
    assert cli(["import", "--from", str(root), "--out", str(tmp_path / "run")]) == 2
    line = error_line(capsys)
    assert match in line and str(root / "step0" / "config.json") in line
    assert not (tmp_path / "run" / "model.json").exists()  # nothing was imported


# ----------------------------------------------------------------------------- stage series
def test_stages_reads_which_checkpoints_belong_to_which_stage(tmp_path, capsys):
    from dynamics.checkpoints import stages

    run = tmp_path / "run"
    case = HF / "olmo2_gqa"
    assert cli(["import", "--from", str(case), "--out", str(run), "--steps", "1000", "--stage", "rl"]) == 0
    assert cli(["import", "--from", str(case), "--out", str(run), "--steps", "0,2000"]) == 0
    assert cli(["import", "--from", str(case), "--out", str(run), "--steps", "0", "--stage", "sft"]) == 0
    assert stages(run) == {"rl": [1000], "pretrain": [0, 2000], "sft": [0]}      # the order they were saved in
    assert list(stages(run)) == ["rl", "pretrain", "sft"]
    (run / "checkpoints" / "stages.json").unlink()                                # a run from before the record
    assert list(stages(run)) == ["pretrain", "sft", "rl"]
    capsys.readouterr()
    assert cli(["import", "--from", str(case), "--out", str(run), "--steps", "0", "--stage", "../x"]) == 2
    assert "--stage '../x' is not a plain name" in error_line(capsys)
    with pytest.raises(OntogenyError, match="holds no checkpoint series"):
        stages(tmp_path / "empty")


def test_revision_sets_name_the_published_branches():
    """Names seen verbatim in public code that loads these revisions (the hub is not reachable here)."""
    sets = {name: s.revisions for name, s in hf_hub.REVISION_SETS.items()}
    seen = {"olmo2-1b-stage1": {0: "stage1-step0-tokens0B", 10000: "stage1-step10000-tokens21B",
                                20000: "stage1-step20000-tokens42B", 40000: "stage1-step40000-tokens84B",
                                1907359: "stage1-step1907359-tokens4001B"},
            "olmo2-7b-stage1": {150: "stage1-step150-tokens1B", 1000: "stage1-step1000-tokens5B",
                                5000: "stage1-step5000-tokens21B", 10000: "stage1-step10000-tokens42B",
                                40000: "stage1-step40000-tokens168B", 97000: "stage1-step97000-tokens407B",
                                179000: "stage1-step179000-tokens751B", 282000: "stage1-step282000-tokens1183B",
                                409000: "stage1-step409000-tokens1716B", 516000: "stage1-step516000-tokens2165B",
                                619000: "stage1-step619000-tokens2597B", 722000: "stage1-step722000-tokens3029B",
                                825000: "stage1-step825000-tokens3461B", 928646: "stage1-step928646-tokens3896B"},
            "olmo2-7b-stage2": {s: f"stage2-ingredient1-step{s}-tokens{t}B"
                                for s, t in ((2000, 9), (3000, 13), (4000, 17), (5000, 21), (6000, 26), (7000, 30))},
            "baichuan2-7b": {220: "train_00220B", 440: "train_00440B", 660: "train_00660B", 880: "train_00880B",
                             1100: "train_01100B", 1320: "train_01320B", 1540: "train_01540B", 1760: "train_01760B",
                             1980: "train_01980B", 2200: "train_02200B", 2420: "train_02420B"}}
    for name, names in seen.items():
        assert {s: sets[name][s] for s in names} == names
    assert set(seen["olmo2-7b-stage1"]) == set(sets["olmo2-7b-stage1"]) and len(sets["baichuan2-7b"]) == 11
    assert hf_hub.REVISION_SETS["olmo2-7b-stage2"].stage == "midtrain"
    assert hf_hub.revisions("0=main, 2640=main") == ([(0, "main"), (2640, "main")], None)
    assert hf_hub.revisions("0,1000", "global_step{step}") == ([(0, "global_step0"), (1000, "global_step1000")], None)
    for spec, pattern, repo, match in (("olmo2-7b-stage2", None, "allenai/OLMo-2-0425-1B", "names branches of"),
                                       ("baichuan2-7b", "step{step}", None, "--pattern does not apply"),
                                       ("0=main,x=y", None, None, "is not STEP=REVISION")):
        with pytest.raises(OntogenyError, match=match):
            hf_hub.revisions(spec, pattern, repo)


def test_a_revision_set_imports_from_the_hub_cache_with_its_stage(tmp_path):
    """OLMo-2's stage-2 branches, from an offline hub cache, land in the set's stage (midtrain)."""
    from dynamics.checkpoints import stages

    repo = "allenai/OLMo-2-1124-7B"
    names = hf_hub.REVISION_SETS["olmo2-7b-stage2"].revisions
    cache = tmp_path / "hub"
    base = cache / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True)
    for i, (step, name) in enumerate(sorted(names.items())):
        commit = f"{step:040x}"
        shutil.copytree(HF / "olmo2_gqa" / ("step0", "step1000", "step2000")[i % 3], base / "snapshots" / commit)
        (base / "refs" / name).write_text(commit)
    run = tmp_path / "run"
    argv = ["import", "--model", repo, "--steps", "olmo2-7b-stage2", "--cache-dir", str(cache), "--offline",
            "--out", str(run), "--allow-duplicates"]
    assert cli(argv) == 0
    assert stages(run) == {"midtrain": sorted(names)}


def test_step_folders_named_by_revision(tmp_path):
    """OLMo-2's and Baichuan2's branch names are found as step folders; STEP=REVISION picks folders by name."""
    root = tmp_path / "suite"
    for name in ("stage1-step0-tokens0B", "stage1-step1000-tokens3B", "stage2-ingredient1-step2000-tokens9B"):
        (root / name).mkdir(parents=True)
    assert [s for s, _ in hf_import.find_steps(root)] == [0, 1000]
    assert [s for s, _ in hf_import.find_steps(root, "stage2-ingredient1-step{step}-tokens*")] == [2000]
    assert [s for s, _ in hf_import.find_steps(HF / "baichuan2_7b")] == [220, 440]
    run = tmp_path / "run"
    assert cli(["import", "--from", str(HF / "baichuan2_7b"), "--out", str(run), "--steps", "440=train_00440B"]) == 0
    got = json.loads((run / "import.json").read_text())["stages"]["pretrain"]
    _, want = hf_import.load_checkpoint(HF / "baichuan2_7b" / "train_00440B")
    assert list(got) == ["440"] and got["440"]["checksum"] == hf_import.checksum(want)
