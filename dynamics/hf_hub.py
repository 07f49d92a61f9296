"""Named checkpoint step sets and the Hugging Face hub: revisions fetched with `huggingface_hub`
when it is installed (the `hub` extra), or read from a hub cache folder offline.

The step sets are copied from the suites' model cards and the papers (never read at run time):
Pythia publishes 154 revisions `step{N}`: 0, 1, 2, 4, ..., 512, then 1000 to 143000 every 1000.
"""
from __future__ import annotations

import os
from pathlib import Path

from models.errors import OntogenyError, require

_LOG = [0] + [2 ** k for k in range(10)]                                     # 0, 1, 2, 4, ..., 512
STEP_SETS = {
    # every Pythia revision (154)
    "pythia-all": _LOG + list(range(1000, 143001, 1000)),
    # [choice] a log-spaced subset of Pythia's revisions: 0, 1, ..., 512, then 1000 * 2^k, and 143000 (20)
    "pythia-log": _LOG + [1000 * 2 ** k for k in range(8)] + [143000],
    # Ge et al. 2025 (crosscoders): 32 snapshots
    "ge2025": [0] + [2 ** k for k in range(1, 10)] + list(range(1000, 10001, 1000))
              + [14000, 20000, 27000, 34000, 47000, 60000, 74000, 87000, 100000, 114000, 127000, 143000],
    # Xiao et al. 2025 (NeuroMFA): 27 steps
    "xiao2025": _LOG + [1000, 3000] + list(range(13000, 143001, 10000)),
}


def expand_steps(spec: str) -> list[int]:
    """A named set (`pythia-log`, `pythia-all`, `ge2025`, `xiao2025`) or a comma list `0,1000,...`."""
    spec = spec.strip()
    if spec in STEP_SETS:
        return list(STEP_SETS[spec])
    try:
        steps = sorted({int(s) for s in spec.split(",") if s.strip()})
    except ValueError:
        raise OntogenyError(f"--steps {spec!r} is neither a named set ({', '.join(STEP_SETS)}) nor a comma list "
                            f"of integers like 0,1000,2000") from None
    require(steps and steps[0] >= 0, f"--steps {spec!r} names no non-negative step")
    return steps


def default_cache_dir() -> Path:
    """huggingface_hub's own default: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
    return Path(home) / "hub"


def cached_snapshot(cache_dir: Path, repo_id: str, revision: str) -> Path | None:
    """The snapshot folder of `revision` in a hub cache, or None when it is not cached.

    Layout: CACHE/models--ORG--NAME/refs/REVISION holds a commit hash; the files are under
    CACHE/models--ORG--NAME/snapshots/HASH/ (a revision given as a commit hash is looked up directly).
    """
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    ref = repo / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = repo / "snapshots" / commit
    return snapshot if complete_snapshot(snapshot) else None


def complete_snapshot(snapshot: Path) -> bool:
    """Whether a snapshot holds config.json and every weight file (a download interrupted midway
    leaves some out; such a snapshot counts as not cached, so it is downloaded again)."""
    import json

    if not (snapshot / "config.json").is_file():
        return False
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (snapshot / index_name).is_file():
            try:
                shards = set(json.loads((snapshot / index_name).read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return False
            return all((snapshot / shard).is_file() for shard in shards)
    return (snapshot / "model.safetensors").is_file() or (snapshot / "pytorch_model.bin").is_file()


WANTED = ["config.json", "tokenizer.json", "*.safetensors", "model.safetensors.index.json"]


def fetch_revision(repo_id: str, revision: str, cache_dir: Path, offline: bool) -> Path:
    """A local folder for one revision: from the cache, else downloaded with huggingface_hub."""
    cached = cached_snapshot(cache_dir, repo_id, revision)
    if cached is not None:
        return cached
    if offline:
        raise OntogenyError(f"{repo_id}@{revision} is not in the hub cache {cache_dir}; drop --offline to download it")
    try:
        import huggingface_hub as hub
    except ImportError:
        raise OntogenyError("downloading from the hub needs huggingface_hub: pip install 'ontogeny[hub]', "
                            "or import local folders with --from DIR") from None
    try:
        files = hub.list_repo_files(repo_id, revision=revision)
        patterns = WANTED if any(f.endswith(".safetensors") for f in files) else WANTED + ["pytorch_model*.bin*"]
        return Path(hub.snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=patterns))
    except Exception as e:  # network, missing revision, authentication
        raise OntogenyError(f"could not fetch {repo_id}@{revision} ({type(e).__name__}: {str(e)[:120]}); "
                            f"check the name and revision, or use --from with local folders") from None
