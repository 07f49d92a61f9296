"""`waves --set run=RUN` on an imported suite (checkpoints streamed from disk): end to end from the
CLI, and every checkpoint's statistics equal a brute-force loop over the checkpoints."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

import models
from dynamics import checkpoints as ck
from dynamics.run_tokenizer import load_tokenizer
from experiments.__main__ import cli
from experiments.tools.import_suite import main as import_main
from models.sample import generate_any
from probes.waves import spelling
from probes.waves import channels as waves

HF = Path(__file__).parent / "fixtures" / "hf"
# the fixture tokenizer knows lower-case words only; its vocabulary here is a few of them, so the
# random fixture models misspell (most of their tokens are not words of this text)
TEXT = "the cat sat on the mat and the dog ran to the cat\n" * 40
SETTINGS = dict(prompts="the,cat", seeds_per_prompt=2, passage_length=24, max_lag=8, max_period=8.0,
                n_samples=64, sample_length=12, n_words=2, n_boot=50, spelling_checkpoints=0, chunk_size=2,
                n_clusters=3, seed=3)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("waves-suite")
    assert import_main(["--from", str(HF / "neox_rot25_parallel"), "--out", str(root / "run")]) == 0
    (root / "text.txt").write_text(TEXT)
    out = root / "waves"
    args = ["waves", "--out", str(out), "--set", f"run={root / 'run'}", "--set", f"text={root / 'text.txt'}"]
    for key, value in SETTINGS.items():
        args += ["--set", f"{key}={value}"]
    assert cli(args) == 0
    return root


def test_waves_on_an_imported_suite_equals_a_loop_over_checkpoints(suite):
    summary = json.loads((suite / "waves" / "summary.json").read_text())
    rows = [json.loads(line) for line in (suite / "waves" / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == [0, 100, 200] and [r["step"] for r in rows] == [0, 100, 200]
    assert summary["max_resident_checkpoints"] <= 2 * SETTINGS["chunk_size"]
    steps, stacked = ck.load_stack(suite / "run")
    config, tok = ck.load_model_config(suite / "run"), load_tokenizer(suite / "run")
    prompts = [np.asarray(tok.encode(p)) for p in ("the", "cat")]
    keys = jax.random.split(jax.random.PRNGKey(SETTINGS["seed"]), 2)
    vocab = spelling.build_vocabulary(tok.decode(tok.encode(TEXT[:int(len(TEXT) * 0.9)])))
    for c, row in enumerate(rows):
        params = jax.tree.map(lambda a: a[c], stacked)
        # waves: generate each prompt's passages, read the final hidden state, statistics per passage
        coherence = []
        for prompt, key in zip(prompts, keys):
            batch = np.broadcast_to(prompt, (2, len(prompt)))
            tokens = generate_any(params, config, batch, 24 - len(prompt), key, 1.0)
            _, acts = models.apply(params, tokens, config, capture=("final_hidden",))
            for p in range(2):
                x = np.asarray(acts["final_hidden"][p, :-1], np.float64)
                C = np.corrcoef(x.T)
                D = C.shape[0]
                coherence.append(np.abs(C[~np.eye(D, dtype=bool)]).mean())
        np.testing.assert_allclose(row["coherence"], np.mean(coherence), rtol=1e-4)
        # spelling: the samples of this checkpoint, counted against the text's words
        prompt = np.broadcast_to(prompts[0], (64, len(prompts[0])))
        samples = generate_any(params, config, prompt, 12, jax.random.PRNGKey(SETTINGS["seed"] + 1), 1.0)
        texts = [tok.decode(t[len(prompts[0]):]) for t in np.asarray(samples)]
        correct = sum(sum(w.lower() in vocab for w in spelling.complete_words(t)) for t in texts)
        total = sum(len(spelling.complete_words(t)) for t in texts)
        assert row["fixed_length"]["p"] == pytest.approx(correct / total, abs=1e-12)
    assert 0 < summary["fraction_correct_last"] < 1 and np.isfinite(summary["coherence_last"])
    from experiments.studies.waves import study as waves_study

    assert summary["text_source"] == str((suite / "text.txt").resolve()) in waves_study.findings(summary)[-1]
    assert (suite / "waves" / "figures" / "space_waves.png").exists()


def test_token_class_tables_read_last_and_first_characters():
    from probes.waves.on_run import token_class_tables

    last, first = token_class_tables([" the", "a.", "", "\n"])
    names = waves.CHAR_CLASSES
    assert last[0, names.index("vowel")] == 1 and first[0, names.index("space")] == 1
    assert last[1, names.index("punctuation")] == 1 and first[1, names.index("vowel")] == 1
    assert last[2].sum() == 0 and first[3, names.index("newline")] == 1


def test_waves_run_refuses_passages_past_the_context(suite, tmp_path, capsys):
    args = ["waves", "--out", str(tmp_path / "w"), "--set", f"run={suite / 'run'}", "--set", "prompts=the,cat"]
    assert cli(args) == 2  # tiny's passage_length=96 exceeds the fixture's context of 64
    err = capsys.readouterr().err.strip()
    assert "passage_length=96" in err and "\n" not in err and not (tmp_path / "w").exists()
    assert cli(args[:4] + ["--set", "prompts=KING"]) == 2  # upper case: no token of this tokenizer
