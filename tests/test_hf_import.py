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
