"""The development study end to end: on a pretrain run and on an imported suite (streamed from
disk), finite summaries with exactly the promised keys, the figures and the arrays; bad input is
one line and exit 2; findings claim a stage boundary only where the intervals support it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from experiments.__main__ import cli
from experiments.studies.development import summary as summary_lib
from experiments.tools.import_suite import main as import_main

HF = Path(__file__).parent / "fixtures" / "hf"
README = Path(__file__).parents[1] / "README.md"
SMALL = ["llc.draws=8", "llc.chains=2", "llc.batch_size=4", "llc_checkpoints=3", "llc_examples=16", "llc_window=8",
         "n_windows=8", "batch_size=4", "cka_examples=32", "n_sequences=4", "n_boot=100"]
KEYS = ("llc", "cka_adjacent", "induction_score_max", "prev_token_score_max", "logit_lens_loss")
FIGURES = {"llc_and_loss", "llc_traces", "cka_map", "head_scores", "logit_lens", "weights"}


def sets(*pairs):
    return [x for p in pairs for x in ("--set", p)]


def check_run(out: Path, n_steps: int, n_layers: int) -> dict:
    s = json.loads((out / "summary.json").read_text())
    for key in KEYS:
        assert key in s and f"{key}_ci" in s, key
        assert set(s["fastest_change"]) >= {key}, key
    assert len(s["steps"]) == n_steps and np.shape(s["logit_lens_loss"]) == (n_steps, n_layers + 1)
    assert np.shape(s["cka_adjacent"]) == (n_steps - 1, n_layers + 1) and len(s["induction_score_max"]) == n_steps
    assert np.shape(s["llc_chains"]) == (3, 2) and len(s["llc_ci"]) == 3
    for value in (s["llc"], s["logit_lens_loss"], s["cka_adjacent"], s["induction_score_max"]):
        assert np.isfinite(np.asarray(value, float)).all()
    assert {p.stem for p in (out / "figures").glob("*.png")} == FIGURES
    arrays = np.load(out / "measures.npz")
    assert arrays["llc/trace_KT"].shape[:2] == (3, 2) and arrays["lens_nll"].shape[:2] == (n_steps, n_layers + 1)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == s["steps"]
    return s


def test_on_a_pretrain_run(micro_run, tmp_path):
    out = tmp_path / "dev"
    assert cli(["development", "--out", str(out), *sets(f"pretrain_run={micro_run}", *SMALL)]) == 0
    s = check_run(out, 8, 2)
    # the last layer's lens is the held-out loss the summary reports
    np.testing.assert_allclose(np.asarray(s["logit_lens_loss"])[:, -1], s["loss"])
    assert s["loss"][-1] < s["loss"][0]                       # the micro run learns
    from experiments.studies.development import study

    assert len(study.findings(s)) == 4


def test_on_an_imported_suite(tmp_path):
    run = tmp_path / "suite"
    assert import_main(["--from", str(HF / "neox_rot25_parallel"), "--out", str(run)]) == 0
    out = tmp_path / "dev"
    assert cli(["development", "--out", str(out), *sets(f"run={run}", f"text={README}", "window=16", *SMALL)]) == 0
    s = check_run(out, 3, 2)
    assert s["shapes"]["period"] == 32 and s["llc_steps"] == [0, 100, 200]


@pytest.mark.parametrize("override,message", [
    ("window=999", "window=999 exceeds the model's context of 32"),
    ("period=17", "period=17 needs sequences of 34"),
    ("n_windows=30", "multiple of batch_size"),
    ("text=/nonexistent", "text is read on run="),
    ("llc.eps=1e6", "the SGLD chains diverged"),
])
def test_bad_input_is_one_line(micro_run, tmp_path, capsys, override, message):
    small = SMALL if override.startswith("llc") else []
    assert cli(["development", "--out", str(tmp_path / "bad"), *sets(f"pretrain_run={micro_run}", *small, override)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]    # after the progress bar, when the run started
    assert message in err and err.startswith("error:")
    assert not (tmp_path / "bad" / "summary.json").exists()
    if not small:
        assert not (tmp_path / "bad").exists()            # refused before any folder is claimed


def test_findings_claim_a_boundary_only_where_supported():
    base = {"steps": [0, 1, 2, 3], "llc_steps": [0, 1, 2], "llc_chains": [[1, 1]] * 3,
            "llc": [1.0, 3.0, 1.0], "stage_candidates": [1], "induction_head": [[0, 0]] * 4,
            "induction_score_max": [0.1] * 4, "induction_score_max_ci": [[0.1, 0.1]] * 4, "induction_chance": 0.05,
            "induction_control": [0.05] * 4, "induction_gain": 0.0, "induction_gain_ci": [-0.1, 0.1],
            "prev_token_score_max": [0.2] * 4, "prev_token_score_max_ci": [[0.2, 0.2]] * 4, "prev_token_chance": 0.1,
            "logit_lens_loss": [[3.0, 2.0]] * 4, "loss": [2.0] * 4, "loss_ci": [[1.9, 2.1]] * 4,
            "icl_score": [0.0] * 4, "icl_score_ci": [[-0.1, 0.1]] * 4, "cka_kind": "debiased",
            "cka_adjacent": [[0.9, 0.9]] * 3,
            "fastest_change": {k: [0, 1] for k in ("llc", "cka_adjacent", "induction_score_max")}}
    tight = {**base, "llc_ci": [[0.9, 1.1], [2.9, 3.1], [0.9, 1.1]], "stage_boundaries": [1]}
    wide = {**base, "llc_ci": [[0, 2], [2, 4], [0, 2]], "stage_boundaries": []}
    assert "support a stage boundary at step(s) 1" in summary_lib.findings(tight)[0]
    text = summary_lib.findings(wide)[0]
    assert "no stage boundary is supported" in text and "turns at 1 lie within them" in text
