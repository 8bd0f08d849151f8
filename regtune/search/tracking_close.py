"""Closing MLflow runs: each trial's run when Ray ends it, orphans after a resume, and the
study's parent run (status counts, the best trial) at the experiment's end.

Mixed into :class:`regtune.search.tracking.StudyTracker` (which holds ``client``, ``state``
with the trial -> run mapping ``_map``, ``last``, ``kind``, ``interrupted``, ``verbose`` and
``_run_id`` / ``_save`` / ``_ensure``). Statuses and scores come from
:mod:`regtune.search.outcome` (the one definition of best).
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

from mlflow.entities import Metric, RunTag

from .outcome import final_status, ranked, trial_score
from .store import is_tty

STATUS_TAG = "regtune.status"


class RunClosing:
    """The closing half of :class:`regtune.search.tracking.StudyTracker` (see the module docstring)."""

    def _finish(self, trial, failed: bool, interrupted: bool = False) -> None:
        rid = self._run_id(trial)
        last = self.last.get(trial.trial_id) or (trial.last_result or {})
        status = final_status(last if last.get("epoch") is not None else None, failed, interrupted)
        score = trial_score(status, last)
        self.state.setdefault("final_status", {})[trial.trial_id] = status
        self.state.setdefault("scores", {})[trial.trial_id] = score
        if status == "interrupted":
            lst = self.state.setdefault("interrupted", [])
            if trial.trial_id not in lst:
                lst.append(trial.trial_id)
        else:
            lst = self.state.setdefault("finished", [])
            if trial.trial_id not in lst:
                lst.append(trial.trial_id)
        self._save()
        reason = str(last.get("reason", ""))
        if status == "stopped_early":
            reason = reason or "stopped by ASHA (or the study's time limit) before its full budget"
        if failed and getattr(trial, "error_file", None):
            reason = _error_line(trial) or reason
        tags = {STATUS_TAG: status, "regtune.reason": reason[:5000]}
        summary = {}
        if score is not None:
            summary["best_score"] = score
        for k in ("val_dice", "val_hd95", "val_sdlogj", "val_folding_pct"):  # best_*: the epoch of best.pt
            for pre in ("best_", "final_"):
                v = last.get(f"best_{k}") if pre == "best_" else last.get(k)
                if isinstance(v, (int, float)) and math.isfinite(v):
                    summary[f"{pre}{k}"] = float(v)
        if isinstance(last.get("best_epoch"), (int, float)) and last["best_epoch"] > 0:
            summary["best_epoch"] = float(last["best_epoch"])
        ts = int(time.time() * 1000)
        self.client.log_batch(rid, metrics=[Metric(k, v, ts, 0) for k, v in summary.items()],
                              tags=[RunTag(k, v) for k, v in tags.items()])
        ck = trial.checkpoint
        if ck is not None and status != "interrupted":
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
        self.client.set_terminated(rid, status="FAILED" if failed else "KILLED" if status in ("interrupted", "cancelled")
                                   else "FINISHED")
        if self.verbose and is_tty():
            print(f"[{trial.trial_id}] finished: {status}  score {score if score is not None else math.nan:.4f}", flush=True)

    def reconcile(self, trials) -> list[str]:
        """After a resume: MLflow runs of trials that the interrupted driver had started
        but Ray never persisted (Ray re-samples them) are closed as ``interrupted`` and
        dropped from the mapping, so runs and Ray trials stay one-to-one."""
        assert self.client is not None
        live = {t.trial_id for t in trials}
        orphans = [tid for tid in self._map if tid not in live]
        for tid in orphans:
            rid = self._map.pop(tid)
            self.client.set_tag(rid, STATUS_TAG, "interrupted")
            self.client.set_tag(rid, "regtune.orphan", "true")
            self.client.set_terminated(rid, status="KILLED")
            if tid in self.state.get("interrupted", []):
                self.state["interrupted"].remove(tid)
        if orphans:
            self.state.setdefault("orphans", []).extend(orphans)
            self._save()
        return orphans

    def finish_study(self, trials) -> None:
        self._ensure()
        assert self.client is not None
        self.reconcile(trials)
        # trials Ray ended without a completion callback: on Ctrl-C they are interrupted
        for t in trials:
            if t.trial_id not in self.state.get("finished", []) and t.trial_id not in self.state.get("interrupted", []):
                if self.interrupted:  # a trial Ray had not started yet gets its run too: Optuna already has it
                    self._finish(t, failed=False, interrupted=True)
                elif t.trial_id in self._map:
                    self._finish(t, failed=t.status == "ERROR")
        if self.kind != "trial":
            return
        self.summarise_parent(trials)

    def summarise_parent(self, trials) -> None:
        parent = self.state["parent_run_id"]
        fs = self.state.get("final_status", {})
        statuses: dict[str, int] = {}
        rows = []
        for t in trials:
            st = fs.get(t.trial_id, "interrupted" if self.interrupted else "running")
            statuses[st] = statuses.get(st, 0) + 1
            rows.append({"trial_id": t.trial_id, "score": self.state.get("scores", {}).get(t.trial_id)})
        metrics = {f"trials_{k}": float(v) for k, v in statuses.items()}
        metrics["trials_total"] = float(len(trials))
        best = next((r for r in ranked(rows) if r["score"] is not None), None)
        if best is not None:
            metrics["best_score"] = float(best["score"])
            run = self.client.get_run(self._map[best["trial_id"]])
            for k in ("val_dice", "val_hd95", "val_sdlogj", "val_folding_pct"):
                if f"best_{k}" in run.data.metrics:
                    metrics[f"best_{k}"] = float(run.data.metrics[f"best_{k}"])
            self.client.set_tag(parent, "regtune.best_trial", best["trial_id"])
            self.client.set_tag(parent, "regtune.best_run_id", self._map.get(best["trial_id"], ""))
        ts = int(time.time() * 1000)
        self.client.log_batch(parent, metrics=[Metric(k, v, ts, 0) for k, v in metrics.items()])
        unfinished = self.interrupted or any(t.status in ("PENDING", "RUNNING", "PAUSED") for t in trials)
        self.client.set_terminated(parent, status="KILLED" if unfinished else "FINISHED")


def _error_line(trial) -> str:
    from .outcome import short_error

    try:
        p = Path(trial.local_path) / "error.txt"
        return short_error(p.read_text()) if p.is_file() else ""
    except Exception:  # noqa: BLE001
        return ""
