import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import gpt, sample

CFG = gpt.GPTConfig(vocab_size=20, context=16, n_layer=2, n_head=2, d_model=16)


@pytest.fixture(scope="module")
def params():
    p = gpt.init_params(CFG, jax.random.PRNGKey(1))
    return jax.tree.map(lambda x: 10 * x if x.ndim >= 2 else x, p)  # sharper distributions


_full_forward = jax.jit(lambda p, x: gpt.apply(p, x, CFG)[0])


def naive_greedy(params, prompt, n_new):
    """Full forward over the last `context` tokens for every new token (nanoGPT's loop). The
    window is right-padded to `context` (causal: the padding cannot reach the last real
    position), so the reference compiles once."""
    out = np.array(prompt)
    for _ in range(n_new):
        window = out[:, -CFG.context:]
        L = window.shape[1]
        logits = _full_forward(params, jnp.asarray(np.pad(window, ((0, 0), (0, CFG.context - L)))))
        out = np.concatenate([out, np.argmax(np.asarray(logits[:, L - 1]), -1)[:, None]], 1)
    return out


@pytest.mark.parametrize("t0,n_new", [(5, 8), (4, 20), (20, 5), (1, 15)])
def test_cached_greedy_equals_naive_loop(params, t0, n_new):
    prompt = np.random.default_rng(t0).integers(0, 20, (3, t0))
    out = sample.generate(params, CFG, prompt, n_new, jax.random.PRNGKey(0), temperature=0.0)
    np.testing.assert_array_equal(np.asarray(out), naive_greedy(params, prompt, n_new))


def test_same_key_same_text_and_top1_is_greedy(params):
    prompt = np.zeros((4, 3), np.int32)
    a = sample.generate(params, CFG, prompt, 10, jax.random.PRNGKey(5), temperature=1.0)
    b = sample.generate(params, CFG, prompt, 10, jax.random.PRNGKey(5), temperature=1.0)
    c = sample.generate(params, CFG, prompt, 10, jax.random.PRNGKey(6), temperature=1.0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    top1 = sample.generate(params, CFG, prompt, 10, jax.random.PRNGKey(7), temperature=1.0, top_k=1)
    greedy = sample.generate(params, CFG, prompt, 10, jax.random.PRNGKey(7), temperature=0.0)
    np.testing.assert_array_equal(top1, greedy)


def test_sampling_follows_the_model_distribution():
    """With one context the empirical next-token frequencies match softmax(logits / T)."""
    cfg = gpt.GPTConfig(vocab_size=4, context=4, n_layer=1, n_head=1, d_model=8)
    p = gpt.init_params(cfg, jax.random.PRNGKey(3))
    p = jax.tree.map(lambda x: 20 * x if x.ndim >= 2 else x, p)
    prompt = np.zeros((4000, 2), np.int32)
    out = np.asarray(sample.generate(p, cfg, prompt, 1, jax.random.PRNGKey(0), temperature=0.7))[:, -1]
    logits, _ = gpt.apply(p, prompt[:1], cfg)
    probs = np.asarray(jax.nn.softmax(logits[0, -1] / 0.7))
    freq = np.bincount(out, minlength=4) / len(out)
    np.testing.assert_allclose(freq, probs, atol=0.03)
