"""`python -m experiments bench suite`: the studies on a Pythia-70M-shaped suite, streamed.

A randomly initialised suite of Pythia-70M's shape (GPT-NeoX, 6 layers, width 512, 8 heads,
MLP 2048, rotary 0.25, parallel residual, the real padded vocabulary 50304) is written as
Hugging Face `stepN/` folders with numpy (safetensors written by hand: no torch, no
safetensors package), imported with `python -m experiments import` (bf16 storage), then run
through crosscoders (Ge et al.'s preset, shortened) and NeuroMFA (Xiao et al.'s preset). Each
command runs in its own process, so its wall time and peak RSS are its own.

[choice] Weights: N(0, 0.02) at step 0, every later step a fresh draw with std growing by 5% a
checkpoint (the study code does not care that they are random). Tokenizer: bytes (no BPE file
is available offline); the model keeps Pythia's 50304-row embedding. Set ONTOGENY_SUITE_DIR to
keep the suite between runs (default: a temporary folder, deleted afterwards).
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from models.errors import OntogenyError

PYTHIA_70M = {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "hidden_size": 512,
              "intermediate_size": 2048, "num_attention_heads": 8, "num_hidden_layers": 6,
              "max_position_embeddings": 2048, "rotary_pct": 0.25, "rotary_emb_base": 10000,
              "use_parallel_residual": True, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
              "tie_word_embeddings": False, "vocab_size": 50304}
_DTYPES = {"float16": "F16", "float32": "F32"}


def write_safetensors(path: Path, tensors: dict) -> None:
    """The safetensors format: 8-byte header length, JSON header, raw little-endian data."""
    header, offset = {}, 0
    for name, a in tensors.items():
        header[name] = {"dtype": _DTYPES[a.dtype.name], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for a in tensors.values():
            f.write(np.ascontiguousarray(a).tobytes())


def neox_weights(cfg: dict, rng: np.random.Generator, std: float) -> dict:
    """Every GPT-NeoX tensor under the hub's names, fp16, norms and biases randomised too."""
    D, F, V, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    draw = lambda *shape: (std * rng.standard_normal(shape, np.float32)).astype(np.float16)
    norm = lambda: (1 + draw(D)).astype(np.float16)
    out = {"gpt_neox.embed_in.weight": draw(V, D), "embed_out.weight": draw(V, D),
           "gpt_neox.final_layer_norm.weight": norm(), "gpt_neox.final_layer_norm.bias": draw(D)}
    for i in range(L):
        p = f"gpt_neox.layers.{i}."
        out.update({p + "input_layernorm.weight": norm(), p + "input_layernorm.bias": draw(D),
                    p + "post_attention_layernorm.weight": norm(), p + "post_attention_layernorm.bias": draw(D),
                    p + "attention.query_key_value.weight": draw(3 * D, D), p + "attention.query_key_value.bias": draw(3 * D),
                    p + "attention.dense.weight": draw(D, D), p + "attention.dense.bias": draw(D),
                    p + "mlp.dense_h_to_4h.weight": draw(F, D), p + "mlp.dense_h_to_4h.bias": draw(F),
                    p + "mlp.dense_4h_to_h.weight": draw(D, F), p + "mlp.dense_4h_to_h.bias": draw(D)})
    return out


def make_suite(root: Path, steps, cfg: dict = PYTHIA_70M, seed: int = 0) -> Path:
    """HF checkpoint folders root/stepN/{config.json, model.safetensors, tokenizer.json}."""
    rng = np.random.default_rng(seed)
    for i, step in enumerate(steps):
        folder = root / f"step{step}"
        if (folder / "model.safetensors").exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(cfg))
        (folder / "tokenizer.json").write_text(json.dumps({"bytes": 256}))
        write_safetensors(folder / "model.safetensors.tmp", neox_weights(cfg, rng, 0.02 * 1.05 ** i))
        os.replace(folder / "model.safetensors.tmp", folder / "model.safetensors")
    return root


def measured(argv: list[str]) -> dict:
    """One CLI command (`python -m experiments ARGV`) in a child process: its wall time and peak
    RSS (GiB, from the child's own rusage)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "experiments", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        raise OntogenyError(f"bench suite: `{' '.join(argv[:2])}` failed: {tail}")
    return {"rc": 0, "wall_s": wall, "peak_rss_gib": usage.ru_maxrss * 1024 / 2**30}


def bench(quick: bool = False, n_steps: int | None = None, cc_steps: int | None = None) -> dict:
    """Import, crosscoders (ge2025, shortened) and NeuroMFA (xiao2025) on the suite: wall s and
    peak RSS (GiB) for each. quick: 4 checkpoints and 2 crosscoder steps instead of 32 and 50."""
    from dynamics import hf_hub

    n_steps = n_steps or int(os.environ.get("ONTOGENY_SUITE_STEPS", 4 if quick else 32))
    cc_steps = cc_steps or (2 if quick else 50)
    steps = hf_hub.expand_steps("ge2025")[:n_steps] if n_steps <= 32 else list(range(n_steps))
    keep = os.environ.get("ONTOGENY_SUITE_DIR")
    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="suite-bench-"))
    try:
        t0 = time.perf_counter()
        make_suite(root / "hf", steps)
        made_s = time.perf_counter() - t0
        r = {"import": measured(["import", "--from", str(root / "hf"), "--out", str(root / "run"), "--dtype", "bfloat16"])}
        tag = time.strftime("%Y%m%d-%H%M%S")
        r["crosscoders"] = measured(["crosscoders", "--out", str(root / f"cc-{tag}"), "--preset", "ge2025",
                                     "--set", f"run={root / 'run'}", "--set", "site=resid_post.3",
                                     "--set", f"crosscoder.n_snapshots={len(steps)}",
                                     "--set", "crosscoder.n_features=4096", "--set", f"crosscoder.steps={cc_steps}",
                                     "--set", "crosscoder.batch_size=512",
                                     "--set", "eval_windows=8", "--set", "n_induction=8", "--set", "n_ablate=8",
                                     "--set", "n_random=1", "--set", "crosscoder.dead_tokens=20000"])
        r["neuromfa"] = measured(["neuromfa", "--out", str(root / f"nm-{tag}"), "--preset", "xiao2025",
                                  "--set", f"run={root / 'run'}"])
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    out = {"suite_checkpoints": len(steps), "suite_make_s": made_s, "suite_crosscoder_steps": cc_steps}
    for name, m in r.items():
        out[f"suite_{name}_s"], out[f"suite_{name}_peak_rss_gib"] = m["wall_s"], m["peak_rss_gib"]
    print(f"suite: {len(steps)} checkpoints of Pythia-70M's shape made in {made_s:.0f} s; " + ", ".join(
        f"{k} {m['wall_s']:.0f} s at {m['peak_rss_gib']:.2f} GiB peak RSS" for k, m in r.items()), flush=True)
    return out
