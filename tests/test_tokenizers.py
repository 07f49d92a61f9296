"""Tokenizers: bytes, a BPE trained here (deterministic, on the training split), tokenizer.json files."""
import collections
import json

import numpy as np
import pytest

from dynamics import data
from dynamics import tokenizers as tok_lib
from models.errors import OntogenyError
from dynamics.run_tokenizer import load_tokenizer

TEXT = "abab abab abab cd cd ef. Grüße, naïve café!\n" * 20


def test_bytes_round_trip_any_text():
    tok = tok_lib.ByteTokenizer()
    ids = tok.encode(TEXT)
    assert ids.dtype == np.int32 and ids.max() < 256 == tok.vocab_size
    assert list(ids) == list(TEXT.encode("utf-8"))  # independent: Python's own UTF-8 bytes
    assert tok.decode(ids) == TEXT


def test_bpe_first_merge_is_the_most_frequent_pair_and_training_is_deterministic():
    a = tok_lib.train_bpe(iter([TEXT]), 300)
    b = tok_lib.train_bpe(iter([TEXT]), 300)
    assert tok_lib.fingerprint(a) == tok_lib.fingerprint(b)
    assert a.decode(a.encode(TEXT)) == TEXT
    assert a.vocab_size <= 300 and len(a.encode(TEXT)) < len(TEXT.encode()) / 2
    # brute force: count adjacent symbol pairs inside the byte-level pre-tokens
    pre = a._tok.pre_tokenizer.pre_tokenize_str(TEXT)
    counts = collections.Counter((w[i], w[i + 1]) for w, _ in pre for i in range(len(w) - 1))
    first = json.loads(a.to_str())["model"]["merges"][0]
    first = tuple(first.split(" ")) if isinstance(first, str) else tuple(first)
    assert counts[first] == max(counts.values())


def test_bpe_trains_only_on_the_training_split():
    train = "the cat sat on the mat. " * 50
    held_out = "zyxwvu " * 50  # frequent in validation text only
    corpus = data.Corpus("t", train, held_out, data.CharTokenizer(train + held_out))
    bpe = tok_lib.make_tokenizer("bpe:300", lambda: iter([corpus.train_text]))
    vocab = json.loads(bpe.to_str())["model"]["vocab"]
    assert "the" in vocab or "Ġthe" in vocab
    assert not any("zy" in t for t in vocab)  # no merge learned from held-out text
    assert bpe.decode(bpe.encode(held_out)) == held_out  # bytes cover it anyway


def test_builtin_corpora_take_any_tokenizer():
    config = data.DataConfig(corpus="synthetic", synthetic_chars=5000, tokenizer="bpe:300")
    corpus = data.load_corpus(config)
    assert corpus.tokenizer.spec == "bpe:300" and corpus.tokenizer.vocab_size <= 300
    assert corpus.tokenizer.decode(corpus.train_ids) == corpus.train_text
    assert data.load_corpus(config).tokenizer.to_str() == corpus.tokenizer.to_str()  # reloads identically
    assert config.settings()["tokenizer"] == "bpe:300" and "tokenizer" not in data.DataConfig().settings()


def test_save_load_every_kind(tmp_path):
    for tok in (data.CharTokenizer("hello"), tok_lib.ByteTokenizer(), tok_lib.train_bpe(iter([TEXT]), 280)):
        tok.save(tmp_path / "tokenizer.json")
        back = tok_lib.load(tmp_path / "tokenizer.json")
        assert tok_lib.fingerprint(back) == tok_lib.fingerprint(tok)
        sample = "hello" if isinstance(tok, data.CharTokenizer) else TEXT
        assert list(back.encode(sample)) == list(tok.encode(sample))
        run_tok = load_tokenizer(tmp_path)  # what the studies read
        assert list(run_tok.encode(sample)) == list(tok.encode(sample))


def test_character_studies_refuse_other_tokenizers(tmp_path):
    tok_lib.ByteTokenizer().save(tmp_path / "tokenizer.json")
    with pytest.raises(OntogenyError, match="not a character tokenizer") as e:
        data.load_tokenizer(tmp_path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("spec", ["bpe:100", "bpe:x", "words", ""])
def test_bad_specs_are_refused(spec):
    with pytest.raises(OntogenyError, match="data.tokenizer"):
        tok_lib.check_spec(spec)
    with pytest.raises(OntogenyError):
        data.DataConfig(tokenizer=spec)


def test_a_tokenizer_json_that_cannot_encode_the_text_is_refused(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    word = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    word.pre_tokenizer = pre_tokenizers.Whitespace()
    word.save(str(tmp_path / "words.json"))
    tok = tok_lib.make_tokenizer(str(tmp_path / "words.json"), None)
    assert list(tok.encode("a b a")) == [0, 1, 0]
    with pytest.raises(OntogenyError, match="cannot encode"):
        tok.encode("a c")
    with pytest.raises(OntogenyError, match="does not exist"):
        data.DataConfig(tokenizer=str(tmp_path / "absent.json"))
