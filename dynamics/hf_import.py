"""Reading Hugging Face checkpoint folders into Ontogeny's stacked params pytrees.

One checkpoint folder holds `config.json` and its weights: `model.safetensors`, or shards named
by `model.safetensors.index.json`, or (only when torch is importable) `pytorch_model.bin`.
Safetensors are read with numpy (`safetensors.numpy`; bf16 tensors, which numpy cannot name,
through a small reader of the same format). Buffers old checkpoints carry (`attention.bias`,
`masked_bias`, `rotary_emb.inv_freq`) are dropped; every other weight must be mapped, so a
checkpoint of another architecture or config is refused rather than half-read. Every failure
raises `OntogenyError` with one line naming the step folder and the fix.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from models.errors import OntogenyError, require
from models import hf_gpt2, llama, neox

BUFFERS = re.compile(r"(\.(attention|attn)\.(bias|masked_bias)|rotary_emb\.inv_freq)$")
SUPPORTED = {"gpt_neox": "GPT-NeoX / Pythia", "llama": "LLaMA family", "gpt2": "GPT-2"}
DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": "bfloat16"}


def np_dtype(name: str):
    require(name in DTYPES, f"dtype {name!r} is not supported; choose one of {sorted(DTYPES)}")
    if name == "bfloat16":
        import ml_dtypes
        return ml_dtypes.bfloat16
    return DTYPES[name]


# ----------------------------------------------------------------------------- config.json
def read_config(folder: Path) -> dict:
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise OntogenyError(f"{path} is missing or not JSON ({type(e).__name__}); every step folder needs the "
                            f"config.json of its Hugging Face checkpoint") from None


def _rope(cfg: dict) -> dict:
    """RoPE settings under either transformers 5 (`rope_parameters`) or 4.x names."""
    rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    require(rope_type == "default", f"rope type {rope_type!r} is not supported (only the default RoPE); "
                                    f"import a checkpoint without rope scaling")
    theta = rope.get("rope_theta", cfg.get("rope_theta", cfg.get("rotary_emb_base", 10000.0)))
    pct = rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", cfg.get("rotary_pct")))
    return {"theta": float(theta), "pct": pct}


def family_config(cfg: dict, where: str = "config.json"):
    """The family config for a Hugging Face config dict (transformers 4.x or 5.x names)."""
    kind = cfg.get("model_type")
    if kind not in SUPPORTED:
        arch = ",".join(cfg.get("architectures") or []) or "none named"
        raise OntogenyError(f"{where}: unknown architecture model_type={kind!r} ({arch}); supported: "
                            f"{', '.join(f'{k} ({v})' for k, v in SUPPORTED.items())}")
    try:
        return _family_config(kind, cfg)
    except KeyError as e:
        raise OntogenyError(f"{where}: the {kind} config lacks {e}; is this a complete Hugging Face config?") from None


def _family_config(kind: str, cfg: dict):
    if kind == "gpt_neox":
        rope = _rope(cfg)
        require(not cfg.get("tie_word_embeddings", False), "tied GPT-NeoX embeddings are not supported")
        return neox.NeoXConfig(
            vocab_size=cfg["vocab_size"], context=cfg.get("max_position_embeddings", 2048),
            n_layer=cfg["num_hidden_layers"], n_head=cfg["num_attention_heads"], d_model=cfg["hidden_size"],
            d_mlp=cfg["intermediate_size"], rotary_pct=float(0.25 if rope["pct"] is None else rope["pct"]),
            rotary_base=rope["theta"], parallel_residual=bool(cfg.get("use_parallel_residual", True)),
            layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-5)), activation=cfg.get("hidden_act", "gelu"))
    if kind == "llama":
        rope = _rope(cfg)
        require(rope["pct"] in (None, 1.0), "partial rotary LLaMA checkpoints are not supported")
        H, D = cfg["num_attention_heads"], cfg["hidden_size"]
        return llama.LlamaConfig(
            vocab_size=cfg["vocab_size"], context=cfg.get("max_position_embeddings", 2048),
            n_layer=cfg["num_hidden_layers"], n_head=H, n_kv_head=cfg.get("num_key_value_heads") or H,
            d_model=D, d_head=cfg.get("head_dim") or D // H, d_mlp=cfg["intermediate_size"],
            rope_theta=rope["theta"], rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", False)), mlp_bias=bool(cfg.get("mlp_bias", False)),
            activation=cfg.get("hidden_act", "silu"))
    D = cfg["n_embd"]
    return hf_gpt2.HFGPT2Config(
        vocab_size=cfg["vocab_size"], context=cfg["n_positions"], n_layer=cfg["n_layer"], n_head=cfg["n_head"],
        d_model=D, d_mlp=cfg.get("n_inner") or 4 * D, layer_norm_eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
        activation=cfg.get("activation_function", "gelu_new"),
        scale_attn_weights=bool(cfg.get("scale_attn_weights", True)),
        scale_attn_by_inverse_layer_idx=bool(cfg.get("scale_attn_by_inverse_layer_idx", False)),
        reorder_and_upcast_attn=bool(cfg.get("reorder_and_upcast_attn", False)),
        tied_embeddings=bool(cfg.get("tie_word_embeddings", True)))


# ----------------------------------------------------------------------------- weights
def _read_safetensors_raw(path: Path) -> dict:
    """The safetensors format read directly (8-byte header length, JSON header, raw bytes), for
    dtypes numpy cannot name (bf16)."""
    import ml_dtypes

    kinds = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32, "F64": np.float64,
             "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, stop = info["data_offsets"]
        raw = data[8 + n + start: 8 + n + stop]
        require(len(raw) == stop - start, f"{path} is truncated")
        out[name] = np.frombuffer(raw, dtype=kinds[info["dtype"]]).reshape(info["shape"]).copy()
    return out


def read_safetensors(path: Path) -> dict:
    from safetensors.numpy import load_file

    try:
        try:
            return load_file(path)
        except TypeError:  # bf16: numpy has no name for it
            return _read_safetensors_raw(path)
    except OntogenyError:
        raise
    except Exception as e:  # SafetensorError, JSON and size errors alike
        raise OntogenyError(f"{path} is corrupt or unreadable ({type(e).__name__}); download that step again") from None


def _read_torch_bin(path: Path) -> dict:
    try:
        import torch
    except ImportError:
        raise OntogenyError(f"{path.parent} has only pytorch_model.bin, which needs torch to read; "
                            f"install torch (CPU build) or convert the checkpoint to safetensors") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise OntogenyError(f"{path} is corrupt or unreadable ({type(e).__name__}); download that step again") from None
    return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy() for k, v in state.items()}


def read_weights(folder: Path) -> dict:
    """Every tensor of one checkpoint folder, by its Hugging Face name (buffers dropped)."""
    folder = Path(folder)
    for index_name, reader in (("model.safetensors.index.json", read_safetensors),
                               ("pytorch_model.bin.index.json", _read_torch_bin)):
        index = folder / index_name
        if index.exists():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError):
                raise OntogenyError(f"{index} is not a valid shard index; download that step again") from None
            missing = [s for s in shards if not (folder / s).exists()]
            if missing:
                raise OntogenyError(f"{folder}: shard {missing[0]} named in {index_name} is missing "
                                    f"({len(missing)} of {len(shards)} missing); download that step again")
            weights = {}
            for shard in shards:
                weights.update(reader(folder / shard))
            return {k: v for k, v in weights.items() if not BUFFERS.search(k)}
    if (folder / "model.safetensors").exists():
        weights = read_safetensors(folder / "model.safetensors")
    elif (folder / "pytorch_model.bin").exists():
        weights = _read_torch_bin(folder / "pytorch_model.bin")
    else:
        raise OntogenyError(f"{folder} has no model.safetensors, shard index or pytorch_model.bin; "
                            f"point at a Hugging Face checkpoint folder")
    return {k: v for k, v in weights.items() if not BUFFERS.search(k)}


# ----------------------------------------------------------------------------- name mapping
class _Taker:
    """Pops named tensors (fp32), stacking per-layer ones on a leading layer axis."""

    def __init__(self, weights: dict, where: str):
        self.weights, self.where = dict(weights), where

    def one(self, *names, transpose=False, optional=False):
        for name in names:
            if name in self.weights:
                x = np.asarray(self.weights.pop(name), np.float32)
                return x.T if transpose else x
        if optional:
            return None
        raise OntogenyError(f"{self.where}: weight {names[0]!r} is missing; the checkpoint does not match its "
                            f"config.json (or is incomplete): download that step again")

    def layers(self, template: str, n: int, transpose=False, optional=False):
        parts = [self.one(template.format(i=i), transpose=transpose, optional=optional) for i in range(n)]
        return None if parts[0] is None else np.stack(parts)

    def finish(self, params: dict) -> dict:
        if self.weights:
            extra = sorted(self.weights)
            raise OntogenyError(f"{self.where}: {len(extra)} weights have no place in the model (e.g. {extra[0]!r}); "
                                f"the checkpoint does not match its config.json's architecture")
        return params


def _ln(take, template, n=None, bias=True):
    get = (lambda t: take.layers(t, n)) if n is not None else take.one
    out = {"scale": get(template + ".weight")}
    if bias:
        out["bias"] = get(template + ".bias")
    return out


def _neox(take: _Taker, c) -> dict:
    L, H, E, D = c.n_layer, c.n_head, c.d_head, c.d_model
    p = "gpt_neox.layers.{i}."
    w = take.layers(p + "attention.query_key_value.weight", L, transpose=True)        # [L, D, H*3*E]
    b = take.layers(p + "attention.query_key_value.bias", L, optional=True)
    b = np.zeros((L, 3 * D), np.float32) if b is None else b
    w_qkv = w.reshape(L, D, H, 3, E).transpose(0, 1, 3, 2, 4).reshape(L, D, 3 * D)  # per-head -> [Q|K|V]
    b_qkv = b.reshape(L, H, 3, E).transpose(0, 2, 1, 3).reshape(L, 3 * D)
    zeros = lambda: np.zeros((L, D), np.float32)
    b_out = take.layers(p + "attention.dense.bias", L, optional=True)
    return {
        "wte": take.one("gpt_neox.embed_in.weight"),
        "blocks": {
            "ln1": _ln(take, p + "input_layernorm", L),
            "attn": {"w_qkv": w_qkv, "b_qkv": b_qkv, "w_out": take.layers(p + "attention.dense.weight", L, True),
                     "b_out": zeros() if b_out is None else b_out},
            "ln2": _ln(take, p + "post_attention_layernorm", L),
            "mlp": {"w_in": take.layers(p + "mlp.dense_h_to_4h.weight", L, True),
                    "b_in": take.layers(p + "mlp.dense_h_to_4h.bias", L),
                    "w_out": take.layers(p + "mlp.dense_4h_to_h.weight", L, True),
                    "b_out": take.layers(p + "mlp.dense_4h_to_h.bias", L)},
        },
        "ln_f": _ln(take, "gpt_neox.final_layer_norm"),
        "lm_head": take.one("embed_out.weight", "lm_head.weight", transpose=True),
    }


def _llama(take: _Taker, c) -> dict:
    L, p = c.n_layer, "model.layers.{i}."
    attn, mlp = {}, {}
    for ours, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("out", "o_proj")):
        attn["w_" + ours] = take.layers(p + f"self_attn.{theirs}.weight", L, transpose=True)
        if c.attention_bias:
            attn["b_" + ours] = take.layers(p + f"self_attn.{theirs}.bias", L)
    for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("out", "down_proj")):
        mlp["w_" + ours] = take.layers(p + f"mlp.{theirs}.weight", L, transpose=True)
        if c.mlp_bias:
            mlp["b_" + ours] = take.layers(p + f"mlp.{theirs}.bias", L)
    params = {"wte": take.one("model.embed_tokens.weight"),
              "blocks": {"ln1": _ln(take, p + "input_layernorm", L, bias=False), "attn": attn,
                         "ln2": _ln(take, p + "post_attention_layernorm", L, bias=False), "mlp": mlp},
              "ln_f": _ln(take, "model.norm", bias=False)}
    head = take.one("lm_head.weight", transpose=True, optional=c.tied_embeddings)
    if not c.tied_embeddings:
        params["lm_head"] = head
    return params


def _gpt2(take: _Taker, c) -> dict:
    take.weights = {k.removeprefix("transformer."): v for k, v in take.weights.items()}  # prefix may be absent
    L, p = c.n_layer, "h.{i}."
    params = {
        "wte": take.one("wte.weight"), "wpe": take.one("wpe.weight"),
        "blocks": {
            "ln1": _ln(take, p + "ln_1", L),
            "attn": {"w_qkv": take.layers(p + "attn.c_attn.weight", L), "b_qkv": take.layers(p + "attn.c_attn.bias", L),
                     "w_out": take.layers(p + "attn.c_proj.weight", L), "b_out": take.layers(p + "attn.c_proj.bias", L)},
            "ln2": _ln(take, p + "ln_2", L),
            "mlp": {"w_in": take.layers(p + "mlp.c_fc.weight", L), "b_in": take.layers(p + "mlp.c_fc.bias", L),
                    "w_out": take.layers(p + "mlp.c_proj.weight", L), "b_out": take.layers(p + "mlp.c_proj.bias", L)},
        },
        "ln_f": _ln(take, "ln_f"),
    }
    head = take.one("lm_head.weight", transpose=True, optional=True)
    if not c.tied_embeddings:
        require(head is not None, f"{take.where}: untied GPT-2 without lm_head.weight")
        params["lm_head"] = head
    return params


def convert(weights: dict, config, where: str = "checkpoint") -> dict:
    """Hugging Face tensors -> the family's stacked params pytree (fp32, [in, out] matrices)."""
    take = _Taker(weights, where)
    params = {"gpt_neox": _neox, "llama": _llama, "gpt2": _gpt2}[config.family](take, config)
    return take.finish(params)


def load_checkpoint(folder: Path, dtype: str = "float32"):
    """(family config, params pytree in `dtype`) for one Hugging Face checkpoint folder."""
    folder = Path(folder)
    config = family_config(read_config(folder), str(folder / "config.json"))
    params = convert(read_weights(folder), config, str(folder))
    target = np_dtype(dtype)
    return config, _map(lambda x: x.astype(target), params)


# ----------------------------------------------------------------------------- integrity
def _map(fn, tree):
    return {k: _map(fn, v) for k, v in tree.items()} if isinstance(tree, dict) else fn(tree)


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        for k in sorted(tree):
            yield from _flat(tree[k], f"{prefix}/{k}" if prefix else k)
    else:
        yield prefix, np.asarray(tree)


def checksum(params) -> str:
    """sha256 over every leaf's path, dtype, shape and bytes, in sorted path order."""
    h = hashlib.sha256()
    for path, x in _flat(params):
        h.update(f"{path}|{x.dtype}|{x.shape}|".encode())
        h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


def nonfinite(params) -> list[str]:
    """Paths of leaves holding NaN or inf."""
    return [path for path, x in _flat(params) if not np.isfinite(x.astype(np.float32)).all()]


def find_steps(root: Path, pattern: str | None = None) -> list[tuple[int, Path]]:
    """[(step, folder)] under `root`, sorted by step. `pattern` names folders with `{step}`
    (e.g. "global_step{step}"); by default Pythia's `step{N}` and stanford-crfm's `checkpoint-{N}`."""
    root = Path(root)
    if not root.is_dir():
        raise OntogenyError(f"{root} is not a folder; --from takes a folder holding one checkpoint folder per step")
    patterns = [pattern] if pattern else ["step{step}", "checkpoint-{step}"]
    require(all("{step}" in p for p in patterns), f"--pattern {pattern!r} must contain {{step}}, e.g. step{{step}}")
    regexes = [re.compile("^" + re.escape(p).replace(re.escape("{step}"), r"(\d+)") + "$") for p in patterns]
    found = {}
    for child in root.iterdir():
        for rx in regexes:
            m = rx.match(child.name)
            if m and child.is_dir():
                step = int(m.group(1))
                require(step not in found, f"{root} has two folders for step {step} ({found.get(step, Path()).name}, "
                                           f"{child.name}); keep one")
                found[step] = child
    require(found, f"{root} has no step folders named {' or '.join(patterns)}; use --pattern to name them")
    return sorted(found.items())

