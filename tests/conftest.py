"""Shared fixtures: one micro pretrain run (synthetic corpus, a few seconds) per test session."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory) -> Path:
    """A finished `pretrain --preset micro` run folder (40 steps, 8 checkpoints)."""
    from experiments.pretrain import ensure_pretrain

    return ensure_pretrain(tmp_path_factory.mktemp("micro") / "run", preset="micro")


def run_cli(*args, env_extra=None, cwd=None, timeout=300):
    """`python -m experiments ARGS` in a subprocess; returns the CompletedProcess."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "experiments", *args], capture_output=True, text=True,
                          env=env, cwd=cwd or REPO, timeout=timeout)
