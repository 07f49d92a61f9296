"""Sweep a setting, then compare the runs it made.

    python docs/tutorials/sweep_and_compare.py [--preset micro] [--lrs 1e-3,3e-3,1e-2] [--out DIR]

A sweep over the learning rate of `pretrain`: the points differ only in a value that keeps the
model's shape, so they train together as one vmapped program. Every point is an ordinary run
folder with its own checkpoint series, so everything that reads a run reads it. Here: the
sweep's results table, the validation curves side by side, and how far each run's weights
travel from their initialisation, checkpoint by checkpoint (a `map_stack` over each series).
`--preset tiny` is the real-size version (minutes on a CPU).
"""
import argparse
import json
import shlex
from pathlib import Path

import jax
import jax.numpy as jnp

from dynamics.checkpoints import load_stack, map_stack
from dynamics.stacks import unstack_tree
from experiments.__main__ import cli


def experiments(*args: str) -> None:
    print("$ python -m experiments " + shlex.join(args), flush=True)
    code = cli(list(args))
    if code != 0:
        raise SystemExit(f"the command above exited {code}")


def relative_distance(params, params_0):
    """||w - w0|| / ||w0|| over every weight of one checkpoint."""
    diff = sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_0)))
    norm = sum(jnp.sum(b ** 2) for b in jax.tree.leaves(params_0))
    return jnp.sqrt(diff / norm)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="micro")
    parser.add_argument("--lrs", default="1e-3,3e-3,1e-2")
    parser.add_argument("--out", default="runs/tutorial-sweep")
    args = parser.parse_args(argv)
    out = Path(args.out)
    experiments("sweep", "pretrain", "--preset", args.preset, "--grid", f"train.lr={args.lrs}", "--out", str(out))

    points = json.loads((out / "results.json").read_text())      # one row per point, as in results.csv
    best = min(points, key=lambda p: p["val_loss"])
    print(f"\n{'run':<20} {'lr':>8} {'val loss':>9}")
    for p in points:
        print(f"{p['folder']:<20} {p['train.lr']:>8} {p['val_loss']:>9.3f}" + ("  <- best" if p is best else ""))

    print("\nvalidation loss by step, then ||w - w0|| / ||w0|| at each checkpoint")
    moved = {}
    for p in points:
        run = out / p["folder"]
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        curve = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
        steps, stack = load_stack(run)
        moved[p["train.lr"]] = moved_C = map_stack(relative_distance, stack, unstack_tree(stack, 0))
        print(f"lr {p['train.lr']:>6}: " + "  ".join(f"{s}:{v:.2f}" for s, v in curve.items()))
        print(" " * 10 + "  ".join(f"{int(s)}:{m:.3f}" for s, m in zip(steps, moved_C)))
    return points, moved


if __name__ == "__main__":
    main()
