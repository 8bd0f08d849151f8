"""Diagnose, part 1: read a study back and analyse it (no plotting, no report text).

Sources: MLflow (per-trial status, metric histories, figures), the study's persisted
Optuna storage (``optuna.db``: the study Optuna actually ran, with each trial's value and
regtune status) and the space file. Every trial gets one class; parameter importance for
the objective and for divergence is Optuna's fANOVA evaluator (seeded with the space's
seed) on the persisted study; a decision stump per parameter names the threshold that
separates diverged from the other trials, reported against the majority-class baseline
with trial counts; and a narrowed next space is proposed.

Too short vs over-regularised: a trial that ended within ``NO_MOTION_MARGIN`` of the
no-registration Dice is "too short (still improving)" when its validation Dice was still
rising over its last epochs (more steps would have moved it), and "no motion" when its
curve is flat; the report then names the parameter rule that separates the no-motion
trials from the others (a high regularisation weight: over-regularised; a low learning
rate: too small a step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ...errors import RegtuneError
from ..space import SearchSpace, parse_space
from .optuna_study import FANOVA, importances, load_optuna

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


@dataclass
class Diagnosis:
    space: SearchSpace
    parent_run_id: str
    trials: list[TrialInfo]
    noreg_dice: float
    importance_objective: dict[str, float]
    importance_divergence: dict[str, float]
    separators: list[dict]
    safe_ranges: dict[str, Any]
    next_space: dict
    importance_source: str = ""  # which study and evaluator the importances come from
    no_motion_rules: list[dict] = field(default_factory=list)
    no_motion_why: dict[str, str] = field(default_factory=dict)  # trial id -> its cause
    folding_rules: list[dict] = field(default_factory=list)  # what sets the folding trials apart
    optuna_study: Any = None  # the persisted optuna.Study (None when optuna.db is not reachable)
    model: dict = field(default_factory=dict)  # the study's model: trial, promoted_from, test_* (empty: none yet)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.cls] = out.get(t.cls, 0) + 1
        return out


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


def _noreg(trials: list[TrialInfo]) -> float:
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


def separators(space: SearchSpace, trials: list[TrialInfo], classes: tuple[str, ...] = DIVERGED) -> list[dict]:
    """Per parameter, the single threshold (or category set) that best separates the trials
    of ``classes`` (default: diverged) from the others, best first. Each rule carries its
    trial counts and the majority-class baseline (predicting the larger group for every
    trial); ``beats_baseline`` says whether the rule explains anything."""
    rows = []
    ts = [t for t in trials if t.cls not in ("error", "interrupted", "unfinished")]
    y = np.array([t.cls in classes for t in ts])
    if len(ts) < 2 or y.all() or not y.any():
        return []
    for p in space.params:
        have = [(t.params[p.key], yi) for t, yi in zip(ts, y) if p.key in t.params]
        if len(have) < 2:
            continue
        vals = [h[0] for h in have]
        lab = np.array([h[1] for h in have])
        n, base = len(lab), int(max(lab.sum(), (~lab).sum()))
        if p.type == "categorical":
            cats = sorted({repr(v) for v in vals})
            rate = {c: float(np.mean([lab[i] for i, v in enumerate(vals) if repr(v) == c])) for c in cats}
            bad = [c for c in cats if rate[c] > 0.5]
            pred = np.array([repr(v) in bad for v in vals])
            correct = int((pred == lab).sum())
            rows.append({"param": p.key, "accuracy": correct / n, "correct": correct, "n": n, "baseline": base,
                         "beats_baseline": correct > base, "rule": f"{p.key} in {{{', '.join(bad)}}}" if bad else "none",
                         "detail": ", ".join(f"{c}: {100 * rate[c]:.0f}%" for c in cats)})
            continue
        x = np.array(vals, dtype=float)
        order = np.unique(x)
        best = (-1, None, None)
        for i in range(len(order) - 1):
            thr = math.sqrt(order[i] * order[i + 1]) if p.log and order[i] > 0 else (order[i] + order[i + 1]) / 2
            for above in (True, False):
                correct = int(((x >= thr if above else x < thr) == lab).sum())
                if correct > best[0]:
                    best = (correct, thr, above)
        if best[1] is not None:
            correct, thr, above = best
            rows.append({"param": p.key, "accuracy": correct / n, "correct": correct, "n": n, "baseline": base,
                         "beats_baseline": correct > base, "threshold": thr, "diverges_above": above,
                         "rule": f"{p.key} {'>=' if above else '<'} {thr:.3g}",
                         "detail": f"{correct}/{n} trials on the predicted side"})
    return sorted(rows, key=lambda r: (-r["correct"], r["param"]))


def no_motion_causes(space: SearchSpace, trials: list[TrialInfo]) -> dict[str, str]:
    """Per no-motion trial, why it did not move, from where it sits against the trials that
    did move: a regularisation weight above all of theirs is over-regularisation, a learning
    rate below all of theirs too small a step."""
    moved = [t for t in trials if t.cls in ("converged", "stopped early", "folding", TOO_SHORT)]
    out: dict[str, str] = {}
    for t in trials:
        if t.cls != NO_MOTION:
            continue
        why = []
        for p in space.params:
            vals = [m.params[p.key] for m in moved if isinstance(m.params.get(p.key), (int, float))]
            v = t.params.get(p.key)
            if not vals or not isinstance(v, (int, float)) or p.type == "categorical":
                continue
            if p.key in REG_KEYS and v > max(vals):
                why.append(f"over-regularised ({p.key}={v:.3g} above {max(vals):.3g}, the largest that moved)")
            elif p.key == "train.lr" and v < min(vals):
                why.append(f"learning rate too small ({p.key}={v:.3g} below {min(vals):.3g}, the smallest that moved)")
        out[t.trial_id] = "; ".join(why) or "cause not identified by its parameters"
    return out


def no_motion_cause(rules: list[dict]) -> str:
    """Name the cause of the no-motion trials from the rule that separates them best."""
    good = [r for r in rules if r["beats_baseline"]]
    if not good:
        return ""
    r = good[0]
    key, above = r["param"], r.get("diverges_above")
    if key in REG_KEYS and above in (True, None):
        return "over-regularised"
    if key == "train.lr" and above is False:
        return "learning rate too small"
    return f"set apart by {key}"


def safe_ranges(space: SearchSpace, trials: list[TrialInfo]) -> dict[str, Any]:
    ok = [t for t in trials if t.cls in ("converged", "stopped early", "folding", NO_MOTION, TOO_SHORT)]
    out: dict[str, Any] = {}
    for p in space.params:
        vals = [t.params[p.key] for t in ok if p.key in t.params]
        if not vals:
            continue
        out[p.key] = sorted({repr(v) for v in vals}) if p.type == "categorical" else [min(vals), max(vals)]
    return out


def next_space(space: SearchSpace, trials: list[TrialInfo]) -> dict:
    """The space narrowed to the region of the better half of the converged trials."""
    doc = yaml.safe_load(space.text) if space.text else {}
    doc = dict(doc or {})
    good = sorted([t for t in trials if t.cls == "converged"], key=lambda t: -t.metrics.get("best_score", -math.inf))
    if len(good) < 2:
        good = sorted([t for t in trials if t.cls not in DIVERGED + ("error", "interrupted", "unfinished")],
                      key=lambda t: -t.metrics.get("best_score", -math.inf))
    top = good[: max(2, (len(good) + 1) // 2)]
    params = dict(doc.get("params", {}))
    for p in space.params:
        vals = [t.params[p.key] for t in top if p.key in t.params]
        if not vals:
            continue
        spec = dict(params.get(p.key, {}))
        if p.type == "categorical":
            keep = [c for c in p.choices if c in vals]
            spec["choices"] = keep or list(p.choices)
        else:
            lo, hi = min(vals), max(vals)
            if p.log:
                lo, hi = max(p.low, lo / 2), min(p.high, hi * 2)
            else:
                pad = 0.1 * (p.high - p.low)
                lo, hi = max(p.low, lo - pad), min(p.high, hi + pad)
            if p.type == "int":
                lo, hi = int(math.floor(lo)), int(math.ceil(hi))
            if lo >= hi:
                lo, hi = p.low, p.high
            spec["low"], spec["high"] = lo, hi
        params[p.key] = spec
    doc["params"] = params
    doc["name"] = f"{space.name}-next"
    doc["description"] = f"narrowed by regtune diagnose from study '{space.name}' to its safe, promising region"
    doc.pop("start", None)
    if good:
        doc["start"] = [{k: v for k, v in good[0].params.items()}]
    return doc


def study_model(client, parent) -> dict:
    """The study's model as its parent run records it (``regtune.model_trial``, ``test_*``);
    ``promoted_from``: the search trial a promoted model was trained from."""
    tid = parent.data.tags.get("regtune.model_trial")
    if not tid:
        return {}
    out = {"trial_id": tid, "test": {k[5:]: v for k, v in parent.data.metrics.items() if k.startswith("test_")}}
    rid = parent.data.tags.get("regtune.model_run_id")
    if rid:
        try:
            out["promoted_from"] = client.get_run(rid).data.tags.get("regtune.promoted_from", "")
        except Exception:  # a deleted run: the tag alone
            pass
    return out


def diagnose(tracking_uri: str, name: str, space_text: str | None = None,
             optuna_storage: str | None = None) -> tuple[Diagnosis, Any]:
    """Read study ``name`` back: MLflow for the trials, the persisted ``optuna.db`` (the
    parent run records where; ``optuna_storage`` overrides) for the importances."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise RegtuneError(f"no study '{name}' in {tracking_uri} (studies there: {', '.join(n for n in names if n != 'Default') or 'none'})")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`regtune.kind` = 'study'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise RegtuneError(f"experiment '{name}' holds no regtune study")
    if space_text is None:
        local = client.download_artifacts(runs[0].info.run_id, "space.yaml")
        space_text = Path(local).read_text()
    space = parse_space(yaml.safe_load(space_text), f"study '{name}' space.yaml", space_text)
    import dataclasses

    space = dataclasses.replace(space, name=name)  # a study started with --name keeps its own name
    parent, trials = load_trials(client, space, exp.experiment_id)
    noreg = _noreg(trials)
    for t in trials:
        t.cls = classify(t, noreg, space.objective.folding_limit_pct)
    storage = optuna_storage or runs[0].data.params.get("optuna_storage")
    study, why = load_optuna(storage, name)
    d = Diagnosis(space, parent, trials, noreg, {}, {}, [], {}, {})
    d.optuna_study = study
    d.model = study_model(client, runs[0])
    if study is not None:
        n = sum(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False))
        d.importance_source = f"{FANOVA.format(seed=space.seed)} on the persisted study {storage} ({n} COMPLETE trials)"
    else:
        d.importance_source = (f"{FANOVA.format(seed=space.seed)} on a study rebuilt from MLflow, because the persisted "
                               f"Optuna storage could not be opened ({why})")
    d.importance_objective = importances(space, trials, "score", study)
    d.importance_divergence = importances(space, trials, "diverged", study)
    d.separators = separators(space, trials)
    d.no_motion_rules = separators(space, [t for t in trials if t.cls not in DIVERGED], classes=(NO_MOTION,))
    d.no_motion_why = no_motion_causes(space, trials)
    if any(t.cls == "folding" for t in trials):
        d.folding_rules = separators(space, [t for t in trials if t.cls not in DIVERGED], classes=("folding",))
    d.safe_ranges = safe_ranges(space, trials)
    d.next_space = next_space(space, trials)
    return d, client
