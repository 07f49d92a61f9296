"""Studies on an imported suite, streamed from disk: NeuroMFA (`--set run=RUN`) through
`models.families.weight_matrices`, checked against the in-memory path and a plain loop."""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

import models
from dynamics import checkpoints as ck
from dynamics import stacks
from experiments.tools.import_suite import main as import_main
from probes.neuromfa import spectrum as mf

HF = Path(__file__).parent / "fixtures" / "hf"


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("suites")
    runs = {}
    for case in ("neox_rot25_parallel", "llama_gqa"):
        assert import_main(["--from", str(HF / case), "--out", str(root / case)]) == 0
        runs[case] = root / case
    return runs


def small_config(**kw):
    from experiments.studies.neuromfa import study as nm

    return nm.Config(**{**dict(run="x", n_resid=16, n_mlp=32, n_samples=2, context=16, eval_windows=4,
                               control_draws=2, mfa=mf.MFAConfig(min_degree=4)), **kw})


@pytest.mark.parametrize("case", ["llama_gqa"])  # the CLI test below runs GPT-NeoX
def test_neuromfa_on_an_imported_run_equals_the_in_memory_path(imported, case):
    from experiments.studies.neuromfa import study as nm
    from models.families import weight_matrices

    run = imported[case]
    config = small_config(run=str(run))
    text = (HF.parent.parent.parent / "README.md").read_text()[:6000]
    r = nm.analyse_run(run, config, text)
    # independent path: the whole stack in memory, weights built per checkpoint, series_spectra
    steps, stacked = ck.load_stack(run)
    model_config = ck.load_model_config(run)
    weights = stacks.stack_trees([weight_matrices(stacks.unstack_tree(stacked, t), model_config) for t in range(len(steps))])
    from probes.neuromfa import network

    idx = network.sample_indices(config.sample_seed, model_config, config.n_samples, config.n_resid, config.n_mlp)
    want = mf.series_spectra(weights, idx, config.mfa)
    for key in ("alpha0", "width", "mean_abs_w", "n_used"):
        np.testing.assert_allclose(r["spectra"][key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert r["summary"]["emergence"][0] == 0.0 and np.isfinite(r["summary"]["alpha0"]).all()
    # the control keeps each matrix's scale: its mean |w| tracks the real one within noise
    np.testing.assert_allclose(r["control"]["mean_abs_w"], r["summary"]["mean_abs_w"], rtol=0.5)
    # loss: a plain loop of models.apply over the checkpoints on the same windows
    from dynamics import data as data_lib
    from dynamics.run_tokenizer import load_tokenizer

    x, y = data_lib.eval_batches(load_tokenizer(run).encode(text), 1, 4, 16, seed=1234)[0]
    for t in range(len(steps)):
        logits, _ = models.apply(stacks.unstack_tree(stacked, t), x, model_config)
        logp = jax.nn.log_softmax(np.asarray(logits, np.float64), -1)
        nll = -np.take_along_axis(np.asarray(logp), y[..., None], -1).mean()
        np.testing.assert_allclose(r["eval"]["val_loss"][t], nll, rtol=1e-4)
        np.testing.assert_allclose(r["eval"]["char_acc"][t], (np.argmax(logits, -1) == y).mean(), atol=1e-6)


def test_word_accuracy_by_hand():
    from experiments.studies.neuromfa.study import word_accuracy

    starts = np.array([[0, 1, 0, 1, 1, 0]], bool)        # words: [1, 2], [3], [4, 5]; position 0 is cut
    right = np.array([[[1, 1, 1, 0, 1, 1]], [[0, 1, 0, 1, 1, 1]]], bool)
    np.testing.assert_allclose(word_accuracy(right, starts), [2 / 3, 2 / 3])
    right2 = np.array([[[0, 1, 1, 1, 1, 1]]], bool)
    np.testing.assert_allclose(word_accuracy(right2, starts), [1.0])
    np.testing.assert_allclose(word_accuracy(right, np.zeros_like(starts)), right.mean(axis=(1, 2)))  # no start marked


def test_neuromfa_cli_on_an_imported_run(imported, tmp_path):
    import json

    from experiments.__main__ import cli

    from experiments.studies.neuromfa import study as nm

    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat and the dog ran to the cat\n" * 20)
    out = tmp_path / "nm"
    run = imported["neox_rot25_parallel"]
    argv = ["neuromfa", "--out", str(out), "--preset", "xiao2025", "--set", f"run={run}", "--set", "n_resid=16",
            "--set", "n_mlp=32", "--set", "n_samples=2", "--set", "context=16", "--set", "eval_windows=4",
            "--set", "control_draws=1"]
    assert cli(argv + ["--set", f"text={text}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["models"] == ["run"] and summary["steps"] == [0, 100, 200]
    assert summary["text_source"] == str(text.resolve()) and str(text.resolve()) in nm.findings(summary)[0]
    assert cli(["neuromfa", "--out", str(tmp_path / "bad"), "--set", f"run={tmp_path / 'none'}"]) == 2
    # keys the run makes meaningless (the models trained here) are refused with one line naming them
    for bad in ("train.lr=0.1", "widths=8,16,32", "data.corpus=synthetic", "n_layer=3"):
        assert cli(argv + ["--set", bad]) == 2, bad
    assert cli(argv + ["--set", "context=128"]) == 2  # longer than the run's context of 64


def test_neuromfa_on_a_run_reads_its_own_width_not_the_trained_sizes():
    """n_resid / n_mlp on run=... are bounded by the run's width (checked by resolve), not by
    the widths of the models trained here, which the run does not train."""
    from experiments.studies.neuromfa import study as nm

    assert nm.Config(run="x", n_resid=64, n_mlp=512).n_resid == 64
    with pytest.raises(nm.OntogenyError, match="smallest width"):
        nm.Config(n_resid=64)


# ----------------------------------------------------------------------------- crosscoders
@pytest.mark.parametrize("sweep", [1, 3])
def test_direct_stream_batches_equal_a_loop_over_snapshots(imported, sweep):
    """Each step's rows: the windows through every snapshot (streamed from disk), normalised,
    whatever the number of batches one pass over the snapshots serves."""
    from dynamics import data as data_lib
    from experiments.studies.crosscoders import study as xc
    from experiments.studies.crosscoders import streams as xs
    from probes.crosscoders import metrics as cm

    run = imported["neox_rot25_parallel"]
    config = xc.Config(run=str(run), context=16, direct=True, seed=3,
                       crosscoder=xc.dataclasses.replace(xc.STUDY_CROSSCODER, n_snapshots=3, batch_size=40, steps=5))
    model_config = ck.load_model_config(run)
    steps, disk = ck.open_stack(run)
    ids = np.random.default_rng(0).integers(0, model_config.vocab_size, 2000)
    stream = xs.DirectStream(config, ids, disk, cm.site_fn(model_config, 1), 3, model_config.d_model, 16, sweep)
    _, stacked = ck.load_stack(run)
    for i in (0, 2, 4):
        tokens, _ = data_lib.get_batch(ids, config.seed + 17, i, 3, 16)
        loop = np.stack([np.asarray(models.apply(stacks.unstack_tree(stacked, t), tokens, model_config,
                                                 capture=("resid",))[1]["resid"][1]).reshape(-1, 32)[:40]
                         for t in range(3)], axis=1)                                # [N, C, D]
        if i == 0:
            np.testing.assert_allclose(np.linalg.norm(loop * stream.scale_C[None, :, None], axis=-1).mean(0),
                                       np.sqrt(32), rtol=1e-5)
        np.testing.assert_allclose(stream(i), loop * stream.scale_C[None, :, None], rtol=1e-4, atol=1e-5)
    # one pass over the snapshots per `sweep` batches: blocks {0}, {2}, {4} or {0,1,2}, {3,4}
    assert stream.passes == (3 if sweep == 1 else 2) and disk.max_resident <= 3
    assert xs.direct_sweep(config, 3, 32, budget_bytes=8 * 40 * 3 * 32 * 4 * 2) == 2
    assert xs.direct_sweep(config, 3, 32, budget_bytes=1) == 1
    assert xs.direct_sweep(xc.dataclasses.replace(config, direct_sweep=9), 3, 32, budget_bytes=1) == 5


def test_bigram_rows_equal_the_dense_table():
    from probes.crosscoders import metrics as cm

    ids = np.random.default_rng(1).integers(0, 30, 500)
    counts, log_uni, dense = cm.corpus_statistics(ids, 30)
    counts2, log_uni2, rows = cm.corpus_statistics(ids, 30, dense_limit=10)
    present = np.array([0, 4, 7, 29])
    np.testing.assert_allclose(rows(present), dense[present], rtol=1e-5)
    np.testing.assert_array_equal(counts, counts2)


def test_crosscoders_cli_on_an_imported_run(imported, tmp_path):
    import json

    from experiments.__main__ import cli

    text = tmp_path / "t.txt"
    text.write_text((HF.parent.parent.parent / "README.md").read_text()[:4000])
    out = tmp_path / "cc"
    assert cli(["crosscoders", "--out", str(out), "--preset", "ge2025", "--set", f"run={imported['llama_gqa']}",
                "--set", "site=resid_post.0", "--set", "crosscoder.n_snapshots=3", "--set", "crosscoder.n_features=64",
                "--set", "crosscoder.steps=6", "--set", "crosscoder.batch_size=32", "--set", "context=16", "--set", "eval_windows=8", "--set", "n_induction=8",
                "--set", "n_ablate=2", "--set", "n_random=1", "--set", f"text={text}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["max_resident_snapshots"] <= 3 and summary["layer"] == 0
    from experiments.studies.crosscoders import study as xc   # the text it was scored on is named
    assert summary["text"] == str(text) and f"scored on {text} text" in xc.findings(summary)[0]
    assert cli(["crosscoders", "--out", str(tmp_path / "bad"), "--set", f"run={imported['llama_gqa']}",
                "--set", "site=resid_pre.0"]) == 2


def test_bench_suite_writes_hf_folders_that_import(tmp_path):
    """The bench's hand-written safetensors read back exactly; its suite imports and runs."""
    from dynamics import hf_import
    from experiments.bench import suite as suite_bench

    cfg = {**suite_bench.PYTHIA_70M, "hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
           "num_hidden_layers": 2, "vocab_size": 300, "max_position_embeddings": 32}
    suite_bench.make_suite(tmp_path / "hf", [0, 2], cfg)
    again = suite_bench.neox_weights(cfg, np.random.default_rng(0), 0.02)
    read = hf_import.read_safetensors(tmp_path / "hf" / "step0" / "model.safetensors")
    assert set(read) == set(again)
    for name in again:
        np.testing.assert_array_equal(np.asarray(read[name], np.float16), again[name])
    assert import_main(["--from", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 0
    config = ck.load_model_config(tmp_path / "run")
    assert (config.family, config.n_layer, config.d_model, config.vocab_size) == ("gpt_neox", 2, 16, 300)
    _, disk = ck.open_stack(tmp_path / "run")
    logits = ck.map_stack(lambda p, t: models.apply(p, t, config)[0], disk, np.zeros((1, 4), np.int32), chunk_size=1)
    assert logits.shape == (2, 1, 4, 300) and np.isfinite(logits).all()
