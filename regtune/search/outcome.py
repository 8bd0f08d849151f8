"""How a trial ended, what it scored, and the one ranking of trials.

Every part of a study that names a "best" trial (the study table, the MLflow parent run,
the Optuna study, ``regtune evaluate --top``, promotion, ``best_config.yaml``) uses the
functions here, so they cannot disagree:

- a trial's **score** is the objective (:mod:`regtune.objective`) of its best epoch, the
  epoch saved as its ``best.pt``; trials report it every epoch as ``trial_score`` (the
  best so far), so the value Ray hands Optuna and ASHA compares is never the last epoch's;
- a trial that **diverged** (NaN/inf, a rising loss, a collapsed warp) scores
  :data:`~regtune.objective.DIVERGED_SCORE`, strictly below every finished trial;
- ranking: higher score first, ties broken by trial id (Ray numbers trials in the order
  Optuna suggested them), trials without a score last.

Statuses and the Optuna trial state each maps to:

==============  ==========  ====================================================
status          Optuna      meaning
==============  ==========  ====================================================
completed       COMPLETE    ran its full budget
stopped_early   COMPLETE    stopped by ASHA (or the study's time limit); value = its best epoch
diverged_nan    COMPLETE    value = DIVERGED_SCORE
diverged_rising COMPLETE    value = DIVERGED_SCORE
collapsed       COMPLETE    value = DIVERGED_SCORE
error           FAIL        the trial raised (its first error is printed in one line)
interrupted     RUNNING     Ctrl-C: continues on ``--resume``, then gets its value
cancelled       PRUNED      never started (the study's time limit came first)
==============  ==========  ====================================================
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from ..objective import DIVERGED_SCORE

DIVERGED_STATUSES = ("diverged_nan", "diverged_rising", "collapsed")
TRAIN_FINAL = ("completed",) + DIVERGED_STATUSES  # statuses a training run reports itself
STATUSES = ("completed", "stopped_early") + DIVERGED_STATUSES + ("error", "interrupted", "cancelled")
OPTUNA_STATE = {"completed": "COMPLETE", "stopped_early": "COMPLETE", "diverged_nan": "COMPLETE",
                "diverged_rising": "COMPLETE", "collapsed": "COMPLETE", "error": "FAIL", "interrupted": "RUNNING",
                "cancelled": "PRUNED"}
SCORE_KEY = "trial_score"  # what trials report: the best epoch's objective so far (DIVERGED_SCORE once diverged)


def final_status(last: Mapping[str, Any] | None, errored: bool, interrupted: bool = False) -> str:
    """The status of a trial that Ray has ended (or an interrupt has stopped)."""
    if errored:
        return "error"
    st = str((last or {}).get("status", ""))
    if st in TRAIN_FINAL:
        return st
    if interrupted:
        return "interrupted"
    if not last or "epoch" not in last:
        return "cancelled"
    return "stopped_early"


def trial_score(status: str, last: Mapping[str, Any] | None) -> float | None:
    """The trial's score (None where it has none: error, cancelled, nothing reported)."""
    if status in DIVERGED_STATUSES:
        return DIVERGED_SCORE
    if status in ("error", "cancelled") or not last:
        return None
    v = last.get(SCORE_KEY)
    if v is None or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        return None
    return float(v)


def running_score(best_so_far: float, epoch_score: float, status: str) -> float:
    """What a trial reports as ``trial_score`` after an epoch."""
    if status in DIVERGED_STATUSES:
        return DIVERGED_SCORE
    return max(best_so_far, epoch_score)


def rank_key(score: float | None, trial_id: str) -> tuple[float, str]:
    return (-score if score is not None and math.isfinite(score) else math.inf, str(trial_id))


def ranked(rows: Iterable[Mapping[str, Any]], score: str = "score", tid: str = "trial_id") -> list:
    """Rows best first (the one ranking)."""
    return sorted(rows, key=lambda r: rank_key(r.get(score), r.get(tid, "")))


def short_error(err: Any) -> str:
    """One line from a trial's exception (Ray wraps it with a traceback): the last
    ``Type: message`` line."""
    if err is None:
        return ""
    text = str(err).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        head = ln.split(":", 1)[0]
        if ":" in ln and head.replace(".", "").replace("_", "").isalnum() and head[:1].isalpha() and " " not in head:
            return ln[:500]
    return (lines[-1] if lines else type(err).__name__)[:500]


__all__ = ["DIVERGED_STATUSES", "STATUSES", "OPTUNA_STATE", "SCORE_KEY", "final_status", "trial_score", "running_score",
           "rank_key", "ranked", "short_error"]
