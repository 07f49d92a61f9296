"""Command line: `python -m experiments [NAME --preset P --out DIR --set key=value ...]`.

Parses and dispatches only. Bad input exits 2 with one line on stderr naming the fix.
Run as a program it first restarts itself with glibc's malloc asking for huge pages, so that
XLA's per-step buffers fault 2 MiB at a time (`experiments.cli.allocator`; ONTOGENY_MALLOC=system
turns that off), then asks XLA for the host devices ONTOGENY_HOST_DEVICES=N names, so that
training is data parallel over the cores (`experiments.cli.host_devices`; off by default).
"""
from __future__ import annotations

import json
import os
import sys

from models.errors import OntogenyError


def _fail(message: str) -> int:
    one_line = message.replace("\r", "\\r").replace("\n", "\\n")  # a value quoted from the command line
    print(f"error: {one_line}", file=sys.stderr)
    return 2


def list_experiments() -> int:
    from experiments.cli import commands

    print("Ontogeny experiments (python -m experiments NAME --preset PRESET --out DIR [--set key=value ...]):")
    for name in commands.available():
        module = commands.load(name)
        presets = getattr(module, "PRESETS", None)
        extra = f"  [presets: {', '.join(presets)}]" if presets else ""
        print(f"  {name:<15} {module.DESCRIPTION}{extra}")
    return 0


def run_study(name: str, module, argv: list[str]) -> int:
    import argparse

    from dynamics.runlog import to_jsonable
    from experiments.cli.config import ArgumentParser, help_text, override, run_into

    parser = ArgumentParser(prog=f"python -m experiments {name}", description=module.DESCRIPTION,
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog=help_text(module.PRESETS["tiny"], "tiny"))
    parser.add_argument("--preset", default="tiny", help=f"one of: {', '.join(module.PRESETS)} (default tiny)")
    parser.add_argument("--out", default=None, help="run folder (default runs/NAME-PRESET)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    flags = getattr(module, "FLAGS", {})
    for flag, key in flags.items():
        parser.add_argument(f"--{flag}", action="store_true", help=f"same as --set {key}=true")
    args = parser.parse_args(argv)
    if args.preset not in module.PRESETS:
        raise OntogenyError(f"unknown preset {args.preset!r} for {name}; choose one of: {', '.join(module.PRESETS)}")
    assignments = list(args.set) + [f"{key}=true" for flag, key in flags.items() if getattr(args, flag.replace('-', '_'))]
    config = override(module.PRESETS[args.preset], assignments)
    out = args.out or os.path.join("runs", f"{name}-{args.preset}")

    summary = run_into(out, name, args.preset, module, config)
    print(json.dumps(to_jsonable(summary), indent=2))
    print(f"results in {os.path.abspath(out)} (summary.json, metrics.jsonl, figures/)")
    return 0


def main(argv: list[str]) -> int:
    from dynamics import distributed
    from experiments.cli import commands

    distributed.initialize()  # a no-op unless ONTOGENY_COORDINATOR (or SLURM / a TPU pod) names a job

    if not argv or argv[0] in ("-h", "--help", "list"):
        return list_experiments()
    name, rest = argv[0], argv[1:]
    known = commands.available()
    if name not in known:
        raise OntogenyError(f"unknown experiment {name!r}; run `python -m experiments` to list: {', '.join(known)}")
    module = commands.load(name)
    if hasattr(module, "main"):
        return module.main(rest)
    return run_study(name, module, rest)


def cli(argv: list[str]) -> int:
    """`main` with the user-facing error contract: bad input, a folder another process writes, or
    a failed write (a full disk) -> one line, exit 2; a signal during training -> checkpoint saved,
    one line, exit 128 + signal. The folder locks this command took are released in every case."""
    from dynamics import faults, locks
    from dynamics.loop import Interrupted

    faults.install()  # a full disk met by a background thread surfaces here as one line
    try:
        code = main(argv)
        faults.raise_pending()
        return code
    except OntogenyError as e:
        return _fail(str(faults.earliest_failure(e) or e))  # the failed save, not a later cleanup's echo
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        return 128 + e.signum
    except Exception as e:
        failed = faults.as_write_failed(e)  # a write no guard names (a study's own file)
        if failed is None:
            raise
        return _fail(str(failed))
    finally:
        locks.release_all()


if __name__ == "__main__":
    from experiments.cli import allocator
    from experiments.cli import host_devices

    try:  # before anything imports jax: the CPU backend reads XLA_FLAGS once, when it starts
        allocator.configure()  # may restart this interpreter with glibc's malloc tunables
        host_devices.configure()
    except OntogenyError as e:
        sys.exit(_fail(str(e)))
    sys.exit(cli(sys.argv[1:]))
