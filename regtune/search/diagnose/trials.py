"""Diagnose: the trials of a study as MLflow recorded them, and the one class each gets.

Too short vs over-regularised: a trial that ended within ``NO_MOTION_MARGIN`` of the
no-registration Dice is "too short (still improving)" when its validation Dice was still
rising over its last epochs (more steps would have moved it), and "no motion" when its
curve is flat (:mod:`.rules` then names the parameter that separates them: a high
regularisation weight, over-regularised; a low learning rate, too small a step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import RegtuneError
from ..space import SearchSpace

DIVERGED = ("diverged (NaN/inf)", "diverged (loss rising)", "collapsed")
NO_MOTION = "no motion (flat at no-registration Dice)"
TOO_SHORT = "too short (still improving)"
CLASSES = ("converged", "stopped early", TOO_SHORT, NO_MOTION, "folding", *DIVERGED, "error", "interrupted", "unfinished")
COLOURS = {"converged": "#2ca02c", "stopped early": "#9e9e9e", NO_MOTION: "#1f77b4", TOO_SHORT: "#9467bd",
           "folding": "#ff7f0e", "diverged (NaN/inf)": "#d62728", "diverged (loss rising)": "#e377c2",
           "collapsed": "#000000", "error": "#8c564b", "interrupted": "#bcbd22", "unfinished": "#17becf"}
NO_MOTION_MARGIN = 0.02
RISING = 0.005  # Dice gained over the last epochs that counts as "still improving"
REG_KEYS = ("loss.reg_weight", "loss.regulariser", "loss.jacobian_weight", "loss.ic_weight", "model.int_steps")


@dataclass
class TrialInfo:
    trial_id: str
    run_id: str
    params: dict[str, Any]
    status: str
    reason: str
    metrics: dict[str, float]
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    cls: str = ""


def _typed(space: SearchSpace, key: str, raw: str) -> Any:
    p = next((q for q in space.params if q.key == key), None)
    if p is None:
        return raw
    if p.type == "categorical":
        for c in p.choices:
            if str(c) == raw:
                return c
        return raw
    return int(float(raw)) if p.type == "int" else float(raw)


def still_improving(t: TrialInfo) -> bool:
    """The val Dice rose over the last epochs (best at the end): the trial ran out of steps."""
    h = [v for _, v in t.history.get("val_dice", []) if math.isfinite(v)]
    if len(h) < 2:
        return False
    tail = h[-3:]
    return tail[-1] >= max(h) - 1e-9 and tail[-1] - tail[0] >= RISING


def moved_only_by_folding(t: TrialInfo, noreg_dice: float, folding_limit: float) -> bool:
    """Every epoch that registered (Dice above the no-registration level) folded past the
    objective's limit, so the best-scoring epoch is an unmoved one: a folding trial, not a
    too-short or over-regularised one (typical of plain displacement, model.int_steps 0)."""
    fold = dict(t.history.get("val_folding_pct", []))
    moved = [(e, d) for e, d in t.history.get("val_dice", []) if math.isfinite(d) and d >= noreg_dice + NO_MOTION_MARGIN]
    return bool(moved) and all(fold.get(e, 0.0) > folding_limit for e, _ in moved)


def classify(t: TrialInfo, noreg_dice: float, folding_limit: float) -> str:
    st = t.status
    if st == "diverged_nan":
        return "diverged (NaN/inf)"
    if st == "diverged_rising":
        return "diverged (loss rising)"
    if st == "collapsed":
        return "collapsed"
    if st == "error":
        return "error"
    if st == "interrupted":
        return "interrupted"
    if st in ("running", "time_limit", "cancelled") and "best_val_dice" not in t.metrics:
        return "unfinished"
    dice = t.metrics.get("best_val_dice", math.nan)
    fold = t.metrics.get("best_val_folding_pct", t.metrics.get("final_val_folding_pct", 0.0))
    if math.isfinite(fold) and fold > folding_limit:
        return "folding"
    if math.isfinite(noreg_dice) and math.isfinite(dice) and dice < noreg_dice + NO_MOTION_MARGIN:
        if moved_only_by_folding(t, noreg_dice, folding_limit):
            return "folding"
        return TOO_SHORT if still_improving(t) else NO_MOTION
    if st == "stopped_early":
        return "stopped early"
    return "converged"


def load_trials(client, space: SearchSpace, experiment_id: str) -> tuple[str, list[TrialInfo]]:
    runs = client.search_runs([experiment_id], max_results=5000)
    parents = [r for r in runs if r.data.tags.get("regtune.kind") == "study"]
    if not parents:
        raise RegtuneError(f"experiment {experiment_id} holds no regtune study parent run")
    parent = sorted(parents, key=lambda r: r.info.start_time)[-1]
    out = []
    for r in runs:
        if r.data.tags.get("regtune.kind") != "trial" or r.data.tags.get("mlflow.parentRunId") != parent.info.run_id:
            continue
        if r.data.tags.get("regtune.orphan") == "true":
            continue
        params = {p.key: _typed(space, p.key, r.data.params[p.key]) for p in space.params if p.key in r.data.params}
        t = TrialInfo(r.data.tags.get("regtune.trial_id", r.info.run_id[:8]), r.info.run_id, params,
                      r.data.tags.get("regtune.status", "running"), r.data.tags.get("regtune.reason", ""), dict(r.data.metrics))
        for k in ("val_dice", "train_loss", "val_loss", "val_folding_pct", "val_dice_noreg"):
            t.history[k] = [(m.step, m.value) for m in sorted(client.get_metric_history(r.info.run_id, k), key=lambda m: m.step)]
        out.append(t)
    return parent.info.run_id, sorted(out, key=lambda t: t.trial_id)


def study_noreg_dice(trials: list[TrialInfo]) -> float:
    """The study's no-registration val Dice (the level a trial that does not move scores)."""
    vals = [v for t in trials for _, v in t.history.get("val_dice_noreg", [])[:1] if math.isfinite(v)]
    if vals:
        return float(np.median(vals))
    # older studies: the first-epoch Dice most trials share (a trial that has not moved
    # yet scores exactly the no-registration Dice), else the lowest first-epoch Dice
    firsts = [round(t.history["val_dice"][0][1], 6) for t in trials if t.history.get("val_dice") and t.status not in
              ("diverged_nan", "diverged_rising", "collapsed") and math.isfinite(t.history["val_dice"][0][1])]
    if not firsts:
        return math.nan
    vals, counts = np.unique(firsts, return_counts=True)
    return float(vals[np.argmax(counts)]) if counts.max() >= 2 else float(min(firsts))
