"""The ``train`` section of a :class:`~regtune.config.Config` (optimisation, budget, guards
and the one definition of "best"), validated in ``__post_init__`` like the other sections
(:mod:`regtune.config_sections`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config_sections import _check

SCHEDULES = ("constant", "cosine", "onecycle", "wsd")
BEST_METRICS = ("val_dice", "val_hd95", "val_sdlogj", "val_folding_pct", "val_loss")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, budget and divergence guards.

    epochs: epochs to train; 0 = no epoch limit, the run lasts ``max_minutes`` (what
        ``regtune train --max-minutes M`` sets unless ``train.epochs`` is given too).
    steps_per_epoch: optimiser steps between validations.
    max_minutes: wall-clock budget (0 = none); training stops when it is spent (the
        epoch in progress is cut short and validated), or at ``epochs``, whichever first.
    schedule: learning-rate schedule over the run's progress, where progress is the larger
        of (steps done / epochs x steps_per_epoch) and (time spent / max_minutes), so a
        wall-clock budget anneals to its end: ``constant``; ``cosine`` (linear warm-up over
        ``warmup`` of the run, then cosine to 0); ``onecycle`` (from lr/25 up to lr over
        ``warmup``, then cosine down to lr/1e4); ``wsd`` (warm-up, stable, decay: linear
        warm-up over ``warmup``, the full rate, then linear decay to 0 over the last
        ``decay`` of the run -- constant-rate progress until the end, then an anneal).
    warmup: fraction of the run spent warming up (cosine, onecycle, wsd; 0 = none).
    decay: fraction of the run spent decaying to 0 at its end (wsd only).
    compile: ``torch.compile`` the U-Net (pays on GPUs and for long runs; the first step
        compiles, ~20-40 s on a CPU).
    symmetric: register every pair in both directions per step: the loss is averaged over
        moving->fixed and fixed->moving (backward = exp(-v) for a diffeomorphic model, no
        extra U-Net pass; else, or with ``loss.ic_weight`` on a non-symmetric network, the
        network's own field for the swapped pair).
    grad_clip: max global gradient norm (0 = off).
    ema: decay of an exponential moving average of the weights (0 = off; 0.999, the default,
        averages over the last ~n/9 steps of an n-step run, at most ~1,000). When on, validation, ``best.pt``, ``last.pt``'s weights and
        everything downstream (evaluate, register, a study's score) use the averaged weights;
        the optimiser keeps training the raw ones (kept in ``last.pt`` for an exact resume).
        Early steps average over fewer steps (decay min(ema, (1 + step) / (10 + step))).
    amp: bf16 autocast of the training step's convolutions: ``true``, ``false`` or ``auto``
        (on for CUDA and for CPUs with native bf16 units, AVX512-BF16 or AMX, where a step
        costs ~0.7x; off on other CPUs, which emulate bf16 slowly). Validation, evaluation
        and registration always run in float32.
    rising_patience: stop as ``diverged_rising`` after this many consecutive epochs whose
        validation loss (fixed pairs) is above the best so far by more than ``rising_tolerance``
        times the gain since the first epoch (first epoch's val loss - best); 0.1 gives back
        a tenth of what training had won.
    collapse_intensity: stop as ``collapsed`` when the mean warped intensity falls below
        this fraction of the mean moving intensity.
    collapse_outside: stop as ``collapsed`` when more than this fraction of sample points
        fall outside the volume.
    best_metric / best_mode / best_folding_limit_pct / best_folding_penalty: what "best"
        means (the one definition everything uses: best.pt, a study's trial score, the
        study's best trial): score = +-best_metric - best_folding_penalty x max(0, folding
        % - best_folding_limit_pct), higher is better; see :mod:`regtune.objective`.
    """

    lr: float = 1e-3
    batch_size: int = 4
    epochs: int = 20
    steps_per_epoch: int = 100
    grad_clip: float = 10.0
    ema: float = 0.999
    amp: bool | str = False
    channels_last: bool = True
    seed: int = 0
    max_minutes: float = 0.0
    rising_patience: int = 3
    rising_tolerance: float = 0.1
    collapse_intensity: float = 0.5
    collapse_outside: float = 0.25
    threads: int = 0
    schedule: str = "constant"
    warmup: float = 0.05
    decay: float = 0.2
    symmetric: bool = False
    compile: bool = False
    best_metric: str = "val_dice"
    best_mode: str = "max"
    best_folding_limit_pct: float = 0.5
    best_folding_penalty: float = 0.1

    def __post_init__(self) -> None:
        _check(math.isfinite(self.lr) and 0 < self.lr <= 10, "train.lr", f"must be in (0, 10], got {self.lr}")
        _check(self.batch_size >= 1, "train.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.epochs >= 0, "train.epochs", f"must be >= 1, or 0 for no epoch limit, got {self.epochs}")
        _check(self.epochs > 0 or self.max_minutes > 0, "train.epochs",
               "0 (no epoch limit) needs a wall-clock budget: set train.max_minutes (--max-minutes M) or train.epochs >= 1")
        _check(self.steps_per_epoch >= 1, "train.steps_per_epoch", f"must be >= 1, got {self.steps_per_epoch}")
        _check(self.grad_clip >= 0, "train.grad_clip", f"must be >= 0 (0 = off), got {self.grad_clip}")
        _check(0 <= self.ema < 1, "train.ema", f"must be in [0, 1) (0 = off, e.g. 0.999), got {self.ema}")
        _check(isinstance(self.amp, bool) or self.amp == "auto", "train.amp", f"must be true, false or auto, got {self.amp!r}")
        _check(self.max_minutes >= 0, "train.max_minutes", f"must be >= 0 (0 = no limit), got {self.max_minutes}")
        _check(self.rising_patience >= 1, "train.rising_patience", f"must be >= 1, got {self.rising_patience}")
        _check(self.rising_tolerance >= 0, "train.rising_tolerance",
               f"must be >= 0 (a fraction of the val-loss gain since epoch 1), got {self.rising_tolerance}")
        _check(0 < self.collapse_intensity < 1, "train.collapse_intensity", f"must be in (0, 1), got {self.collapse_intensity}")
        _check(0 < self.collapse_outside <= 1, "train.collapse_outside", f"must be in (0, 1], got {self.collapse_outside}")
        _check(self.threads >= 0, "train.threads", f"must be >= 0 (0 = torch default), got {self.threads}")
        _check(self.schedule in SCHEDULES, "train.schedule", f"must be one of {SCHEDULES}, got {self.schedule!r}")
        _check(0 <= self.warmup < 1, "train.warmup", f"must be in [0, 1), got {self.warmup}")
        _check(0 < self.decay <= 1, "train.decay", f"must be in (0, 1], got {self.decay}")
        _check(self.schedule != "wsd" or self.warmup + self.decay <= 1, "train.decay",
               f"wsd needs train.warmup + train.decay <= 1, got {self.warmup} + {self.decay}")
        _check(self.best_metric in BEST_METRICS, "train.best_metric", f"must be one of {BEST_METRICS}, got {self.best_metric!r}")
        _check(self.best_mode in ("max", "min"), "train.best_mode", f"must be max or min, got {self.best_mode!r}")
        _check(math.isfinite(self.best_folding_limit_pct) and self.best_folding_limit_pct >= 0, "train.best_folding_limit_pct",
               f"must be a number >= 0, got {self.best_folding_limit_pct}")
        _check(math.isfinite(self.best_folding_penalty) and self.best_folding_penalty >= 0, "train.best_folding_penalty",
               f"must be a number >= 0, got {self.best_folding_penalty}")
