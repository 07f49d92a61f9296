"""Checkpoint schedules: Pythia-style log-spaced steps, then every K, plus the final step."""
from __future__ import annotations


def checkpoint_steps(total_steps: int, log_until: int = 512, every: int = 1000) -> list[int]:
    """0, 1, 2, 4, ..., up to `log_until`; then every `every` steps; always the final step.

    `every <= 0` turns the linear part off; `log_until < 1` keeps only step 0 from the log part.
    """
    steps = {0, total_steps}
    power = 1
    while power <= min(log_until, total_steps):
        steps.add(power)
        power *= 2
    if every > 0:
        steps.update(range(every, total_steps + 1, every))
    return sorted(s for s in steps if 0 <= s <= total_steps)
