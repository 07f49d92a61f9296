"""The linear-origins study end to end on a very small config, and the GPT case-pair check."""
import json

import jax
import numpy as np
import pytest

from dynamics.checkpoints import Series
from dynamics.data import CharTokenizer
from dynamics.errors import OntogenyError
from dynamics.runlog import RunFolder
from experiments import linear_origins as lo
from experiments.__main__ import main
from experiments.config import from_dict
from models import gpt


def planted_gpt_run(path, chars="\n !,.ABCDEabcdexyz"):
    """A fake pretrain run: step 0 random unembedding, step 5 upper = lower + v (+ small noise)."""
    tokenizer = CharTokenizer(chars)
    path.mkdir(parents=True)
    tokenizer.save(path / "tokenizer.json")
    config = gpt.GPTConfig(vocab_size=tokenizer.vocab_size, context=8, n_layer=1, n_head=1, d_model=16)
    shapes = jax.eval_shape(lambda k: gpt.init_params(config, k), jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    params0 = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)
    params1 = jax.tree.map(np.copy, params0)
    v = 3.0 * rng.standard_normal(16).astype(np.float32)
    for c in "abcde":
        params1["wte"][tokenizer.encode(c.upper())[0]] = params1["wte"][tokenizer.encode(c)[0]] + v + \
            0.01 * rng.standard_normal(16).astype(np.float32)
    series = Series(path, "pretrain")
    series.save(0, params0)
    series.save(5, params1)
    return tokenizer, params0


def test_gpt_case_check_on_planted_geometry(tmp_path):
    tokenizer, params0 = planted_gpt_run(tmp_path / "gpt")
    result = lo.gpt_case_check(str(tmp_path / "gpt"), n_random_pairs=16)
    assert result["n_pairs"] == 5 and list(result["steps"]) == [0, 5]
    assert result["within_mean"][1] > 0.99
    # step 0: the mean pairwise cosine of the case differences, recomputed by hand
    W = params0["wte"].astype(np.float64)
    diffs = [W[tokenizer.encode(c.upper())[0]] - W[tokenizer.encode(c)[0]] for c in "abcde"]
    cosines = [a @ b / np.linalg.norm(a) / np.linalg.norm(b)
               for i, a in enumerate(diffs) for j, b in enumerate(diffs) if i != j]
    assert result["within_mean"][0] == pytest.approx(np.mean(cosines), abs=1e-5)
    with pytest.raises(OntogenyError, match="not a folder"):
        lo.gpt_case_check(str(tmp_path / "missing"))


SMALL = ["n_concepts=2", "d=4", "hidden=16", "n_steps=256", "n_random_pairs=8", "sweep=true", "sweep_steps=64",
         "sweep_m=2", "sweep_d=2,4", "sweep_strength=0,1", "sweep_optimizers=gd,adam", "sweep_weight_decay=0",
         "sweep_lr_gd=1", "sweep_lr_adam=0.01", "sweep_seeds=0,1"]


def test_cli_small_run_and_resume(tmp_path, capsys):
    planted_gpt_run(tmp_path / "gpt")
    out = tmp_path / "run"
    argv = ["linear-origins", "--preset", "tiny", "--out", str(out), "--set", f"gpt_run={tmp_path / 'gpt'}"]
    for assignment in SMALL:
        argv += ["--set", assignment]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("PASS") + printed.count("FAIL") == 5
    summary = json.loads((out / "summary.json").read_text())
    for key in ("within_concept_cos_mean", "within_concept_cos_min", "cross_concept_abs_cos_mean",
                "random_pair_abs_cos_mean", "embedding_within_cos_mean", "logodds_error", "predictions_passed",
                "predictions_total", "gpt_case_within_cos_first", "gpt_case_within_cos_last"):
        assert key in summary, key
    assert summary["predictions_total"] == 5
    assert summary["predictions_passed"] == sum(p["passed"] for p in summary["predictions"])
    assert summary["within_concept_cos_min"] <= summary["within_concept_cos_mean"] <= 1.0
    assert summary["gpt_case_within_cos_last"] > 0.99 > summary["gpt_case_within_cos_first"]
    assert summary["final_loss"] < summary["loss_floor"] + 0.05  # the learner did learn
    rows = lo.read_csv(out / "sweep.csv")
    assert len(rows) == 16 == summary["sweep_runs"]
    assert {(r["d"], r["optimizer"], r["strength"], r["seed"]) for r in rows} == \
        {(d, o, s, seed) for d in (2, 4) for o in ("gd", "adam") for s in (0.0, 1.0) for seed in (0, 1)}
    for r in rows:  # pass columns agree with the thresholds
        assert r["pass_linearity"] == int(r["within_cos_mean"] >= 0.9)
        assert r["pass_logodds"] == int(r["logodds_error"] <= 0.15)
    steps = Series(out, "latent").steps()
    assert steps == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "step" in m] == steps
    for name in ("cosine_histograms", "measures_over_training", "concept_cosine_matrix", "sweep_d_strength",
                 "sweep_m_lr", "gpt_case_cosines"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000, name
    gpt_case = json.loads((out / "gpt_case.json").read_text())
    assert gpt_case["steps"] == [0, 5] and gpt_case["n_pairs"] == 5
    # resuming in the same folder reuses the saved series and the sweep table
    config = from_dict(lo.Config, json.loads((out / "config.json").read_text())["config"])
    folder = RunFolder(out)
    problem = lo.latent.build_problem(config.latent_config())
    steps_again, params, losses, fresh = lo.train_or_load(problem, config, folder)
    assert not fresh and list(steps_again) == steps
    np.testing.assert_allclose(losses, [m["loss"] for m in metrics if "step" in m], rtol=1e-6)
    assert lo.run_sweep(config, folder) == rows


def test_config_validation():
    with pytest.raises(OntogenyError, match="within_mode"):
        lo.Config(within_mode="median")
    with pytest.raises(OntogenyError, match="sweep_optimizers"):
        lo.Config(sweep_optimizers=("rmsprop",))
    with pytest.raises(OntogenyError, match="n_concepts"):
        lo.Config(sweep_m=(9,))
    assert lo.PRESETS["tiny"].sweep and not lo.PRESETS["tiny"].gpt_run
