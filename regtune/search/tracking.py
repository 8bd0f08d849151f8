"""MLflow tracking of a study, from the driver, as one Ray Tune callback.

One parent run per study (space file, its hash, budget, best result) and one nested run
per trial (parameters, per-epoch metrics with steps, final/best metrics, the status as
a tag, best checkpoint + figures as artifacts). This is the only logging mechanism: no
MLflow calls inside trials and no Ray MLflowLoggerCallback, so nothing is logged twice.
The trial -> run mapping is persisted in the study folder, so a resumed study keeps
writing to the same runs.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray import tune

from .space import SearchSpace

STATUS_TAG = "regtune.status"


def sqlite_uri(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


class StudyTracker(tune.Callback):
    def __init__(self, space: SearchSpace, tracking_uri: str, study_dir: Path, artifact_root: Path | None = None,
                 data_desc: str = "", verbose: bool = True):
        self.space = space
        self.uri = tracking_uri
        self.study_dir = Path(study_dir)
        self.artifact_root = artifact_root
        self.data_desc = data_desc
        self.verbose = verbose
        self.state_file = self.study_dir / "mlflow.json"
        self.client: MlflowClient | None = None
        self.state: dict[str, Any] = {}
        self.last: dict[str, dict] = {}
        self.best: dict[str, dict] = {}
        self.table_every = 30.0
        self._last_table = 0.0

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
        self.client = MlflowClient(self.uri)
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
                      "cpu_per_trial": r.cpu, "gpu_per_trial": r.gpu, "objective": f"{o.mode} {o.metric}",
                      "folding_limit_pct": o.folding_limit_pct, "folding_penalty": o.folding_penalty, "seed": self.space.seed}
            self.client.log_batch(parent, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
            self.client.log_text(parent, self.space.text, "space.yaml")
        else:
            self.client.update_run(parent, status="RUNNING")
        self.state.setdefault("trials", {})
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
        if tid in self.state["trials"]:
            return self.state["trials"][tid]
        run = self.client.create_run(self.state["experiment_id"], run_name=f"trial {tid}", tags={
            "mlflow.parentRunId": self.state["parent_run_id"], "regtune.kind": "trial", "regtune.study": self.space.name,
            "regtune.trial_id": tid, STATUS_TAG: "running", "regtune.searched": ",".join(trial.config)})
        rid = run.info.run_id
        params = [Param(k, str(v)) for k, v in trial.config.items()]
        base = {k: v for k, v in self.space.base.flat().items() if k not in trial.config}
        params += [Param(k, str(v)) for k, v in base.items()]
        self.client.log_batch(rid, params=params)
        self.state["trials"][tid] = rid
        self._save()
        return rid

    # ---- Ray callbacks --------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        self._run_id(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        rid = self._run_id(trial)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        ts = int(time.time() * 1000)
        metrics = [Metric(k, float(v), ts, step) for k, v in result.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and _tracked(k) and math.isfinite(float(v))]
        tags = [RunTag(STATUS_TAG, str(result.get("status", "running")))]
        if result.get("node_id"):  # where the trial ran (after a retry: where it runs now)
            tags += [RunTag("regtune.node_id", str(result["node_id"])), RunTag("regtune.node_ip", str(result.get("node_ip", "")))]
        if result.get("resumed_from_epoch"):
            tags.append(RunTag("regtune.resumed_from_epoch", str(result["resumed_from_epoch"])))
        self.client.log_batch(rid, metrics=metrics, tags=tags)
        self.last[trial.trial_id] = dict(result)
        b = self.best.get(trial.trial_id)
        if b is None or result.get("score", -math.inf) > b.get("score", -math.inf):
            self.best[trial.trial_id] = dict(result)
        if self.verbose and time.monotonic() - self._last_table > self.table_every:
            self.print_table(trials)
        elif self.verbose:
            print(f"[{trial.trial_id}] epoch {step}: score {result.get('score', math.nan):.4f}  val Dice "
                  f"{result.get('val_dice', math.nan):.4f}  fold {result.get('val_folding_pct', math.nan):.3f}%  "
                  f"{result.get('status')}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, failed=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, failed=True)

    def on_experiment_end(self, trials, **info):
        self.finish_study(trials)

    def print_table(self, trials) -> None:
        """A compact live table: one row per trial, best score first."""
        self._last_table = time.monotonic()
        rows = []
        for t in trials:
            last = self.last.get(t.trial_id, {})
            best = self.best.get(t.trial_id, {})
            st = str(last.get("status", "pending")) if t.status in ("RUNNING", "PENDING", "PAUSED") else self.final_status(t, t.status == "ERROR")
            p = ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                          for k, v in (t.config or {}).items())
            rows.append((best.get("score", -math.inf), f"{t.trial_id:10s} {t.status:10s} {st:15s} {int(last.get('epoch', 0)):3d} "
                         f"{best.get('score', math.nan):7.4f} {last.get('val_dice', math.nan):6.3f} "
                         f"{last.get('val_folding_pct', math.nan):6.3f}  {p}"))
        print(f"\n{'trial':10s} {'ray':10s} {'status':15s} {'ep':>3s} {'best':>7s} {'Dice':>6s} {'fold%':>6s}  params", flush=True)
        for _, line in sorted(rows, key=lambda r: -r[0] if math.isfinite(r[0]) else math.inf):
            print(line, flush=True)

    # ---- completion -----------------------------------------------------------
    def final_status(self, trial, failed: bool, override: str | None = None) -> str:
        last = self.last.get(trial.trial_id) or (trial.last_result or {})
        status = str(last.get("status", "running"))
        if failed:
            return "error"
        if override and status == "running":
            return override
        if status == "running":  # ended without a final status: the scheduler stopped it
            return "stopped_early"
        return status

    def _finish(self, trial, failed: bool, override: str | None = None) -> None:
        rid = self._run_id(trial)
        status = self.final_status(trial, failed, override)
        self.state.setdefault("final_status", {})[trial.trial_id] = status
        self.state.setdefault("finished", [])
        if trial.trial_id not in self.state["finished"]:
            self.state["finished"].append(trial.trial_id)
            self._save()
        last = self.last.get(trial.trial_id) or (trial.last_result or {})
        best = self.best.get(trial.trial_id) or last
        tags = {STATUS_TAG: status, "regtune.reason": str(last.get("reason", ""))[:5000]}
        summary = {}
        for k in ("val_dice", "val_hd95", "val_sdlogj", "val_folding_pct", "score"):
            if isinstance(best.get(k), (int, float)) and math.isfinite(best[k]):
                summary[f"best_{k}"] = float(best[k])
            if isinstance(last.get(k), (int, float)) and math.isfinite(last[k]):
                summary[f"final_{k}"] = float(last[k])
        if "epoch" in best:
            summary["best_epoch"] = float(best["epoch"])
        ts = int(time.time() * 1000)
        self.client.log_batch(rid, metrics=[Metric(k, v, ts, 0) for k, v in summary.items()],
                              tags=[RunTag(k, v) for k, v in tags.items()])
        ck = trial.checkpoint
        if ck is not None:
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    d = Path(ck.to_directory(tmp))
                    for name in ("best.pt", "history.jsonl", "split.json"):
                        if (d / name).is_file():
                            self.client.log_artifact(rid, str(d / name), artifact_path="checkpoint")
                    if (d / "figures").is_dir():
                        self.client.log_artifacts(rid, str(d / "figures"), artifact_path="figures")
            except Exception as e:  # artifacts are a convenience; never crash the study for them
                self.client.set_tag(rid, "regtune.artifact_error", f"{type(e).__name__}: {e}"[:5000])
        self.client.set_terminated(rid, status="FAILED" if failed else "FINISHED")
        if self.verbose:
            print(f"[{trial.trial_id}] finished: {status}  best score {best.get('score', math.nan):.4f}", flush=True)

    def reconcile(self, trials) -> list[str]:
        """After a resume: MLflow runs of trials that the interrupted driver had started
        but Ray never persisted (Ray re-samples them) are closed as ``interrupted`` and
        dropped from the mapping, so runs and Ray trials stay one-to-one."""
        assert self.client is not None
        live = {t.trial_id for t in trials}
        orphans = [tid for tid in self.state.get("trials", {}) if tid not in live]
        for tid in orphans:
            rid = self.state["trials"].pop(tid)
            self.client.set_tag(rid, STATUS_TAG, "interrupted")
            self.client.set_tag(rid, "regtune.orphan", "true")
            self.client.set_terminated(rid, status="KILLED")
        if orphans:
            self.state.setdefault("orphans", []).extend(orphans)
            self._save()
        return orphans

    def finish_study(self, trials) -> None:
        self._ensure()
        assert self.client is not None
        self.reconcile(trials)
        # trials Ray ended without a completion callback (the study's time limit): close them too
        for t in trials:
            if t.trial_id in self.state["trials"] and t.trial_id not in self.state.get("finished", []) \
                    and t.status not in ("PENDING",):
                self._finish(t, failed=t.status == "ERROR", override="time_limit")
        parent = self.state["parent_run_id"]
        statuses: dict[str, int] = {}
        best_score, best_trial = -math.inf, None
        for t in trials:
            st = self.final_status(t, failed=t.status == "ERROR", override="time_limit")
            statuses[st] = statuses.get(st, 0) + 1
            b = self.best.get(t.trial_id) or (t.last_result or {})
            if b.get("score", -math.inf) > best_score:
                best_score, best_trial = b.get("score"), t
        metrics = {f"trials_{k}": float(v) for k, v in statuses.items()}
        metrics["trials_total"] = float(len(trials))
        if best_trial is not None:
            b = self.best.get(best_trial.trial_id) or {}
            metrics["best_score"] = float(best_score)
            for k in ("val_dice", "val_hd95", "val_sdlogj", "val_folding_pct"):
                if isinstance(b.get(k), (int, float)) and math.isfinite(b[k]):
                    metrics[f"best_{k}"] = float(b[k])
            self.client.set_tag(parent, "regtune.best_trial", best_trial.trial_id)
            self.client.set_tag(parent, "regtune.best_run_id", self.state["trials"].get(best_trial.trial_id, ""))
        ts = int(time.time() * 1000)
        self.client.log_batch(parent, metrics=[Metric(k, v, ts, 0) for k, v in metrics.items()])
        unfinished = any(t.status in ("PENDING", "RUNNING", "PAUSED") for t in trials)
        self.client.set_terminated(parent, status="KILLED" if unfinished else "FINISHED")


def _tracked(key: str) -> bool:
    return key.startswith(("train_", "val_")) or key in ("score", "epoch_seconds", "figure_seconds", "data_zero_copy", "diverged", "lr", "resumed_from_epoch")


def open_ui_command(uri: str) -> str:
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


__all__ = ["StudyTracker", "sqlite_uri", "open_ui_command"]
