"""The `evaluate` study: per-checkpoint loss, next-token accuracy and multiple-choice accuracy,
checked against transformers' reference logits and against a brute-force loop."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

import models
from dynamics.checkpoints import load_model_config, load_stack, map_stack
from experiments.studies.evaluate import study as evaluate
from experiments.__main__ import cli

HF = Path(__file__).parent / "fixtures" / "hf"
TEXT = ("the cat sat on the mat and then the dog ran to the cat while birds sang " * 12).strip()
TASKS = [{"context": "the cat sat on the", "choices": [" mat", " dog", " birds"], "answer": 0},
         {"context": "the dog ran to", "choices": [" the cat", " sang"], "answer": 1},
         {"context": "birds", "choices": [" sang", " ran to the mat"], "answer": 0}]


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("imported") / "run"
    assert cli(["import", "--from", str(HF / "gpt2_plain"), "--out", str(out)]) == 0
    return out


def test_scorer_matches_transformers_logits(run):
    """Log-likelihood and hits per row from the vmapped scorer equal those of HF's own logits."""
    tokens = np.load(HF / "tokens.npy")
    x, y = tokens[:, :-1], tokens[:, 1:]
    mask = np.ones_like(x, bool)
    mask[0, :4] = False
    steps, params = load_stack(run)
    ll, hit = map_stack(evaluate.make_scorer(load_model_config(run), 1), params, x, y, mask, chunk_size=2)
    for t, name in enumerate(["step0", "step50"]):
        ref = np.load(HF / "gpt2_plain" / "refs" / f"{name}.npz")["logits"][:, :-1]
        want_ll = (np.take_along_axis(log_softmax(ref), y[..., None], -1)[..., 0] * mask).sum(1)
        np.testing.assert_allclose(ll[t], want_ll, atol=1e-3)
        np.testing.assert_array_equal(hit[t], ((ref.argmax(-1) == y) * mask).sum(1))


def brute_force(run, windows, items):
    """Per checkpoint, one window and one choice at a time in numpy."""
    from dynamics.run_tokenizer import load_tokenizer

    steps, params = load_stack(run)
    config, tok = load_model_config(run), load_tokenizer(run)
    forward = jax.jit(lambda p, tokens: models.apply(p, tokens, config)[0][0])  # one compile per length
    out = []
    for t in range(len(steps)):
        p = jax.tree.map(lambda a: a[t], params)
        lp = [log_softmax(np.asarray(forward(p, w[None, :-1]))) for w in windows]
        nll = -np.mean(np.concatenate([l[np.arange(len(w) - 1), w[1:]] for l, w in zip(lp, windows)]))
        acc = np.mean(np.concatenate([l.argmax(-1) == w[1:] for l, w in zip(lp, windows)]))
        picks = []
        for item in items:
            ctx = list(tok.encode(item["context"]))
            scores = []
            for choice in item["choices"]:
                seq = np.array(ctx + list(tok.encode(choice)))
                l = log_softmax(np.asarray(forward(p, seq[None, :-1])))
                n = len(seq) - len(ctx)
                scores.append(l[np.arange(len(seq) - 1), seq[1:]][-n:].sum())
            picks.append(int(np.argmax(scores)))
        out.append((nll, acc, np.mean(np.array(picks) == [it["answer"] for it in items])))
    return out


def test_evaluate_cli_equals_a_brute_force_loop(run, tmp_path, capsys):
    from dynamics.run_tokenizer import load_tokenizer

    (tmp_path / "text.txt").write_text(TEXT)
    (tmp_path / "tasks.jsonl").write_text("\n".join(json.dumps(t) for t in TASKS) + "\n")
    out = tmp_path / "eval"
    argv = ["evaluate", "--out", str(out), "--set", f"run={run}", "--set", f"text={tmp_path / 'text.txt'}",
            "--set", f"tasks={tmp_path / 'tasks.jsonl'}", "--set", "seq_len=16", "--set", "n_windows=5",
            "--set", "batch=2"]
    assert cli(argv) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 50]
    ids = load_tokenizer(run).encode(TEXT)
    x, y = evaluate.text_windows(ids, 16, 5)
    assert len(x) == 5
    want = brute_force(run, np.concatenate([x, y[:, -1:]], 1), TASKS)
    for row, (nll, acc, mc) in zip(rows, want):
        assert row["loss"] == pytest.approx(nll, abs=1e-4)
        assert row["accuracy"] == pytest.approx(acc, abs=1e-6)
        assert row["mc_accuracy"] == pytest.approx(mc, abs=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_checkpoints"] == 2 and summary["mc_chance"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)
    assert summary["text_source"] == str((tmp_path / "text.txt").resolve()) in evaluate.findings(summary)[0]
    assert (out / "figures" / "evaluate.png").stat().st_size > 1000
    capsys.readouterr()
    assert cli(argv) == 0  # same folder, same settings: recomputed, still one row per checkpoint
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("extra,match", [
    (["--set", "run=/nonexistent/run"], "is missing or is not a GPT model config"),
    ([], "is not a run trained here"),
    (["--set", "tasks=BAD"], ":2 is not an item like"),
])
def test_bad_input_exits_2(run, tmp_path, capsys, extra, match):
    (tmp_path / "t.txt").write_text(TEXT)
    (tmp_path / "bad.jsonl").write_text(json.dumps(TASKS[0]) + "\n" + '{"context": "x", "choices": ["a"]}\n')
    extra = [e.replace("BAD", str(tmp_path / "bad.jsonl")) for e in extra]
    base = ["evaluate", "--out", str(tmp_path / "o"), "--set", f"run={run}"]
    if match != "is not a run trained here":
        base += ["--set", f"text={tmp_path / 't.txt'}"]
    assert cli(base + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err


def test_a_run_trained_here_uses_its_own_corpus(micro_run, tmp_path):
    out = tmp_path / "eval"
    assert cli(["evaluate", "--out", str(out), "--set", f"run={micro_run}", "--set", "n_windows=4",
                "--set", "seq_len=16"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and rows[-1]["loss"] < rows[0]["loss"]  # training lowered the held-out loss
    summary = json.loads((out / "summary.json").read_text())
    assert summary["text_source"] == "the run's own corpus (synthetic)"
