"""The CLI's glibc malloc settings (`experiments.cli.allocator`): merged with the user's,
applied once by re-executing the interpreter, refused when misspelt, off with ONTOGENY_MALLOC=system."""
import os
import subprocess
import sys

import pytest

from models.errors import OntogenyError
from experiments.cli import allocator
from tests.conftest import REPO


def test_merged_tunables_keep_the_users_own_values():
    assert allocator.merged_tunables("glibc.malloc.hugetlb=0:glibc.cpu.x86_ibt=on") == \
        "glibc.malloc.hugetlb=0:glibc.cpu.x86_ibt=on"
    assert allocator.merged_tunables("glibc.cpu.x86_ibt=on") == "glibc.cpu.x86_ibt=on:glibc.malloc.hugetlb=1"
    assert allocator.merged_tunables("") == "glibc.malloc.hugetlb=1"


@pytest.mark.parametrize("env, glibc, expected", [
    ({}, True, True), ({}, False, False), ({"ONTOGENY_MALLOC": "system"}, True, False),
    ({"ONTOGENY_MALLOC": "ontogeny"}, True, True), ({allocator.DONE: "1"}, True, False),
])
def test_wanted(env, glibc, expected):
    assert allocator.wanted(env, glibc) is expected


def test_a_misspelt_choice_is_one_clear_error():
    with pytest.raises(OntogenyError, match="ONTOGENY_MALLOC='glibc' is not known; use 'system'"):
        allocator.wanted({"ONTOGENY_MALLOC": "glibc"}, True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "ONTOGENY_MALLOC": "glibc"}
    env.pop(allocator.DONE, None)
    proc = subprocess.run([sys.executable, "-m", "experiments"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "ONTOGENY_MALLOC='glibc' is not known" in proc.stderr


def test_configure_restarts_once_with_the_tunables(monkeypatch):
    calls = []
    env = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}  # the user's own tunable stays first
    monkeypatch.setattr(allocator, "is_glibc", lambda: True)
    allocator.configure(env, execv=lambda path, argv: calls.append((path, argv)))
    assert len(calls) == 1 and calls[0][0] == sys.executable and calls[0][1][0] == sys.executable
    assert env[allocator.DONE] == "1" and env["GLIBC_TUNABLES"].startswith("glibc.malloc.arena_max=4:")
    allocator.configure(env, execv=lambda path, argv: calls.append((path, argv)))  # done: not again
    assert len(calls) == 1


@pytest.mark.skipif(not allocator.is_glibc(), reason="the tunables are glibc's")
def test_the_restarted_process_runs_the_same_command_with_the_tunables():
    code = ("import os, sys; from experiments.cli import allocator; allocator.configure(); "
            "print(os.getpid(), os.environ['GLIBC_TUNABLES'], sys.argv[1:])")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(allocator.DONE, None)
    env.pop("GLIBC_TUNABLES", None)
    proc = subprocess.Popen([sys.executable, "-c", code, "a", "b"], stdout=subprocess.PIPE, text=True, env=env)
    out, _ = proc.communicate(timeout=120)
    pid, tunables, args = out.split(" ", 2)
    assert proc.returncode == 0 and int(pid) == proc.pid  # execv: the same process, restarted
    assert tunables == allocator.merged_tunables("") and args.strip() == "['a', 'b']"


def test_page_faults_are_counted_where_fresh_memory_is_touched():
    import numpy as np

    from experiments.bench import torch_reference as bench_torch

    touch = lambda: np.ones(16 << 20, np.float32).sum()  # 64 MiB, fresh pages each call
    faults, quiet = bench_torch.minor_faults_per_call(touch), bench_torch.minor_faults_per_call(lambda: None)
    if faults is None:
        pytest.skip("no resource module here")
    assert faults >= 16 and quiet < faults  # >= 32 even where each fault maps a 2 MiB page
