"""diagnose + evaluate --top on a small synthetic study with planted failure regions."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from regtune.search.space import load_space
from regtune.search.study import StudyOptions, run_study

BASE = {
    "model.enc": [8, 16, 16], "model.dec": [16, 16, 16, 16, 8], "model.int_steps": 7,
    "data.downsample": 1, "data.val_subjects": 3, "data.val_pairs": 3, "data.test_subjects": 2,
    "train.epochs": 3, "train.steps_per_epoch": 40, "train.batch_size": 2, "loss.dice_weight": 1.0,
    "loss.ncc_window": 5,
}


@pytest.fixture(scope="module")
def planted(synth_dir, tmp_path_factory, ray_local):
    tmp = tmp_path_factory.mktemp("planted")
    doc = {
        "name": "planted", "base": BASE,
        "params": {"train.lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
                   "loss.reg_weight": {"type": "float", "low": 0.01, "high": 1e4, "log": True}},
        "start": [
            {"train.lr": 3e-3, "loss.reg_weight": 0.1},    # trains
            {"train.lr": 2e-3, "loss.reg_weight": 0.3},    # trains
            {"train.lr": 0.5, "loss.reg_weight": 0.1},     # diverges: learning rate
            {"train.lr": 0.2, "loss.reg_weight": 1.0},     # diverges: learning rate
            {"train.lr": 3e-3, "loss.reg_weight": 1e4},    # frozen: over-regularised
        ],
        "budget": {"num_samples": 5, "max_concurrent": 1, "grace_period": 3, "reduction_factor": 2},
        "resources": {"cpu": 1, "gpu": 0},
    }
    p = tmp / "planted.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    opts = StudyOptions(space=load_space(p), data=str(synth_dir), runs_dir=tmp / "runs", verbose=0)
    res = run_study(opts)
    return opts, res, tmp


def test_diagnose_classifies_planted_trials_and_names_lr(planted):
    from regtune.search.diagnose import DIVERGED, diagnose, write_report

    opts, res, tmp = planted
    d, client = diagnose(res.tracking_uri, "planted")
    by = {(round(t.params["train.lr"], 6), round(t.params["loss.reg_weight"], 6)): t for t in d.trials}
    assert by[(0.5, 0.1)].cls in DIVERGED and by[(0.2, 1.0)].cls in DIVERGED
    assert by[(0.003, 10000.0)].cls == "no motion (over-regularised or lr too small)", by[(0.003, 10000.0)]
    assert by[(0.003, 0.1)].cls == "converged"
    assert d.separators[0]["param"] == "train.lr" and d.separators[0]["accuracy"] == 1.0
    assert next(iter(d.importance_divergence)) == "train.lr"
    report = write_report(d, client, tmp / "diag")
    assert report.is_file() and (tmp / "diag" / "next_space.yaml").is_file()
    nxt = yaml.safe_load((tmp / "diag" / "next_space.yaml").read_text())
    assert nxt["params"]["train.lr"]["high"] < 0.2  # the diverging region is cut out
    for png in ("curves_by_class.png", "parallel_coordinates.png", "importances.png", "dice_vs_params.png"):
        assert (tmp / "diag" / png).stat().st_size > 1000


def test_evaluate_top_reproduces_val_dice_and_logs_test_metrics(planted):
    from mlflow.tracking import MlflowClient

    from regtune.search.top import evaluate_top

    opts, res, tmp = planted
    base, top = evaluate_top(res.tracking_uri, "planted", 2, opts.data, None, export_fields=str(tmp / "fields"),
                             progress=False)
    client = MlflowClient(res.tracking_uri)
    scores = [client.get_run(r.run_id).data.metrics["best_score"] for r in top]
    assert len(top) == 2 and scores[0] >= scores[1]
    for r in top:
        assert math.isfinite(r.val_dice) and abs(r.summary["dice"] - r.val_dice) <= 0.005
        run = client.get_run(r.run_id)
        assert abs(run.data.metrics["test_dice"] - r.summary["dice"]) < 1e-9
        assert len(list((tmp / "fields" / r.trial_id).glob("disp_*.nii.gz"))) == len(r.rows)
