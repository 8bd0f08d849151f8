"""Amortised parameters in a study, end to end on tiny synthetic data through real Ray Tune,
Optuna and MLflow: the amortised weight is not sampled per trial, each trial trains one
conditional network and is scored at the weight its inference-time search picks."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from regtune.checkpoint import load_checkpoint
from regtune.errors import ConfigError
from regtune.search.space import load_space, parse_space
from regtune.search.study import StudyOptions, run_study

from ..helpers import NO_AUG

TINY_BASE = {"model.enc": [8, 16, 16], "model.dec": [16, 16, 16, 16, 8], "model.int_steps": 0, "data.downsample": 2,
             "data.val_subjects": 2, "data.val_pairs": 2, "data.test_subjects": 2, "data.test_pairs": 2,
             "train.epochs": 2, "train.steps_per_epoch": 6, "train.batch_size": 2, "loss.dice_weight": 0.0, **NO_AUG}
SPACE = {"name": "amortised-tiny", "base": TINY_BASE,
         "params": {"loss.reg_weight": {"type": "float", "low": 0.1, "high": 100.0, "log": True, "amortised": True},
                    "train.lr": {"type": "float", "low": 1e-3, "high": 3e-3, "log": True}},
         "weight_search": {"n": 6, "pairs": 1, "refine": 2, "profile": 3, "max_folding_pct": None},
         "objective": {"metric": "val_dice", "mode": "max"},
         "budget": {"num_samples": 2, "max_concurrent": 1, "grace_period": 2, "reduction_factor": 2},
         "resources": {"cpu": 1, "gpu": 0}, "seed": 0}


def test_space_amortised_params_are_not_sampled_and_bad_ones_are_refused(tmp_path):
    sp = parse_space(SPACE, "s.yaml")
    assert [p.key for p in sp.params] == ["train.lr"]  # the only parameter Optuna samples
    assert sp.base.amortise.ranges == ("loss.reg_weight=0.1:100.0:log",) and sp.weight_search.n == 6
    assert sp.trial_config({"train.lr": 2e-3}).amortise.ranges == sp.base.amortise.ranges
    for params, frag in (({"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "amortised": True}}, "only loss weights"),
                         ({"loss.reg_weight": {"type": "float", "low": 0.1, "high": 1, "amortised": True}}, "nothing to sample"),
                         ({"loss.regulariser": {"type": "categorical", "choices": ["diffusion", "bending"], "amortised": True},
                           "train.lr": {"type": "float", "low": 1e-3, "high": 1e-2}}, "only loss weights"),
                         ({"loss.reg_weight": {"type": "float", "low": 0.1, "high": 1, "amortised": "yes"},
                           "train.lr": {"type": "float", "low": 1e-3, "high": 1e-2}}, "true or false")):
        with pytest.raises(ConfigError) as e:
            parse_space({**SPACE, "params": params}, "s.yaml")
        assert frag in str(e.value) and "s.yaml" in str(e.value) and "\n" not in str(e.value)
    ws = parse_space({**SPACE, "weight_search": {"max_sdlogj_l2r": 0.15}}, "s.yaml").weight_search
    assert ws.settings().max_sdlogj_l2r == 0.15 and "SDlogJ (L2R) <= 0.15" in ws.settings().describe()
    with pytest.raises(ConfigError, match="weight_search.max_sdlogj_l2r': must be a number >= 0"):
        parse_space({**SPACE, "weight_search": {"max_sdlogj_l2r": -1}}, "s.yaml")
    with pytest.raises(ConfigError, match="weight_search.*no parameter is amortised"):
        parse_space({**SPACE, "params": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2}}}, "s.yaml")


def test_amortised_study_end_to_end(synth_dir, tmp_path, ray_local):
    from mlflow.tracking import MlflowClient

    from regtune.search.diagnose import diagnose, write_report

    path = tmp_path / "amortised.yaml"
    path.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    opts = StudyOptions(space=load_space(path), data=str(synth_dir), runs_dir=tmp_path / "runs", verbose=0)
    res = run_study(opts)
    assert len(res.trials) == 2 and all(t["status"] in ("completed", "stopped_early") for t in res.trials)
    assert all(set(t["params"]) == {"train.lr"} for t in res.trials)  # the weight was never sampled per trial

    client = MlflowClient(res.tracking_uri)
    exp = client.get_experiment_by_name("amortised-tiny")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`regtune.kind` = 'trial'")
    assert len(runs) == 2
    for run in runs:
        m = run.data.metrics
        lam = m["lambda.loss.reg_weight"]
        assert 0.1 - 1e-9 <= lam <= 100 + 1e-9 and "best_lambda.loss.reg_weight" in m and "ref_val_dice" in m
        assert run.data.params["amortise.ranges"].startswith("['loss.reg_weight=0.1:100.0:log'")
        curve = json.loads(open(client.download_artifacts(run.info.run_id, "figures/weight_curve.json", str(tmp_path))).read())
        assert len(curve["points"]) == 6 and len(curve["profile"]) == 3 and "hd95" in curve["profile"][0]
        assert curve["chosen"]["loss.reg_weight"] == pytest.approx(lam)
        ck = load_checkpoint(client.download_artifacts(run.info.run_id, "checkpoint/best.pt", str(tmp_path / run.info.run_id)))
        best_lam = ck.metrics["lambda.loss.reg_weight"]
        assert ck.model().conditioner.values()["loss.reg_weight"] == pytest.approx(best_lam)  # registers at its choice
        # the trial's score is the objective of its best epoch, scored at the searched weight
        assert m["best_val_dice"] == pytest.approx(ck.metrics["val_dice"]) and math.isfinite(ck.metrics["score"])

    # the study's model says at which weight it registers: test_scores.json, best_config.yaml's header, best.pt
    model_ck = load_checkpoint(res.model["checkpoint"])
    chosen = res.model["chosen_weights"]
    assert set(chosen) == {"loss.reg_weight"} and chosen["loss.reg_weight"] == pytest.approx(model_ck.metrics["lambda.loss.reg_weight"])
    assert json.loads(open(res.model["checkpoint"].replace("best.pt", "test_scores.json")).read())["chosen_weights"] == chosen
    assert f"the chosen loss.reg_weight={chosen['loss.reg_weight']:.6g}" in open(res.model["config"]).read()

    d, client = diagnose(res.tracking_uri, "amortised-tiny")
    report = write_report(d, client, tmp_path / "diagnosis")
    assert (tmp_path / "diagnosis" / "weight_curves.png").is_file()
    assert "weight_curves.png" in (report.parent / "report.md").read_text()
