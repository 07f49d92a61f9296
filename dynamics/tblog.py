"""TensorBoard event files beside metrics.jsonl, through the optional `tensorboardX` writer.

`mirror(folder, stage)` makes every record the run logs also a set of scalars (`STAGE/KEY` at
the record's step) in `folder/tb/`, so `tensorboard --logdir runs/` shows every run's curves.
Without tensorboardX it does nothing and says so once. On resume the writer is opened with
`purge_step` at the first step logged again, so TensorBoard drops the replayed steps, as
metrics.jsonl does.
"""
from __future__ import annotations

import math
import numbers
import sys

_NOTICE = {"shown": False}


def writer_class():
    """tensorboardX.SummaryWriter, or None (with one notice per process) when it is not installed."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        if not _NOTICE["shown"]:
            print("note: TensorBoard event files are off (pip install tensorboardX, or the [tensorboard] extra); "
                  "metrics.jsonl is written as always", file=sys.stderr)
            _NOTICE["shown"] = True
        return None
    return SummaryWriter


def scalars(record: dict) -> dict[str, float]:
    """The finite numbers of a metrics record, except its step."""
    return {k: float(v) for k, v in record.items() if k != "step" and isinstance(v, numbers.Real)
            and not isinstance(v, bool) and math.isfinite(float(v))}


def mirror(folder, stage: str):
    """Tee `folder.log` into TensorBoard events under folder/tb. Returns `close()` (it drains the
    writer's queue: call it when the stage ends), or None when no writer is installed."""
    from dynamics import distributed, faults

    if not distributed.is_primary():  # process 0 writes the run folder
        return None
    SummaryWriter = writer_class()
    if SummaryWriter is None:
        return None
    log, state = folder.log, {}

    def tee(record: dict) -> None:
        log(record)
        step = record.get("step")
        if not isinstance(step, int) or record.get("stage", stage) != stage:
            return
        if "writer" not in state:  # opened at the first step logged, which is where a resume restarts
            state["writer"] = SummaryWriter(str(folder.root / "tb"), purge_step=step, flush_secs=10)
        for key, value in scalars(record).items():
            state["writer"].add_scalar(f"{stage}/{key}", value, step)

    def close() -> None:
        folder.log = log
        if "writer" in state:
            writer = state.pop("writer")
            try:
                with faults.guarded(folder.root / "tb"):
                    writer.close()
            except BaseException:
                _abandon(writer)
                raise

    folder.log = tee
    return close


def _abandon(writer) -> None:
    """Mark a writer that failed to close (a full disk) as closed, so that tensorboardX's own exit
    hook does not try to flush it again and print a traceback after the one-line error."""
    for file_writer in (getattr(writer, "all_writers", None) or {}).values():
        event_writer = getattr(file_writer, "event_writer", None)
        if event_writer is not None:
            event_writer._closed = True
