"""The probe study on an imported suite: its held-out accuracy equals scikit-learn's
LogisticRegression on the same features, the chunked vmapped path equals a loop over checkpoints,
the built-in task is what it says, and bad label files are one clear line."""
from __future__ import annotations

import json
import random
from pathlib import Path

import jax
import numpy as np
import pytest

import models
from dynamics import checkpoints as ck
from dynamics.run_tokenizer import load_tokenizer
from experiments.__main__ import cli
from experiments.tools.import_suite import main as import_main
from probes import layer_probes as lp

HF = Path(__file__).parent / "fixtures" / "hf"
WORDS = "the cat sat on mat and dog ran to birds while then".split()


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """A GPT-NeoX fixture suite (steps 0, 100, 200) and a labels file of its words: does "dog"
    occur among the last three words? (string labels)."""
    root = tmp_path_factory.mktemp("probe-suite")
    assert import_main(["--from", str(HF / "neox_rot25_parallel"), "--out", str(root / "run")]) == 0
    rng = random.Random(0)
    with open(root / "labels.jsonl", "w") as f:
        for _ in range(96):
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
            f.write(json.dumps({"text": " ".join(words), "label": "dog" if "dog" in words[-3:] else "other"}) + "\n")
    out = root / "probe"
    assert cli(["probe", "--out", str(out), "--set", f"run={root / 'run'}", "--set", f"labels={root / 'labels.jsonl'}",
                "--set", "chunk_size=2", "--set", "C=0.5"]) == 0
    return root


def test_accuracy_equals_scikit_learn_on_the_same_features(suite):
    from sklearn.linear_model import LogisticRegression

    rows = [json.loads(line) for line in (suite / "labels.jsonl").read_text().splitlines()]
    y = np.array([0 if r["label"] == "dog" else 1 for r in rows])
    fit, val, test = lp.split_indices(len(y), 0.25, 0.25, 0)
    metrics = [json.loads(line) for line in (suite / "probe" / "metrics.jsonl").read_text().splitlines()]
    steps, stacked = ck.load_stack(suite / "run")
    config, tok = ck.load_model_config(suite / "run"), load_tokenizer(suite / "run")
    forward = jax.jit(lambda p, t: models.apply(p, t, config, capture=("embed", "resid"))[1])
    ids = [tok.encode(r["text"]) for r in rows]
    for c, layer in ((2, 2), (1, 0)):
        params = jax.tree.map(lambda a: a[c], stacked)
        X = np.zeros((len(rows), config.d_model))
        for n in {len(i) for i in ids}:  # texts of one length together, unpadded: the state at the last token
            same = [k for k, i in enumerate(ids) if len(i) == n]
            acts = forward(params, np.stack([ids[k] for k in same]))
            X[same] = np.asarray(acts["embed"] if layer == 0 else acts["resid"][layer - 1], np.float64)[:, -1]
        clf = LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000).fit(X[fit], y[fit])
        assert metrics[c]["acc_test"][layer] == pytest.approx(clf.score(X[test], y[test]), abs=1e-3)
    summary = json.loads((suite / "probe" / "summary.json").read_text())
    assert summary["probes_converged"] == summary["probes_total"] == 3 * 3 * 2
    assert summary["classes"] == ["dog", "other"] and summary["max_resident_checkpoints"] <= 3
    assert (suite / "probe" / "figures" / "accuracy_heatmap.png").exists()


@pytest.mark.parametrize("feature", ["mean"])
def test_chunked_vmapped_path_equals_a_loop_over_checkpoints(suite, feature):
    from experiments.studies.probe import study as probe

    config = probe.Config(run=str(suite / "run"), labels=str(suite / "labels.jsonl"), feature=feature, chunk_size=2,
                          batch_size=40)
    texts, labels, classes = probe.read_labels(config.labels)
    tok, model = load_tokenizer(suite / "run"), ck.load_model_config(suite / "run")
    tokens, lengths = lp.pad_tokens([tok.encode(t) for t in texts], config.window)
    y = np.array([classes.index(v) for v in labels], np.int32)
    data = probe.probe_data(config, tokens, lengths, y)
    res = probe.analyse(config, suite / "run", data, 2)
    fn = jax.jit(lp.make_probe_fn(model, feature=feature, batch_size=40, n_classes=2, C=1.0, n_iter=50))
    _, stacked = ck.load_stack(suite / "run")
    for c in range(3):
        one = fn(jax.tree.map(lambda a: a[c], stacked), data)
        for key in ("right_val", "right_test", "converged"):
            np.testing.assert_array_equal(res[key][c], np.asarray(one[key]), err_msg=key)
    # the padded mean equals the mean over each text's own tokens
    X = lp.hidden_features(jax.tree.map(lambda a: a[2], stacked), tokens, lengths, model, "mean", 40)
    _, acts = models.apply(jax.tree.map(lambda a: a[2], stacked), tok.encode(texts[5])[None], model, capture=("resid",))
    np.testing.assert_allclose(X[2, 5], np.asarray(acts["resid"][1, 0]).mean(0), rtol=1e-4, atol=1e-5)


def test_word_end_task_by_brute_force():
    strings = ["", " ", "a", "b", "c", "."]            # ids 0..5
    rng = np.random.default_rng(0)
    ids = rng.choice([1, 2, 3, 4, 5], size=600, p=[0.2, 0.3, 0.2, 0.2, 0.1])
    windows, y = lp.word_end_task(ids, strings, 10_000, 4, seed=1)
    assert len(y) % 2 == 0 and len(y) > 50 and y.mean() == 0.5
    for w, label in zip(windows, y):
        starts = [i for i in range(3, len(ids) - 1) if list(ids[i - 3:i + 1]) == list(w)]
        assert starts and strings[w[-1]].isalpha()
        assert label in {int(not strings[ids[i + 1]].isalpha()) for i in starts}
    for v in (2, 3, 4):                                 # balanced within every last token
        assert y[windows[:, -1] == v].mean() == 0.5
    for part in lp.split_indices(len(y), 0.25, 0.25, 0, np.arange(len(y)) // 2):  # and so in every split
        assert all(y[part][windows[part, -1] == v].mean() == 0.5 for v in np.unique(windows[part, -1]))


def test_builtin_task_on_a_run_trained_here_and_bad_label_files(micro_run, tmp_path, capsys):
    out = tmp_path / "p"
    assert cli(["probe", "--out", str(out), "--set", f"run={micro_run}", "--set", "n_examples=128",
                "--set", "window=16"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = (out / "labels.jsonl").read_text().splitlines()
    assert summary["n_examples"] == len(rows) <= 128 and summary["steps"][0] == 0
    assert summary["emergence_step"] is None or summary["emergence_step"] in summary["steps"]
    assert summary["text_source"] == "word-end task on the run's own corpus (synthetic)"
    from experiments.studies.probe import study as probe

    assert summary["text_source"] in probe.findings(summary)[0]
    capsys.readouterr()
    bad = {"missing.jsonl": None, "one.jsonl": [{"text": "ab", "label": 1}] * 20,
           "rows.jsonl": [{"text": "ab", "label": 1}] * 10 + [{"txt": "ab", "label": 0}] * 10}
    for name, content in bad.items():
        path = tmp_path / name
        if content is not None:
            path.write_text("\n".join(json.dumps(r) for r in content))
        assert cli(["probe", "--out", str(tmp_path / f"o-{name}"), "--set", f"run={micro_run}",
                    "--set", f"labels={path}"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and (name in err) and not (tmp_path / f"o-{name}").exists(), err
