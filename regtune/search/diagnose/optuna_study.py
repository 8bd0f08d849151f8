"""Diagnose, the Optuna side: the study Optuna actually ran (the persisted ``optuna.db``),
a study rebuilt from MLflow where that file cannot be reached, and parameter importance
(Optuna's fANOVA evaluator, seeded with the space's seed) of the score and of divergence."""

from __future__ import annotations

import math
from pathlib import Path

from ..space import SearchSpace


def _distributions(space: SearchSpace):
    import optuna.distributions as D

    out = {}
    for p in space.params:
        if p.type == "categorical":
            out[p.key] = D.CategoricalDistribution(list(p.choices))
        elif p.type == "int":
            out[p.key] = D.IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            out[p.key] = D.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    return out


FANOVA = "fANOVA (optuna.importance.FanovaImportanceEvaluator, 64 trees, seed={seed})"


def clipped_value(study):
    """Objective target for importances/plots: a diverged trial (-1e9) sits just below the
    worst finished trial instead of flattening every other difference."""
    from ...objective import is_diverged_score

    vals = [t.value for t in study.get_trials(deepcopy=False) if t.value is not None and not is_diverged_score(t.value)]
    floor = (min(vals) - 0.1 * (max(vals) - min(vals) or 1.0)) if vals else 0.0
    return lambda t: floor if t.value is None or is_diverged_score(t.value) else t.value


def importances(space: SearchSpace, trials: list, value: str, study=None) -> dict[str, float]:
    """Optuna parameter importance of ``value`` ("score" or "diverged"): fANOVA, seeded,
    on the persisted study when given (else on a study rebuilt from the trial list)."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator

    from ..outcome import DIVERGED_STATUSES

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if study is None:
        study = rebuilt_study(space, trials)
    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if value == "diverged":
        target = lambda t: float(t.user_attrs.get("regtune_status") in DIVERGED_STATUSES)  # noqa: E731
    else:
        target = clipped_value(study)
    vals = [target(t) for t in done]
    if len(vals) < 3 or len(set(vals)) < 2:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=space.seed),
                                                            target=target))
    except (RuntimeError, ValueError):
        return {}


def rebuilt_study(space: SearchSpace, trials: list):
    """An in-memory Optuna study from MLflow (only where the persisted optuna.db is not reachable)."""
    import optuna

    from ...objective import DIVERGED_SCORE

    from .trials import DIVERGED

    dists = _distributions(space)
    study = optuna.create_study(direction="maximize")
    for t in trials:
        if t.cls in ("error", "interrupted", "unfinished"):
            continue
        v = t.metrics.get("best_score", math.nan)
        if not math.isfinite(v) or t.cls in DIVERGED:
            v = DIVERGED_SCORE
        params = {k: v_ for k, v_ in t.params.items() if k in dists}
        study.add_trial(optuna.trial.create_trial(params=params, distributions={k: dists[k] for k in params}, value=v,
                                                  user_attrs={"regtune_status": t.status, "ray_trial_id": t.trial_id}))
    return study


def load_optuna(storage: str | None, name: str):
    """The persisted study, or None (with the reason) when it cannot be opened."""
    if not storage:
        return None, "no optuna.db recorded for this study"
    import optuna

    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///"):]).is_file():
        return None, f"{storage[len('sqlite:///'):]} not found"
    try:
        return optuna.load_study(study_name=name, storage=storage), ""
    except Exception as e:  # noqa: BLE001
        return None, f"{storage}: {type(e).__name__}: {e}"


__all__ = ["FANOVA", "clipped_value", "importances", "rebuilt_study", "load_optuna"]
