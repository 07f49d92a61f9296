"""`python -m experiments report DIR`: one self-contained HTML page for a folder of study runs.

DIR holds one run folder per study (as `quickstart` writes them: DIR/pretrain, DIR/waves, ...),
or is itself one run folder. For each run the page shows the headline numbers of its
summary.json, a sentence on what the study shows (from the numbers, not canned), and its
figures embedded as base64 PNGs, so the page reads offline from a single file.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from dynamics.errors import OntogenyError
from experiments.config import ArgumentParser

DESCRIPTION = "write DIR/report.html: every study's headline numbers and figures on one offline page"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value[:8]) + (", ..." if len(value) > 8 else "") + "]"
    return html.escape(str(value))


def _sentence(experiment: str, s: dict) -> str:
    """What the run shows, in one sentence built from its own numbers."""
    try:
        if experiment == "pretrain":
            return (f"A {s['n_params']:,}-parameter GPT trained for {s['steps']} steps reached validation loss "
                    f"{s['val_loss']:.3f} nats/char on held-out plays, saving {s['n_checkpoints']} checkpoints.")
        if experiment == "linear-origins":
            return (f"Within-concept cosine {s['within_concept_cos_mean']:.3f} against cross-concept |cos| "
                    f"{s['cross_concept_abs_cos_mean']:.3f}: {s['predictions_passed']} of {s['predictions_total']} "
                    f"predictions of the theory hold.")
        if experiment == "neuromfa":
            return (f"alpha0 went {s['alpha0_first']:.3f} -> {s['alpha0_last']:.3f} and spectrum width "
                    f"{s['width_first']:.3f} -> {s['width_last']:.3f}; degree of emergence {s['emergence_last']:.3f} "
                    f"against {s['emergence_control_last']:.3f} for the Gaussian control.")
        if experiment == "waves":
            return (f"Channel coherence {s['coherence_first']:.3f} -> {s['coherence_last']:.3f}; fraction of correct "
                    f"words {s['fraction_correct_first']:.2f} -> {s['fraction_correct_last']:.2f}; the sub-Poisson "
                    f"claim {'survives' if s['claim_survives_baseline'] else 'does not survive'} the binomial baseline.")
        if experiment == "cognition":
            return (f"Cognitive {s['cognitive_pretrain']:.2f} vs expressive {s['expressive_pretrain']:.2f} after "
                    f"pretraining; expressive {s['expressive_sft']:.2f} after SFT and {s['expressive_rl']:.2f} after RL "
                    f"(chance {s['chance']:.2f}); Pearson r = {s['pearson_r']:.2f}.")
        if experiment == "crosscoders":
            return (f"Explained variance >= {s['explained_variance_min']:.3f} on every snapshot at L0 {s['l0_mean']:.1f}; "
                    f"median emergence step {s['median_emergence_step']}; ablating top features drops the metric by "
                    f"{s['ablation_drop_top']:.3f} against {s['ablation_drop_random']:.3f} for random ones.")
    except (KeyError, TypeError, ValueError):
        pass
    return ""


def find_runs(root: Path) -> list[Path]:
    """Run folders under root (those with a summary.json), root itself first if it is one."""
    runs = [root] if (root / "summary.json").exists() else []
    runs += sorted(p.parent for p in root.glob("*/summary.json"))
    return runs


def render(root: Path) -> str:
    runs = find_runs(root)
    if not runs:
        raise OntogenyError(f"{root} holds no finished run (no summary.json in it or its sub-folders); "
                            f"run a study or `python -m experiments quickstart --out {root}` first")
    sections = []
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        config_path = run / "config.json"
        experiment = json.loads(config_path.read_text()).get("experiment", run.name) if config_path.exists() else run.name
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in summary.items()
                       if not isinstance(v, dict))
        figures = "".join(
            f'<figure><img alt="{html.escape(png.stem)}" src="data:image/png;base64,'
            f'{base64.b64encode(png.read_bytes()).decode()}"><figcaption>{html.escape(png.stem)}</figcaption></figure>'
            for png in sorted((run / "figures").glob("*.png")))
        sections.append(f"<section><h2>{html.escape(experiment)} <small>{html.escape(run.name)}</small></h2>"
                        f"<p>{html.escape(_sentence(experiment, summary))}</p><table>{rows}</table>{figures}</section>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td{border:1px solid #ccc;padding:2px 8px;font-size:13px}"
             "figure{display:inline-block;margin:6px}img{max-width:520px}figcaption{font-size:12px;color:#555}"
             "small{color:#888;font-weight:normal}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Ontogeny report</title><style>{style}</style>"
            f"</head><body><h1>Ontogeny report</h1><p>{len(runs)} run(s) in {html.escape(str(root))}</p>"
            f"{''.join(sections)}</body></html>")


def write_report(root) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise OntogenyError(f"{root} is not a folder; give the folder a study or quickstart wrote")
    path = root / "report.html"
    from dynamics.runlog import _primary

    if _primary():  # one writer in a multi-process job
        path.write_text(render(root))
    return path


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="python -m experiments report", description=DESCRIPTION)
    parser.add_argument("dir", help="a run folder, or a folder of run folders")
    args = parser.parse_args(argv)
    path = write_report(args.dir)
    print(f"wrote {path}")
    return 0
