"""`python -m experiments render-check DIR`: does DIR/report.html render in headless Chromium?

Takes a full-page screenshot of the report with Chromium (`$CHROMIUM`, else `chromium`,
`chromium-browser` or `google-chrome` on the PATH; on Debian: `apt-get install chromium`),
offline (network features off, a fresh profile), and checks what the figures drew (see
`check`). Writes DIR/report.png and exits 0 when the page rendered, 1 when it did not, 2 when
there is no Chromium or no report.
"""
from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from models.errors import OntogenyError
from experiments.cli.config import ArgumentParser

DESCRIPTION = "screenshot DIR/report.html in headless Chromium and check that its figures rendered"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def find_chromium() -> str:
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        path = candidate and shutil.which(candidate)
        if path:
            return path
    raise OntogenyError("no Chromium found: install it (Debian: apt-get install chromium) or set CHROMIUM=/path/to/it")


def screenshot(html: Path, png: Path, width: int = 1200, height: int = 8000) -> np.ndarray:
    """RGB screenshot [H, W, 3] of the page (Chromium's --screenshot of a tall window)."""
    chromium = find_chromium()
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                               f"--screenshot={png}", html.resolve().as_uri()],
                              capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or not png.exists():
        raise OntogenyError(f"Chromium failed to render {html} (exit {proc.returncode}): "
                            f"{(proc.stderr.strip().splitlines() or ['no output'])[-1][:200]}")
    import matplotlib.image

    return (matplotlib.image.imread(png)[..., :3] * 255).astype(np.uint8)


def _image(png_bytes: bytes) -> np.ndarray:
    import io

    import matplotlib.image

    return matplotlib.image.imread(io.BytesIO(png_bytes))[..., :3]


def nonwhite_pixels(png_bytes: bytes, width: int | None = None) -> float:
    """Pixels of a PNG that differ from white, at the size the report displays it (every
    figure scaled to `width`, the report's FIGURE_WIDTH_PX)."""
    from experiments.tools.report import FIGURE_WIDTH_PX

    image = _image(png_bytes)
    scale = (width or FIGURE_WIDTH_PX) / image.shape[1]
    return float((image < 0.96).any(-1).sum()) * scale ** 2


def shown_height(png_bytes: bytes) -> int:
    """Height in CSS pixels of a figure shown at the report's width (0 if undecodable)."""
    from experiments.tools.report import FIGURE_WIDTH_PX

    try:
        h, w = _image(png_bytes).shape[:2]
    except Exception:
        return 0
    return int(np.ceil(h * FIGURE_WIDTH_PX / w))


def check(directory: Path) -> dict:
    """Screenshot the page twice, as is and with its images hidden (same layout): the pixels that
    differ are what the figures drew. It rendered if they cover at least half the non-white
    pixels the embedded PNGs hold (a broken image draws almost nothing)."""
    html = directory / "report.html"
    if not html.exists():
        raise OntogenyError(f"{html} does not exist; run `python -m experiments report {directory}` first")
    text = html.read_text()
    pngs = [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', text)]
    n_sections = len(re.findall(r"<section[ >]", text))
    height = min(32000, 1500 + 600 * n_sections + sum(shown_height(p) + 60 for p in pngs))  # taller than the page
    shown = screenshot(html, directory / "report.png", height=height)
    hidden_html = directory / ".report_hidden.html"
    hidden_png = directory / ".report_hidden.png"
    try:
        hidden_html.write_text(text.replace("</style>", "img{visibility:hidden}</style>", 1))
        hidden = screenshot(hidden_html, hidden_png, height=height)
    finally:
        hidden_html.unlink(missing_ok=True)
        hidden_png.unlink(missing_ok=True)
    drawn = float((shown != hidden).any(-1).sum())
    expected, undecodable = 0.0, 0
    for png in pngs:
        try:
            expected += nonwhite_pixels(png)
        except Exception:  # an image the page cannot show either
            undecodable += 1
    rows = np.flatnonzero((shown < 250).any(-1).any(-1))
    page_height = int(rows.max() + 1) if rows.size else 0
    ok = page_height > 200 and not undecodable and (drawn >= 0.5 * expected if pngs else True)
    return {"figures_in_html": len(pngs), "figures_undecodable": undecodable, "figure_pixels_drawn": int(drawn), "figure_pixels_expected": int(expected),
            "page_height_px": page_height, "ok": bool(ok)}


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="python -m experiments render-check", description=DESCRIPTION)
    parser.add_argument("dir", help="the folder holding report.html")
    args = parser.parse_args(argv)
    result = check(Path(args.dir))
    print(f"report.html: {result['figures_in_html']} figures embedded; they drew {result['figure_pixels_drawn']:,} "
          f"pixels of the {result['figure_pixels_expected']:,} expected; page {result['page_height_px']} px tall: "
          f"{'renders' if result['ok'] else 'DID NOT RENDER'}")
    return 0 if result["ok"] else 1
