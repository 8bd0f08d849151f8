"""Diagnose, part 1: read a study back and analyse it (no plotting, no report text).

Sources: MLflow (per-trial status, metric histories, figures), the study's persisted
Optuna storage (``optuna.db``: the study Optuna actually ran, with each trial's value and
regtune status) and the space file. Every trial gets one class (:mod:`.trials`); parameter
importance for the objective and for divergence is Optuna's fANOVA evaluator (seeded with
the space's seed) on the persisted study; a decision stump per parameter names the
threshold that separates diverged from the other trials, reported against the
majority-class baseline with trial counts; and a narrowed next space is proposed
(:mod:`.rules`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ...errors import RegtuneError
from ..space import SearchSpace, parse_space
from .optuna_study import FANOVA, importances, load_optuna
from .rules import next_space, no_motion_causes, safe_ranges, separators
from .trials import DIVERGED, NO_MOTION, TrialInfo, classify, load_trials, study_noreg_dice


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
    noreg = study_noreg_dice(trials)
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
