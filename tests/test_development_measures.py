"""Logit lens, weight statistics and the lift over a series: the last layer's lens is the model's
own loss (any family); the statistics equal numpy's SVD; `map_stack` of the one-checkpoint
function equals a loop over checkpoints; the series helpers on hand-made curves."""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from dynamics import hf_import
from dynamics.checkpoints import map_stack
from dynamics.stacks import stack_trees, unstack_tree
from models import gpt
from probes.development import heads, lens, series, weights

HF = Path(__file__).parent / "fixtures" / "hf"
CFG = gpt.GPTConfig(vocab_size=19, context=12, n_layer=2, n_head=2, d_model=16)


def own_loss(params, config, tokens):
    logits, _ = models.apply(params, tokens[:, :-1], config)
    logp = jax.nn.log_softmax(np.asarray(logits, np.float64), -1)
    return -np.take_along_axis(np.asarray(logp), tokens[:, 1:, None], -1)[..., 0]


@pytest.mark.parametrize("case", [None, "neox_rot25_parallel", "llama_gqa", "gpt2_mistral"])
def test_the_last_layer_lens_is_the_model_loss(case):
    if case is None:
        config, params = CFG, gpt.init_params(CFG, jax.random.PRNGKey(0))
    else:
        config, params = hf_import.load_checkpoint(sorted(p for p in (HF / case).iterdir() if p.name != "refs")[-1])
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (3, 11))
    nll, _ = lens.lens_nll(params, config, tokens)
    assert nll.shape == (config.n_layer + 1, 3, 10)
    np.testing.assert_allclose(np.asarray(nll[-1]), own_loss(params, config, tokens), atol=2e-4)
    assert np.abs(np.asarray(nll[0]) - np.asarray(nll[-1])).max() > 1e-2    # the embedding's lens is another prediction


def test_lens_of_the_embedding_by_hand():
    params = gpt.init_params(CFG, jax.random.PRNGKey(1))
    tokens = np.random.default_rng(1).integers(0, 19, (2, 7))
    nll, _ = lens.lens_nll(params, CFG, tokens)
    x = np.asarray(params["wte"])[tokens[:, :-1]] + np.asarray(params["wpe"])[:6]
    h = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    logits = h @ np.asarray(params["wte"]).T
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(np.asarray(nll[0]), -np.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0], atol=1e-4)


def test_weight_statistics_equal_numpy():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 6, 4)).astype(np.float32)
    w[1] = np.outer(rng.normal(size=6), rng.normal(size=4))                    # rank one: stable rank 1
    w[2] = 0.0
    st = jax.tree.map(np.asarray, weights.matrix_stats(jnp.asarray(w)))
    sv = np.linalg.svd(w[0].astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(st["sv"][0], sv, rtol=1e-5)
    np.testing.assert_allclose(st["frobenius"][0], np.linalg.norm(w[0]), rtol=1e-5)
    np.testing.assert_allclose(st["stable_rank"][0], (sv ** 2).sum() / sv[0] ** 2, rtol=1e-5)
    np.testing.assert_allclose(st["stable_rank"][1], 1.0, rtol=1e-5)
    assert st["stable_rank"][2] == 0.0 and np.isfinite(st["stable_rank"]).all()


def test_matrices_of_every_family():
    params = gpt.init_params(CFG, jax.random.PRNGKey(0))
    m = weights.matrices(params, CFG)
    assert set(m) == {"W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "embed"}      # tied: no separate unembedding
    np.testing.assert_array_equal(m["W_K"], params["blocks"]["attn"]["w_qkv"][:, :, 16:32])
    config, p = hf_import.load_checkpoint(HF / "llama_gqa" / "step10")
    m = weights.matrices(p, config)
    assert m["W_K"].shape == m["W_Q"].shape and "unembed" in m                     # GQA repeated per query head


def test_map_stack_equals_a_loop_over_checkpoints():
    stacked = stack_trees([gpt.init_params(CFG, jax.random.PRNGKey(i)) for i in range(3)])
    rng = np.random.default_rng(0)
    data = {"windows": rng.integers(0, 19, (4, 13)).astype(np.int32),
            "positions": np.stack([np.sort(rng.choice(12, 3, replace=False)) for _ in range(4)]).astype(np.int32),
            "repeated": np.asarray(heads.repeated_random_tokens(jax.random.PRNGKey(1), 2, 6, 19)),
            "control": np.asarray(heads.repeated_random_tokens(jax.random.PRNGKey(2), 2, 6, 19, repeat=False))}
    fn = series.forward_measures_fn(CFG, batch_size=2)
    got = map_stack(fn, stacked, data, chunk_size=2)
    for c in range(3):
        one = jax.tree.map(np.asarray, jax.jit(fn)(unstack_tree(stacked, c), data))
        for path, a in jax.tree_util.tree_leaves_with_path(one):
            b = np.asarray(_at(got, path))[c]
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=str(path))
    # the Gram holds the chosen residuals: its diagonal at layer 0 is |embedding at that position|^2
    p0 = unstack_tree(stacked, 0)
    x = np.asarray(p0["wte"])[data["windows"][:, :-1]] + np.asarray(p0["wpe"])[:12]
    picked = np.concatenate([x[n, data["positions"][n]] for n in range(4)])
    np.testing.assert_allclose(np.diag(got["gram"][0, 0]), (picked ** 2).sum(-1), rtol=1e-4)


def _at(tree, path):
    for key in path:
        tree = tree[key.key]
    return tree


def test_series_helpers_on_hand_made_curves():
    steps = [0, 1, 2, 4, 8, 16]
    assert series.fastest_change(steps, series.value_change([0, 0, 0, 5, 5.5, 6])) == [2, 4]
    assert series.fastest_change(steps, series.value_change([0, 1, 2, 3, 10, 11]), axis="step") == [4, 8]
    assert series.fastest_change([3], series.value_change([1.0])) is None
    # checkpoints 500 and 512 are too close to count as a pair of their own: noise between them
    pythia = [0, 100, 200, 300, 400, 500, 512, 600]
    assert (6, 7) not in series.spaced_pairs(pythia, "step") and (5, 7) in series.spaced_pairs(pythia, "step")
    noisy = [0, 1, 2, 3, 4, 5, 5.3, 6]
    assert series.fastest_change(pythia, series.value_change(noisy), axis="step") != [500, 512]
    assert series.spaced_pairs([0, 1, 1000], "log_step", 0.05) == [(0, 1), (1, 2)]
    assert series.spaced_pairs([0, 1, 1000], "log_step", 0.2) == [(0, 2)]
    mean = np.array([1.0, 2.0, 3.0, 2.9, 1.0, 1.1])
    tight = np.stack([mean - 0.1, mean + 0.1], 1)
    wide = np.stack([mean - 5, mean + 5], 1)
    # a maximum at step 2 (rise, then fall beyond the intervals) and a minimum at step 8 whose
    # rise afterwards (1.0 -> 1.1) stays inside them
    assert series.supported_turns(steps, mean, tight) == {"candidates": [2, 8], "supported": [2]}
    assert series.supported_turns(steps, mean, wide)["supported"] == []
    s = np.zeros((50, 2, 3))
    s[:, 1, 2] = np.linspace(0.5, 0.7, 50)
    value, ci, head = series.max_head_ci(s, n_boot=200)
    assert head == (1, 2) and ci[0] < value < ci[1] and abs(value - 0.6) < 1e-9


def test_cka_series_adjacent_and_jackknife():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(24, 5))
    reps = [base, base + 0.05 * rng.normal(size=(24, 5)), rng.normal(size=(24, 5))]     # 3 checkpoints, 1 layer
    gram = np.stack([[r @ r.T] for r in reps]).astype(np.float32)
    from probes.development import cka

    out = series.cka_series(gram, np.repeat(np.arange(6), 4), debiased=False)
    for c in range(2):
        np.testing.assert_allclose(out["adjacent"][c, 0], float(cka.cka(reps[c].astype(np.float32),
                                                                        reps[c + 1].astype(np.float32))), rtol=1e-4)
        lo, hi = out["adjacent_ci"][c, 0]
        assert lo <= out["adjacent"][c, 0] <= hi
    assert out["adjacent"][0, 0] > 0.95 and out["adjacent_ci"][1, 0][1] < out["adjacent_ci"][0, 0][0]
    np.testing.assert_allclose(np.diagonal(out["maps"][0]), 1.0, atol=1e-5)
    # a leave-out equals CKA on the kept examples
    keep = np.ones(24, np.float32)
    keep[:4] = 0
    f = [np.asarray(cka.features_from_gram(jnp.asarray(g[0]), False, jnp.asarray(keep))) for g in gram[:2]]
    np.testing.assert_allclose((f[0] * f[1]).sum(), float(cka.cka(reps[0][4:].astype(np.float32),
                                                                  reps[1][4:].astype(np.float32))), rtol=1e-4)
