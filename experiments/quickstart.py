"""`python -m experiments quickstart --out DIR`: every study's `tiny` preset, end to end, then the report.

The studies and their order come from the registry (`in_quickstart`). One Shakespeare pretrain
run (DIR/pretrain) is trained first and reused by the studies that analyse a pretrain series
(`reuses_pretrain`: crosscoders, waves); the others train what they study (the knowledge world of
cognition, the latent-variable model of linear-origins, the width series of neuromfa).
Each study writes its own run folder DIR/<study>; DIR/report.html gathers them. Running the same
command again resumes: finished studies are kept, an interrupted one resumes from its
checkpoints. A study that fails is reported and the others still run (exit status 1).
"""
from __future__ import annotations

import dataclasses
import time
import traceback
from pathlib import Path

from tqdm.auto import tqdm

from dynamics import distributed
from dynamics.errors import OntogenyError
from dynamics.runlog import RunFolder, require_finite_summary
from experiments import registry
from experiments.config import ArgumentParser, claim_folder
from experiments.report import write_report

DESCRIPTION = "run every study's tiny preset (one shared pretrain run), then write DIR/report.html"


def study_config(name: str, module, pretrain_dir: Path):
    config = module.PRESETS["tiny"]
    if registry.ENTRIES[name].reuses_pretrain:
        config = dataclasses.replace(config, pretrain_run=str(pretrain_dir))
    return config


def chosen_studies(only: str | None) -> list[str]:
    """The registry's quickstart studies, or the `--only` subset (plus pretrain when one reuses it)."""
    studies = registry.quickstart_studies()
    if not only:
        return studies
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in studies]
    if unknown:
        raise OntogenyError(f"--only {unknown[0]!r} is not a study; choose from: {', '.join(studies)}")
    if any(registry.ENTRIES[n].reuses_pretrain for n in names) and "pretrain" not in names:
        names.insert(0, "pretrain")
    return names


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="python -m experiments quickstart", description=DESCRIPTION)
    parser.add_argument("--out", default="runs/quickstart", help="folder for every study's run (default runs/quickstart)")
    parser.add_argument("--only", default=None,
                        help="comma-separated subset of: " + ", ".join(registry.quickstart_studies()))
    args = parser.parse_args(argv)
    names = chosen_studies(args.only)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pretrain_dir = out / "pretrain"

    timings, failed = {}, {}
    bar = tqdm(names, desc="quickstart", unit="study", dynamic_ncols=True)
    for name in bar:
        bar.set_postfix(study=name)
        module = registry.load(name)
        config = study_config(name, module, pretrain_dir)
        folder_path = out / name
        t0 = time.perf_counter()
        try:
            module.resolve(config)  # the shared pretrain run exists by now (it is trained first)
            claim_folder(folder_path, name, "tiny", config)
            folder = RunFolder(folder_path)
            if folder.read_summary() is None:
                summary = module.run(config, folder)
                require_finite_summary(summary, str(folder_path))
                folder.write_summary(summary)
        except OntogenyError as e:
            failed[name] = str(e)
        except Exception:  # one study's crash is reported; the others still run
            failed[name] = traceback.format_exc().strip().splitlines()[-1]
            if distributed.is_primary():
                (folder_path / "error.txt").write_text(traceback.format_exc())
        timings[name] = time.perf_counter() - t0
        bar.write(f"{name}: {'FAILED: ' + failed[name] if name in failed else 'done'} ({timings[name]:.0f} s)")
    bar.close()
    distributed.barrier("quickstart-end")  # process 0 has written every summary
    report = write_report(out)
    total = sum(timings.values())
    print(f"quickstart: {len(names) - len(failed)}/{len(names)} studies in {total / 60:.1f} min; report: {report.resolve()}")
    return 1 if failed else 0
