"""Benchmarks: figures measured in one run on this machine, printed and optionally saved as JSON.

    python -m experiments bench [SECTION ...] [--out FILE] [--quick | --micro]

Sections: core (default: matmul peak, training throughput and MFU beside nanoGPT in PyTorch
eager when torch is importable, sampling speed, stacked vmap vs loop); torch (only core's
matmul peak and training figures); stacked (32 checkpoints x 8192 tokens, every layer: chunked vmap vs loop, peak
RSS and compile counts, each in its own process); quality (nanoGPT's CPU recipe in PyTorch, scored
on the whole held-out split, against `pretrain --preset tiny`'s wall time to that loss; torch
only) and sampling (cached and uncached chars/s beside nanoGPT's KV-less generate and the matmul
bound), both in `experiments.bench.recipes`; every section, these and the studies' own, is declared in
`experiments.cli.registry` (`Entry.bench`). Ratios are only comparable
within one run: the machine is shared and noisy.
"""
from __future__ import annotations

import json
import os

from models.errors import OntogenyError
from experiments.cli.config import ArgumentParser

DESCRIPTION = "measure matmul peak, training MFU, sampling speed and stacked-vmap speed-up (not a test)"


def sections() -> dict:
    """Every section the registry declares (`Entry.bench`), imported only when asked for."""
    import importlib

    from experiments.cli import registry

    return {name: (lambda module=module, attr=attr, **kw: getattr(importlib.import_module(module), attr)(**kw))
            for name, (module, attr) in registry.bench_sections().items()}


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="python -m experiments bench", description=DESCRIPTION)
    available = sections()
    parser.add_argument("sections", nargs="*", default=["core"], help=f"any of: {', '.join(available)}")
    parser.add_argument("--out", help="also write the figures as JSON to this file")
    parser.add_argument("--quick", "--micro", action="store_true",
                        help="small sizes: skip the slow shakespeare-char shape; gpu: every step at micro size")
    args = parser.parse_args(argv)
    unknown = [s for s in args.sections if s not in available]
    if unknown:
        raise OntogenyError(f"unknown bench section {unknown[0]!r}; choose from: {', '.join(available)}")
    results = {}
    if args.out:  # `bench gpu` rewrites its JSON after every step: there, so a check cut short keeps it
        os.environ.setdefault("ONTOGENY_BENCH_GPU_JSON", args.out)
    for section in args.sections:
        results.update(available[section](quick=args.quick))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.out}")
    return 0
