"""Word pairs on a language model's unembedding: the causal inner product against a float64
inverse square root, every measure against numpy loops, the pairs file and its tokenisation."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamics import stats
from dynamics.data import CharTokenizer
from models.errors import OntogenyError
from probes import geometry, word_geometry, word_pairs


def whitening64(G, floor=1e-6):
    """Cov^{-1/2} in float64 by eigh, eigenvalues floored as documented."""
    X = G - G.mean(0)
    lam, W = np.linalg.eigh(X.T @ X / len(G))
    lam = np.maximum(lam, floor * lam.max())
    return (W / np.sqrt(lam)) @ W.T


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def ill_conditioned(rng, V, D, decades, shift=3.0):
    Q = np.linalg.qr(rng.standard_normal((D, D)))[0]
    return (rng.standard_normal((V, D)) * np.logspace(0, -decades / 2, D)) @ Q.T + shift


@pytest.mark.parametrize("V,D,decades", [(1000, 32, 2), (2000, 48, 6), (300, 48, 9), (20, 32, 1)])
def test_causal_transform_equals_a_float64_inverse_square_root(V, D, decades):
    """float32 in the program against float64 eigh, on eigenvalues spanning up to 9 decades and
    on a rank-deficient covariance (V < D); compared where it matters, on row differences."""
    rng = np.random.default_rng(V)
    G = ill_conditioned(rng, V, D, decades)
    A = np.asarray(jax.jit(word_geometry.causal_transform)(jnp.asarray(G, jnp.float32), 1e-6), np.float64)
    assert np.all(np.isfinite(A)) and np.allclose(A, A.T, atol=1e-4 * np.abs(A).max())
    a, b = rng.choice(V, min(V, 40), replace=False), rng.choice(V, min(V, 40), replace=False)
    d = G[a] - G[b]
    got, want = unit(d @ A), unit(d @ whitening64(G))
    np.testing.assert_allclose(got @ got.T, want @ want.T, atol=1e-3)
    if decades <= 2 and V > D:  # well conditioned, no eigenvalue floored: A Cov A = I, the definition
        X = G - G.mean(0)
        np.testing.assert_allclose(A @ (X.T @ X / V) @ A, np.eye(D), atol=2e-3)


def test_causal_cosines_do_not_depend_on_a_linear_map_of_the_space():
    """<a, b>_C is invariant to any invertible map of the representation space (a final-norm gain
    folded in, a rotation); Euclidean cosines are not."""
    rng = np.random.default_rng(1)
    G = rng.standard_normal((400, 16))
    M = rng.standard_normal((16, 16)) + 4 * np.eye(16)
    d, dm = G[:30] - G[30:60], (G @ M)[:30] - (G @ M)[30:60]
    A, Am = (np.asarray(word_geometry.causal_transform(jnp.asarray(x, jnp.float32))) for x in (G, G @ M))
    causal, causal_m = unit(d @ A), unit(dm @ Am)
    np.testing.assert_allclose(causal @ causal.T, causal_m @ causal_m.T, atol=2e-4)
    assert np.abs(unit(d) @ unit(d).T - unit(dm) @ unit(dm).T).max() > 0.1


def test_a_constant_unembedding_gives_finite_measures():
    """All rows equal (covariance zero): every difference is zero and nothing is NaN."""
    G = jnp.ones((12, 8))
    data = small_data(np.random.default_rng(0), 12)[1]
    out = jax.jit(word_geometry.checkpoint_measures)(G, data)
    assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(out))


def small_data(rng, V):
    """Items (one of two tokens: a mean), three ragged concepts, shuffles and random pairs."""
    items = [(i,) for i in range(V - 3)] + [(V - 3, V - 2), (V - 1, 0)]
    concepts = [[(0, 1), (2, 3), (4, 5)], [(6, 7), (8, 9)], [(10, 11), (V - 2, V - 1), (5, 9), (1, 6)]]
    pairs, mask = geometry.pack_pairs(concepts)
    shuffled = word_geometry.shuffled_pairs(pairs, mask, 3, seed=2)
    randoms = geometry.random_pairs(V, 7, seed=4)
    first = len(items)
    items_IT, item_mask = word_geometry.pack_items(items + [(int(t),) for t in randoms.reshape(-1)])
    data = {"items": items_IT, "item_mask": item_mask, "pairs": pairs, "mask": mask, "shuffled": shuffled,
            "random": (first + np.arange(14)).reshape(7, 2).astype(np.int32)}
    return (items + [(int(t),) for t in randoms.reshape(-1)], concepts), data


def loop_measures(M, concepts, shuffled, mask, random_pairs):
    """The documented definitions as loops over explicit lists (float64)."""
    cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    diffs = [[M[b] - M[a] for a, b in c] for c in concepts]
    within = [np.mean([cos(x, y) for x, y in itertools.permutations(ds, 2)]) for ds in diffs]
    dirs = [unit(np.mean([unit(x) for x in ds], 0)) for ds in diffs]
    cross = np.array([[cos(x, y) for y in dirs] for x in dirs])
    shuf = []
    for k in range(len(concepts)):
        per_draw = []
        for s in range(shuffled.shape[0]):
            ps = [tuple(p) for p, ok in zip(shuffled[s, k], mask[k]) if ok]
            ds = [M[b] - M[a] for a, b in ps]
            per_draw.append(np.mean([cos(x, y) for x, y in itertools.permutations(ds, 2)]))
        shuf.append(np.mean(per_draw))
    rd = [M[b] - M[a] for a, b in random_pairs]
    rand = [np.mean([abs(cos(rd[i], rd[j])) for j in range(len(rd)) if j != i]) for i in range(len(rd))]
    return {"within_per_concept": within, "cross_cos": cross, "shuffled_per_concept": shuf, "random_per_pair": rand}


def test_checkpoint_measures_equal_numpy_loops():
    rng = np.random.default_rng(3)
    V, D = 40, 12
    G = ill_conditioned(rng, V, D, 3)
    (items, concepts), data = small_data(rng, V)
    got = jax.jit(word_geometry.checkpoint_measures)(jnp.asarray(G, jnp.float32), data)
    rows = np.stack([G[list(ids)].mean(0) for ids in items])
    for inner, M in (("euclid", rows), ("causal", rows @ whitening64(G))):
        want = loop_measures(M, concepts, data["shuffled"], data["mask"], data["random"])
        for key, value in want.items():
            np.testing.assert_allclose(got[inner][key], value, atol=2e-4, err_msg=f"{inner} {key}")
        assert float(got[inner]["within_min"]) == pytest.approx(min(
            float(unit(M[b1] - M[a1]) @ unit(M[b2] - M[a2]))
        for cc in concepts for (a1, b1), (a2, b2) in itertools.permutations(cc, 2)), abs=2e-4)


def test_shuffled_pairs_are_derangements_of_each_concept():
    pairs, mask = geometry.pack_pairs([[(0, 1), (2, 3), (4, 5), (6, 7)], [(8, 9), (10, 11)], [(12, 13)]])
    out = word_geometry.shuffled_pairs(pairs, mask, 50, seed=0)
    assert out.shape == (50, 3, 4, 2)
    for s in range(50):
        for k in range(3):
            n = int(mask[k].sum())
            np.testing.assert_array_equal(out[s, k, :, 0], pairs[k, :, 0])           # word 0 stays
            assert sorted(out[s, k, :n, 1]) == sorted(pairs[k, :n, 1])                # the same word-1 set
            if n > 1:
                assert np.all(out[s, k, :n, 1] != pairs[k, :n, 1])                    # no pair kept
            np.testing.assert_array_equal(out[s, k, n:], pairs[k, n:])                # padding untouched
    assert len({tuple(out[s, 0, :, 1]) for s in range(50)}) == 9                       # all 9 derangements of 4


def test_cross_abs_draws_equal_a_loop_over_resamples():
    rng = np.random.default_rng(5)
    C = rng.uniform(-1, 1, (5, 5))
    C = (C + C.T) / 2
    np.fill_diagonal(C, 1.0)
    idx = rng.integers(0, 5, (200, 5))
    counts = np.stack([np.bincount(i, minlength=5) for i in idx])
    got = word_geometry.cross_abs_draws(C, counts)
    for i, draw in zip(idx, got):
        values = [abs(C[a, b]) for a, b in itertools.permutations(i, 2) if a != b]
        assert (np.isnan(draw) and not values) or draw == pytest.approx(np.mean(values))
    assert word_geometry.cross_abs_mean(C) == pytest.approx(np.abs(C[~np.eye(5, dtype=bool)]).mean())
    assert stats.quantile_ci(got) is not None


# ----------------------------------------------------------------------------- the pairs file
def test_the_builtin_pairs():
    concepts = word_pairs.read_pairs()
    names = [n for n, _ in concepts]
    assert len(concepts) == 13 and {"gender", "number", "past_tense", "capital_letter"} <= set(names)
    for name, pairs in concepts:
        assert len(pairs) >= 7 and len(set(pairs)) == len(pairs), name
        assert all(a != b and " " not in a + b for a, b in pairs), name


@pytest.mark.parametrize("line", ['{"concept": "x"}', '{"concept": "x", "pairs": [["a"]]}', 'not json',
                                  '{"concept": "", "pairs": [["a", "b"]]}', '{"concept": "x", "pairs": [["a", ""]]}',
                                  '{"concept": "x", "pairs": [["a", "b"]], "pair": 1}', '["a", "b"]',
                                  '{"concept": "gender", "pairs": [["a", "b"]]}'])
def test_malformed_pair_rows_name_file_and_line(tmp_path, line):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"concept": "gender", "pairs": [["king", "queen"]]}\n\n' + line + "\n")
    with pytest.raises(OntogenyError) as e:
        word_pairs.read_pairs(path)
    assert str(e.value).startswith(f"{path} line 3") and "\n" not in str(e.value)
    with pytest.raises(OntogenyError, match="is not a file"):
        word_pairs.read_pairs(tmp_path / "missing.jsonl")


@pytest.fixture(scope="module")
def bpe():
    """A byte-level BPE (GPT-2's pre-tokenisation) where ' king', ' queen', 'king' are one token
    each and ' kingdom' / ' queendom' are two or more."""
    from dynamics.tokenizers import train_bpe

    text = ("the king and the queen saw the man and the woman.\nking\nqueen\nman\nwoman\n" * 60
            + "kingdom queendom ")
    return train_bpe([text], 300)


def test_tokenize_pairs_forms_and_multi_token_words(bpe):
    one = lambda w: len(bpe.encode(w)) == 1
    assert one(" king") and one(" queen") and one("king") and not one(" kingdom") and not one(" queendom")
    concepts = [("gender", [("king", "queen"), ("man", "woman"), ("kingdom", "queendom")])]
    got = word_pairs.tokenize_pairs(concepts, bpe)
    assert got.report["gender"] == {"given": 3, "kept": 2, "multi_token": 1, "unrepresentable": 0,
                                    "leading_space": 2}
    assert [got.words[i] for p in got.pairs[0] for i in p] == [" king", " queen", " man", " woman"]
    assert got.items[got.pairs[0][0][0]] == tuple(bpe.encode(" king"))
    bare = word_pairs.tokenize_pairs(concepts, bpe, leading_space="never")
    assert [bare.words[i] for i in bare.pairs[0][0]] == ["king", "queen"]
    first = word_pairs.tokenize_pairs(concepts, bpe, multi_token="first")
    mean = word_pairs.tokenize_pairs(concepts, bpe, multi_token="mean")
    assert first.report["gender"]["kept"] == 3 and first.report["gender"]["multi_token"] == 0
    assert first.items[first.pairs[0][2][0]] == tuple(bpe.encode(" kingdom")[:1])
    a, b = mean.pairs[0][2]
    assert mean.items[a] == tuple(bpe.encode(" kingdom")) and len(mean.items[b]) >= 2


def test_words_a_tokenizer_cannot_write_are_counted_and_concepts_need_two_pairs():
    chars = CharTokenizer("abcdefAB ")
    concepts = [("case", [("a", "A"), ("b", "B"), ("c", "C")]), ("pairs", [("a", "b"), ("zz", "c")]),
                ("same", [("a", "a"), ("d", "e"), ("e", "f")])]
    got = word_pairs.tokenize_pairs(concepts, chars)
    assert got.names == ["case", "same"] and got.report["case"]["unrepresentable"] == 1
    assert got.report["pairs"] == {"given": 2, "kept": 1, "multi_token": 0, "unrepresentable": 1, "leading_space": 0}
    assert got.report["same"]["unrepresentable"] == 1                 # identical tokens: no difference
    assert all(got.words[i] in "abcdefAB" for p in got.pairs for pair in p for i in pair)  # bare: ' a' is two chars
    with pytest.raises(OntogenyError, match="multi_token"):
        word_pairs.tokenize_pairs(concepts, chars, multi_token="last")
