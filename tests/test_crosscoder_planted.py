"""The planted series (probes.crosscoders.planted) and the check the crosscoder must pass on it:
recover each planted feature's emergence snapshot, with a control in which every feature starts
at snapshot 0, so the check fails for a method that reports the same answer whatever the data."""
import dataclasses
import math

import numpy as np
import pytest

from dynamics.runlog import RunFolder
from experiments.studies.crosscoders import planted_mode, study
from probes.crosscoders import emergence as em
from probes.crosscoders import planted as pl


def test_planted_activations_are_the_sum_of_their_parts():
    """With no dense part and no noise, every activation equals the brute-force sum of the
    planted vectors of the features firing on that token, scaled, plus the mean."""
    config = pl.PlantedConfig(n_snapshots=5, d_model=12, n_init=2, n_fading=1, n_turning=1, n_middle=1, n_late=1,
                              n_nested=2, dense_rank=0, noise=0.0, per_token=2.0)
    truth = pl.truth(config)
    x = pl.sample(config, truth, seed=3, index=0, n=400)
    # the firing pattern, recovered token by token from the residual at the last snapshot
    # (every feature present there) by least squares on the known vectors
    C = config.n_snapshots
    V = truth["strength"][:, -1, None] * truth["directions"][:, -1] * truth["scale"][-1]        # [P, D]
    amp = np.linalg.lstsq(V.T, (x[:, -1] - truth["mean"][-1]).T, rcond=None)[0].T             # [N, P]
    amp[np.abs(amp) < 1e-4] = 0.0
    for n in range(40):
        for c in range(C):
            want = truth["mean"][c].copy()
            for j in range(len(truth["group"])):
                want += amp[n, j] * truth["strength"][j, c] * truth["directions"][j, c] * truth["scale"][c]
            np.testing.assert_allclose(x[n, c], want, rtol=1e-4, atol=1e-3)
    fires = amp > 0
    assert np.all(amp[fires] >= 0.5 - 1e-4)                                          # amplitude 0.5 + Exp(1)
    nested = np.flatnonzero(truth["group"] == "nested")
    assert np.all(fires[:, truth["parent"][nested]] >= fires[:, nested])            # a nested one fires inside its parent
    # onsets and strengths by group
    assert truth["onset"].tolist() == [0, 0, 0, 0, 2, 3, 2, 2]
    assert np.allclose(truth["strength"][2], np.linspace(1, config.fade, C))
    turn = truth["directions"][3]
    assert math.degrees(math.acos(np.clip(turn[0] @ turn[-1], -1, 1))) == pytest.approx(config.turn_degrees)
    assert truth["scale"][-1] / truth["scale"][0] == pytest.approx(config.scale_growth)


def test_planted_firing_rates_dense_power_and_control():
    config = pl.PlantedConfig(n_snapshots=4, d_model=16, dense_rank=4, dense_start=2.0, dense_end=0.5, noise=0.0,
                              offset_drift=0.0, n_fading=0, n_turning=0, n_nested=0, scale_growth=1.0)
    truth = pl.truth(config)
    P = len(truth["group"])
    x = pl.sample(config, truth, seed=0, index=0, n=40000)
    # the dense power relative to the planted features' falls linearly from dense_start to dense_end
    dense = np.sum(truth["basis"] ** 2, axis=(1, 2)) / truth["feature_power"]
    np.testing.assert_allclose(dense, np.linspace(2.0, 0.5, 4))
    # total variance at the last snapshot, analytic: independent amplitudes a_j = b_j (0.5 + E_j),
    # b_j ~ Bernoulli(p), E[(0.5 + E)^2] = 3.25, E[0.5 + E] = 1.5, unit directions, plus the dense part
    p = config.per_token / P
    want = P * (p * 3.25 - p ** 2 * 1.5 ** 2) + 0.5 * truth["feature_power"]
    assert np.sum(np.var(x[:, -1].astype(np.float64), 0)) == pytest.approx(want, rel=0.03)
    # each feature fires at rate p: its amplitude along its own direction at the last snapshot
    assert truth["feature_power"] == pytest.approx(config.per_token * 3.25)
    # the same seed and index give the same batch; another index another
    np.testing.assert_array_equal(pl.sample(config, truth, 0, 5, 8), pl.sample(config, truth, 0, 5, 8))
    assert not np.allclose(pl.sample(config, truth, 0, 5, 8), pl.sample(config, truth, 0, 6, 8))
    control = pl.truth(dataclasses.replace(config, all_at_zero=True))
    assert np.all(control["onset"] == 0) and np.all(control["strength"] == 1.0)
    np.testing.assert_array_equal(control["directions"][:, -1], truth["directions"][:, -1])   # the same features
    before = np.arange(4)[None] < truth["onset"][:, None]                  # the lookup before each onset
    assert before.any() and np.all(truth["strength"][before] == config.lookup)
    cos = np.sum(truth["directions"][:, 0] * truth["directions"][:, -1], -1)
    np.testing.assert_allclose(cos[before[:, 0]], 0.0, atol=1e-12)         # orthogonal to the feature's direction
    assert P == config.n_features


def test_emergence_rules_on_hand_made_norms():
    norms = np.array([[1.0, 0.9, 1.0, 1.0],      # present throughout
                      [0.0, 0.1, 0.8, 1.0],      # grows at snapshot 2
                      [0.3, 0.4, 0.5, 1.2],      # strongest growth at 3; above half its max only at 3
                      [0.05, 0.05, 0.05, 0.1]])  # weak: never at the snapshots' mean
    assert em.emergence(norms, 0.5, "half_max").tolist() == [0, 2, 3, 0]
    assert em.emergence(norms, 0.5, "steepest").tolist() == [0, 2, 3, 0]   # ties: the first
    # relative_mean against a loop: first snapshot at >= frac x the alive features' mean there,
    # else the snapshot where norm / mean is largest
    rng = np.random.default_rng(0)
    for _ in range(20):
        norms = rng.exponential(1.0, (12, 5)) * (rng.random((12, 5)) < 0.7)
        alive = rng.random(12) < 0.8
        frac = rng.uniform(0.2, 2.0)
        want = []
        for f in range(12):
            means = [np.mean([norms[g, c] for g in range(12) if alive[g]]) for c in range(5)]
            above = [c for c in range(5) if norms[f, c] >= frac * means[c]]
            want.append(above[0] if above else int(np.argmax([norms[f, c] / means[c] for c in range(5)])))
        assert em.emergence(norms, frac, "relative_mean", alive).tolist() == want
    with pytest.raises(ValueError):
        em.emergence(norms, 0.5, "first")


def test_recovery_scores_the_feature_and_its_lookup_by_each_strength():
    config = pl.PlantedConfig(n_snapshots=6, d_model=24, dense_rank=0)
    truth = pl.truth(config)
    scale = 1.0 / truth["scale"]                                        # inputs scaled to a constant norm
    full = pl.planted_vectors(truth, scale)                              # the lookup before each onset, then the feature
    support = np.arange(6)[None] >= truth["onset"][:, None]
    exact = full * support[..., None]                                   # the feature alone
    rng = np.random.default_rng(0)
    junk = rng.normal(size=(10, 6, 24))
    alive = np.ones(len(exact) + 10, bool)
    late = int(np.sum(truth["onset"] >= 2))

    def read(w, strength):
        geo = em.decoder_features(w, alive, list(range(6)), 0.5, 0.5)
        s = {"norm": geo["norms"], "aligned": em.aligned(geo["norms"], geo["cos_to_final"])}[strength]
        return pl.recovery(truth, w, scale, alive, em.emergence(s, 0.5))

    for strength in ("norm", "aligned"):
        rec = read(np.concatenate([exact, junk]), strength)
        assert rec["recovered_fraction"] == 1.0 and rec["within_one"] == 1.0 and rec["late_as_init"] == 0
        assert np.array_equal(rec["match"], np.arange(len(exact))) and planted_mode.verdict(rec)
    # what a crosscoder's shared latent learns: the lookup before the onset, then the feature. It is
    # matched all the same; the decoder norm puts every later feature at snapshot 0 (the lookup is
    # as strong as the feature), the part along the final direction puts it at its onset
    rec = read(np.concatenate([full, junk]), "norm")
    assert rec["recovered_fraction"] == 1.0 and rec["late_as_init"] == late and not planted_mode.verdict(rec)
    rec = read(np.concatenate([full, junk]), "aligned")
    assert rec["late_as_init"] == 0 and rec["within_one"] == 1.0 and planted_mode.verdict(rec)
    # a dead match does not count: with the planted features dead, nothing is recovered
    dead = np.concatenate([np.zeros(len(exact), bool), np.ones(10, bool)])
    assert pl.recovery(truth, np.concatenate([exact, junk]), scale, dead, np.zeros(len(dead), int))[
        "recovered_fraction"] < 0.2


@pytest.fixture(scope="module")
def planted_runs(tmp_path_factory):
    """The default variant (the study's JumpReLU) on the planted preset, and on its control."""
    root = tmp_path_factory.mktemp("planted")
    config = study.PRESETS["planted"]
    main = study.run(config, RunFolder(root / "main"))
    control = study.run(dataclasses.replace(config, planted=dataclasses.replace(config.planted, all_at_zero=True)),
                        RunFolder(root / "control"))
    return main, control, root


def test_default_crosscoder_recovers_planted_emergence(planted_runs):
    main, _, root = planted_runs
    assert main["arch"] == study.STUDY_CROSSCODER.arch and main["emergence_rule"] == "half_max"
    assert main["emergence_strength"] == "aligned" and main["passed"], study.findings(main)[0]
    assert main["emergence_within_one"] >= 0.9 and main["late_as_init"] == 0 and main["recovered_fraction"] >= 0.75
    # better than the answer the method is suspected of giving ("everything at step 0")
    assert main["emergence_within_one_all_first"] < 0.6 < main["emergence_within_one"]
    assert main["explained_variance_min"] > 0.7
    assert study.findings(main)[0].startswith("PASS")
    assert (root / "main" / "figures" / "planted.png").exists()
    # the same dictionary read by its decoder norm (Ge et al.'s strength) calls the later features,
    # which carry the untrained network's lookup before their onset, present at snapshot 0
    norm = main["rules"]["half_max/norm"]
    assert not norm["passed"] and norm["late_as_init"] >= main["n_late_recovered"] // 2


def test_the_control_moves_every_estimate_to_snapshot_zero(planted_runs):
    """The same directions and tokens with every feature on from snapshot 0: the estimates
    follow the data. Features estimated late in the main run are estimated at 0 here, so a method
    that reported late onsets regardless would fail the control, and one that reported 0
    regardless would fail the main check."""
    import json

    main, control, root = planted_runs
    assert control["passed"] and control["all_at_zero"] and control["planted_onsets"] == [0]
    features = {k: json.loads((root / k / "features.json").read_text()) for k in ("main", "control")}
    onset = np.asarray(features["main"]["planted_onset"])
    late = onset >= 2
    est_main = np.asarray(features["main"]["estimated_onset"])[late]
    est_control = np.asarray(features["control"]["estimated_onset"])[late]
    ok_main = np.asarray(features["main"]["match_cos"])[late] >= 0.8
    ok_control = np.asarray(features["control"]["match_cos"])[late] >= 0.8
    assert np.mean(est_main[ok_main] >= onset[late][ok_main] - 1) >= 0.9
    assert np.mean(est_control[ok_control] <= 1) >= 0.9
    assert control["frac_emerge_first"] > main["frac_emerge_first"]
