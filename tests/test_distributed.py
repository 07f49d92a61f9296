"""Two processes on this machine (coordinator on 127.0.0.1, gloo CPU collectives) take
data-parallel steps whose losses equal a single process's on the same global batches."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np

from tests.conftest import REPO

SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["JAX_PLATFORMS"] = "cpu"
    from dynamics import distributed
    multi = distributed.initialize()
    import jax, numpy as np
    from dynamics import data as data_lib, sharding, train as train_lib
    from models import gpt
    text = data_lib.synthetic_text(20_000, seed=0); tok = data_lib.CharTokenizer(text); ids = tok.encode(text)
    cfg = gpt.GPTConfig(vocab_size=tok.vocab_size, context=16, n_layer=2, n_head=2, d_model=32)
    tc = train_lib.TrainConfig(steps=5, batch_size=8, lr=3e-3, warmup=1)
    opt = train_lib.make_optimizer(tc)
    state = train_lib.init_state(gpt.init_params(cfg, jax.random.PRNGKey(0)), opt, 0)
    step = train_lib.make_train_step(train_lib.lm_loss(cfg), opt, dropout=False)
    mesh = sharding.data_mesh() if multi else None
    if mesh is not None:
        state = sharding.replicate(state, mesh)
    rows = distributed.local_batch(8) if multi else slice(0, 8)
    losses = []
    for s in range(5):
        x, y = data_lib.get_batch(ids, 0, s, 8, 16)       # every process derives the global batch ...
        batch = {"inputs": x[rows], "targets": y[rows]}  # ... and keeps only its own rows
        if mesh is not None:
            batch = distributed.global_batch(batch, mesh)
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    print(json.dumps({"process": jax.process_index(), "devices": len(jax.devices()), "losses": losses}))
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_data_parallel_step_equals_single_process():
    base = {**os.environ, "PYTHONPATH": str(REPO), "XLA_FLAGS": ""}
    single = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=base, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    reference = json.loads(single.stdout.strip().splitlines()[-1])["losses"]

    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**base, "ONTOGENY_COORDINATOR": f"127.0.0.1:{port}",
                                   "ONTOGENY_NUM_PROCESSES": "2", "ONTOGENY_PROCESS_ID": str(i)})
             for i in range(2)]
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(o["process"] for o in outputs) == [0, 1]
    assert all(o["devices"] == 2 for o in outputs)  # a global view: one CPU device per process
    for o in outputs:
        np.testing.assert_allclose(o["losses"], reference, rtol=1e-5)


def test_two_process_cli_pretrain_matches_one_process(tmp_path):
    """`python -m experiments pretrain` launched as a 2-process job (as on a cluster, one
    process per host): process 0 writes the run folder, and its losses, checkpoints and val
    loss equal a single process's run of the same command."""
    base = {**os.environ, "PYTHONPATH": str(REPO), "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    argv = [sys.executable, "-m", "experiments", "pretrain", "--preset", "micro"]
    single = subprocess.run(argv + ["--out", str(tmp_path / "one")], capture_output=True, text=True, env=base,
                            timeout=300, cwd=REPO)
    assert single.returncode == 0, single.stderr[-2000:]

    port = free_port()
    procs = [subprocess.Popen(argv + ["--out", str(tmp_path / "two")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=REPO,
                              env={**base, "ONTOGENY_COORDINATOR": f"127.0.0.1:{port}",
                                   "ONTOGENY_NUM_PROCESSES": "2", "ONTOGENY_PROCESS_ID": str(i)})
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]

    def read(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return ([r["loss"] for r in rows if r.get("loss") is not None],
                json.loads((run / "summary.json").read_text()),
                sorted(p.name for p in (run / "checkpoints" / "pretrain").iterdir()))

    (loss1, sum1, ck1), (loss2, sum2, ck2) = read(tmp_path / "one"), read(tmp_path / "two")
    assert len(loss2) == len(loss1)                          # one writer: no line logged twice
    np.testing.assert_allclose(loss2, loss1, rtol=1e-4)
    assert abs(sum2["val_loss"] - sum1["val_loss"]) < 1e-4 and ck2 == ck1
