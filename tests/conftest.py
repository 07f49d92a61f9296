"""Shared fixtures: one micro pretrain run (synthetic corpus, a few seconds) per test session;
one persistent XLA compilation cache for the session."""
import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The same small programs are compiled by many processes (the xdist workers and the CLI
# subprocesses the tests start, which inherit this environment): a cache shared by all of them
# halves a micro CLI run (18.9 -> 9.5 s measured). It lives as long as the session, so every
# session starts cold; set JAX_COMPILATION_CACHE_DIR yourself to keep or to avoid it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="ontogeny-test-xla-cache-")
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory) -> Path:
    """A finished `pretrain --preset micro` run folder (40 steps, 8 checkpoints)."""
    from experiments.studies.pretrain.study import ensure_pretrain

    return ensure_pretrain(tmp_path_factory.mktemp("micro") / "run", preset="micro")


def run_cli(*args, env_extra=None, cwd=None, timeout=300):
    """`python -m experiments ARGS` in a subprocess; returns the CompletedProcess."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "experiments", *args], capture_output=True, text=True,
                          env=env, cwd=cwd or REPO, timeout=timeout)
