"""Multi-host runs, simulated by 2 processes on this machine (coordinator on 127.0.0.1, one CPU
device each, gloo collectives): data-parallel training steps, their resume after SIGTERM, and a
whole study (post-training stages and stacked-checkpoint analyses) give what one process gives."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np

from tests.conftest import REPO

BASE_ENV = {**os.environ, "PYTHONPATH": str(REPO), "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv: list[str], n: int = 2) -> list[subprocess.Popen]:
    """`argv` as an n-process job, as a cluster launcher would start it (one process per host)."""
    port = free_port()
    return [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                             env={**BASE_ENV, "ONTOGENY_COORDINATOR": f"127.0.0.1:{port}",
                                  "ONTOGENY_NUM_PROCESSES": str(n), "ONTOGENY_PROCESS_ID": str(i)})
            for i in range(n)]


def finish(procs, expect: int = 0) -> list[str]:
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == expect, err[-3000:]
        outs.append(out)
    return outs


def _losses(run) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {(r.get("stage"), r["step"]): r["loss"] for r in rows if r.get("loss") is not None}


def test_two_process_cli_pretrain_survives_sigterm_and_resumes_like_one_process(tmp_path):
    """`python -m experiments pretrain` as a 2-process job: SIGTERM reaches the processes at
    different moments, both stop at the same step with a resume checkpoint (exit 143), the
    same command resumes, and the finished run (written by process 0 alone) has the losses,
    checkpoints and val loss of one process's uninterrupted run."""
    argv = [sys.executable, "-m", "experiments", "pretrain", "--preset", "micro", "--set", "train.steps=100"]
    single = subprocess.run(argv + ["--out", str(tmp_path / "one")], capture_output=True, text=True, env=BASE_ENV,
                            timeout=300, cwd=REPO)
    assert single.returncode == 0, single.stderr[-2000:]

    two = tmp_path / "two"
    procs = launch(argv + ["--out", str(two)])
    deadline = time.time() + 240
    while not (two / "checkpoints" / "pretrain" / "8").is_dir():
        assert time.time() < deadline and all(p.poll() is None for p in procs), "the job ended before step 8"
        time.sleep(0.02)
    procs[1].send_signal(signal.SIGTERM)
    time.sleep(0.05)
    procs[0].send_signal(signal.SIGTERM)
    finish(procs, expect=128 + signal.SIGTERM)
    assert not (two / "summary.json").exists()
    stopped_at = max(_losses(two))[1]
    assert 8 <= stopped_at < 100

    finish(launch(argv + ["--out", str(two)]))
    (one_losses, two_losses) = _losses(tmp_path / "one"), _losses(two)
    assert sorted(two_losses) == sorted(one_losses)  # one writer, no step logged twice or lost
    np.testing.assert_allclose([two_losses[k] for k in sorted(one_losses)],
                               [one_losses[k] for k in sorted(one_losses)], rtol=1e-4)
    s1, s2 = (json.loads((run / "summary.json").read_text()) for run in (tmp_path / "one", two))
    assert abs(s2["val_loss"] - s1["val_loss"]) < 1e-4
    ck = lambda run: sorted(int(p.name) for p in (run / "checkpoints" / "pretrain").iterdir())
    assert ck(two) == ck(tmp_path / "one")


STUDY_SCRIPT = textwrap.dedent("""
    import sys
    from dynamics import distributed
    distributed.initialize()
    from dynamics.runlog import RunFolder
    from experiments.studies.cognition import study as cognition
    from tests.test_cognition import MICRO
    folder = RunFolder(sys.argv[1])
    folder.write_summary(cognition.run(MICRO, folder))
""")


def test_two_process_study_equals_one_process(tmp_path):
    """The cognition study (pretrain -> SFT -> on-policy RL, then probes, prompting and sampling
    over the stacked checkpoints of every stage, via map_stack split across the processes) as a
    2-process job gives one process's summary."""
    single = subprocess.run([sys.executable, "-c", STUDY_SCRIPT, str(tmp_path / "one")], capture_output=True,
                            text=True, env=BASE_ENV, timeout=300, cwd=REPO)
    assert single.returncode == 0, single.stderr[-2000:]
    finish(launch([sys.executable, "-c", STUDY_SCRIPT, str(tmp_path / "two")]))
    s1, s2 = (json.loads((tmp_path / run / "summary.json").read_text()) for run in ("one", "two"))
    l1, l2 = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(l2) == sorted(l1) and {k[0] for k in l1} == {"pretrain", "sft", "rl"}
    np.testing.assert_allclose([l2[k] for k in sorted(l1)], [l1[k] for k in sorted(l1)], rtol=1e-4, atol=1e-5)
    assert s2["n_checkpoints"] == s1["n_checkpoints"]
    for key, value in s1.items():
        if key.startswith(("cognitive_", "expressive_", "pass_at_")) and isinstance(value, float):
            assert abs(s2[key] - value) < 1e-6, key
