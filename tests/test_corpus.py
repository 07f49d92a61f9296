"""Your own corpus: text files/folders/globs, nanoGPT token files, the token cache, bad input."""
import importlib.util
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from dynamics import corpus as corpus_lib
from dynamics import corpus_files
from dynamics import data
from models.errors import OntogenyError

@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ONTOGENY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def write_docs(folder: Path, n: int = 5, chars: int = 3000) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    docs = {f"d{i}.txt": data.synthetic_text(chars, seed=i) + f"\nÉnd {i}.\n" for i in range(n)}
    for name, text in docs.items():
        (folder / name).write_text(text, encoding="utf-8")
    return docs


def decoded(corpus, split: str) -> str:
    return corpus.tokenizer.decode(np.asarray(getattr(corpus, f"{split}_ids")))


@pytest.mark.parametrize("tokenizer", ["char", "bytes"])
def test_text_folder_holds_out_whole_documents(tmp_path, tokenizer):
    docs = write_docs(tmp_path / "txt")
    corpus = data.load_corpus(data.DataConfig(path=str(tmp_path / "txt"), tokenizer=tokenizer, val_fraction=0.4))
    assert corpus.val_works == ("d1.txt", "d3.txt")  # 2 of 5, evenly spaced
    expect = lambda names: "".join(docs[n] + "\n\n" for n in sorted(docs) if n in names)  # brute force
    assert decoded(corpus, "val") == expect({"d1.txt", "d3.txt"})
    assert decoded(corpus, "train") == expect({"d0.txt", "d2.txt", "d4.txt"})
    assert isinstance(corpus.train_ids, np.memmap) and corpus.train_ids.dtype == np.uint16
    assert corpus.record["n_docs"] == 5 and corpus.record["train_chars"] == len(expect({"d0.txt", "d2.txt", "d4.txt"}))


def test_separator_splits_documents_and_val_docs_names_them(tmp_path):
    paragraphs = [f"paragraph {i} " + "word " * (i + 3) for i in range(7)]
    (tmp_path / "one.txt").write_text("\n\n".join(paragraphs) + "\n\n")
    config = data.DataConfig(path=str(tmp_path / "one.txt"), separator="\\n\\n", val_docs=("one.txt#2", "one.txt#5"))
    corpus = data.load_corpus(config)
    assert corpus.record["n_docs"] == 7
    assert decoded(corpus, "val") == paragraphs[2] + "\n\n" + paragraphs[5] + "\n\n"
    assert decoded(corpus, "train") == "".join(p + "\n\n" for i, p in enumerate(paragraphs) if i not in (2, 5))
    with pytest.raises(OntogenyError, match="not a document"):
        data.load_corpus(data.DataConfig(path=str(tmp_path / "one.txt"), separator="\\n\\n", val_docs=("nope#1",)))


def test_streaming_in_small_blocks_matches_reading_whole_files(tmp_path, monkeypatch):
    docs = write_docs(tmp_path / "txt", n=3, chars=5000)
    monkeypatch.setattr(corpus_files, "BLOCK", 97)  # documents come in many pieces
    pieces = list(corpus_files.documents(tmp_path / "txt", sorted((tmp_path / "txt").iterdir()), ""))
    assert len(pieces) > 30 and max(len(t) for _, t in pieces) <= 3 * 97
    joined = {}
    for name, text in pieces:
        joined[name] = joined.get(name, "") + text
    assert joined == docs
    sep = list(corpus_files.documents(tmp_path, [tmp_path / "txt" / "d0.txt"], "e"))  # separator across blocks
    names = sorted({n for n, _ in sep}, key=lambda n: int(n.split("#")[1]))
    assert ["".join(t for n2, t in sep if n2 == n) for n in names] == [p for p in docs["d0.txt"].split("e") if p]


def test_glob_and_the_cache_is_reused_and_content_addressed(tmp_path, monkeypatch, cache):
    write_docs(tmp_path / "txt", n=4)
    config = data.DataConfig(path=str(tmp_path / "txt" / "d*.txt"), tokenizer="bpe:280")
    first = data.load_corpus(config)
    monkeypatch.setattr(corpus_lib, "build", lambda *a, **k: pytest.fail("rebuilt a cached corpus"))
    again = data.load_corpus(config)
    assert again.record["cache"] == first.record["cache"] and np.array_equal(again.train_ids, first.train_ids)
    assert len(list((cache / "tokens").iterdir())) == 1
    (tmp_path / "txt" / "d0.txt").write_text("changed text " * 100)
    monkeypatch.undo()
    monkeypatch.setenv("ONTOGENY_CACHE", str(cache))
    changed = data.load_corpus(config)
    assert changed.record["cache"] != first.record["cache"] and changed.record["checksum"] != first.record["checksum"]


def nanogpt_folder(folder: Path, text: str, dtype=np.uint16, meta: bool = True) -> Path:
    """nanoGPT's shakespeare_char prepare.py layout."""
    folder.mkdir(parents=True)
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype)
    cut = int(0.9 * len(ids))
    ids[:cut].tofile(folder / "train.bin")
    ids[cut:].tofile(folder / "val.bin")
    if meta:
        with open(folder / "meta.pkl", "wb") as f:
            pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)
    return folder


def test_nanogpt_token_files_through_memmap(tmp_path):
    text = data.synthetic_text(20_000, seed=3)
    folder = nanogpt_folder(tmp_path / "tok", text)
    corpus = data.load_corpus(data.DataConfig(path=str(folder)))
    assert isinstance(corpus.train_ids, np.memmap) and corpus.record["kind"] == "tokens"
    assert corpus.tokenizer.decode(corpus.train_ids) + corpus.tokenizer.decode(corpus.val_ids) == text
    x, y = data.get_batch(corpus.train_ids, seed=1, step=5, batch_size=4, context=16)
    offsets = data.batch_offsets(1, 5, 4, len(corpus.train_ids), 16)
    for row, o in enumerate(offsets):  # brute force: slice the text itself
        assert corpus.tokenizer.decode(x[row]) == text[o:o + 16] and corpus.tokenizer.decode(y[row]) == text[o + 1:o + 17]
    wide = nanogpt_folder(tmp_path / "wide", text, np.uint32)
    assert np.array_equal(data.load_corpus(data.DataConfig(path=str(wide), token_dtype="uint32")).val_ids, corpus.val_ids)
    with pytest.raises(OntogenyError, match="beyond the tokenizer's vocabulary|not a whole number"):
        data.load_corpus(data.DataConfig(path=str(folder), token_dtype="uint32"))  # uint16 pairs read as one id


def test_token_files_with_a_tokenizer_json_and_bad_ids(tmp_path):
    from dynamics import tokenizers

    folder = tmp_path / "bpe"
    folder.mkdir()
    bpe = tokenizers.train_bpe(iter([data.synthetic_text(20_000)]), 300)
    bpe.save(folder / "tokenizer.json")
    ids = bpe.encode(data.synthetic_text(6000, seed=1)).astype(np.uint16)
    ids.tofile(folder / "train.bin")
    ids[:500].tofile(folder / "val.bin")
    corpus = data.load_corpus(data.DataConfig(path=str(folder)))
    assert corpus.tokenizer.vocab_size == bpe.vocab_size and np.array_equal(corpus.val_ids, ids[:500])
    np.append(ids, 999).astype(np.uint16).tofile(folder / "train.bin")
    with pytest.raises(OntogenyError, match="token id 999, beyond"):
        data.load_corpus(data.DataConfig(path=str(folder)))
    with pytest.raises(OntogenyError, match="trains a BPE on text"):
        data.load_corpus(data.DataConfig(path=str(folder), tokenizer="bpe:300"))
    (folder / "val.bin").unlink()
    with pytest.raises(OntogenyError, match="no val.bin"):
        data.load_corpus(data.DataConfig(path=str(folder)))


def test_bad_input_one_line_each(tmp_path):
    cases = {"matches any file": lambda: data.DataConfig(path=str(tmp_path / "absent" / "*.txt"))}
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("")
    cases["holds no text"] = lambda: data.load_corpus(data.DataConfig(path=str(tmp_path / "empty")))
    (tmp_path / "one.txt").write_text("just one document\n" * 10)
    cases["holds 1 document"] = lambda: data.load_corpus(data.DataConfig(path=str(tmp_path / "one.txt")))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "x.txt").write_bytes(b"\xff\xfe\x00binary")
    cases["not UTF-8"] = lambda: data.load_corpus(data.DataConfig(path=str(tmp_path / "bin")))
    for message, make in cases.items():
        with pytest.raises(OntogenyError, match=message) as e:
            make()
        assert "\n" not in str(e.value)


def test_rows_read_only_this_process_rows():
    ids = np.arange(5000) % 251
    full_x, full_y = data.get_batch(ids, 2, 7, 8, 12)
    x, y = data.get_batch(ids, 2, 7, 8, 12, rows=slice(4, 8))
    assert np.array_equal(x[4:], full_x[4:]) and np.array_equal(y[4:], full_y[4:]) and not x[:4].any()


def test_record_run_refuses_a_changed_corpus_or_tokenizer(tmp_path):
    write_docs(tmp_path / "txt", n=3)
    config = data.DataConfig(path=str(tmp_path / "txt"))
    run = tmp_path / "run"
    run.mkdir()
    corpus_lib.record_run(run, data.load_corpus(config))
    saved = json.loads((run / "data.json").read_text())
    assert saved["checksum"] and saved["tokenizer"] == "char" and (run / "tokenizer.json").is_file()
    corpus_lib.record_run(run, data.load_corpus(config))  # resume: same corpus, accepted
    bytes_corpus = data.load_corpus(data.DataConfig(path=str(tmp_path / "txt"), tokenizer="bytes"))
    with pytest.raises(OntogenyError, match="tokenizer .* differs"):
        corpus_lib.record_run(run, bytes_corpus)
    (tmp_path / "txt" / "d1.txt").write_text("new text")
    with pytest.raises(OntogenyError, match="changed since"):
        corpus_lib.record_run(run, data.load_corpus(config))
    assert json.loads((run / "data.json").read_text()) == saved  # nothing overwritten


def test_pretrain_on_a_text_folder_with_a_trained_bpe(tmp_path, capsys):
    from experiments.__main__ import cli

    write_docs(tmp_path / "txt", n=4, chars=4000)
    out = tmp_path / "run"
    argv = ["pretrain", "--preset", "micro", "--out", str(out), "--set", f"data.path={tmp_path / 'txt'}",
            "--set", "data.tokenizer=bpe:300", "--set", "train.steps=10", "--set", "model.n_layer=1"]
    assert cli(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tokenizer"] == "bpe:300" and summary["vocab_size"] <= 300 and summary["val_works"] == ["d2.txt"]
    assert json.loads((out / "data.json").read_text())["tokenizer"] == "bpe:300"
    if importlib.util.find_spec("tensorboardX"):  # the curves TensorBoard shows are metrics.jsonl's
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
        assert read_scalars(out / "tb")["pretrain/loss"] == pytest.approx(losses)
    capsys.readouterr()
    (tmp_path / "txt" / "d0.txt").write_text("edited " * 500)
    assert cli(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "changed since" in errors[0]
    assert json.loads((out / "summary.json").read_text()) == summary


def read_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """Scalars of TensorBoard event files, parsed from the TFRecord framing (independent of the writer)."""
    from tensorboardX.proto import event_pb2

    out = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        raw, i = path.read_bytes(), 0
        while i < len(raw):
            n = int.from_bytes(raw[i:i + 8], "little")
            event = event_pb2.Event.FromString(raw[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in event.summary.value:
                out.setdefault(v.tag, {})[event.step] = v.simple_value
    return out


def test_tensorboard_events_mirror_the_metrics(tmp_path):
    pytest.importorskip("tensorboardX")
    from dynamics import tblog
    from dynamics.runlog import RunFolder

    folder = RunFolder(tmp_path / "run")
    close = tblog.mirror(folder, "pretrain")
    for step in range(0, 30, 10):
        folder.log({"stage": "pretrain", "step": step, "loss": 5.0 - step / 10, "lr": 1e-3, "note": "text"})
    close()
    scalars = read_scalars(tmp_path / "run" / "tb")
    assert scalars["pretrain/loss"] == {0: 5.0, 10: 4.0, 20: 3.0} and "pretrain/note" not in scalars
    assert len(folder.read_metrics()) == 3  # metrics.jsonl as always


def test_tensorboard_is_a_no_op_with_one_notice_when_absent(tmp_path, monkeypatch, capsys):
    from dynamics import tblog
    from dynamics.runlog import RunFolder

    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails
    monkeypatch.setitem(tblog._NOTICE, "shown", False)
    folder = RunFolder(tmp_path / "run")
    assert tblog.mirror(folder, "pretrain") is None and tblog.mirror(folder, "pretrain") is None
    assert capsys.readouterr().err.count("TensorBoard event files are off") == 1
    folder.log({"stage": "pretrain", "step": 1, "loss": 1.0})
    assert not (tmp_path / "run" / "tb").exists() and len(folder.read_metrics()) == 1


def test_a_tokenizer_that_cannot_encode_the_corpus_leaves_no_cache(tmp_path, cache):
    from tokenizers import Tokenizer, models, pre_tokenizers

    write_docs(tmp_path / "txt", n=3)
    word = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    word.pre_tokenizer = pre_tokenizers.Whitespace()
    word.save(str(tmp_path / "words.json"))
    with pytest.raises(OntogenyError, match="cannot encode"):
        data.load_corpus(data.DataConfig(path=str(tmp_path / "txt"), tokenizer=str(tmp_path / "words.json")))
    assert list((cache / "tokens").iterdir()) == []


def test_a_saved_hugging_face_dataset_streams_rows_as_documents(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [data.synthetic_text(800, seed=i) for i in range(10)] + [""]  # an empty row is no document
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": rows, "id": list(range(11))})}
                         ).save_to_disk(str(tmp_path / "ds"))
    corpus = data.load_corpus(data.DataConfig(path=str(tmp_path / "ds"), tokenizer="bytes", val_fraction=0.2))
    assert corpus.val_works == ("row2", "row7") and corpus.record["n_docs"] == 10
    assert decoded(corpus, "val") == rows[2] + "\n\n" + rows[7] + "\n\n"
    assert decoded(corpus, "train") == "".join(r + "\n\n" for i, r in enumerate(rows[:10]) if i not in (2, 7))
    datasets.Dataset.from_dict({"body": rows}).save_to_disk(str(tmp_path / "nocol"))
    with pytest.raises(OntogenyError, match="no 'text' column"):
        data.load_corpus(data.DataConfig(path=str(tmp_path / "nocol")))
