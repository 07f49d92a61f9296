"""Reading Hugging Face checkpoint folders into Ontogeny's stacked params pytrees.

One checkpoint folder holds `config.json` and its weights: `model.safetensors`, or shards named
by `model.safetensors.index.json`, or (only when torch is importable) `pytorch_model.bin`.
Safetensors are read with numpy (`safetensors.numpy`; bf16 tensors, which numpy cannot name,
through a small reader of the same format). Buffers old checkpoints carry (`attention.bias`,
`masked_bias`, `rotary_emb.inv_freq`) are dropped; every other weight must be mapped, so a
checkpoint of another architecture or config is refused rather than half-read. Every failure
raises `OntogenyError` with one line naming the step folder and the fix.

This module is the same for every family: it reads files, shards and dtypes, and checks
integrity. The family (registered in `models.families`, chosen by config.json's `model_type`)
translates the config (`config_from_hf`, which also sees the folder's remote code, `*.py`) and
converts the weights (`convert`); see `models.family` for that interface.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from models import families
from models.errors import OntogenyError, require
from models.family import Weights

BUFFERS = re.compile(r"(\.(attention|attn)\.(bias|masked_bias)|rotary_emb\.inv_freq)$")
DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": "bfloat16"}
REMOTE_CODE_BYTES = 1 << 20  # [choice] *.py files up to 1 MiB are read as the checkpoint's remote code


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


def read_remote_code(folder: Path) -> dict[str, str]:
    """{file name: text} of the folder's `*.py` files (the checkpoint's remote code; read, never run)."""
    code = {}
    for path in sorted(Path(folder).glob("*.py")):
        if path.is_file() and path.stat().st_size <= REMOTE_CODE_BYTES:
            code[path.name] = path.read_text(errors="replace")
    return code


def family_config(cfg: dict, where: str = "config.json", remote_code: dict | None = None):
    """The family config for a Hugging Face config dict (transformers 4.x or 5.x names)."""
    kind = cfg.get("model_type")
    module = families.for_model_type(kind)
    if module is None:
        arch = ",".join(cfg.get("architectures") or []) or "none named"
        known = families.imported_families()
        raise OntogenyError(f"{where}: unknown architecture model_type={kind!r} ({arch}); supported: "
                            f"{', '.join(f'{k} ({m.TITLE})' for k, m in known.items())}")
    try:
        return module.config_from_hf(cfg, remote_code or {})
    except KeyError as e:
        raise OntogenyError(f"{where}: the {kind} config lacks {e}; is this a complete Hugging Face config?") from None
    except OntogenyError as e:
        raise OntogenyError(f"{where}: {e}") from None


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


# ----------------------------------------------------------------------------- conversion
def convert(weights: dict, config, where: str = "checkpoint") -> dict:
    """Hugging Face tensors -> the family's stacked params pytree (fp32, [in, out] matrices);
    every tensor must find its place."""
    take = Weights(weights, where)
    return take.finish(families.module_of(config).convert(take, config))


def load_checkpoint(folder: Path, dtype: str = "float32"):
    """(family config, params pytree in `dtype`) for one Hugging Face checkpoint folder."""
    folder = Path(folder)
    config = family_config(read_config(folder), str(folder / "config.json"), read_remote_code(folder))
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


DEFAULT_PATTERNS = ("step{step}", "checkpoint-{step}", "stage1-step{step}-tokens*", "train_{step}B")


def find_steps(root: Path, pattern: str | None = None) -> list[tuple[int, Path]]:
    """[(step, folder)] under `root`, sorted by step. `pattern` names folders with `{step}` and
    optionally `*` for any text (e.g. "global_step{step}", "stage2-ingredient1-step{step}-tokens*");
    by default Pythia's `step{N}`, stanford-crfm's `checkpoint-{N}`, OLMo-2's pretraining branches
    `stage1-step{N}-tokens{T}B` and Baichuan2's `train_{N}B` (N billions of tokens, zero-padded)."""
    root = Path(root)
    if not root.is_dir():
        raise OntogenyError(f"{root} is not a folder; --from takes a folder holding one checkpoint folder per step")
    patterns = [pattern] if pattern else list(DEFAULT_PATTERNS)
    require(all("{step}" in p for p in patterns), f"--pattern {pattern!r} must contain {{step}}, e.g. step{{step}}")
    regexes = [re.compile("^" + re.escape(p).replace(re.escape("{step}"), r"(\d+)").replace(re.escape("*"), ".*") + "$")
               for p in patterns]
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
