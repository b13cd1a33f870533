"""Ramps of a value over training updates: the EMA decays, JOOCI's regularizer weight."""

import math


def linear_ramp(start: float, end: float, step: int, total_steps: int) -> float:
    """``start`` at step 0, linearly to ``end`` at ``total_steps``, then ``end`` (``total_steps <= 0``:
    ``end`` throughout). data2vec's ``get_annealed_rate``."""
    if total_steps <= 0 or step >= total_steps:
        return end
    return start + (end - start) * max(step, 0) / total_steps


def cosine_ramp(start: float, end: float, step: int, total_steps: int) -> float:
    """The same end points along half a cosine (DINO's teacher momentum, 0.996 -> 1)."""
    if total_steps <= 0 or step >= total_steps:
        return end
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * max(step, 0) / total_steps))
