"""Shared matplotlib helpers (Agg backend: figures are files, no display needed).

Legibility: the report shows every figure at `SHOWN_WIDTH_PX` (its FIGURE_WIDTH_PX), whatever
its size in inches, so a text of s points in a figure W inches wide appears s * SHOWN_WIDTH_PX
/ (72 W) pixels tall. `save` clamps every text (titles, labels, ticks, legends, colorbars) to
[MIN_SHOWN_PX, MAX_SHOWN_PX] at that width, so wide figures get larger fonts and narrow ones
smaller; rcParams set the sizes of everything drawn without an explicit one.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.text  # noqa: E402

SHOWN_WIDTH_PX = 900     # = experiments.tools.report.FIGURE_WIDTH_PX (kept here: models <- ... <- report)
MIN_SHOWN_PX = 12.5      # smallest text height, in screen pixels, when shown that wide
MAX_SHOWN_PX = 24.0      # largest: a narrow figure scaled up to that width would shout
DPI = 110
plt.rcParams.update({"font.size": 12, "axes.titlesize": 13, "axes.labelsize": 12, "xtick.labelsize": 11,
                     "ytick.labelsize": 11, "legend.fontsize": 11, "figure.titlesize": 14,
                     "legend.title_fontsize": 11})


def font_pt(fig, shown_px: float) -> float:
    """The font size (points) that shows `shown_px` tall when `fig` is SHOWN_WIDTH_PX wide."""
    return shown_px * 72.0 * fig.get_figwidth() / SHOWN_WIDTH_PX


def enforce_legible(fig) -> None:
    """Clamp every text of the figure to [MIN_SHOWN_PX, MAX_SHOWN_PX] as shown in the report."""
    lo, hi = font_pt(fig, MIN_SHOWN_PX), font_pt(fig, MAX_SHOWN_PX)
    for text in fig.findobj(matplotlib.text.Text):
        size = text.get_fontsize()
        if not lo <= size <= hi:
            text.set_fontsize(min(max(size, lo), hi))


def save(fig, path, tight: bool = True) -> None:
    from dynamics import distributed, faults

    try:
        if distributed.is_primary():  # one writer in a multi-process job
            enforce_legible(fig)
            if tight:
                fig.tight_layout()
            with faults.atomic_path(path) as tmp:  # a full disk leaves no half-written figure
                fig.savefig(tmp, dpi=DPI, format=Path(path).suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)


def loss_curve(records: list[dict], path, title: str = "training") -> None:
    """Train loss (per logged step) and validation loss (at evaluations) against step, per stage."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    offset = 0
    for stage in dict.fromkeys(r.get("stage", "") for r in records):
        rows = [r for r in records if r.get("stage", "") == stage]
        train = [(r["step"] + offset, r["loss"]) for r in rows if r.get("loss") is not None]
        val = [(r["step"] + offset, r["val_loss"]) for r in rows if r.get("val_loss") is not None]
        if train:
            ax.plot(*zip(*train), lw=1, label=f"{stage} train")
        if val:
            ax.plot(*zip(*val), "o-", ms=3, label=f"{stage} val")
        offset += max((r["step"] for r in rows), default=0)
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    save(fig, path)
