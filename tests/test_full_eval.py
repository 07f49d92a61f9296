"""Validation on the whole held-out split: every non-overlapping window scored once,
batched and padded, equals a brute-force loop of one window at a time with the loss in numpy."""
import json

import jax
import numpy as np

from dynamics import data as data_lib
from dynamics import stats
from experiments.studies.pretrain import study as pretrain
from models import gpt

CFG = gpt.GPTConfig(vocab_size=23, context=8, n_layer=2, n_head=2, d_model=16, dropout=0.0)


def _brute_force(params, cfg, ids):
    """One forward per window i over ids[i*S : i*S + S + 1]; log-softmax and mean in float64 numpy."""
    S, out = cfg.context, []
    forward = jax.jit(lambda p, x: gpt.apply(p, x, cfg)[0][0])  # one window [1, S] -> logits [S, V]
    for i in range((len(ids) - 1) // S):
        window = np.asarray(ids[i * S: i * S + S + 1])
        logits = np.asarray(forward(params, window[None, :-1]), np.float64)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        out.append(-logp[np.arange(S), window[1:]].mean())
    return np.array(out)


def test_full_split_windows_cover_every_target_once():
    ids = np.arange(1, 100)  # 99 tokens, context 8: 12 windows, 96 targets, a tail of 2 left out
    batches = list(data_lib.full_split_batches(ids, 8, 5))
    assert [n for _, _, n in batches] == [5, 5, 2] and all(x.shape == (5, 8) for x, _, _ in batches)
    targets = np.concatenate([y[:n] for _, y, n in batches]).ravel()
    np.testing.assert_array_equal(targets, ids[1:97])
    inputs = np.concatenate([x[:n] for x, _, n in batches]).ravel()
    np.testing.assert_array_equal(inputs, ids[:96])
    assert data_lib.n_full_windows(len(ids), 8) == 12


def test_full_split_losses_equal_a_per_window_loop(tmp_path):
    params = gpt.init_params(CFG, jax.random.PRNGKey(3))
    ids = np.random.default_rng(0).integers(0, CFG.vocab_size, 203)  # 25 windows: padded last batch of 4 in 3
    path = tmp_path / "val.bin"
    ids.astype(np.uint16).tofile(path)
    memmap = np.memmap(path, np.uint16, mode="r")  # a token-file split is read a batch at a time
    expected = _brute_force(params, CFG, ids)
    fn = pretrain.window_loss_fn(CFG)
    got = pretrain.full_split_losses(lambda x, y: fn(params, x, y), CFG.context, memmap, tokens_per_batch=24)
    assert got.shape == (25,)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    summary = pretrain.full_split_summary(params, CFG, ids, tokens_per_batch=24)
    assert summary["n_val_windows_full"] == 25 and summary["val_tokens_full"] == 200
    np.testing.assert_allclose(summary["val_loss_full"], expected.mean(), rtol=1e-5)
    np.testing.assert_allclose(summary["val_loss_full_ci"], stats.mean_ci(expected), rtol=1e-4)
    lo, hi = summary["val_loss_full_ci"]
    assert lo < summary["val_loss_full"] < hi


def test_pretrain_summary_adds_the_full_split_and_keeps_its_keys(micro_run):
    """The micro run's summary: val_loss_full is the last checkpoint's loss on every held-out
    window (recomputed here by the brute-force loop), beside the subset's val_loss."""
    from dynamics.checkpoints import Series, load_model_config

    summary = json.loads((micro_run / "summary.json").read_text())
    assert {"val_loss", "val_loss_ci", "n_val_windows", "best_val_loss", "tokens_per_s", "val_tokens"} <= set(summary)
    cfg = load_model_config(micro_run)
    params = Series(micro_run, "pretrain", create=False).restore_params(summary["steps"])
    val_ids = data_lib.load_corpus(pretrain.PRESETS["micro"].data).val_ids
    expected = _brute_force(params, cfg, val_ids)
    assert summary["n_val_windows_full"] == len(expected) == (summary["val_tokens"] - 1) // cfg.context
    np.testing.assert_allclose(summary["val_loss_full"], expected.mean(), rtol=1e-5)
    assert any("whole held-out split" in line for line in pretrain.findings(summary))
