"""Optuna behind Ray Tune: the define-by-run space, the sampler, and a searcher that tells Optuna each trial's score.

Sampler: TPE, ``multivariate=True`` (models the parameters jointly), ``group=True``
(conditional ``when:`` branches get their own joint model instead of being sampled
independently) and ``constant_liar=True`` (a running trial counts as a bad result while
it runs, so concurrent trials do not all sample the same point), seeded from the space.

What the seed makes reproducible: the first ``n_startup_trials`` suggestions after the
``start:`` points, and, with ``max_concurrent: 1``, every suggestion of a study whose
trials train deterministically (the same completion order). With several trials at once
the order in which trials finish (and ASHA's decisions at each rung) depends on timing,
so later suggestions can differ between two runs of the same space.
"""

from __future__ import annotations

from typing import Any

from ray.tune.search.optuna import OptunaSearch

from .outcome import DIVERGED_STATUSES, SCORE_KEY, final_status, trial_score
from .space import Param

RAY_TRIAL_ATTR = "ray_trial_id"
STATUS_ATTR = "regtune_status"


class DefineByRun:
    """Optuna define-by-run space built from a :class:`SearchSpace` (handles ``when``).

    Picklable (Ray checkpoints the searcher with it)."""

    def __init__(self, params: tuple[Param, ...]):
        self.params = params

    def __call__(self, trial) -> None:
        chosen: dict[str, Any] = {}
        for p in self.params:
            if any(chosen.get(k) != v for k, v in p.when):
                continue
            if p.type == "categorical":
                chosen[p.key] = trial.suggest_categorical(p.key, list(p.choices))
            elif p.type == "int":
                chosen[p.key] = trial.suggest_int(p.key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            else:
                chosen[p.key] = trial.suggest_float(p.key, p.low, p.high, step=p.step, log=p.log)
        return None


def make_sampler(seed: int, n_start: int):
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(4, n_start + 2), multivariate=True, group=True,
                                      constant_liar=True)


class StudySearch(OptunaSearch):
    """OptunaSearch that records the Ray trial id on each Optuna trial and tells Optuna the
    trial's score (its best epoch, or the diverged floor), with the state of
    :data:`regtune.search.outcome.OPTUNA_STATE`. Picklable: Ray checkpoints it."""

    def suggest(self, trial_id: str):
        params = super().suggest(trial_id)
        ot = self._ot_trials.get(trial_id)
        if ot is not None:
            try:
                ot.set_user_attr(RAY_TRIAL_ATTR, trial_id)
            except Exception:  # an already-finished trial (restore): nothing to record
                pass
        return params

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        import optuna

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot = self._ot_trials[trial_id]
        status = final_status(result, error)
        value = trial_score(status, result)
        try:
            ot.set_user_attr(STATUS_ATTR, status)
            if status == "error" or (value is None and status != "cancelled"):
                self._ot_study.tell(ot, None, state=optuna.trial.TrialState.FAIL)
            elif status == "cancelled":
                self._ot_study.tell(ot, None, state=optuna.trial.TrialState.PRUNED)
            else:
                self._ot_study.tell(ot, value, state=optuna.trial.TrialState.COMPLETE)
        except Exception as e:  # noqa: BLE001 - e.g. finished elsewhere; the driver reconciles
            import logging

            logging.getLogger(__name__).warning("Optuna tell for trial %s: %s", trial_id, e)
        self._completed_trials.add(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # intermediate values: the trial's best so far (what ASHA compares)
        if trial_id in self._completed_trials or trial_id not in self._ot_trials or SCORE_KEY not in result:
            return
        try:
            self._ot_trials[trial_id].report(float(result[SCORE_KEY]), int(result.get("training_iteration", 0)))
        except Exception:  # noqa: BLE001
            pass


def reconcile_optuna(storage_url: str, study_name: str, rows: list[dict[str, Any]], interrupted: bool) -> dict[str, int]:
    """Make the persisted Optuna study agree with the study's trial rows.

    - a row's Optuna trial (found by the Ray trial id) still RUNNING although the trial
      ended (a restore that lost the searcher's completion) gets its state and value;
    - an interrupted trial stays RUNNING, labelled ``regtune_status=interrupted``;
    - RUNNING Optuna trials that no Ray trial claims (sampled by a driver that died
      before Ray saved the trial; Ray samples them again) become FAIL, labelled orphan.
    Returns counts of what it changed.
    """
    import optuna

    storage = optuna.storages.RDBStorage(storage_url)
    sid = storage.get_study_id_from_name(study_name)
    by_ray = {r["trial_id"]: r for r in rows}
    out = {"told": 0, "interrupted": 0, "orphans": 0}
    for t in storage.get_all_trials(sid, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        rid = t.user_attrs.get(RAY_TRIAL_ATTR)
        row = by_ray.get(rid) if rid else None
        if row is None:
            storage.set_trial_user_attr(t._trial_id, "regtune_orphan", True)
            storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            out["orphans"] += 1
            continue
        st = row["status"]
        storage.set_trial_user_attr(t._trial_id, STATUS_ATTR, st)
        if st == "interrupted":
            out["interrupted"] += 1
            continue
        if st == "error" or row.get("score") is None:
            storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL if st != "cancelled"
                                           else optuna.trial.TrialState.PRUNED)
        else:
            storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.COMPLETE, [float(row["score"])])
        out["told"] += 1
    return out


def optuna_rows(storage_url: str, study_name: str) -> dict[str, dict[str, Any]]:
    """Ray trial id -> {state, value, number, status} of the persisted study (orphans left out)."""
    import optuna

    st = optuna.load_study(study_name=study_name, storage=storage_url)
    out = {}
    for t in st.get_trials(deepcopy=False):
        rid = t.user_attrs.get(RAY_TRIAL_ATTR)
        if rid and not t.user_attrs.get("regtune_orphan"):
            out[rid] = {"state": t.state.name, "value": t.value, "number": t.number, "status": t.user_attrs.get(STATUS_ATTR),
                        "params": dict(t.params)}
    return out


__all__ = ["StudySearch", "make_sampler", "reconcile_optuna", "optuna_rows", "RAY_TRIAL_ATTR", "STATUS_ATTR",
           "DIVERGED_STATUSES"]
