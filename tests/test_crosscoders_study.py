import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamics.runlog import RunFolder
from experiments.studies.crosscoders import study
from probes.crosscoders import attribution as attr_lib
from probes.crosscoders import emergence as em
from probes.crosscoders import training as cct


def test_emergence_cosines_and_snapshot_choice():
    norms = np.array([[1.0, 0.2, 0.1, 0.0],     # init feature: strong at step 0 then fades
                      [0.0, 0.1, 0.6, 1.0],     # emerges at index 2 (>= 0.5 max)
                      [0.0, 0.0, 0.0, 2.0]])
    assert em.emergence(norms, 0.5).tolist() == [0, 2, 3]
    assert em.emergence(norms, 0.05).tolist() == [0, 1, 3]
    w = np.zeros((1, 3, 2))
    w[0, 0], w[0, 1], w[0, 2] = [1, 0], [1, 1], [0, -2]
    assert np.allclose(em.consecutive_cosines(w), [[1 / np.sqrt(2), -1 / np.sqrt(2)]])
    available = [0, 1, 2, 4, 8, 16, 32, 64, 100, 200]
    chosen = study.choose_snapshots(available, 4)
    assert chosen[0] == 0 and chosen[-1] == 200 and len(chosen) == 4


def test_ngram_r2_matches_brute_force():
    rng = np.random.default_rng(0)
    windows = rng.integers(0, 3, (40, 12))
    # feature 0 depends on the last token, feature 1 on the last two, feature 2 is noise
    f = np.stack([(windows == 1).astype(float),
                  ((windows == 2) & (np.roll(windows, 1, axis=1) == 0)).astype(float),
                  rng.random(windows.shape)], -1)
    train_rows = np.arange(0, 40, 2)
    r2 = attr_lib.ngram_r2(windows, f, 3, train_rows)
    start = 2
    for n in (1, 2, 3):
        groups = {}
        for b in train_rows:
            for c in range(start, 12):
                groups.setdefault(tuple(windows[b, c - n + 1: c + 1]), []).append(f[b, c])
        mean_all = np.mean([f[b, c] for b in train_rows for c in range(start, 12)], axis=0)
        sse, sst = 0.0, 0.0
        for b in range(1, 40, 2):
            for c in range(start, 12):
                key = tuple(windows[b, c - n + 1: c + 1])
                pred = np.mean(groups[key], axis=0) if key in groups else mean_all
                sse = sse + (f[b, c] - pred) ** 2
                sst = sst + (f[b, c] - mean_all) ** 2
        assert np.allclose(r2[n - 1], 1 - sse / sst)
    order = attr_lib.best_order(r2, tolerance=1e-9)
    assert order[0] == 1 and order[1] == 2


def test_attribution_is_exact_for_a_linear_readout():
    rng = np.random.default_rng(1)
    N, F, D = 6, 5, 3
    f = jnp.asarray(np.maximum(rng.normal(size=(N, F)), 0), jnp.float32)
    snap = {"W_dec": jnp.asarray(rng.normal(size=(F, D)), jnp.float32), "b_dec": jnp.ones(D),
            "err": jnp.asarray(rng.normal(size=(N, D)), jnp.float32), "scale": jnp.asarray(2.0),
            "model": jnp.asarray(rng.normal(size=(D,)), jnp.float32), "f": f}
    tokens = jnp.zeros((2, 3), jnp.int32)
    logits_fn = lambda w, resid: resid @ w
    metric = lambda logits, tokens: logits.sum()
    m, attr = attr_lib.attribution_fn(metric, logits_fn)(snap, tokens)
    ablate = attr_lib.ablation_fn(metric, logits_fn)
    x = np.asarray(f) @ np.asarray(snap["W_dec"]) + 1.0 + np.asarray(snap["err"])
    assert float(m) == pytest.approx(float(((x / 2.0) @ np.asarray(snap["model"])).sum()), rel=1e-5)
    for i in range(F):
        mask = np.zeros(F, np.float32)
        mask[i] = 1
        drop = float(m) - float(ablate({**snap, "mask": jnp.asarray(mask)}, tokens))
        assert drop == pytest.approx(float(attr[i]), rel=1e-4, abs=1e-5)


def test_induction_task_and_metric():
    rng = np.random.default_rng(2)
    tokens = attr_lib.induction_tokens(rng, 3, 5, np.array([4, 7, 9]))
    assert tokens.shape == (3, 10) and np.array_equal(tokens[:, :5], tokens[:, 5:])
    V = 10
    perfect = jax.nn.one_hot(np.roll(tokens, -1, axis=1), V) * 50.0
    assert float(attr_lib.induction_metric(5)(perfect, jnp.asarray(tokens))) == pytest.approx(0.0, abs=1e-6)
    uniform = jnp.zeros((3, 10, V))
    assert float(attr_lib.induction_metric(5)(uniform, jnp.asarray(tokens))) == pytest.approx(-np.log(V), rel=1e-6)


def test_study_end_to_end_on_micro_run(tmp_path, monkeypatch):
    """SIGTERM during the crosscoder training saves its state and exits like a training stage
    (Interrupted); the same run resumes from there and finishes."""
    import os
    import signal

    from dynamics.loop import Interrupted
    from experiments.studies.pretrain.study import ensure_pretrain

    run_dir = ensure_pretrain(tmp_path / "pre", preset="micro")
    crosscoder = study.cc.CrosscoderConfig(n_snapshots=4, n_features=32, arch="batchtopk", steps=30, batch_size=128,
                                           lr=2e-3, aux_k=4, dead_tokens=20_000)
    config = study.Config(pretrain_run=str(run_dir), crosscoder=crosscoder, ks=(4, 8), buffer_tokens=512,
                          windows_per_fetch=4, eval_windows=8, n_induction=8, n_ablate=4, n_random=2, max_order=3,
                          n_text_features=2)
    real_train = cct.train
    sigterm_at_9 = lambda i, m: os.kill(os.getpid(), signal.SIGTERM) if i == 9 else None
    monkeypatch.setattr(cct, "train", lambda *a, **k: real_train(*a, callback=sigterm_at_9, **k))
    with pytest.raises(Interrupted) as stopped:
        study.run(config, RunFolder(tmp_path / "cc"))
    assert stopped.value.step == 10 and (tmp_path / "cc" / "checkpoints" / "_resume" / "crosscoder" / "10").is_dir()
    monkeypatch.setattr(cct, "train", real_train)
    summary = study.run(config, RunFolder(tmp_path / "cc"))
    assert not (tmp_path / "cc" / "checkpoints" / "_resume" / "crosscoder" / "10").exists()
    steps = [r["step"] for r in RunFolder(tmp_path / "cc").read_metrics() if r.get("phase") == "train"]
    assert steps[:10] == list(range(10)) and steps[-1] == config.crosscoder.steps - 1  # the first run's rows are kept
    for key in ("n_snapshots", "explained_variance_min", "explained_variance_mean", "l0_mean", "dead_fraction",
                "loss_recovered_mean", "median_emergence_step", "frac_init_features", "ablation_drop_top",
                "ablation_drop_random"):
        assert key in summary and summary[key] is not None and np.isfinite(summary[key]), key
    assert summary["n_snapshots"] == 4 and len(summary["members"]) == 2
    # 30 steps: the inference threshold (a running mean, momentum 0.99) has not settled on the k=4 quantile
    assert 0 < summary["l0_mean"] <= 3 * 4
    assert -1.0 < summary["explained_variance_min"] <= 1.0
    features = json.loads((tmp_path / "cc" / "features.json").read_text())
    assert np.asarray(features["decoder_norms"]).shape == (32, 4)
    assert (tmp_path / "cc" / "figures" / "decoder_norms.png").exists()
    assert "feature" in (tmp_path / "cc" / "top_features.md").read_text()


def test_snapshot_count_fits_the_series_unless_more_are_asked(micro_run):
    """crosscoder.n_snapshots = 0 takes every checkpoint of the series up to 16; a count the
    series cannot give is one error naming both numbers, before anything runs."""
    from experiments.cli.config import override
    from models.errors import OntogenyError

    base = override(study.PRESETS["tiny"], [f"pretrain_run={micro_run}"])
    assert study.resolve(base)["crosscoder"]["n_snapshots"] == 8          # the micro run has 8 checkpoints
    assert study.resolve(override(base, ["crosscoder.n_snapshots=5"]))["crosscoder"]["n_snapshots"] == 5
    with pytest.raises(OntogenyError, match="n_snapshots=9 exceeds the 8 checkpoints"):
        study.resolve(override(base, ["crosscoder.n_snapshots=9"]))
    assert study.Config().snapshot_count(40) == study.MAX_AUTO_SNAPSHOTS
    with pytest.raises(OntogenyError, match="needs >= 2"):
        study.Config().snapshot_count(1)
    # the planted series sets its own count; the model-only keys are refused there
    planted = study.PRESETS["planted"]
    assert study.resolve(planted)["crosscoder"]["n_snapshots"] == planted.planted.n_snapshots
    with pytest.raises(OntogenyError, match="--set site: series=planted"):
        override(planted, ["site=resid_post.0"])
    with pytest.raises(OntogenyError, match="--set planted.n_late: planted"):
        override(study.PRESETS["tiny"], ["planted.n_late=3"])
