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


def test_uncached_sampler_equals_the_cached_one_on_the_gpt(params):
    """`generate_any` (any family, no cache) against `generate` (KV cache): same greedy text,
    and the same sampled text for the same key."""
    prompt = np.random.default_rng(3).integers(0, 20, (3, 5))
    for temperature in (0.0, 1.0):
        cached = sample.generate(params, CFG, prompt, 9, jax.random.PRNGKey(4), temperature=temperature)
        plain = sample.generate_any(params, CFG, jnp.asarray(prompt), 9, jax.random.PRNGKey(4), temperature=temperature)
        np.testing.assert_array_equal(np.asarray(plain), np.asarray(cached))


@pytest.mark.parametrize("case", ["neox_rot25_parallel", "llama_gqa", "gpt2_mistral", "olmo2_gqa", "baichuan2_7b"])
def test_uncached_sampler_on_imported_families_is_greedy(case):
    """On an imported fixture, greedy `generate_any` equals a brute-force loop of full forwards
    taking the argmax at the last real position."""
    from pathlib import Path

    import models
    from dynamics import hf_import

    folder = Path(__file__).parent / "fixtures" / "hf" / case
    config, p = hf_import.load_checkpoint(hf_import.find_steps(folder)[-1][1])
    prompt = np.random.default_rng(0).integers(0, config.vocab_size, (2, 4))
    out = np.asarray(sample.generate_any(p, config, jnp.asarray(prompt), 5, jax.random.PRNGKey(0), temperature=0.0))
    ref = np.array(prompt)
    for _ in range(5):
        logits = np.asarray(models.apply(p, jnp.asarray(ref), config)[0])
        ref = np.concatenate([ref, logits[:, -1].argmax(-1)[:, None]], 1)
    np.testing.assert_array_equal(out, ref)
    with pytest.raises(Exception, match="exceeds the model's context"):
        sample.generate_any(p, config, jnp.asarray(prompt), config.context, jax.random.PRNGKey(0))
