import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from dynamics import data as data_lib
from dynamics import train as train_lib
from dynamics.checkpoints import Series, load_stack
from models.errors import OntogenyError
from dynamics.loop import Interrupted
from dynamics.runlog import RunFolder
from dynamics.schedule import checkpoint_steps
from models import gpt
from tests.conftest import REPO

MODEL = gpt.GPTConfig(vocab_size=27, context=16, n_layer=2, n_head=2, d_model=32, dropout=0.1)


def test_checkpoint_schedule_is_pythia_like():
    assert checkpoint_steps(3000, log_until=512, every=1000) == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512,
                                                                 1000, 2000, 3000]
    assert checkpoint_steps(10, log_until=4, every=0) == [0, 1, 2, 4, 10]
    assert checkpoint_steps(1500, 512, 100)[-3:] == [1300, 1400, 1500]
    assert len(checkpoint_steps(1500, 512, 100)) >= 20


def test_decay_mask_spares_norms_biases_embeddings():
    p = gpt.init_params(gpt.GPTConfig(vocab_size=5, context=4, n_layer=1, n_head=1, d_model=4,
                                      tied_embeddings=False), jax.random.PRNGKey(0))
    mask = train_lib.decay_mask(p)
    assert mask["blocks"]["attn"]["w_qkv"] and mask["blocks"]["mlp"]["w_out"] and mask["lm_head"]
    assert not mask["wte"] and not mask["wpe"] and not mask["blocks"]["ln1"]["scale"]
    assert not mask["blocks"]["attn"]["b_qkv"] and not mask["ln_f"]["bias"]


def _setup(tmp_path, steps=24, kill_at=None, lr=3e-3):
    text = data_lib.synthetic_text(30_000, seed=0)
    tok = data_lib.CharTokenizer(text)
    ids = tok.encode(text)
    cfg = gpt.GPTConfig(**{**MODEL.__dict__, "vocab_size": tok.vocab_size})
    tc = train_lib.TrainConfig(steps=steps, batch_size=8, lr=lr, warmup=4, log_every=4, eval_every=8,
                               log_checkpoints_until=8, checkpoint_every=8)
    opt = train_lib.scheduled_adamw(tc)
    state = train_lib.init_state(gpt.init_params(cfg, jax.random.PRNGKey(0)), opt, 0)
    step_fn = train_lib.make_train_step(train_lib.lm_loss(cfg), opt)

    def batch_fn(step):
        if kill_at is not None and step == kill_at:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by the loop: save and stop
        x, y = data_lib.get_batch(ids, 0, step, 8, 16)
        return {"inputs": x, "targets": y}

    return state, step_fn, batch_fn, tc


def test_loss_falls_on_synthetic_text(tmp_path):
    state, step_fn, batch_fn, tc = _setup(tmp_path, steps=200, lr=1e-2)
    folder = RunFolder(tmp_path / "run")
    train_lib.run_training(folder, "pretrain", state, step_fn, batch_fn, tc, tokens_per_step=128)
    losses = [r["loss"] for r in folder.read_metrics() if "loss" in r]
    text = data_lib.synthetic_text(30_000, seed=0)
    freq = np.unique(list(text), return_counts=True)[1] / len(text)
    unigram_entropy = -(freq * np.log(freq)).sum()
    # from ln(V) (uniform) to clearly below the unigram entropy: context is being used
    assert losses[0] > unigram_entropy
    assert np.mean(losses[-5:]) < unigram_entropy - 0.2, (unigram_entropy, losses)


def test_resume_after_sigterm_is_bit_identical(tmp_path):
    state, step_fn, batch_fn, tc = _setup(tmp_path)
    straight = train_lib.run_training(RunFolder(tmp_path / "a"), "pretrain", state, step_fn, batch_fn, tc)

    state, step_fn, batch_fn_kill, tc = _setup(tmp_path, kill_at=13)
    folder = RunFolder(tmp_path / "b")
    with pytest.raises(Interrupted) as stopped:
        train_lib.run_training(folder, "pretrain", state, step_fn, batch_fn_kill, tc)
    assert stopped.value.step == 14 and stopped.value.signum == signal.SIGTERM
    assert Series(folder.root, "pretrain").steps() == [0, 1, 2, 4, 8]
    state, step_fn, batch_fn, tc = _setup(tmp_path)  # a fresh process would rebuild all of this
    resumed = train_lib.run_training(folder, "pretrain", state, step_fn, batch_fn, tc)
    for a, b in zip(jax.tree.leaves(straight["params"]), jax.tree.leaves(resumed["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    steps_a, stack_a = load_stack(tmp_path / "a")
    steps_b, stack_b = load_stack(folder.root)
    np.testing.assert_array_equal(steps_a, steps_b)  # the resume checkpoint stays out of the series
    for a, b in zip(jax.tree.leaves(stack_a), jax.tree.leaves(stack_b)):
        np.testing.assert_array_equal(a, b)


def test_nan_loss_stops_with_the_last_good_checkpoint(tmp_path):
    state, step_fn, batch_fn, tc = _setup(tmp_path, steps=24)
    state["params"]["wte"] = state["params"]["wte"].at[0, 0].set(np.nan)
    folder = RunFolder(tmp_path / "nan")
    with pytest.raises(OntogenyError, match=r"loss became nan at step 1 .*last good checkpoint is step 0"):
        train_lib.run_training(folder, "pretrain", state, step_fn, batch_fn, tc)
    assert Series(folder.root, "pretrain").steps() == [0]


DP_SCRIPT = textwrap.dedent("""
    import json, jax, numpy as np
    from dynamics import data as data_lib, sharding, train as train_lib
    from models import gpt
    assert len(jax.devices()) == 2, jax.devices()
    text = data_lib.synthetic_text(20_000, seed=0); tok = data_lib.CharTokenizer(text); ids = tok.encode(text)
    cfg = gpt.GPTConfig(vocab_size=tok.vocab_size, context=16, n_layer=2, n_head=2, d_model=32)
    tc = train_lib.TrainConfig(steps=6, batch_size=8, lr=3e-3, warmup=2)
    opt = train_lib.scheduled_adamw(tc)
    losses = {}
    for name, mesh in (("single", None), ("dp", sharding.data_mesh())):
        state = train_lib.init_state(gpt.init_params(cfg, jax.random.PRNGKey(0)), opt, 0)
        step = train_lib.make_train_step(train_lib.lm_loss(cfg), opt, dropout=False)
        if mesh is not None:
            state = sharding.replicate(state, mesh)
        out = []
        for s in range(6):
            x, y = data_lib.get_batch(ids, 0, s, 8, 16)
            batch = {"inputs": x, "targets": y}
            if mesh is not None:
                batch = sharding.shard_batch(batch, mesh)
                assert len(batch["inputs"].sharding.device_set) == 2
            state, m = step(state, batch)
            out.append(float(m["loss"]))
        losses[name] = out
    print(json.dumps(losses))
""")


def test_data_parallel_equals_single_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", DP_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    losses = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(losses["dp"], losses["single"], rtol=1e-5)
    assert losses["single"][-1] < losses["single"][0]


def _loss_and_grads():
    """Loss and gradients of the training loss on a learnable batch."""
    cfg = gpt.GPTConfig(vocab_size=31, context=12, n_layer=2, n_head=2, d_model=16, dropout=0.0)
    params = gpt.init_params(cfg, jax.random.PRNGKey(1))
    ids = (np.arange(500) * 7) % 31
    x, y = data_lib.get_batch(ids, 0, 0, 6, 12)
    return jax.jit(jax.value_and_grad(train_lib.lm_loss(cfg)))(params, {"inputs": x, "targets": y}, None)


def test_flattened_matmuls_train_like_batched_ones(monkeypatch):
    """gpt.dense (one [B*T, D] matmul, the faster layout on a CPU) gives the loss and every gradient of the
    previous batched `x_BTD @ w`, so training is unchanged to float tolerance."""
    loss, grads = _loss_and_grads()
    monkeypatch.setattr(gpt, "dense", lambda x, w: x @ w)
    loss_prev, grads_prev = _loss_and_grads()
    np.testing.assert_allclose(loss, loss_prev, rtol=1e-6)
    for g, g_prev in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_prev)):
        np.testing.assert_allclose(g, g_prev, rtol=1e-4, atol=1e-7)
    assert all(np.abs(np.asarray(g)).sum() > 0 for g in jax.tree.leaves(grads["blocks"]))
