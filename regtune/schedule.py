"""Learning-rate schedules over a run's progress, for step and wall-clock budgets alike.

progress = max(steps done / (epochs x steps_per_epoch), seconds spent / (max_minutes x 60)),
so a run bounded by ``--max-minutes`` anneals to the end of its time, and one bounded by
its epochs anneals to its last step, whichever comes first (``train.epochs: 0``: no epoch
limit, the time budget alone).
"""

from __future__ import annotations

import math

from .config import TrainConfig


def progress(t: TrainConfig, step: int, seconds: float) -> float:
    p = step / float(t.epochs * t.steps_per_epoch) if t.epochs else 0.0  # epochs 0: the time budget alone
    if t.max_minutes > 0:
        p = max(p, seconds / (60.0 * t.max_minutes))
    return min(1.0, max(0.0, p))


def lr_factor(t: TrainConfig, p: float) -> float:
    """Multiplier of ``train.lr`` at progress ``p`` in [0, 1]."""
    if t.schedule == "constant":
        return 1.0
    w = t.warmup
    if t.schedule in ("cosine", "wsd") and p < w:  # both warm up linearly
        return max(p / w, 1e-3)
    if t.schedule == "wsd":
        return 1.0 if p <= 1.0 - t.decay else max(0.0, (1.0 - p) / t.decay)
    if t.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (p - w) / (1.0 - w)))
    # onecycle: lr/25 -> lr over the warm-up (cosine), then cosine down to lr/1e4
    start, end = 1.0 / 25.0, 1e-4
    if p < w:
        return start + (1.0 - start) * 0.5 * (1.0 - math.cos(math.pi * p / w))
    return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * (p - w) / (1.0 - w)))
