"""Named checkpoint step sets and the Hugging Face hub: revisions fetched with `huggingface_hub`
when it is installed (the `hub` extra), or read from a hub cache folder offline.

Two kinds of named sets (copied from the suites' model cards, papers and public code; never read
at run time):

* step sets (`STEP_SETS`), whose revision names come from a pattern (`--pattern`, default
  `step{step}`): Pythia publishes 154 revisions `step{N}`: 0, 1, 2, 4, ..., 512, then 1000 to
  143000 every 1000.
* revision sets (`REVISION_SETS`), series whose branch names are not a pattern of the step, each
  with its repository and the stage it belongs to (the import's default `--stage`):

    olmo2-1b-stage1   allenai/OLMo-2-0425-1B, pretraining (stage 1), 10 branches
    olmo2-7b-stage1   allenai/OLMo-2-1124-7B, pretraining (stage 1), 14 branches
    olmo2-7b-stage2   allenai/OLMo-2-1124-7B, mid-training (stage 2, ingredient 1), 6 branches
    baichuan2-7b      baichuan-inc/Baichuan2-7B-Intermediate-Checkpoints, the 11 pretraining
                      checkpoints (step = billions of tokens seen, [choice])

  OLMo-2's branches are `stage1-step{N}-tokens{T}B` with T = ceil(N * tokens per step / 1e9)
  (2^21 tokens per step for the 1B, 2^22 for the 7B). What was checked (2026-12-07, against
  names used in public code that loads these revisions; the hub itself was not reachable): every
  name of olmo2-7b-stage1 and olmo2-7b-stage2 and of baichuan2-7b was seen verbatim; for
  olmo2-1b-stage1 the names at steps 0, 10000, 20000, 40000 and 1907359 (the end of stage 1)
  were seen, and the others follow the same rule and a published spacing of 10000 steps, unchecked.
  The post-training stages are separate repositories with one `main` revision each; import them
  with an explicit `STEP=REVISION` list into the same run, one stage each:

    python -m experiments import --model allenai/OLMo-2-0425-1B --steps olmo2-1b-stage1 --out runs/olmo2-1b
    python -m experiments import --model allenai/OLMo-2-0425-1B-SFT --steps 0=main --stage sft --out runs/olmo2-1b
    python -m experiments import --model allenai/OLMo-2-0425-1B-DPO --steps 0=main --stage dpo --out runs/olmo2-1b
    python -m experiments import --model allenai/OLMo-2-0425-1B-RLVR1 --steps 0=main --stage rl --out runs/olmo2-1b

  (the 7B's are allenai/OLMo-2-1124-7B-SFT, -DPO and -Instruct, the last the RLVR model).
"""
from __future__ import annotations

import dataclasses
import json
import math
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


@dataclasses.dataclass(frozen=True)
class RevisionSet:
    repo: str                   # the hub repository whose branches these are
    stage: str                  # the stage tag they belong to (the import's default --stage)
    revisions: dict             # step -> branch name


def _olmo2(steps, tokens_per_step: int, prefix: str = "stage1") -> dict:
    """OLMo-2's branch names: PREFIX-step{N}-tokens{ceil(N * tokens per step / 1e9)}B."""
    return {n: f"{prefix}-step{n}-tokens{math.ceil(n * tokens_per_step / 1e9)}B" for n in steps}


REVISION_SETS = {
    "olmo2-1b-stage1": RevisionSet("allenai/OLMo-2-0425-1B", "pretrain", _olmo2(
        [0, 10000, 20000, 40000, 80000, 160000, 320000, 640000, 990000, 1907359], 2 ** 21)),
    "olmo2-7b-stage1": RevisionSet("allenai/OLMo-2-1124-7B", "pretrain", _olmo2(
        [150, 1000, 5000, 10000, 40000, 97000, 179000, 282000, 409000, 516000, 619000, 722000,
                     825000, 928646], 2 ** 22)),
    "olmo2-7b-stage2": RevisionSet("allenai/OLMo-2-1124-7B", "midtrain", _olmo2(
        range(2000, 7001, 1000), 2 ** 22, prefix="stage2-ingredient1")),
    "baichuan2-7b": RevisionSet("baichuan-inc/Baichuan2-7B-Intermediate-Checkpoints", "pretrain",
                                {b: f"train_{b:05d}B" for b in range(220, 2421, 220)}),
}


def expand_steps(spec: str) -> list[int]:
    """A named step set (`pythia-log`, `pythia-all`, `ge2025`, `xiao2025`) or a comma list `0,1000,...`."""
    spec = spec.strip()
    if spec in STEP_SETS:
        return list(STEP_SETS[spec])
    try:
        steps = sorted({int(s) for s in spec.split(",") if s.strip()})
    except ValueError:
        raise OntogenyError(f"--steps {spec!r} is neither a named set ({', '.join([*STEP_SETS, *REVISION_SETS])}) "
                            f"nor a comma list of integers like 0,1000,2000 or of STEP=REVISION items") from None
    require(steps and steps[0] >= 0, f"--steps {spec!r} names no non-negative step")
    return steps


def revisions(spec: str, pattern: str | None = None, repo: str | None = None) -> tuple[list[tuple[int, str]], str | None]:
    """([(step, revision name)] in step order, the set's stage or None) for a `--steps` value: a
    revision set (its own names; `repo`, when given, must be its repository), a comma list of
    `STEP=REVISION` items, or a step set / comma list of steps named through `pattern`
    (default `step{step}`)."""
    spec = spec.strip()
    if spec in REVISION_SETS:
        chosen = REVISION_SETS[spec]
        require(pattern is None, f"--pattern does not apply to --steps {spec}, which names its own revisions")
        require(repo is None or repo.lower() == chosen.repo.lower(),
                f"--steps {spec} names branches of {chosen.repo}, not of {repo}; import from that repository "
                f"or give STEP=REVISION items")
        return sorted(chosen.revisions.items()), chosen.stage
    if "=" in spec:
        pairs = {}
        for item in filter(None, (i.strip() for i in spec.split(","))):
            step, _, name = item.partition("=")
            require(step.strip().isdigit() and name.strip(), f"--steps item {item!r} is not STEP=REVISION "
                                                             f"(e.g. 0=main or 1000=stage1-step1000-tokens5B)")
            require(int(step) not in pairs, f"--steps names step {int(step)} twice")
            pairs[int(step)] = name.strip()
        return sorted(pairs.items()), None
    pattern = pattern or "step{step}"
    require("{step}" in pattern, f"--pattern {pattern!r} must contain {{step}}, e.g. step{{step}}")
    return [(s, pattern.format(step=s)) for s in expand_steps(spec)], None


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


# the checkpoint's remote code (*.py) is fetched to be read (Baichuan's versions differ in it), never run
WANTED = ["config.json", "tokenizer.json", "*.safetensors", "model.safetensors.index.json", "*.py"]


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
