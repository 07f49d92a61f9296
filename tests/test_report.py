import base64
import html.parser
import json
import os
import shutil

import numpy as np
import pytest

from models.errors import OntogenyError
from experiments.tools import report
from experiments.__main__ import cli


class _Collect(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.text = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def test_report_embeds_every_figure_and_the_headline_numbers(micro_run, tmp_path):
    root = tmp_path / "quick"
    shutil.copytree(micro_run, root / "pretrain")
    path = report.write_report(root)
    page = _Collect()
    page.feed(path.read_text())
    pngs = sorted((root / "pretrain" / "figures").glob("*.png"))
    assert len(page.images) == len(pngs) >= 1
    for src, png in zip(page.images, pngs):
        assert src.startswith("data:image/png;base64,")  # self-contained: no file links
        assert base64.b64decode(src.split(",", 1)[1]) == png.read_bytes()
    text = " ".join(page.text)
    assert "val_loss" in text and "saving 8 checkpoints" in text
    page_html = path.read_text()
    # findings first (with the val loss interval), then figures, raw keys folded in <details>
    findings_at, figure_at, details_at = (page_html.index(m) for m in ('<ul class="findings">', "<figure>", "<details>"))
    assert findings_at < figure_at < details_at and page_html.index("<td>val_loss</td>") > details_at
    summary = json.loads((root / "pretrain" / "summary.json").read_text())
    lo, hi = summary["val_loss_ci"]
    assert lo <= summary["val_loss"] <= hi and hi - lo < 0.5
    assert f"{summary['val_loss']:.3f} [{lo:.3f}, {hi:.3f}]" in text


def test_report_on_an_empty_folder_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(OntogenyError, match="holds no finished run"):
        report.write_report(tmp_path)
    assert cli(["report", str(tmp_path)]) == 2
    assert "holds no finished run" in capsys.readouterr().err


def test_nonwhite_pixels_of_an_embedded_png(tmp_path):
    import matplotlib.pyplot as plt

    from experiments.tools.render_check import nonwhite_pixels

    image = np.ones((100, 1800, 3))
    image[10:30, 100:300] = [0.1, 0.3, 0.8]                  # 20 x 200 coloured pixels
    plt.imsave(tmp_path / "a.png", image)
    assert report.FIGURE_WIDTH_PX == 900
    assert nonwhite_pixels((tmp_path / "a.png").read_bytes()) == pytest.approx(4000 * 0.25)  # shown at half size


@pytest.mark.skipif(shutil.which("chromium") is None and not os.environ.get("CHROMIUM"),
                    reason="headless Chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(micro_run, tmp_path):
    from experiments.tools.render_check import check

    run = tmp_path / "run"
    shutil.copytree(micro_run, run)
    report.write_report(run)
    result = check(run)
    assert result["ok"] and result["figures_in_html"] >= 1 and (run / "report.png").stat().st_size > 10_000
    assert result["figure_pixels_drawn"] > 0.5 * result["figure_pixels_expected"] > 0
    broken = (run / "report.html").read_text().replace("base64,", "base64,AAAA", 1)   # one undecodable figure
    (run / "report.html").write_text(broken)
    again = check(run)
    assert not again["ok"] and again["figures_undecodable"] == 1 and again["figure_pixels_drawn"] < result["figure_pixels_drawn"]


def _run(root, experiment, summary):
    run = root / experiment
    (run / "figures").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"experiment": experiment}))
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_report_leads_with_each_studys_findings_from_the_registry(tmp_path):
    """Sections follow the registry's order; each opens with its module's `findings`; a summary
    that lacks what `findings` reads says so instead of failing the page."""
    from experiments.cli import registry
    _run(tmp_path, "cognition", COGNITION)
    _run(tmp_path, "waves", {"value": 6})
    page = report.render(tmp_path)
    for line in registry.findings("cognition", COGNITION):
        assert html.escape(line) in page
    assert page.index("Findings") < page.index('<section id="run0"><h2>cognition') < page.index("<h2>waves")
    assert "No findings: this summary lacks" in page and "KeyError" in page
    assert page.count("<details>") == 2


def test_save_raises_every_text_to_a_legible_size(tmp_path):
    """At the report's width a figure W inches wide shrinks by 900 / (110 W): a 5 pt tick label
    of a 16-inch figure would be 3.6 px tall, a 40 pt title of a 4-inch one 125 px. After
    `save` every text is 12.5 to 24 px there."""
    from experiments import plots

    for width in (4.0, 16.0):
        fig, ax = plots.plt.subplots(figsize=(width, 3))
        ax.plot([0, 1], [0, 1], label="a line")
        ax.set_xticks([0, 1], ["zero", "one"], fontsize=5)
        ax.set_title("title", fontsize=40)
        ax.legend(fontsize=4)
        texts = [t for t in fig.findobj(plots.matplotlib.text.Text) if t.get_text()]
        plots.save(fig, tmp_path / f"f{width}.png")
        shown_px = lambda t: t.get_fontsize() / 72 * plots.DPI * report.FIGURE_WIDTH_PX / (width * plots.DPI)
        assert 12.5 - 1e-9 <= min(shown_px(t) for t in texts) and max(shown_px(t) for t in texts) <= 24 + 1e-9
        assert (tmp_path / f"f{width}.png").exists()


# ----------------------------------------------------------------- findings on made-up summaries
COGNITION = {"chance": 0.25, "n_test_questions": 48, "n_checkpoints": 20,
             "cognitive_pretrain": 0.46, "cognitive_pretrain_ci": [0.33, 0.60],
             "expressive_pretrain": 0.0, "expressive_pretrain_ci": [0.0, 0.074],
             "cognitive_minus_expressive_pretrain": 0.46, "cognitive_minus_expressive_pretrain_ci": [0.31, 0.60],
             "expressive_sft": 0.5, "expressive_sft_ci": [0.36, 0.64], "expressive_rl": 0.46,
             "expressive_rl_ci": [0.33, 0.60], "expressive_rl_minus_pretrain": 0.46,
             "expressive_rl_minus_pretrain_ci": [0.31, 0.60], "expressive_rl_minus_sft": -0.04,
             "expressive_rl_minus_sft_ci": [-0.19, 0.10], "pearson_r": 0.79, "pearson_r_ci": [0.55, 0.91],
             "spearman_rho": 0.86, "spearman_rho_ci": [0.6, 0.95]}


def _one(lines, needle):
    hits = [line for line in lines if needle in line]
    assert hits, (needle, lines)
    return hits[0]


def test_cognition_findings_claim_only_what_the_intervals_support():
    from experiments.studies.cognition import study as cognition

    lines = cognition.findings(COGNITION)
    assert 1 <= len(lines) <= 3
    first = _one(lines, "After pretraining")
    assert "0.46 [0.33, 0.60]" in first and "0.00 [0.00, 0.07]" in first and "cognition precedes expression" in first
    assert "RL did not measurably change it" in _one(lines, "after RL")    # -0.04 [-0.19, 0.10]
    assert "they rise together" in _one(lines, "Pearson")
    weak = {**COGNITION, "cognitive_minus_expressive_pretrain": 0.06, "cognitive_minus_expressive_pretrain_ci": [-0.04, 0.17],
            "pearson_r_ci": [-0.2, 0.6]}
    lines = cognition.findings(weak)
    first = _one(lines, "After pretraining")
    assert "precedes" not in first and "no gap between cognition and expression is shown" in first
    assert "no correlation is shown" in _one(lines, "Pearson")
    bare = {k: v for k, v in COGNITION.items() if not k.endswith("_ci")}   # an old summary: numbers, no intervals
    assert "(no interval)" in cognition.findings(bare)[0]
    flat = {**COGNITION, "pearson_r": float("nan"), "pearson_r_ci": None}   # expression never moved
    assert "undefined" in cognition.findings(flat)[-1] and "nan" not in cognition.findings(flat)[-1]
    assert "undefined" in cognition.findings({**flat, "pearson_r": None})[-1]   # as JSON stores NaN


def test_crosscoders_findings_say_when_ablation_does_not_beat_random():
    from experiments.studies.crosscoders import study as crosscoders

    s = {"arch": "jumprelu", "n_features": 512, "n_snapshots": 16, "explained_variance_min": 0.96,
         "explained_variance_min_ci": [0.955, 0.965], "l0_mean": 15.2, "l0_mean_ci": [14.8, 15.6], "n_eval_windows": 128,
         "dead_fraction": 0.033, "dead_fraction_ci": [0.02, 0.05], "ablation_drop_top": 0.124,
         "ablation_drop_top_ci": [0.09, 0.16], "ablation_drop_random": -0.022, "ablation_drop_random_ci": [-0.04, 0.0],
         "ablation_top_minus_random": 0.146, "ablation_top_minus_random_ci": [0.11, 0.18], "n_ablation_sequences": 32,
         "median_emergence_step": 0.0, "median_emergence_step_ci": [0.0, 0.0], "complexity_spearman_r": 0.48,
         "complexity_spearman_r_ci": [0.38, 0.57], "complexity_n_features": 300}
    lines = crosscoders.findings(s)
    assert "hurts induction more than random ones" in _one(lines, "ablating")
    assert "later features are more complex" in _one(lines, "Spearman")
    lines = crosscoders.findings({**s, "ablation_top_minus_random_ci": [-0.01, 0.2], "complexity_spearman_r_ci": [-0.1, 0.3]})
    assert "not shown" in _one(lines, "ablating") and "hurts" not in _one(lines, "ablating")
    assert "no relation between complexity and emergence is shown" in _one(lines, "Spearman")


def test_neuromfa_findings_compare_emergence_with_the_control():
    from experiments.studies.neuromfa import study as neuromfa

    s = {"largest_model": "d128", "largest_n_params": 400_000, "n_network_samples": 4,
         "alpha0_first": 1.595, "alpha0_first_ci": [1.55, 1.64], "alpha0_last": 0.876, "alpha0_last_ci": [0.85, 0.9],
         "alpha0_change_ci": [-0.76, -0.68], "width_first": 0.788, "width_first_ci": [0.75, 0.82],
         "width_last": 0.814, "width_last_ci": [0.78, 0.85], "width_change_ci": [-0.02, 0.07],
         "emergence_last": 0.619, "emergence_last_ci": [0.58, 0.66], "emergence_control_last": 0.533,
         "emergence_control_last_ci": [0.5, 0.56], "emergence_minus_control_last": 0.086,
         "emergence_minus_control_last_ci": [0.03, 0.14], "spearman_emergence_vs_val_loss": -0.9,
         "spearman_emergence_vs_val_loss_ci": [-0.97, -0.8]}
    lines = neuromfa.findings(s)
    assert "it fell" in lines[0] and "the change is within the noise" in lines[0]   # width change includes 0
    assert "E exceeds the control by 0.086 [0.030, 0.140]" in _one(lines, "Degree of emergence")
    assert "E rises as validation loss falls" in _one(lines, "Spearman")
    lines = neuromfa.findings({**s, "emergence_minus_control_last_ci": [-0.02, 0.19]})
    assert "does not exclude 0" in _one(lines, "Degree of emergence") and "exceeds" not in _one(lines, "Degree")


def test_waves_and_pretrain_findings():
    from experiments.studies.pretrain import study as pretrain
    from experiments.studies.waves import study as waves

    s = {"n_passages": 4, "n_spelling_samples": 200, "coherence_first": 0.156, "coherence_first_ci": [0.14, 0.17],
         "coherence_last": 0.217, "coherence_last_ci": [0.2, 0.23], "coherence_change": 0.061,
         "coherence_change_ci": [0.04, 0.08], "fraction_correct_first": 0.34, "fraction_correct_first_ci": [0.3, 0.38],
         "fraction_correct_last": 0.58, "fraction_correct_last_ci": [0.54, 0.62], "fraction_correct_change": 0.24,
         "fraction_correct_change_ci": [-0.01, 0.3], "q_correct_last": -0.288, "q_correct_last_ci": [-0.35, -0.22],
         "q_correct_baseline_last": -0.443, "q_correct_excess_last": 0.155, "q_correct_excess_last_ci": [0.08, 0.23],
         "claim_survives_baseline": False}
    lines = waves.findings(s)
    assert "it rose (+0.061 [+0.040, +0.080])" in _one(lines, "coherence")
    assert "no change is shown" in _one(lines, "spelled") and "rose" not in _one(lines, "spelled")
    assert "does not survive the baseline" in _one(lines, "Mandel")
    p = {"n_params": 812_000, "steps": 1300, "val_loss": 1.898, "val_loss_ci": [1.87, 1.93], "n_checkpoints": 24,
         "vocab_size": 84, "n_val_windows": 64}
    assert "1.898 [1.870, 1.930] nats/char" in pretrain.findings(p)[0] and "64 held-out windows" in pretrain.findings(p)[1]
