"""`python -m experiments report DIR`: one self-contained HTML page for a folder of study runs.

DIR holds one run folder per study (as `quickstart` writes them: DIR/pretrain, DIR/waves, ...),
or is itself one run folder. The page opens with every run's findings (its study module's
`findings(summary)`, found through the registry: sentences with intervals and verdicts); then
each run's section shows its figures at page width (`FIGURE_WIDTH_PX`), embedded as base64
PNGs so the page reads offline from a single file, and every raw summary key folded away in a
<details> block.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from dynamics import distributed
from models.errors import OntogenyError
from experiments import plots
from experiments.cli import registry
from experiments.cli.config import ArgumentParser

DESCRIPTION = "write DIR/report.html: every study's findings, figures and headline numbers on one offline page"
FIGURE_WIDTH_PX = plots.SHOWN_WIDTH_PX   # figures are shown this wide; plots.py sizes fonts for it


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value[:8]) + (", ..." if len(value) > 8 else "") + "]"
    if isinstance(value, dict):
        text = json.dumps(value, default=str)
        return html.escape(text[:300] + (" ..." if len(text) > 300 else ""))
    return html.escape(str(value))


def findings_html(experiment: str, summary: dict) -> str:
    """The study's findings as a list; a summary the study cannot read says so instead."""
    try:
        lines = registry.findings(experiment, summary)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        return (f'<p class="warn">No findings: this summary lacks what `{html.escape(experiment)}.findings` '
                f"reads ({html.escape(type(e).__name__)}: {html.escape(str(e))}); rerun the study.</p>")
    if not lines:
        return '<p class="warn">This study states no findings; see its numbers below.</p>'
    return '<ul class="findings">' + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>"


def find_runs(root: Path) -> list[Path]:
    """Run folders under root (those with a summary.json), root itself first if it is one."""
    runs = [root] if (root / "summary.json").exists() else []
    runs += sorted(p.parent for p in root.glob("*/summary.json"))
    return runs


def _experiment(run: Path) -> str:
    config_path = run / "config.json"
    return json.loads(config_path.read_text()).get("experiment", run.name) if config_path.exists() else run.name


def _anchor(i: int) -> str:
    return f"run{i}"


def overview(runs: list[Path]) -> str:
    """What the page opens with: every run's findings, each linked to its section."""
    items = []
    for i, run in enumerate(runs):
        experiment = _experiment(run)
        summary = json.loads((run / "summary.json").read_text())
        items.append(f'<h3><a href="#{_anchor(i)}">{html.escape(experiment)}</a> <small>{html.escape(run.name)}</small>'
                     f"</h3>{findings_html(experiment, summary)}")
    return f"<h2>Findings</h2>{''.join(items)}"


def section(run: Path, i: int = 0) -> str:
    """One run: heading, figures at page width, raw summary keys folded away."""
    summary = json.loads((run / "summary.json").read_text())
    experiment = _experiment(run)
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in summary.items())
    figures = "".join(
        f'<figure><img alt="{html.escape(png.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(png.read_bytes()).decode()}"><figcaption>{html.escape(png.stem)}</figcaption></figure>'
        for png in sorted((run / "figures").glob("*.png")))
    return (f'<section id="{_anchor(i)}"><h2>{html.escape(experiment)} <small>{html.escape(run.name)}</small></h2>'
            f"{figures}"
            f"<details><summary>all {len(summary)} summary keys</summary><table>{rows}</table></details></section>")


def render(root: Path) -> str:
    runs = find_runs(root)
    if not runs:
        raise OntogenyError(f"{root} holds no finished run (no summary.json in it or its sub-folders); "
                            f"run a study or `python -m experiments quickstart --out {root}` first")
    order = list(registry.ENTRIES)   # sections in registry order
    runs.sort(key=lambda r: (order.index(_experiment(r)) if _experiment(r) in order else len(order), str(r)))
    w = FIGURE_WIDTH_PX
    style = (f"body{{font-family:sans-serif;max-width:{w}px;margin:2em auto;padding:0 1em;color:#222;font-size:16px}}"
             "ul.findings{font-size:17px;line-height:1.45;background:#f4f7fb;padding:0.6em 1.2em 0.6em 2em}"
             ".warn{color:#a40}h3{margin:1.2em 0 0.3em}a{color:#1a4d8f}table{border-collapse:collapse;margin:1em 0}"
             "td{border:1px solid #ccc;padding:2px 8px;font-size:13px}"
             "figure{margin:1.2em 0}img{display:block;width:100%}figcaption{font-size:13px;color:#555}"
             "small{color:#888;font-weight:normal}details{margin:1em 0 2.5em}summary{cursor:pointer;color:#555}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Ontogeny report</title><style>{style}</style>"
            f"</head><body><h1>Ontogeny report</h1><p>{len(runs)} run(s) in {html.escape(str(root))}. "
            "Bracketed ranges are 95% intervals (bootstrap, Wilson or Student t) over the unit each study names.</p>"
            f"{overview(runs)}{''.join(section(run, i) for i, run in enumerate(runs))}</body></html>")


def write_report(root) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise OntogenyError(f"{root} is not a folder; give the folder a study or quickstart wrote")
    path = root / "report.html"
    if distributed.is_primary():  # one writer in a multi-process job
        path.write_text(render(root))
    return path


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="python -m experiments report", description=DESCRIPTION)
    parser.add_argument("dir", help="a run folder, or a folder of run folders")
    args = parser.parse_args(argv)
    path = write_report(args.dir)
    print(f"wrote {path}")
    return 0
