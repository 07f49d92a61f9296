"""Head scores: the attention capture of every family against transformers' own attention
probabilities (committed fixture, tests/fixtures/make_development_fixtures.py); the scores
against a numpy loop; a hand-built two-layer attention model with a planted previous-token head
and induction head is found, and a random model scores at chance."""
from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from dynamics import hf_import
from models import gpt
from probes.development import heads

FIX = Path(__file__).parent / "fixtures"
ATTENTIONS = np.load(FIX / "development" / "attentions.npz")


@functools.partial(jax.jit, static_argnames=("config",))
def captured(params, tokens, config):
    return models.apply(params, tokens, config, capture=("attn_probs",))[1]["attn_probs"]


@pytest.mark.parametrize("key", sorted(ATTENTIONS.files))
def test_attention_capture_matches_transformers(key):
    case, step = key.split("/")
    config, params = hf_import.load_checkpoint(FIX / "hf" / case / step)
    got = np.asarray(captured(params, np.load(FIX / "hf" / "tokens.npy"), config))
    np.testing.assert_allclose(got, ATTENTIONS[key], atol=2e-5)


def test_gpt_attention_capture_is_the_softmax_of_layer_0():
    cfg = gpt.GPTConfig(vocab_size=11, context=8, n_layer=2, n_head=2, d_model=8)
    params = gpt.init_params(cfg, jax.random.PRNGKey(0))
    params = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.PRNGKey(1), x.shape), params)
    tokens = np.random.default_rng(0).integers(0, 11, (2, 8))
    got = np.asarray(captured(params, tokens, cfg))[0]                    # [B, H, S, S]
    x = np.asarray(params["wte"])[tokens] + np.asarray(params["wpe"])[:8]
    h = np.asarray(gpt.layer_norm(x, jax.tree.map(lambda a: a[0], params["blocks"]["ln1"])))
    qkv = h @ np.asarray(params["blocks"]["attn"]["w_qkv"][0]) + np.asarray(params["blocks"]["attn"]["b_qkv"][0])
    q, k = qkv[..., :8].reshape(2, 8, 2, 4), qkv[..., 8:16].reshape(2, 8, 2, 4)
    scores = np.einsum("bthe,bshe->bhts", q, k) / 2.0
    scores = np.where(np.tril(np.ones((8, 8), bool)), scores, -np.inf)
    want = np.exp(scores - scores.max(-1, keepdims=True))
    np.testing.assert_allclose(got, want / want.sum(-1, keepdims=True), atol=1e-5)


def test_scores_equal_a_numpy_loop():
    rng = np.random.default_rng(0)
    P = 5
    att = rng.random((3, 4, 2, 2 * P, 2 * P)) * np.tril(np.ones((2 * P, 2 * P)))
    att /= att.sum(-1, keepdims=True)
    got = heads.scores_from_attention(jnp.asarray(att), P)
    for name, offset, first in (("prev_token", 1, 1), ("induction", P - 1, P)):
        want = np.zeros((4, 3, 2))
        for b, l, h in np.ndindex(4, 3, 2):
            want[b, l, h] = np.mean([att[l, b, h, t, t - offset] for t in range(first, 2 * P)])
        np.testing.assert_allclose(np.asarray(got[name]), want, atol=1e-6)
    chance = heads.chance_scores(P)
    np.testing.assert_allclose(chance["induction"], np.mean([1 / (t + 1) for t in range(P, 2 * P)]))


def planted_model(V=16, P=16, lam=3.0):
    """A two-layer attention-only GPT (MLPs write nothing): layer 0 head 0 attends from t to
    t - 1 (positions) and writes the previous token into its own subspace; layer 1 head 0
    matches the current token against that subspace: an induction head."""
    C, D, H = 2 * P, 2 * V + 2 * P, 2
    E = D // H
    cfg = gpt.GPTConfig(vocab_size=V, context=C, n_layer=2, n_head=H, d_model=D, mlp_ratio=1)
    params = jax.tree.map(np.asarray, gpt.init_params(cfg, jax.random.PRNGKey(0)))
    params = jax.tree.map(np.zeros_like, params)
    for name in ("ln1", "ln2"):
        params["blocks"][name]["scale"][:] = 1.0
    params["ln_f"]["scale"][:] = 1.0
    tok, pos, prev = 0, V, V + C
    params["wte"][np.arange(V), tok + np.arange(V)] = 1.0
    params["wpe"][np.arange(C), pos + np.arange(C)] = 1.0
    w0, w1 = params["blocks"]["attn"]["w_qkv"][0], params["blocks"]["attn"]["w_qkv"][1]
    for t in range(C):                      # layer 0, head 0: query position t, key position s + 1
        w0[pos + t, t] = lam
        if t + 1 < E:
            w0[pos + t, D + t + 1] = lam
    w0[tok + np.arange(V), 2 * D + np.arange(V)] = 1.0                       # value: the token
    params["blocks"]["attn"]["w_out"][0][np.arange(V), prev + np.arange(V)] = 1.0 / 5.0
    w1[tok + np.arange(V), np.arange(V)] = lam                                  # layer 1, head 0
    w1[prev + np.arange(V), D + np.arange(V)] = lam
    return cfg, jax.tree.map(jnp.asarray, params)


def test_a_planted_induction_head_is_found_and_a_random_model_scores_at_chance():
    V, P = 16, 16
    cfg, params = planted_model(V, P)
    rng = np.random.default_rng(0)
    first = np.stack([rng.permutation(V) for _ in range(8)])                  # no repeats inside a period
    tokens = np.concatenate([first, first], 1)
    control = np.concatenate([first, np.stack([rng.permutation(V) for _ in range(8)])], 1)
    s = jax.tree.map(lambda x: np.asarray(x).mean(0), heads.head_scores(params, cfg, tokens, control))
    assert np.unravel_index(s["induction"].argmax(), s["induction"].shape) == (1, 0)
    assert s["induction"][1, 0] > 0.9 and s["induction_control"][1, 0] < 0.2
    assert np.unravel_index(s["prev_token"].argmax(), s["prev_token"].shape) == (0, 0)
    assert s["prev_token"][0, 0] > 0.9
    chance = heads.chance_scores(P)
    assert abs(s["induction"][0, 1] - chance["induction"]) < 0.02             # the empty head attends uniformly

    random_params = gpt.init_params(cfg, jax.random.PRNGKey(3))
    r = jax.tree.map(lambda x: np.asarray(x).mean(0), heads.head_scores(random_params, cfg, tokens, control))
    np.testing.assert_allclose(r["induction"], chance["induction"], atol=0.01)
    np.testing.assert_allclose(r["prev_token"], chance["prev_token"], atol=0.01)
    np.testing.assert_allclose(r["induction_control"], chance["induction"], atol=0.01)


def test_repeated_tokens_and_icl_score():
    toks = np.asarray(heads.repeated_random_tokens(jax.random.PRNGKey(0), 3, 7, 50))
    assert toks.shape == (3, 14) and (toks[:, :7] == toks[:, 7:]).all() and toks.max() < 50
    fresh = np.asarray(heads.repeated_random_tokens(jax.random.PRNGKey(0), 3, 7, 50, repeat=False))
    assert (fresh[:, :7] == toks[:, :7]).all() and not (fresh[:, 7:] == toks[:, 7:]).all()
    nll = jnp.asarray([[3.0, 2.0, 1.0, 0.5], [1.0, 1.0, 2.0, 1.0]])
    np.testing.assert_allclose(heads.icl_score(nll, 1, 3), [-1.5, 0.0])
    with pytest.raises(Exception, match="early"):
        heads.icl_score(nll, 3, 3)
