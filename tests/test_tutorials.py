"""The tutorials under docs/tutorials/ run as written (micro sizes), and what they print is
checked against an independent computation, so that a tutorial cannot rot."""
from __future__ import annotations

import json
import runpy
from pathlib import Path

import jax
import numpy as np
import pytest

import models
from dynamics.checkpoints import load_model_config, load_stack
from dynamics.stacks import unstack_tree

TUTORIALS = Path(__file__).resolve().parents[1] / "docs" / "tutorials"


def tutorial(name: str) -> dict:
    """The tutorial's globals, as `python docs/tutorials/NAME.py` would define them (main not run)."""
    return runpy.run_path(str(TUTORIALS / f"{name}.py"), run_name="tutorial")


def test_every_tutorial_is_tested_and_shown_on_the_site():
    scripts = sorted(p.stem for p in TUTORIALS.glob("*.py"))
    assert scripts == ["import_and_study", "own_analysis", "sweep_and_compare"]
    pages = (TUTORIALS / "index.md").read_text() + "".join(p.read_text() for p in TUTORIALS.glob("*.md"))
    for name in scripts:
        assert f"docs/tutorials/{name}.py" in pages, f"no page shows {name}.py"


def test_own_analysis_equals_a_plain_loop(micro_run, tmp_path):
    steps, out = tutorial("own_analysis")["main"]([str(micro_run), "--out", str(tmp_path)])
    assert len(steps) == 8
    # the final checkpoint compared with itself: CKA is exactly 1 at every layer
    np.testing.assert_allclose(out["cka_L"][-1], 1.0, atol=1e-4)
    assert np.all(out["cka_L"][0] < 0.99)  # an untrained network is not the trained one
    # the loss column: a loop of models.apply over checkpoints, no map_stack
    from dynamics.run_tokenizer import load_tokenizer
    from experiments.studies.run_inputs import own_corpus

    config = load_model_config(micro_run)
    S = min(config.context, 32)
    ids = load_tokenizer(micro_run).encode(own_corpus(micro_run).val_text)[: 16 * S]
    tokens = ids[: len(ids) // S * S].reshape(-1, S)
    _, stacked = load_stack(micro_run)
    for c in (0, len(steps) - 1):
        logits, _ = models.apply(unstack_tree(stacked, c), tokens, config)
        logp = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float64)[:, :-1], -1))
        nll = -np.take_along_axis(logp, tokens[:, 1:, None], -1).mean()
        np.testing.assert_allclose(out["loss"][c], nll, rtol=1e-4)
    assert out["loss"][-1] < out["loss"][0]


def test_import_and_study(tmp_path):
    rows, probe = tutorial("import_and_study")["main"](["--out", str(tmp_path)])
    steps, _ = load_stack(tmp_path / "suite")
    assert list(steps) == [0, 100, 200]
    assert [r["step"] for r in rows] == [0, 100, 200] and all(np.isfinite(r["loss"]) for r in rows)
    assert probe["steps"] == [0, 100, 200] and probe["probes_converged"] == probe["probes_total"]
    labels = [json.loads(line) for line in (tmp_path / "questions.jsonl").read_text().splitlines()]
    assert {row["label"] for row in labels} == {"question", "statement"}
    assert not any(row["text"].endswith(("?", ".")) for row in labels)  # the answer is not in the text
    assert (tmp_path / "report.html").stat().st_size > 0


def test_sweep_and_compare(tmp_path):
    points, moved = tutorial("sweep_and_compare")["main"](["--out", str(tmp_path)])
    assert [p["status"] for p in points] == ["ok"] * 3
    for p in points:  # each point's table row is its own run folder's summary
        summary = json.loads((tmp_path / p["folder"] / "summary.json").read_text())
        assert p["val_loss"] == pytest.approx(summary["val_loss"])
    finals = [moved[lr][-1] for lr in ("1e-3", "3e-3", "1e-2")]
    assert all(moved[lr][0] == 0 for lr in moved)            # step 0 is the initialisation itself
    assert finals[0] < finals[1] < finals[2]                  # a larger step size moves the weights further
