"""`python -m experiments import`: a Hugging Face checkpoint suite as an Ontogeny run folder.

    python -m experiments import --from DIR --out RUN [--pattern 'step{step}'] [--dtype bfloat16]
    python -m experiments import --model EleutherAI/pythia-160m --steps ge2025 --out RUN
    python -m experiments import --model allenai/OLMo-2-0425-1B --steps olmo2-1b-stage1 --out RUN
    python -m experiments import --model allenai/OLMo-2-0425-1B-SFT --steps 0=main --stage sft --out RUN

DIR holds one checkpoint folder per step (`step1000/`, `checkpoint-400/`, OLMo-2's
`stage1-step1000-tokens5B/`, Baichuan2's `train_00220B/`, or any `--pattern`), or, with a named
revision set or `STEP=REVISION` items, one folder per revision name. `--stage` tags the series
(pretrain, midtrain, sft, dpo, rl, ...; default: the revision set's stage, else pretrain): each
stage is its own series in the run, and `dynamics.checkpoints.stages(RUN)` lists them in order.
RUN gets what `load_stack`, `load_model_config` and `models.apply` read for a run trained here:
`checkpoints/<stage>/<step>/` (orbax), `model.json` (family + hyperparameters), the suite's
`tokenizer.json`, plus `hf_config.json` (the original config) and `import.json` (per step:
source, sha256 checksum, seconds). Re-running the same command resumes: imported steps are
skipped. Identical weights at two steps and NaN/inf weights are refused unless allowed.

Faults: one import writes RUN at a time (RUN/writer.lock, `dynamics.locks`; a second exits 2
naming the first). A step folder that disappears or changes while it is read (a download or a
copy still going on) is refused in one line, as is an interrupted hub download; a full disk
names the path. In every case the steps imported before stay intact and the same command
resumes. `load_stack(RUN, verify=True)` re-checks every step against its recorded sha256.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

DESCRIPTION = ("import a Hugging Face checkpoint suite (GPT-NeoX/Pythia, LLaMA/Llama-3, OLMo-2, Baichuan, GPT-2) "
               "as a run folder")
STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _parser():
    from experiments.cli.config import ArgumentParser

    p = ArgumentParser(prog="python -m experiments import", description=DESCRIPTION)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from", dest="source", help="folder with one Hugging Face checkpoint folder per step")
    src.add_argument("--model", help="hub repository, e.g. EleutherAI/pythia-160m (needs huggingface_hub)")
    p.add_argument("--out", required=True, help="run folder to write (resumes when it exists)")
    p.add_argument("--steps", default=None, help="pythia-log | pythia-all | ge2025 | xiao2025 | olmo2-1b-stage1 | "
                                                 "olmo2-7b-stage1 | olmo2-7b-stage2 | baichuan2-7b | 0,1000,... | "
                                                 "STEP=REVISION,... (default: every step folder with --from, "
                                                 "pythia-log with --model)")
    p.add_argument("--pattern", default=None, help="step folder / hub revision name with {step} and optionally * "
                                                   "(default folders: step{step}, checkpoint-{step}, "
                                                   "stage1-step{step}-tokens*, train_{step}B; hub: step{step})")
    p.add_argument("--stage", default=None, help="stage tag of this series (pretrain, midtrain, sft, dpo, rl, ...; "
                                                 "default: the revision set's stage, else pretrain)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="storage dtype")
    p.add_argument("--cache-dir", default=None, help="hub cache (default: huggingface_hub's)")
    p.add_argument("--offline", action="store_true", help="read revisions from the hub cache only")
    p.add_argument("--allow-duplicates", action="store_true", help="import steps whose weights equal another step's")
    p.add_argument("--allow-nonfinite", action="store_true", help="import steps holding NaN/inf weights")
    return p


def sources(args):
    """([(step, folder or a callable fetching it)] in step order, the named set's stage or None)."""
    from dynamics import hf_hub, hf_import
    from models.errors import OntogenyError

    if args.source:
        root = Path(args.source)
        if args.steps and (args.steps.strip() in hf_hub.REVISION_SETS or "=" in args.steps):
            pairs, stage = hf_hub.revisions(args.steps, args.pattern)
            missing = [name for _, name in pairs if not (root / name).is_dir()]
            if missing:
                raise OntogenyError(f"{root} has no folders for revisions {missing[:3]} ({len(missing)} of "
                                    f"{len(pairs)} missing); download them into folders named by revision")
            return [(s, root / name) for s, name in pairs], stage
        found = hf_import.find_steps(root, args.pattern)
        if args.steps:
            wanted = set(hf_hub.expand_steps(args.steps))
            missing = sorted(wanted - {s for s, _ in found})
            if missing:
                raise OntogenyError(f"{args.source} has no folders for steps {missing[:5]}; "
                                    f"available: {[s for s, _ in found][:8]}...")
            found = [(s, f) for s, f in found if s in wanted]
        return found, None
    cache = Path(args.cache_dir) if args.cache_dir else hf_hub.default_cache_dir()
    pairs, stage = hf_hub.revisions(args.steps or "pythia-log", args.pattern, args.model)
    return [(s, lambda name=name: hf_hub.fetch_revision(args.model, name, cache, args.offline))
            for s, name in pairs], stage


def _manifest(run: Path, args) -> dict:
    from models.errors import OntogenyError

    path = run / "import.json"
    if path.exists():
        try:
            manifest = json.loads(path.read_text())
            if not isinstance(manifest, dict) or not isinstance(manifest.get("stages"), dict):
                raise ValueError(path)
        except (OSError, ValueError, RecursionError):
            raise OntogenyError(f"{path} is unreadable or not an import manifest; import into a new --out") from None
        if manifest.get("dtype") != args.dtype:
            raise OntogenyError(f"{run} was imported as {manifest.get('dtype')}, not {args.dtype}; use the same "
                                f"--dtype to resume or a new --out")
        return manifest
    return {"source": args.source or args.model, "dtype": args.dtype, "stages": {}}


def _claim_model(run: Path, config, hf_cfg: dict, folder: Path) -> None:
    """Write model.json (and the tokenizer) on the first step; later steps must match it."""
    from dynamics import faults
    from models.errors import OntogenyError
    from dynamics.run_tokenizer import load_tokenizer
    from dynamics.runlog import write_json
    from models.families import config_to_dict

    record = config_to_dict(config)
    path = run / "model.json"
    if path.exists():
        if json.loads(path.read_text()) != record:
            raise OntogenyError(f"{folder}: its config differs from {path} (another model or size); import it "
                                f"into a new --out")
        return
    write_json(path, record)
    write_json(run / "hf_config.json", hf_cfg)
    for candidate in (folder / "tokenizer.json", folder.parent / "tokenizer.json"):
        if candidate.exists():
            with faults.atomic_path(run / "tokenizer.json", faults.IMPORT_FIX) as tmp:
                shutil.copy(candidate, tmp)
            load_tokenizer(run)  # refuse an unreadable tokenizer now, not at evaluation
            return
    print(f"note: {folder} has no tokenizer.json; studies that read text will need one in {run}")


def _check(step: int, params, checksum: str, seen: dict, args) -> None:
    """Refuse NaN/inf weights and weights identical to another step's (unless allowed)."""
    from models.errors import OntogenyError
    from dynamics.hf_import import nonfinite

    bad = [] if args.allow_nonfinite else nonfinite(params)
    if bad:
        raise OntogenyError(f"step {step} has NaN/inf weights in {len(bad)} tensors (e.g. {bad[0]}); steps before it "
                            f"are imported; pass --allow-nonfinite to import it anyway")
    twin = next((s for s, c in seen.items() if c == checksum and int(s) != step), None)
    if twin is not None and not args.allow_duplicates:
        raise OntogenyError(f"steps {twin} and {step} have identical weights (sha256 {checksum[:12]}); the hosted "
                            f"suite serves one model twice; pass --allow-duplicates to import it anyway")


def _signature(folder: Path) -> dict:
    """(size, mtime, inode) of every file of a step folder (links followed: the hub cache's blobs)."""
    from models.errors import OntogenyError

    try:
        return {p.name: (st.st_size, st.st_mtime_ns, st.st_ino) for p in sorted(folder.iterdir())
                for st in [p.stat()] if p.is_file()}
    except OSError:
        raise OntogenyError(f"{folder} disappeared while it was being imported; restore it (or drop that step "
                            f"from --steps) and run the same command again: the steps before it are kept") from None


def read_step(folder: Path, dtype: str):
    """(config, params, Hugging Face config) of one step folder, refused in one line when the folder
    disappears or changes while it is read (a copy or a download still writing it)."""
    from dynamics.hf_import import load_checkpoint, read_config
    from models.errors import OntogenyError

    before = _signature(folder)
    try:
        config, params = load_checkpoint(folder, dtype)
        hf_cfg = read_config(folder)
    except (OntogenyError, OSError):
        _signature(folder)  # a folder gone meanwhile is named as such, not as a damaged checkpoint
        raise
    if _signature(folder) != before:
        raise OntogenyError(f"{folder} changed while it was being imported (a copy or download still writing it?); "
                            f"wait until it is complete and run the same command again: the steps before it are kept")
    return config, params, hf_cfg


def import_suite(args) -> dict:
    from dynamics import faults, locks
    from models.errors import require

    run = Path(args.out)
    planned, preset_stage = sources(args)  # bad --steps / --pattern are refused before the run folder is made
    args.stage = args.stage or preset_stage or "pretrain"
    require(STAGE_NAME.fullmatch(args.stage) is not None,
            f"--stage {args.stage!r} is not a plain name; use letters, digits, '.', '_' or '-' (e.g. sft)")
    with locks.folder_lock(run, what="the import folder", fix=faults.IMPORT_FIX), \
            faults.guarded(run, faults.IMPORT_FIX, restate=True):
        return _import(args, run, planned)


def _import(args, run: Path, planned) -> dict:
    from dynamics.checkpoints import Series
    from dynamics.hf_import import checksum
    from dynamics.runlog import write_json

    manifest = _manifest(run, args)
    stage = manifest["stages"].setdefault(args.stage, {})
    seen = {s: rec["checksum"] for s, rec in stage.items()}  # within a stage: sft's first step may equal pretrain's last
    series = Series(run, args.stage)
    done = set(series.steps())
    t_all, n_new = time.perf_counter(), 0
    for step, where in planned:
        if step in done and str(step) in stage:
            continue
        t0 = time.perf_counter()
        folder = Path(where() if callable(where) else where)
        config, params, hf_cfg = read_step(folder, args.dtype)
        _claim_model(run, config, hf_cfg, folder)
        digest = checksum(params)
        _check(step, params, digest, seen, args)
        if step not in done:  # a crash between save and manifest leaves the checkpoint: keep it
            series.save(step, params, meta={"checksum": digest, "source": str(folder)})
        stage[str(step)] = {"checksum": digest, "source": str(folder), "seconds": round(time.perf_counter() - t0, 3)}
        seen[str(step)] = digest
        write_json(run / "import.json", manifest)
        n_new += 1
        print(f"{args.stage} step {step}: {folder} sha256 {digest[:12]} ({stage[str(step)]['seconds']:.2f} s)")
    disk = sum(p.stat().st_size for p in (run / "checkpoints" / args.stage).rglob("*") if p.is_file())
    manifest.setdefault("disk_bytes", {})[args.stage] = disk
    write_json(run / "import.json", manifest)
    return {"run": str(run), "stage": args.stage, "steps": len(stage), "new": n_new, "disk_bytes": disk,
            "seconds": round(time.perf_counter() - t_all, 2)}


def main(argv: list[str]) -> int:
    summary = import_suite(_parser().parse_args(argv))
    print(f"imported {summary['new']} new steps ({summary['steps']} in stage {summary['stage']}) into "
          f"{summary['run']} in {summary['seconds']} s; {summary['disk_bytes'] / 2**20:.1f} MiB on disk")
    return 0
