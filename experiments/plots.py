"""Shared matplotlib helpers (Agg backend: figures are files, no display needed)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save(fig, path, tight: bool = True) -> None:
    from dynamics.runlog import _primary

    if _primary():  # one writer in a multi-process job
        if tight:
            fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)


def loss_curve(records: list[dict], path, title: str = "training") -> None:
    """Train loss (per logged step) and validation loss (at evaluations) against step, per stage."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
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
