"""The one definition of "best": a score computed from an epoch's validation metrics.

Everything that picks a "best" uses :class:`Objective`: the epoch saved as ``best.pt``
during training, a study trial's score (what Optuna receives and ASHA compares), the
study's best trial, its table and ``regtune evaluate --top``. The training config holds
its four settings (``train.best_*``); a study's space file sets them for its trials.

score = s * metric - folding_penalty * max(0, folding % - folding_limit_pct), s = +1 for
``mode: max`` and -1 for ``mode: min``; higher is better. A finite score is clipped at
:data:`SCORE_MIN`; a diverged epoch or trial (a non-finite metric) scores
:data:`DIVERGED_SCORE`, strictly below every score a finished one can reach, whatever
the folding penalty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from .config import TrainConfig

SCORE_MIN = -1.0e8
DIVERGED_SCORE = -1.0e9


@dataclass(frozen=True)
class Objective:
    metric: str = "val_dice"
    mode: str = "max"
    folding_limit_pct: float = 0.5
    folding_penalty: float = 0.1

    @classmethod
    def from_train(cls, t: TrainConfig) -> "Objective":
        return cls(t.best_metric, t.best_mode, t.best_folding_limit_pct, t.best_folding_penalty)

    def config_values(self) -> dict[str, object]:
        """The ``train.best_*`` keys that make a training run use this objective."""
        return {"train.best_metric": self.metric, "train.best_mode": self.mode,
                "train.best_folding_limit_pct": self.folding_limit_pct, "train.best_folding_penalty": self.folding_penalty}

    def score(self, metrics: Mapping[str, float]) -> float:
        """Higher is better; :data:`DIVERGED_SCORE` when the metric or the folding is not finite."""
        v = metrics.get(self.metric, math.nan)
        fold = metrics.get("val_folding_pct", math.nan)
        if v is None or fold is None or not math.isfinite(v) or not math.isfinite(fold):
            return DIVERGED_SCORE
        s = v if self.mode == "max" else -v
        return max(SCORE_MIN, float(s - self.folding_penalty * max(0.0, fold - self.folding_limit_pct)))

    def describe(self) -> str:
        pen = (f" - {self.folding_penalty:g} x (folding % - {self.folding_limit_pct:g}) above the limit"
               if self.folding_penalty > 0 else "")
        return f"{self.mode} {self.metric}{pen}"


def is_diverged_score(score: float) -> bool:
    return not math.isfinite(score) or score <= DIVERGED_SCORE
