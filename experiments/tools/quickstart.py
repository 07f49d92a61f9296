"""`python -m experiments quickstart --out DIR`: every study's `tiny` preset, end to end, then the report.

The studies and their order come from the registry (`in_quickstart`). One Shakespeare pretrain
run (DIR/pretrain) is trained first and reused by the studies that analyse a pretrain series
(`reuses_pretrain`: crosscoders, waves); the others train what they study (the knowledge world of
cognition, the latent-variable model of linear-origins, the width series of neuromfa).
Each study writes its own run folder DIR/<study>; DIR/report.html gathers them. Running the same
command again resumes: finished studies are kept, an interrupted one resumes from its
checkpoints. A study that fails is reported and the others still run (exit status 1).

`--jobs N` runs the studies in N processes (`lanes`): the pretrain run and the studies that reuse
it in one, the others dealt over the rest, each process logging to DIR/quickstart-lane-K.log
while this one shows a bar of finished studies. [choice] Most of a tiny study is small XLA
programs that keep one core busy, so two processes on two cores finish sooner; the results are
the same as one process's, each study being computed the same way in either.

Every process of a quickstart shares one persistent XLA compilation cache (`compile_cache`:
JAX_COMPILATION_CACHE_DIR when set, else DIR/xla-cache), so a program compiled once (in either
lane, or by an earlier run in the same folder) is loaded, not compiled again: the same
executable, so the same numbers. Each study's line in the log says how many programs it
built, the seconds that took and how many came from the cache.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import jax
from tqdm.auto import tqdm

from dynamics import distributed
from models.errors import OntogenyError
from experiments.bench.timing import CompileMeter
from experiments.cli import registry
from experiments.cli.config import ArgumentParser, run_into
from experiments.tools.report import write_report

DESCRIPTION = "run every study's tiny preset (one shared pretrain run), then write DIR/report.html"


CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"


def compile_cache(out: Path) -> str:
    """The compilation cache folder the quickstart's processes share: JAX_COMPILATION_CACHE_DIR
    when the user set it, else OUT/xla-cache. [choice] jax's default threshold stands (programs
    that took a second or more to compile are kept), so the small ones cost no disk."""
    return os.environ.get(CACHE_ENV) or str(Path(out).absolute() / "xla-cache")


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


def lanes(names: list[str], jobs: int) -> list[list[str]]:
    """The studies split over `jobs` processes, order kept within each: the pretrain run and the
    studies that reuse it in the first, the others dealt in turn over the other lanes (over all
    of them when there is one lane, or no pretrain chain)."""
    chain = [n for n in names if n == "pretrain" or registry.ENTRIES[n].reuses_pretrain]
    rest = [n for n in names if n not in chain]
    if jobs <= 1:
        return [names]
    out = [chain] + [[] for _ in range(jobs - 1)] if chain else [[] for _ in range(jobs)]
    free = range(1, jobs) if chain else range(jobs)
    for i, name in enumerate(rest):
        out[free[i % len(free)]].append(name)
    return [lane for lane in out if lane]


def run_lanes(plan: list[list[str]], out: Path, command, env: dict | None = None) -> dict[str, str]:
    """Start `command(lane)` (an argv) for every lane, logging to out/quickstart-lane-K.log
    (`env` added to this process's environment), show the studies as they finish (their
    summary.json appears) and wait for all; returns {study: why it failed} for the studies left
    without a summary."""
    names = [n for lane in plan for n in lane]
    summary = lambda n: out / n / "summary.json"
    logs = [open(out / f"quickstart-lane-{k}.log", "w") for k in range(len(plan))]
    env = {**os.environ, **(env or {})}
    procs = [subprocess.Popen(command(lane), stdout=log, stderr=subprocess.STDOUT, env=env)
             for lane, log in zip(plan, logs)]
    t0, seen = time.perf_counter(), set()
    bar = tqdm(total=len(names), desc=f"quickstart ({len(plan)} processes)", unit="study", dynamic_ncols=True)
    try:
        while True:
            running = any(p.poll() is None for p in procs)
            for n in names:
                if n not in seen and summary(n).exists():
                    seen.add(n)
                    bar.update(1)
                    bar.write(f"{n}: done ({time.perf_counter() - t0:.0f} s from the start)")
            if not running:
                break
            time.sleep(1.0)
    except KeyboardInterrupt:  # the lanes got the same Ctrl-C and save their resume points
        for p in procs:
            p.wait()
        raise
    finally:
        bar.close()
        for log in logs:
            log.close()
    failed = {}
    for k, lane in enumerate(plan):
        for n in lane:
            if not summary(n).exists():
                error = out / n / "error.txt"
                last = error.read_text().strip().splitlines()[-1] if error.exists() else "no summary"
                failed[n] = f"{last} (log: {out / f'quickstart-lane-{k}.log'})"
    return failed


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="python -m experiments quickstart", description=DESCRIPTION)
    parser.add_argument("--out", default="runs/quickstart", help="folder for every study's run (default runs/quickstart)")
    parser.add_argument("--only", default=None,
                        help="comma-separated subset of: " + ", ".join(registry.quickstart_studies()))
    parser.add_argument("--jobs", type=int, default=1,
                        help="processes running studies side by side (default 1; 2 on a 2-core machine is faster)")
    parser.add_argument("--lane", action="store_true", help=argparse.SUPPRESS)  # one lane of --jobs: no report
    args = parser.parse_args(argv)
    names = chosen_studies(args.only)
    if args.jobs < 1:
        raise OntogenyError(f"--jobs {args.jobs} must be at least 1")
    if args.jobs > 1 and (jax.process_count() > 1 or args.lane):
        raise OntogenyError("--jobs > 1 runs its own processes; give --jobs 1 in a multi-process job")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pretrain_dir = out / "pretrain"
    cache = compile_cache(out)
    jax.config.update("jax_compilation_cache_dir", cache)

    plan = lanes(names, args.jobs)
    if len(plan) > 1:
        t0 = time.perf_counter()
        failed = run_lanes(plan, out, lambda lane: [sys.executable, "-m", "experiments", "quickstart", "--out", str(out),
                                                    "--only", ",".join(lane), "--jobs", "1", "--lane"],
                           env={CACHE_ENV: cache})
        for name, why in failed.items():
            print(f"{name}: FAILED: {why}")
        report = write_report(out)
        print(f"quickstart: {len(names) - len(failed)}/{len(names)} studies in {(time.perf_counter() - t0) / 60:.1f} min "
              f"on {len(plan)} processes; report: {report.resolve()}")
        return 1 if failed else 0

    timings, failed, meter = {}, {}, CompileMeter.start()
    bar = tqdm(names, desc="quickstart", unit="study", dynamic_ncols=True)
    for name in bar:
        bar.set_postfix(study=name)
        module = registry.load(name)
        config = study_config(name, module, pretrain_dir)
        folder_path = out / name
        t0, compiled = time.perf_counter(), meter.snapshot()
        try:
            # the shared pretrain run exists by now (it is trained first); a finished study is kept
            run_into(folder_path, name, "tiny", module, config, keep_finished=True)
        except OntogenyError as e:
            failed[name] = str(e)
        except Exception:  # one study's crash is reported; the others still run
            failed[name] = traceback.format_exc().strip().splitlines()[-1]
            if distributed.is_primary():
                (folder_path / "error.txt").write_text(traceback.format_exc())
        timings[name] = time.perf_counter() - t0
        bar.write(f"{name}: {'FAILED: ' + failed[name] if name in failed else 'done'} ({timings[name]:.0f} s; "
                  f"{meter.since(compiled)})")
    bar.close()
    distributed.barrier("quickstart-end")  # process 0 has written every summary
    if args.lane:
        return 1 if failed else 0
    report = write_report(out)
    total = sum(timings.values())
    print(f"quickstart: {len(names) - len(failed)}/{len(names)} studies in {total / 60:.1f} min; report: {report.resolve()}")
    return 1 if failed else 0
