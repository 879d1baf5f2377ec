"""Learning-rate schedules: multipliers of the peak LR as a function of the step."""

from __future__ import annotations

import math


def cosine_decay(progress: float, min_ratio: float) -> float:
    """1 at ``progress`` 0, falling along a half cosine to ``min_ratio`` at 1 (and after)."""
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def cosine_lr(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return cosine_decay((step - warmup) / max(1, total - warmup), min_ratio)


WSD_DECAY_FRACTION = 0.2


def wsd_lr(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """Warm-up, stable, decay: linear warm-up to 1, constant, then a linear decay to
    ``min_ratio`` over the last 20% of ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    decay_start = max(warmup, total - round(WSD_DECAY_FRACTION * total))
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start) / max(1, total - decay_start))
    return 1.0 - (1.0 - min_ratio) * progress


SCHEDULES = {"cosine": cosine_lr, "wsd": wsd_lr}
