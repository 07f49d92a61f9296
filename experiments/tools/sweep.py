"""`python -m experiments sweep STUDY ...`: a grid or random sweep over any study's config.

    python -m experiments sweep pretrain --preset tiny --grid train.lr=1e-3,2e-3 --grid train.seed=0,1 --out DIR
    python -m experiments sweep pretrain --random 8 --range train.lr=3e-4:3e-3:log --out DIR
    python -m experiments sweep neuromfa --file sweep.json --out DIR

A spec file is JSON: {"study", "preset", "grid": {key: [values]}, "random": n,
"ranges": {key: [lo, hi, "lin"|"log"]}, "set": {key: value}, "seed": s}; the command line adds to it.

Each point gets its own ordinary run folder DIR/runs/NNN-key=value... For `pretrain` (the
registry's `sweep_vmapped` studies), points
that differ only in values that keep shapes (train.seed, train.lr, train.min_lr,
train.weight_decay) train together in one compiled program, vmapped over a member axis
(`dynamics.members`, learning rate and weight decay injected as traced hyperparameters) and
sharded over the devices when there are several; other values, and other studies, run one
after another (the crosscoder and linear-origins studies vmap their own inner sweeps).

DIR/results.csv and DIR/results.json hold one row per point (its values, status, error and
summary numbers); DIR/figures/ plots the headline numbers against each swept key. An
interrupted sweep resumes: finished points are kept, the rest run again (a vmapped group from
its members' latest common checkpoint). A failing point is recorded with its error and the
others go on.
"""
from __future__ import annotations

import csv
import itertools
import json
import math
import re
import traceback
from pathlib import Path

import numpy as np

from models.errors import OntogenyError
from dynamics.runlog import RunFolder, non_finite, require_finite_summary, to_jsonable, write_json
from experiments.cli import registry
from experiments.cli.config import ArgumentParser, all_keys, claim_folder, field_types, override

DESCRIPTION = "grid or random sweep over a study's config (vmapped over shape-keeping values where possible)"


def _kind(config, key: str):
    for part in key.split(".")[:-1]:
        config = getattr(config, part)
    return field_types(type(config))[key.split(".")[-1]]


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    grid = {}
    for item in items:
        if "=" not in item or not item.split("=", 1)[1]:
            raise OntogenyError(f"--grid {item!r}: write key=v1,v2,..., e.g. --grid train.lr=1e-3,2e-3")
        key, values = item.split("=", 1)
        grid[key.strip()] = [v.strip() for v in values.split(",") if v.strip()]
    return grid


def parse_ranges(items: list[str]) -> dict[str, list]:
    ranges = {}
    for item in items:
        m = re.fullmatch(r"([\w.]+)=([^:]+):([^:]+)(?::(lin|log))?", item.strip())
        if not m:
            raise OntogenyError(f"--range {item!r}: write key=lo:hi or key=lo:hi:log, e.g. train.lr=3e-4:3e-3:log")
        try:
            ranges[m[1]] = [float(m[2]), float(m[3]), m[4] or "lin"]
        except ValueError:
            raise OntogenyError(f"--range {item!r}: lo and hi must be numbers") from None
    return ranges


def expand(base_config, grid: dict, ranges: dict, n_random: int, seed: int) -> list[dict[str, str]]:
    """The sweep's points, each {key: value text}: the grid's product, times n_random draws."""
    for key in list(grid) + list(ranges):
        if key not in all_keys(base_config):
            raise OntogenyError(f"unknown config key {key!r} to sweep; known keys: {', '.join(all_keys(base_config))}")
    grid_points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if grid else [{}]
    if not ranges:
        if n_random:
            raise OntogenyError("--random N needs at least one --range key=lo:hi to draw from")
        return grid_points
    rng = np.random.default_rng(seed)
    points = []
    for point in grid_points:
        for _ in range(max(n_random, 1)):
            drawn = {}
            for key, (lo, hi, scale) in ranges.items():
                if scale == "log" and (lo <= 0 or hi <= 0):
                    raise OntogenyError(f"--range {key}: a log range needs positive bounds")
                x = math.exp(rng.uniform(math.log(lo), math.log(hi))) if scale == "log" else rng.uniform(lo, hi)
                drawn[key] = str(int(round(x))) if _kind(base_config, key) is int else f"{x:.6g}"
            points.append({**point, **drawn})
    return points


def point_name(index: int, point: dict) -> str:
    text = "-".join(f"{k.split('.')[-1]}={v}" for k, v in point.items())
    return f"{index:03d}" + ("-" + re.sub(r"[^\w=.+-]", "_", text) if text else "")


def _scalars(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if isinstance(v, (int, float, bool, str)) or v is None}


def _record_failure(folder: Path, message: str) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "error.txt").write_text(message + "\n")
    return {"status": "failed", "error": message.strip().splitlines()[-1][:300]}


def run_points(module, study: str, preset: str, configs: list, folders: list[Path], vmap: bool) -> list[dict]:
    """Run the unfinished points; returns their results in order."""
    results = [None] * len(configs)
    todo = []
    for i, (config, folder) in enumerate(zip(configs, folders)):
        summary = RunFolder(folder).read_summary() if (folder / "summary.json").exists() else None
        if summary is not None:
            results[i] = {"status": "ok", **_scalars(summary)}
            continue
        claim_folder(folder, study, preset, config)
        (folder / "error.txt").unlink(missing_ok=True)
        todo.append(i)
    if vmap and len(todo) > 1:
        try:
            outs = module.run_group([configs[i] for i in todo], [RunFolder(folders[i]) for i in todo])
        except OntogenyError as e:
            outs = [{"error": str(e)}] * len(todo)
        except Exception:  # a crash of the shared program fails its members, and is recorded
            outs = [{"error": traceback.format_exc()}] * len(todo)
        for i, out in zip(todo, outs):
            bad = None if "error" in out else non_finite(out)
            if "error" in out or bad is not None:  # a NaN headline fails its point, as in run_study
                results[i] = _record_failure(folders[i], out.get("error") or f"summary metric {bad[0]} is {bad[1]}")
            else:
                RunFolder(folders[i]).write_summary(out)
                results[i] = {"status": "ok", **_scalars(out)}
        return results
    from tqdm.auto import tqdm
    for i in tqdm(todo, desc=f"sweep {study}", unit="run", disable=len(todo) < 2):
        try:
            folder = RunFolder(folders[i])
            summary = module.run(configs[i], folder)
            require_finite_summary(summary, str(folders[i]))
            folder.write_summary(summary)
            results[i] = {"status": "ok", **_scalars(summary)}
        except OntogenyError as e:
            results[i] = _record_failure(folders[i], str(e))
        except Exception:  # a crash of one point is recorded; the sweep goes on
            results[i] = _record_failure(folders[i], traceback.format_exc())
    return results


def write_results(out: Path, points: list[dict], folders: list[Path], results: list[dict]) -> list[dict]:
    rows = [{"index": i, "folder": str(f.relative_to(out)), **p, **r}
            for i, (p, f, r) in enumerate(zip(points, folders, results))]
    write_json(out / "results.json", rows)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def headline_keys(study: str, rows: list[dict], swept: list[str]) -> list[str]:
    """What to plot: the registry's `sweep_metrics` of the study, else the first four numbers."""
    keys = list(registry.ENTRIES[study].sweep_metrics) if study in registry.ENTRIES else []
    if not keys:
        numeric = [k for row in rows for k, v in row.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in swept
                   and k != "index" and not k.endswith("_s")]
        keys = list(dict.fromkeys(numeric))[:4]
    return [k for k in keys if any(k in row for row in rows)]


def plot_results(out: Path, rows: list[dict], swept: list[str], metrics: list[str]) -> None:
    from experiments.plots import plt, save

    for key in swept:
        try:
            x_all = np.array([float(row[key]) for row in rows])
        except (TypeError, ValueError):
            continue                                   # a non-numeric swept value: the table says it
        fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(3.6 * max(len(metrics), 1), 3.2), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            ok = [(x, row[metric]) for x, row in zip(x_all, rows) if row.get("status") == "ok"
                  and isinstance(row.get(metric), (int, float))]
            if ok:
                xs, ys = np.array(ok).T
                ax.plot(xs, ys, "o", alpha=0.8)
                if xs.min() > 0 and xs.max() / xs.min() > 10:
                    ax.set_xscale("log")
            ax.set_xlabel(key)
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
        (out / "figures").mkdir(exist_ok=True)
        safe = re.sub(r"[^\w.]", "_", key)
        save(fig, out / "figures" / f"sweep_{safe}.png")


def parse_args(argv: list[str]):
    parser = ArgumentParser(prog="python -m experiments sweep", description=DESCRIPTION)
    parser.add_argument("study", nargs="?", default=None, help="the study to sweep (or give it in --file)")
    parser.add_argument("--preset", default=None, help="the study's preset (default tiny)")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...")
    parser.add_argument("--random", type=int, default=0, metavar="N", help="draws per grid point from the --range's")
    parser.add_argument("--range", action="append", default=[], metavar="KEY=LO:HI[:log]")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fixed overrides for every point")
    parser.add_argument("--file", default=None, help="a JSON sweep spec (see the module docstring)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random draws (default 0)")
    parser.add_argument("--sequential", action="store_true", help="never vmap: run the points one after another")
    parser.add_argument("--out", default=None, help="sweep folder (default runs/sweep-STUDY)")
    return parser.parse_args(argv)


def read_spec(path: str | None) -> dict:
    """The --file spec (a JSON object), {} without one."""
    if not path:
        return {}
    try:
        spec = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise OntogenyError(f"--file {path}: cannot read a JSON sweep spec ({e.__class__.__name__}); "
                            f"see `python -m experiments sweep --help`") from None
    if not isinstance(spec, dict):
        raise OntogenyError(f"--file {path}: the spec must be a JSON object")
    return spec


def plan(args, spec: dict) -> dict:
    """The sweep the arguments and spec ask for: study, module, preset, fixed overrides, points
    and their configs, every point's references checked (before any folder is made)."""
    study = args.study or spec.get("study")
    studies = registry.studies()
    if study not in studies:
        raise OntogenyError(f"sweep needs a study, one of: {', '.join(studies)} (got {study!r})")
    module = registry.load(study)
    preset = args.preset or spec.get("preset", "tiny")
    if preset not in module.PRESETS:
        raise OntogenyError(f"unknown preset {preset!r} for {study}; choose one of: {', '.join(module.PRESETS)}")
    fixed = [f"{k}={v}" for k, v in spec.get("set", {}).items()] + list(args.set)
    base = override(module.PRESETS[preset], fixed)
    grid = {k: [str(v) for v in vs] for k, vs in spec.get("grid", {}).items()} | parse_grid(args.grid)
    ranges = {k: list(v) for k, v in spec.get("ranges", {}).items()} | parse_ranges(args.range)
    n_random = args.random or int(spec.get("random", 0))
    seed = args.seed if args.seed is not None else int(spec.get("seed", 0))
    points = expand(base, grid, ranges, n_random, seed)
    if not points or points == [{}]:
        raise OntogenyError("nothing to sweep: give --grid key=v1,v2 or --random N --range key=lo:hi")
    configs = [override(base, [f"{k}={v}" for k, v in p.items()]) for p in points]
    for config in configs:
        module.resolve(config)
    return {"study": study, "module": module, "preset": preset, "fixed": fixed, "points": points, "configs": configs}


def claim_sweep(out: Path, record: dict) -> None:
    """Create the sweep folder with its sweep.json, or check that an existing one is this sweep."""
    spec_path = out / "sweep.json"
    if spec_path.exists():
        try:
            previous = json.loads(spec_path.read_text())
        except ValueError:
            raise OntogenyError(f"{spec_path} is unreadable; use a new --out") from None
        if previous != to_jsonable(record):
            raise OntogenyError(f"{out} holds a different sweep; use a new --out, or the same arguments to resume")
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_json(spec_path, record)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    import jax

    if jax.process_count() > 1:
        raise OntogenyError("sweep runs in one process (its member axis is sharded over that process's devices); "
                            "launch it without ONTOGENY_COORDINATOR, or launch each point as its own multi-process job")
    p = plan(args, read_spec(args.file))
    study, points = p["study"], p["points"]
    out = Path(args.out or f"runs/sweep-{study}")
    claim_sweep(out, {"study": study, "preset": p["preset"], "set": p["fixed"], "points": points})

    swept = list(dict.fromkeys(k for point in points for k in point))
    folders = [out / "runs" / point_name(i, point) for i, point in enumerate(points)]
    vmap = (registry.ENTRIES[study].sweep_vmapped and not args.sequential and all(k in _vmap_keys() for k in swept))
    results = run_points(p["module"], study, p["preset"], p["configs"], folders, vmap)
    rows = write_results(out, points, folders, results)
    metrics = headline_keys(study, rows, swept)
    plot_results(out, rows, swept, metrics)
    n_ok = sum(r["status"] == "ok" for r in rows)
    print(f"{study} sweep: {n_ok}/{len(rows)} runs finished" + (" (vmapped)" if vmap else ""))
    for row in rows:
        shown = ", ".join(f"{m} {row[m]:.4g}" for m in metrics if isinstance(row.get(m), (int, float)))
        print(f"  {row['folder']}: {row['status']}" + (f"  {shown}" if shown else f"  {row.get('error', '')}"))
    print(f"results in {out.resolve()} (results.csv, results.json, figures/)")
    return 0 if n_ok == len(rows) else 1


def _vmap_keys():
    from dynamics.members import VMAP_KEYS
    return VMAP_KEYS
