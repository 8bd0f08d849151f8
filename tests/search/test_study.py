"""A real study on tiny synthetic data through real Ray Tune, Optuna and MLflow."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from regtune.search.space import load_space
from regtune.search.study import StudyError, StudyOptions, format_table, run_study

from ..helpers import NO_AUG

TINY_BASE = {
    "model.enc": [8, 16, 16], "model.dec": [16, 16, 16, 16, 8], "model.int_steps": 0,
    "data.downsample": 2, "data.val_subjects": 3, "data.val_pairs": 2, "data.test_subjects": 2,
    "train.epochs": 3, "train.steps_per_epoch": 15, "train.batch_size": 2, "loss.dice_weight": 0.0,
    **NO_AUG,  # these tiny trials train a few dozen steps on the phantoms
}


def write_space(path: Path, num_samples: int, max_concurrent: int, name: str = "tiny") -> Path:
    doc = {
        "name": name,
        "base": TINY_BASE,
        "params": {"train.lr": {"type": "float", "low": 1e-6, "high": 10.0, "log": True},
                   "train.grad_clip": {"type": "categorical", "choices": [0.0, 10.0]}},
        # planted: a good setting, one that cannot move (stopped early), the seed's divergence
        "start": [{"train.lr": 3e-3, "train.grad_clip": 10.0}, {"train.lr": 1e-6, "train.grad_clip": 10.0},
                  {"train.lr": 5.0, "train.grad_clip": 0.0}],
        "objective": {"metric": "val_loss", "mode": "min"},
        "budget": {"num_samples": num_samples, "max_concurrent": max_concurrent, "grace_period": 1, "reduction_factor": 2},
        "resources": {"cpu": 1, "gpu": 0},
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def study(synth_dir, tmp_path_factory, ray_local):
    tmp = tmp_path_factory.mktemp("study")
    space = load_space(write_space(tmp / "tiny.yaml", num_samples=4, max_concurrent=1))
    opts = StudyOptions(space=space, data=str(synth_dir), runs_dir=tmp / "runs", verbose=0)
    return opts, run_study(opts)


def test_trials_ran_and_statuses(study):
    opts, res = study
    assert len(res.trials) == 4
    by_lr = {round(t["params"]["train.lr"], 9): t for t in res.trials}
    assert by_lr[5.0]["status"] in ("collapsed", "diverged_nan", "diverged_rising"), by_lr[5.0]
    assert by_lr[1e-6]["status"] == "stopped_early"
    assert by_lr[3e-3]["status"] == "completed" and by_lr[3e-3]["epochs"] == 3
    assert res.best(1)[0]["params"]["train.lr"] != 5.0
    # time accounting: trials' training time fits inside the reserved trial slots
    assert 0 < res.train_seconds <= res.concurrency * res.fit_seconds < res.seconds
    assert 0 < res.slot_use() <= 1 and "of trial slots spent training" in format_table(res)


def test_mlflow_holds_parent_and_children_with_checkpoint(study, tmp_path):
    from mlflow.tracking import MlflowClient

    opts, res = study
    client = MlflowClient(res.tracking_uri)
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("regtune.kind") == "study"]
    children = [r for r in runs if r.data.tags.get("regtune.kind") == "trial"]
    assert len(parents) == 1 and len(children) == 4
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    assert parents[0].data.params["space_sha256"] == opts.space.sha256
    assert parents[0].data.metrics["trials_total"] == 4
    statuses = sorted(c.data.tags["regtune.status"] for c in children)
    assert "stopped_early" in statuses and any(s in ("collapsed", "diverged_nan", "diverged_rising") for s in statuses)
    good = next(c for c in children if c.data.tags["regtune.status"] == "completed")
    hist = client.get_metric_history(good.info.run_id, "val_dice")
    assert [m.step for m in hist] == [1, 2, 3]
    assert "best_val_dice" in good.data.metrics
    assert good.data.metrics["data_zero_copy"] == 1  # trials read the object store's shared arrays, no copy
    arts = {a.path for a in client.list_artifacts(good.info.run_id, "checkpoint")}
    assert "checkpoint/best.pt" in arts
    local = client.download_artifacts(good.info.run_id, "checkpoint/best.pt", str(tmp_path))
    blob = torch.load(local, weights_only=True)
    assert blob["config"]["model"]["enc"] == [8, 16, 16]
    figs = {a.path for a in client.list_artifacts(good.info.run_id, "figures")}
    assert {"figures/curves.png", "figures/overlay.png", "figures/jacobian.png"} <= figs


def test_optuna_study_persisted(study):
    import optuna

    opts, res = study
    st = optuna.load_study(study_name="tiny", storage=res.optuna_storage)
    assert len(st.trials) == 4
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in st.trials) == 4


def test_existing_study_needs_resume(study):
    opts, res = study
    with pytest.raises(StudyError, match="already exists"):
        run_study(opts)


def test_gpu_request_without_gpu_is_refused(synth_dir, tmp_path, ray_local):
    p = write_space(tmp_path / "g.yaml", 2, 1, name="gpu")
    doc = yaml.safe_load(p.read_text())
    doc["resources"]["gpu"] = 1
    p.write_text(yaml.safe_dump(doc))
    with pytest.raises(StudyError, match="no GPU"):
        run_study(StudyOptions(space=load_space(p), data=str(synth_dir), runs_dir=tmp_path / "runs", verbose=0))


def _count_finished_trials(study_dir: Path) -> int:
    import json

    p = study_dir / "mlflow.json"
    if not p.is_file():
        return 0
    return len(json.loads(p.read_text()).get("trials", {}))


def test_interrupted_study_resumes_without_losing_or_repeating_trials(synth_dir, tmp_path):
    """Kill the driver mid-study (SIGKILL, as a crash would), then --resume."""
    import optuna
    from mlflow.tracking import MlflowClient

    space = write_space(tmp_path / "r.yaml", num_samples=4, max_concurrent=1, name="resumable")
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "regtune", "search", "--space", str(space), "--data", str(synth_dir),
           "--runs-dir", str(runs), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    study_dir = runs / "studies" / "resumable"
    deadline = time.monotonic() + 240
    while _count_finished_trials(study_dir) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert proc.poll() is None, "study finished before it could be interrupted"
    import os
    import signal
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    client = MlflowClient(f"sqlite:///{(runs / 'mlflow.db').resolve()}")
    exp = client.get_experiment_by_name("resumable")
    before = {r.info.run_id for r in client.search_runs([exp.experiment_id])
              if r.data.tags.get("regtune.kind") == "trial" and r.info.status == "FINISHED"}
    assert before, "no trial had finished before the kill"
    out = subprocess.run(cmd[:-1] + ["--resume"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    runs_after = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("regtune.kind") == "trial"]
    children = [r for r in runs_after if r.data.tags.get("regtune.orphan") != "true"]
    ids = [c.data.tags["regtune.trial_id"] for c in children]
    assert len(ids) == len(set(ids)) == 4, ids  # one run per Ray trial, none duplicated
    assert before <= {c.info.run_id for c in children}  # finished trials kept, not re-run
    assert all(c.info.status in ("FINISHED", "FAILED") for c in children)
    # an in-flight trial that Ray had not persisted is closed as interrupted, not left running
    assert all(r.info.status == "KILLED" for r in runs_after if r.data.tags.get("regtune.orphan") == "true")
    st = optuna.load_study(study_name="resumable", storage=f"sqlite:///{(study_dir / 'optuna.db').resolve()}")
    done = [t for t in st.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4, [t.state for t in st.trials]
