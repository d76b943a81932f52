"""Schedules as pure functions of the step, so resuming needs nothing but the step number."""

from __future__ import annotations

import math


def cosine_schedule(step: int, total_steps: int, peak: float, final: float, warmup_steps: int = 0) -> float:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine from ``peak`` down to ``final``.

    The schedule used by MAE and DINOv2 for the learning rate (and, without warm-up, weight decay and
    teacher momentum). ``step`` counts optimiser steps from 0.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return final + 0.5 * (peak - final) * (1.0 + math.cos(math.pi * progress))
