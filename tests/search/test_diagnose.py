"""diagnose + evaluate --top on a small synthetic study with planted failure regions."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from regtune.search.space import load_space
from regtune.search.study import StudyOptions, run_study

from ..helpers import NO_AUG

BASE = {
    "model.enc": [8, 16, 16], "model.dec": [16, 16, 16, 16, 8], "model.int_steps": 7,
    "data.downsample": 1, "data.val_subjects": 3, "data.val_pairs": 3, "data.test_subjects": 2,
    "train.epochs": 3, "train.steps_per_epoch": 40, "train.batch_size": 2, "loss.dice_weight": 1.0,
    "loss.ncc_window": 5,
    **NO_AUG,  # these tiny trials train a few dozen steps on the phantoms
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
    from regtune.search.diagnose.rules import no_motion_cause
    from regtune.search.diagnose.trials import NO_MOTION

    assert by[(0.003, 10000.0)].cls == NO_MOTION, by[(0.003, 10000.0)]
    assert by[(0.003, 0.1)].cls == "converged"
    s = d.separators[0]
    assert s["param"] == "train.lr" and s["accuracy"] == 1.0 and s["correct"] == s["n"] == 5 and s["baseline"] == 3
    assert next(iter(d.importance_divergence)) == "train.lr"
    # read from the persisted optuna.db, with the evaluator named and seeded
    assert "optuna.db" in d.importance_source and "seed=0" in d.importance_source and "fANOVA" in d.importance_source
    assert no_motion_cause(d.no_motion_rules) == "over-regularised"
    # the diagnosis names the study's model (not promoted here: the best trial) and its held-out scores
    import json

    from regtune.search.diagnose.report import explain

    model = json.loads((Path(opts.study_dir) / "test_scores.json").read_text())
    assert d.model["trial_id"] == model["trial_id"] and "promoted_from" in d.model
    assert abs(d.model["test"]["dice"] - model["test"]["dice"]) < 1e-9
    line = next(ln for ln in explain(d) if ln.startswith("The study's model"))
    assert f"trial {model['trial_id']}:" in line and f"test Dice {model['test']['dice']:.3f}" in line
    assert d.no_motion_why[by[(0.003, 10000.0)].trial_id].startswith("over-regularised (loss.reg_weight=1e+04")
    report = write_report(d, client, tmp / "diag")
    assert report.is_file() and (tmp / "diag" / "next_space.yaml").is_file()
    nxt = yaml.safe_load((tmp / "diag" / "next_space.yaml").read_text())
    assert nxt["params"]["train.lr"]["high"] < 0.2  # the diverging region is cut out
    for png in ("curves_by_class.png", "parallel_coordinates.png", "dice_vs_params.png", "optuna_importances.png",
                "optuna_slice.png", "optuna_history.png"):
        assert (tmp / "diag" / png).stat().st_size > 1000, png
    md = (tmp / "diag" / "report.md").read_text()
    assert "majority baseline" in md and "over-regularised" in md


def test_evaluate_top_scores_the_test_split_and_reproduces_val_dice(planted, tmp_path):
    import csv
    import json

    from mlflow.tracking import MlflowClient

    from regtune.search.top import evaluate_top

    opts, res, tmp = planted
    base, top = evaluate_top(res.tracking_uri, "planted", 2, opts.data, None, export_fields=str(tmp / "fields"),
                             progress=False)
    client = MlflowClient(res.tracking_uri)
    scores = [client.get_run(r.run_id).data.metrics["best_score"] for r in top]
    assert len(top) == 2 and scores[0] >= scores[1]
    for r in top:
        run = client.get_run(r.run_id)
        assert r.prefix == "test" and abs(run.data.metrics["test_dice"] - r.summary["dice"]) < 1e-9
        assert len(list((tmp / "fields" / r.trial_id).glob("disp_*.nii.gz"))) == len(r.rows)
    # the checkpoint reproduces its validation Dice on its own val pairs (scored, labelled, as not held out)
    split = json.loads(Path(client.download_artifacts(top[0].run_id, "checkpoint/split.json", str(tmp_path))).read_text())
    val_csv = tmp_path / "val.csv"
    with val_csv.open("w", newline="") as fh:
        csv.writer(fh).writerows([["fixed", "moving"], *split["val_pairs"]])
    _, again = evaluate_top(res.tracking_uri, "planted", 1, opts.data, str(val_csv), progress=False, allow_overlap=True)
    assert again[0].prefix == "overlap" and abs(again[0].summary["dice"] - again[0].val_dice) <= 0.005


def test_too_short_is_told_apart_from_no_motion():
    from regtune.search.diagnose.trials import NO_MOTION, TOO_SHORT, TrialInfo, classify

    def trial(curve):
        t = TrialInfo("t", "r", {}, "completed", "", {"best_val_dice": max(curve), "best_val_folding_pct": 0.0})
        t.history["val_dice"] = list(enumerate(curve, 1))
        return t

    assert classify(trial([0.600, 0.602, 0.609, 0.615]), 0.60, 0.5) == TOO_SHORT  # still rising: more steps would move it
    assert classify(trial([0.600, 0.601, 0.600, 0.601]), 0.60, 0.5) == NO_MOTION  # flat: over-regularised or stuck
    assert classify(trial([0.600, 0.700, 0.750, 0.760]), 0.60, 0.5) == "converged"
    # it moved, but every epoch that moved folded past the limit, so its best score is the unmoved
    # first epoch: folding, not too short (the real-data study's plain-displacement trials)
    folded = trial([0.600, 0.650, 0.700, 0.720])
    folded.metrics["best_val_dice"] = 0.600
    folded.history["val_folding_pct"] = [(1, 0.0), (2, 0.9), (3, 1.2), (4, 1.5)]
    assert classify(folded, 0.60, 0.5) == "folding"
    folded.history["val_folding_pct"] = [(1, 0.0), (2, 0.9), (3, 0.2), (4, 1.5)]  # one regular epoch that moved
    assert classify(folded, 0.60, 0.5) != "folding"


def test_folding_trials_get_their_rule_in_the_findings():
    """Trials that moved only by folding are named with the parameter that sets them apart
    (on the real-data study: plain displacement, model.int_steps 0)."""
    from regtune.search.diagnose.analysis import Diagnosis
    from regtune.search.diagnose.rules import separators
    from regtune.search.diagnose.trials import TrialInfo
    from regtune.search.diagnose.report import explain
    from regtune.search.space import parse_space

    space = parse_space({"name": "f", "params": {"model.int_steps": {"type": "categorical", "choices": [0, 7]}},
                         "objective": {"metric": "val_dice", "mode": "max", "folding_limit_pct": 0.005}}, "f.yaml")
    trials = []
    for i, steps in enumerate([0, 0, 0, 7, 7, 7]):
        t = TrialInfo(f"t{i}", "r", {"model.int_steps": steps}, "completed", "", {})
        t.cls = "folding" if steps == 0 else "converged"
        trials.append(t)
    d = Diagnosis(space, "p", trials, 0.5, {}, {}, [], {}, {})
    d.folding_rules = separators(space, trials, classes=("folding",))
    line = next(ln for ln in explain(d) if "folded" in ln)
    assert "3 trial(s)" in line and "model.int_steps" in line and "6/6" in line, line


@pytest.mark.parametrize("key, stuck, moved, said", [
    ("loss.reg_weight", (10.0, 15.0), (0.8, 1.0, 1.2, 2.0), "points to over-regularised"),
    ("train.lr", (0.004, 0.006), (1e-4, 3e-4, 5e-4, 1e-3), "points to learning rate too large"),
    ("loss.reg_weight", (0.4, 0.5), (0.8, 1.0, 1.2, 2.0), "sets them apart, but regtune names no cause on that side of loss.reg_weight")])
def test_no_motion_rule_names_a_cause_only_where_it_is_one(key, stuck, moved, said):
    """A rule that sets the no-motion trials apart is called their cause only when its side is
    one (a weight above the movers', an lr above or below theirs); a low weight that happens to
    separate them is not (the tenth real-data study: two flat trials at reg weight 0.40 and 0.58)."""
    from regtune.search.diagnose.analysis import Diagnosis
    from regtune.search.diagnose.report import explain
    from regtune.search.diagnose.rules import no_motion_causes, separators
    from regtune.search.diagnose.trials import NO_MOTION, TrialInfo
    from regtune.search.space import parse_space

    space = parse_space({"name": "m", "params": {key: {"type": "float", "low": 1e-5, "high": 10.0, "log": True}},
                         "objective": {"metric": "val_dice", "mode": "max"}}, "m.yaml")
    trials = []
    for i, w in enumerate([*stuck, *moved]):
        t = TrialInfo(f"t{i}", "r", {key: w}, "completed", "", {})
        t.cls = NO_MOTION if w in stuck else "converged"
        trials.append(t)
    d = Diagnosis(space, "p", trials, 0.5, {}, {}, [], {}, {})
    d.no_motion_rules = separators(space, trials, classes=(NO_MOTION,))
    d.no_motion_why = no_motion_causes(space, trials)
    line = next(ln for ln in explain(d) if "stayed flat" in ln)
    assert said in line and "6/6" in line, line
