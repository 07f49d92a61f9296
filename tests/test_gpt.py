import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.errors import OntogenyError
from models import gpt

CFG = gpt.GPTConfig(vocab_size=23, context=12, n_layer=3, n_head=2, d_model=16)


@pytest.fixture(scope="module")
def params():
    return gpt.init_params(CFG, jax.random.PRNGKey(0))


def test_causal_masking(params):
    tokens = np.random.default_rng(0).integers(0, 23, (2, 12))
    changed = tokens.copy()
    changed[:, 7:] = (changed[:, 7:] + 5) % 23
    a, _ = gpt.apply(params, tokens, CFG)
    b, _ = gpt.apply(params, changed, CFG)
    np.testing.assert_allclose(a[:, :7], b[:, :7], atol=1e-6)
    assert not np.allclose(a[:, 7:], b[:, 7:])


def test_captures_have_documented_shapes(params):
    tokens = jnp.zeros((2, 10), jnp.int32)
    logits, acts = gpt.apply(params, tokens, CFG, capture=tuple(gpt.CAPTURES))
    chex.assert_shape(logits, (2, 10, 23))
    chex.assert_shape([acts["embed"], acts["final_hidden"]], (2, 10, 16))
    chex.assert_shape([acts["resid"], acts["attn_out"]], (3, 2, 10, 16))
    chex.assert_shape(acts["mlp_hidden"], (3, 2, 10, 64))
    np.testing.assert_allclose(gpt.unembed(params, acts["final_hidden"]), logits, atol=1e-5)
    with pytest.raises(ValueError, match="unknown capture"):
        gpt.apply(params, tokens, CFG, capture=("nope",))


def test_finishing_from_a_residual_equals_the_full_pass(params):
    tokens = np.random.default_rng(1).integers(0, 23, (2, 12))
    logits, acts = gpt.apply(params, tokens, CFG, capture=("resid",))
    for layer in range(CFG.n_layer):
        spliced = gpt.logits_from_resid(params, acts["resid"][layer], layer, CFG)
        np.testing.assert_allclose(spliced, logits, atol=1e-5)


def test_rolled_and_unrolled_blocks_agree(params):
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 12, 16))
    a, _ = gpt.run_blocks(params["blocks"], x, CFG, unroll=True)
    b, _ = gpt.run_blocks(params["blocks"], x, CFG, unroll=False)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_reference_attention_matches_explicit_loop(params):
    """The batched block equals a per-position numpy computation of causal attention."""
    rng = np.random.default_rng(3)
    q, k, v = (rng.normal(size=(1, 2, 5, 4)).astype(np.float32) for _ in range(3))
    out = np.asarray(gpt.causal_attention(q, k, v, jnp.tril(jnp.ones((5, 5), bool))))
    for t in range(5):
        scores = np.einsum("hk,hsk->hs", q[0, :, t], k[0, :, : t + 1]) / 2.0  # sqrt(d_head = 4)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        np.testing.assert_allclose(out[0, :, t], np.einsum("hs,hsk->hk", weights, v[0, :, : t + 1]), atol=1e-5)


def test_untied_head_and_param_count():
    cfg = gpt.GPTConfig(vocab_size=10, context=4, n_layer=1, n_head=1, d_model=8, tied_embeddings=False)
    p = gpt.init_params(cfg, jax.random.PRNGKey(0))
    assert p["lm_head"].shape == (8, 10)
    assert gpt.unembedding_matrix(p).shape == (10, 8)
    D, F, V, C = 8, 32, 10, 4
    expected = V * D + C * D + (2 * D + D * 3 * D + 3 * D + D * D + D + 2 * D + D * F + F + F * D + D) + 2 * D + D * V
    assert gpt.n_params(p) == expected


def test_dropout_only_with_a_key(params):
    cfg = gpt.GPTConfig(vocab_size=23, context=12, n_layer=3, n_head=2, d_model=16, dropout=0.5)
    tokens = jnp.zeros((1, 6), jnp.int32)
    a, _ = gpt.apply(params, tokens, cfg)
    b, _ = gpt.apply(params, tokens, cfg)
    c, _ = gpt.apply(params, tokens, cfg, dropout_key=jax.random.PRNGKey(0))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("kwargs,match", [
    (dict(d_model=30, n_head=4), "not divisible"),
    (dict(n_layer=0), "positive"),
    (dict(dropout=1.0), "dropout"),
])
def test_invalid_configs_are_refused(kwargs, match):
    with pytest.raises(OntogenyError, match=match):
        gpt.GPTConfig(**kwargs)


def test_cross_entropy_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
    targets = rng.integers(0, 5, (2, 3))
    mask = np.array([[1, 0, 1], [1, 1, 0]])
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(gpt.cross_entropy(logits, targets), nll.mean(), rtol=1e-5)
    np.testing.assert_allclose(gpt.cross_entropy(logits, targets, mask), (nll * mask).sum() / mask.sum(), rtol=1e-5)


def test_dense_equals_einsum_over_leading_axes():
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(2, 3, 5, 4)).astype(np.float32), rng.normal(size=(4, 7)).astype(np.float32)
    np.testing.assert_allclose(gpt.dense(x, w), np.einsum("abcd,df->abcf", x, w), rtol=1e-5, atol=1e-5)


def test_head_splitting_against_explicit_indexing():
    """split_heads / layers.heads put channel h * E + e of position s at [h, s, e]; merging undoes it."""
    from models import layers

    x = np.random.default_rng(3).standard_normal((2, 5, 12)).astype(np.float32)
    H, E = 3, 4
    want = np.empty((2, H, 5, E), np.float32)
    for h in range(H):
        for e in range(E):
            want[:, h, :, e] = x[:, :, h * E + e]
    for split, merge in ((gpt.split_heads, gpt.merge_heads), (layers.heads, layers.merge)):
        got = split(jnp.asarray(x), H)
        chex.assert_shape(got, (2, H, 5, E))
        chex.assert_trees_all_equal(np.asarray(got), want)
        chex.assert_trees_all_equal(np.asarray(merge(got)), x)
