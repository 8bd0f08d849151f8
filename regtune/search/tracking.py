"""MLflow tracking of a study, from the driver, as one Ray Tune callback.

One parent run per study (space file, its hash, budget, best trial, the study's model)
and one nested run per trial (parameters, per-epoch metrics with steps, best/final
metrics, the status as a tag, best checkpoint + figures as artifacts); promoted trials
are nested runs too, tagged ``regtune.kind=promoted``. This is the only logging
mechanism: no MLflow calls inside trials and no Ray MLflowLoggerCallback, so nothing is
logged twice. The trial -> run mapping is persisted in the study folder, so a resumed
study keeps writing to the same runs. Closing the runs (statuses, scores, the parent's
summary) lives in :mod:`regtune.search.tracking_close`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray import tune

from .outcome import SCORE_KEY
from .progress import ProgressLines
from .space import SearchSpace
from .store import file_lock, is_tty, open_client, open_ui_command, sqlite_uri  # noqa: F401 (re-exported)
from .tracking_close import STATUS_TAG, RunClosing


class StudyTracker(ProgressLines, RunClosing, tune.Callback):
    """``kind``: ``trial`` (the search) or ``promoted`` (promotion of the top trials)."""

    def __init__(self, space: SearchSpace, tracking_uri: str, study_dir: Path, artifact_root: Path | None = None,
                 data_desc: str = "", verbose: bool = True, kind: str = "trial", interval: float = 30.0):
        self.space = space
        self.uri = tracking_uri
        self.study_dir = Path(study_dir)
        self.artifact_root = artifact_root
        self.data_desc = data_desc
        self.verbose = verbose
        self.kind = kind
        self.state_file = self.study_dir / "mlflow.json"
        self.client: MlflowClient | None = None
        self.state: dict[str, Any] = {}
        self.last: dict[str, dict] = {}
        self.interrupted = False  # set by the driver on Ctrl-C
        self.trials_seen: list = []  # Ray's trials, as of the experiment's end
        self.extra_params: dict[str, dict] = {}  # promoted trials: source trial id -> its searched values
        self.epoch_seconds: dict[str, float] = {}
        self.interval = interval  # seconds between progress lines (and tables on a terminal)
        self._last_print = 0.0
        self._t0 = time.monotonic()

    @property
    def _map(self) -> dict[str, str]:
        return self.state.setdefault("trials" if self.kind == "trial" else "promoted", {})

    # ---- set-up ---------------------------------------------------------------
    def __getstate__(self) -> dict:
        # Ray pickles callbacks with the experiment; the client is re-made after restore
        d = dict(self.__dict__)
        d["client"] = None
        return d

    def _ensure(self) -> MlflowClient:
        if self.client is None:
            self.start()
        assert self.client is not None
        return self.client

    def start(self) -> str:
        """Create (or reopen, on resume) the experiment and the parent run; returns its id."""
        self.client = open_client(self.uri)
        if self.state_file.is_file():
            self.state = json.loads(self.state_file.read_text())
        name = self.space.name
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            loc = (self.artifact_root / name).resolve().as_uri() if self.artifact_root else None
            # the experiment kind makes MLflow 3's UI open the training-runs view, not the GenAI one
            exp_id = self.client.create_experiment(name, artifact_location=loc,
                                                   tags={"mlflow.experimentKind": "custom_model_development"})
        else:
            exp_id = exp.experiment_id
        self.state["experiment_id"] = exp_id
        parent = self.state.get("parent_run_id")
        if parent is None:
            run = self.client.create_run(exp_id, run_name=f"study {name}", tags={
                "regtune.kind": "study", "regtune.study": name, "regtune.space_sha256": self.space.sha256})
            parent = run.info.run_id
            self.state["parent_run_id"] = parent
            b, r, o = self.space.budget, self.space.resources, self.space.objective
            params = {"space_file": self.space.source, "space_sha256": self.space.sha256, "data": self.data_desc,
                      "num_samples": b.num_samples, "max_concurrent": b.max_concurrent, "grace_period": b.grace_period,
                      "reduction_factor": b.reduction_factor, "time_limit_minutes": b.time_limit_minutes,
                      "cpu_per_trial": r.cpu, "gpu_per_trial": r.gpu, "objective": o.describe(),
                      "folding_limit_pct": o.folding_limit_pct, "folding_penalty": o.folding_penalty, "seed": self.space.seed,
                      "optuna_storage": sqlite_uri(self.study_dir / "optuna.db"), "study_dir": str(self.study_dir)}
            self.client.log_batch(parent, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
            self.client.log_text(parent, self.space.text, "space.yaml")
        else:
            self.client.update_run(parent, status="RUNNING")
        self._map
        self._save()
        return parent

    def _save(self) -> None:
        self.study_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        tmp.replace(self.state_file)

    def _run_id(self, trial) -> str:
        self._ensure()
        assert self.client is not None
        tid = trial.trial_id
        if tid in self._map:
            return self._map[tid]
        src = (trial.config or {}).get("regtune.promote_from")
        config = {**self.extra_params.get(src, {}), **(trial.config or {})}
        run = self._left_behind(tid)
        if run is None:
            tags = {"mlflow.parentRunId": self.state["parent_run_id"], "regtune.kind": self.kind,
                    "regtune.study": self.space.name, "regtune.trial_id": tid, STATUS_TAG: "running",
                    "regtune.searched": ",".join(k for k in config if not k.startswith("regtune."))}
            if src:
                tags["regtune.promoted_from"] = str(src)
            run = self.client.create_run(self.state["experiment_id"],
                                         run_name=f"{'promoted ' + str(src) if src else 'trial ' + tid}", tags=tags)
        rid = run.info.run_id
        if not run.data.params:
            params = [Param(k, str(v)) for k, v in config.items()]
            base = {k: v for k, v in self.space.base.flat().items() if k not in config}
            params += [Param(k, str(v)) for k, v in base.items()]
            self.client.log_batch(rid, params=params)
        self._map[tid] = rid
        self._save()
        return rid

    def _left_behind(self, tid: str):
        """The run of trial ``tid`` that a driver killed between creating it and writing
        ``mlflow.json`` left in MLflow (under this study's parent, not in the mapping), or
        None: a resumed study adopts it instead of opening a second run for the trial."""
        assert self.client is not None
        found = self.client.search_runs(
            [self.state["experiment_id"]], max_results=10, order_by=["attributes.start_time ASC"],
            filter_string=f"tags.`regtune.trial_id` = '{tid}' and tags.`mlflow.parentRunId` = "
                          f"'{self.state['parent_run_id']}' and tags.`regtune.kind` = '{self.kind}'")
        return next((r for r in found if r.data.tags.get("regtune.orphan") != "true"), None)

    # ---- Ray callbacks --------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        rid = self._run_id(trial)
        if trial.trial_id in self.state.get("interrupted", []):  # continued after --resume
            self.state["interrupted"].remove(trial.trial_id)
            self._save()
            self.client.update_run(rid, status="RUNNING")
            self.client.set_tag(rid, STATUS_TAG, "running")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        rid = self._run_id(trial)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        ts = int(time.time() * 1000)
        metrics = [Metric(k, float(v), ts, step) for k, v in result.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and _tracked(k) and math.isfinite(float(v))]
        tags = [RunTag(STATUS_TAG, str(result.get("status", "running")))]
        for k in ("node_id", "device", "gpu_ids"):
            if result.get(k):  # where the trial ran (after a retry: where it runs now)
                tags.append(RunTag(f"regtune.{k}", str(result[k])))
        if result.get("resumed_from_epoch"):
            tags.append(RunTag("regtune.resumed_from_epoch", str(result["resumed_from_epoch"])))
        # a trial restored from an older checkpoint than its last report (its node was lost after
        # it reported) trains those epochs again, bit for bit (exact resume): log each epoch once
        logged = self.state.setdefault("logged_epoch", {})
        if step <= int(logged.get(trial.trial_id, 0)):
            metrics = []
        else:
            logged[trial.trial_id] = step
            self._save()
        self.client.log_batch(rid, metrics=metrics, tags=tags)
        self.last[trial.trial_id] = dict(result)
        self.epoch_seconds[trial.trial_id] = self.epoch_seconds.get(trial.trial_id, 0.0) + float(result.get("epoch_seconds", 0.0))
        self.progress(trials, trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, failed=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, failed=True)

    def on_experiment_end(self, trials, **info):
        self.trials_seen = list(trials)
        self.finish_study(trials)


def _tracked(key: str) -> bool:
    # lambda.* / best_lambda.*: the weight an amortised trial's search chose (ref_val_*: at the reference weight)
    return key.startswith(("train_", "val_", "lambda.", "best_lambda.", "ref_val_", "weight_search_")) \
        or key in ("best_epoch",) or key in ("score", SCORE_KEY, "epoch_seconds", "figure_seconds",
                                             "data_zero_copy", "diverged", "lr", "resumed_from_epoch")


__all__ = ["StudyTracker", "sqlite_uri", "open_ui_command", "open_client", "file_lock", "is_tty"]
