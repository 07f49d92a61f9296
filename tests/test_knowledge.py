import itertools

import numpy as np
import pytest

from dynamics import knowledge as K
from models.errors import OntogenyError


@pytest.fixture(scope="module")
def world():
    return K.make_world(K.WorldConfig(n_entities=12, n_attributes=3, n_values=6, n_options=4, seed=3))


def test_world_split_and_facts(world):
    Q = 12 * 3
    assert len(world.questions) == Q
    assert sorted(np.concatenate([world.train, world.test]).tolist()) == list(range(Q))
    assert len(set(world.train) & set(world.test)) == 0
    assert len(set(world.entities)) == 12
    assert world.chance == 0.25
    text = K.pretrain_text(world, 5000, seed=1)
    lines = set(text.split("\n")[:-1])
    # every line is a true fact, and every fact appears
    truths = {K.fact_sentence(world, e, a) for e, a in world.questions}
    assert lines == truths
    # the QA format never appears in pretraining text
    assert "Answer" not in text and "Q:" not in text and ")" not in text


def test_items_and_prompts(world):
    options, answers = K.fixed_items(world, world.test)
    for q, opts, k in zip(world.test, options, answers):
        e, a = world.questions[q]
        assert opts[k] == world.values_EA[e, a]
        assert len(set(opts.tolist())) == 4
        prompt = K.format_prompt(world, q, opts)
        assert world.entities[e] in prompt and prompt.endswith("Answer: ")
        assert f"{K.LETTERS[k]}) {K.value_name(a, opts[k])}" in prompt
        assert len(prompt) <= K.prompt_length(world, 0)
        for fmt in K.FORMATS:
            heads = K.option_heads(world, q, opts, fmt)
            assert len(set(heads)) == 4  # the first answer character identifies the option
            assert K.answer_text(world, q, opts, k, fmt)[0] == heads[k]
        assert K.answer_text(world, q, opts, k, "value") == K.value_name(a, opts[k])
    # answer positions are roughly balanced over a large draw
    rng = np.random.default_rng(0)
    ks = [K.draw_item(world, int(q), rng)[1] for q in world.train for _ in range(20)]
    counts = np.bincount(ks, minlength=4) / len(ks)
    assert np.all(np.abs(counts - 0.25) < 0.06)


def test_fewshot_and_padding(world):
    tok = K.tokenizer(world)
    opts, ans = K.fixed_items(world, world.train[:6])
    shots = [(int(q), o, int(k)) for q, o, k in zip(world.train[:5], opts[:5], ans[:5])]
    prompt = K.fewshot_prompt(world, int(world.train[5]), opts[5], shots)
    assert all(K.value_name(world.questions[q][1], o[k]) + "\n\n" in prompt for q, o, k in shots)
    assert prompt.count("Answer: ") == 6 and len(prompt) <= K.prompt_length(world, 5)
    ids = K.left_pad([prompt, "Q: x"], tok, K.prompt_length(world, 5))
    assert ids.shape == (2, K.prompt_length(world, 5))
    assert tok.decode(ids[0]).lstrip("\n") == prompt and tok.decode(ids[1]).endswith("\nQ: x")
    with pytest.raises(OntogenyError):
        K.left_pad([prompt], tok, 10)


def test_pass_at_k_against_enumeration():
    n = 8
    for c in range(n + 1):
        for k in (1, 2, 4, 8):
            samples = [1] * c + [0] * (n - c)
            subsets = list(itertools.combinations(range(n), k))
            brute = np.mean([max(samples[i] for i in s) for s in subsets])
            assert K.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)
            assert K.pass_at_k_exact(n, c, k) == pytest.approx(brute, abs=1e-12)
    got = K.pass_at_k(16, np.array([[0, 3], [16, 15]]), 4)
    assert got.shape == (2, 2)
    assert got[0, 1] == pytest.approx(K.pass_at_k_exact(16, 3, 4))
