"""`python -m experiments quickstart --out DIR`: every study's `tiny` preset, end to end, then the report.

The studies and their order come from the registry (`in_quickstart`). One Shakespeare pretrain
run (DIR/pretrain) is trained first and reused by the studies that analyse a pretrain series
(`reuses_pretrain`: crosscoders, waves); the others train what they study (the knowledge world of
cognition, the latent-variable model of linear-origins, the width series of neuromfa).
Each study writes its own run folder DIR/<study>; DIR/report.html gathers them. Running the same
command again resumes: finished studies are kept, an interrupted one resumes from its
checkpoints. A study that fails is reported and the others still run (exit status 1).

`--jobs N` runs up to N studies at a time, each in a process of its own on its own CPUs
(`lane_cpus`): whenever one finishes, the first study whose inputs are ready starts in its place
(the studies that reuse the pretrain run wait for it), so no core waits while work is left.
Slot K logs to DIR/quickstart-lane-K.log while this process shows a bar of finished studies.
[choice] Most of a tiny study is small XLA programs that keep one core busy, so two processes
on two cores finish sooner; the results are the same as one process's, each study being
computed the same way in either.

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
from experiments.cli import host_devices, registry
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


def chosen_studies(only: str | None, add_pretrain: bool = True) -> list[str]:
    """The registry's quickstart studies, or the `--only` subset (plus pretrain when one reuses
    it, unless `add_pretrain` is False: a study run by `run_scheduled`, whose pretrain is done)."""
    studies = registry.quickstart_studies()
    if not only:
        return studies
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in studies]
    if unknown:
        raise OntogenyError(f"--only {unknown[0]!r} is not a study; choose from: {', '.join(studies)}")
    if add_pretrain and any(registry.ENTRIES[n].reuses_pretrain for n in names) and "pretrain" not in names:
        names.insert(0, "pretrain")
    return names


def inputs(name: str, names: list[str]) -> list[str]:
    """The studies among `names` that `name` must wait for: the shared pretrain run, for the
    studies that reuse it."""
    reuses = name != "pretrain" and registry.ENTRIES[name].reuses_pretrain and "pretrain" in names
    return ["pretrain"] if reuses else []


def lane_cpus(n_lanes: int, available: list[int] | None = None) -> list[set[int]] | None:
    """Disjoint CPU sets, one a slot of `run_scheduled` (the first takes any remainder), or None
    when there are fewer CPUs than slots or the platform cannot pin a process.

    [choice] Each slot keeps to its own cores: XLA sizes its thread pool from the CPUs a process
    may use, and two processes whose pools each span both cores of a 2-core machine fight over
    them. Two tiny pretrain runs side by side took 70.3-70.5 s free and 61.1-61.2 s pinned to a
    core each (2-core Intel Xeon, AVX-512, 2026-12-07)."""
    if available is None:
        if not hasattr(os, "sched_getaffinity"):
            return None
        available = sorted(os.sched_getaffinity(0))
    if n_lanes < 2 or len(available) < n_lanes:
        return None
    per, extra = divmod(len(available), n_lanes)
    bounds = [0] + [per * (k + 1) + extra for k in range(n_lanes)]
    return [set(available[a:b]) for a, b in zip(bounds, bounds[1:])]


def run_scheduled(names: list[str], jobs: int, out: Path, command, env: dict | None = None,
                  needs=lambda name: []) -> dict[str, str]:
    """Run every study in a process of its own (`command(name)`, an argv; `env` added to this
    process's environment), at most `jobs` at a time, slot K on its own CPUs where there are
    enough (`lane_cpus`, passed as ONTOGENY_CPUS) and logging to out/quickstart-lane-K.log. A free slot takes the first
    study in `names` whose `needs(name)` have all finished (written their summary.json); one
    whose needs failed is not started. Shows the studies as they finish; returns {study: why it
    failed} for the studies left without a summary."""
    summary = lambda n: out / n / "summary.json"
    logs = [open(out / f"quickstart-lane-{k}.log", "w") for k in range(jobs)]
    env = {**os.environ, **(env or {})}
    cpus = lane_cpus(jobs)
    # the child pins itself before jax starts (experiments.cli.host_devices.pin_cpus): no fork here
    slot_env = lambda k: env if cpus is None else {**env, host_devices.CPUS_ENV: ",".join(map(str, sorted(cpus[k])))}
    waiting, running, done, failed = list(names), {}, set(), {}
    t0 = time.perf_counter()
    bar = tqdm(total=len(names), desc=f"quickstart ({jobs} processes)", unit="study", dynamic_ncols=True)
    try:
        while waiting or running:
            for k, (name, proc) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[k]
                if summary(name).exists():
                    done.add(name)
                    bar.update(1)
                    bar.write(f"{name}: done ({time.perf_counter() - t0:.0f} s from the start)")
                else:
                    error = out / name / "error.txt"
                    last = error.read_text().strip().splitlines()[-1] if error.exists() else "no summary"
                    failed[name] = f"{last} (log: {out / f'quickstart-lane-{k}.log'})"
            for name in list(waiting):
                lost = [m for m in needs(name) if m in failed or m not in names]
                if lost:
                    waiting.remove(name)
                    failed[name] = f"not run: it needs {lost[0]}, which did not finish"
            for k in [k for k in range(jobs) if k not in running]:
                name = next((n for n in waiting if all(m in done for m in needs(n))), None)
                if name is None:
                    break
                waiting.remove(name)
                logs[k].write(f"== {name}\n")
                logs[k].flush()
                running[k] = (name, subprocess.Popen(command(name), stdout=logs[k], stderr=subprocess.STDOUT,
                                                     env=slot_env(k)))
            if running:
                time.sleep(0.5)
    except KeyboardInterrupt:  # the studies got the same Ctrl-C and save their resume points
        for _, proc in running.values():
            proc.wait()
        raise
    finally:
        bar.close()
        for log in logs:
            log.close()
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
    names = chosen_studies(args.only, add_pretrain=not args.lane)
    if args.jobs < 1:
        raise OntogenyError(f"--jobs {args.jobs} must be at least 1")
    if args.jobs > 1 and (jax.process_count() > 1 or args.lane):
        raise OntogenyError("--jobs > 1 runs its own processes; give --jobs 1 in a multi-process job")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pretrain_dir = out / "pretrain"
    cache = compile_cache(out)
    jax.config.update("jax_compilation_cache_dir", cache)

    jobs = min(args.jobs, len(names))
    if jobs > 1:
        t0 = time.perf_counter()
        failed = run_scheduled(names, jobs, out,
                               lambda name: [sys.executable, "-m", "experiments", "quickstart", "--out", str(out),
                                             "--only", name, "--jobs", "1", "--lane"],
                               env={CACHE_ENV: cache}, needs=lambda name: inputs(name, names))
        for name, why in failed.items():
            print(f"{name}: FAILED: {why}")
        report = write_report(out)
        print(f"quickstart: {len(names) - len(failed)}/{len(names)} studies in {(time.perf_counter() - t0) / 60:.1f} min "
              f"on {jobs} processes at a time; report: {report.resolve()}")
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
