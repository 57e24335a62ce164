"""Learning-rate schedules: a table of functions of the run's progress, and the warm-up before them.

Each schedule maps ``t``, the fraction of the post-warm-up optimizer steps done (0 to 1), to a
multiplier of the peak learning rate. Adding a schedule is one entry in :data:`SCHEDULES`; the
configuration, the command line (``--schedule``) and the loop take their choices from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def cosine(t: float) -> float:
    """Half a cosine from 1 to 0 (Loshchilov and Hutter 2017, without restarts)."""
    return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def step(t: float) -> float:
    """x0.1 at 50% and 75%, as He et al. at 32k and 48k of 64k iterations."""
    return 0.1 ** ((t >= 0.5) + (t >= 0.75))


def onecycle(t: float, ramp: float = 0.25) -> float:
    """A linear ramp from lr/25 over the first quarter, then cosine down to about 0 (Smith's one-cycle)."""
    if t < ramp:
        return 0.04 + 0.96 * t / ramp
    return cosine((t - ramp) / (1 - ramp))


def constant(t: float) -> float:
    return 1.0


SCHEDULES: dict[str, Callable[[float], float]] = {"cosine": cosine, "step": step, "onecycle": onecycle,
                                                  "constant": constant}


def lr_factor(schedule: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """The learning-rate multiplier at each optimizer step: a linear warm-up from lr/10, then ``schedule``.

    Args:
        schedule: A name in :data:`SCHEDULES`.
        warmup_steps: Optimizer steps of warm-up.
        total_steps: Optimizer steps of the whole run.
    """
    shape = SCHEDULES[schedule]

    def factor(index: int) -> float:
        if index < warmup_steps:
            return 0.1 + 0.9 * index / warmup_steps
        return shape((index - warmup_steps) / max(1, total_steps - warmup_steps))

    return factor
