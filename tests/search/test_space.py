import math
from pathlib import Path

import pytest
import yaml

from regtune.search.searcher import DefineByRun
from regtune.search.space import SpaceError, load_space, parse_space

ROOT = Path(__file__).resolve().parents[2]

GOOD = {
    "name": "t",
    "base": {"train.epochs": 3},
    "params": {
        "train.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "loss.similarity": {"type": "categorical", "choices": ["ncc", "mse"]},
        "loss.ncc_window": {"type": "int", "low": 5, "high": 9, "step": 2, "when": {"loss.similarity": "ncc"}},
    },
    "start": [{"train.lr": 0.05, "loss.similarity": "mse"}],
    "objective": {"metric": "val_dice", "mode": "max"},
    "budget": {"num_samples": 4, "max_concurrent": 2},
    "resources": {"cpu": 1, "gpu": 0.5},
}


def test_valid_space_and_trial_config():
    s = parse_space(GOOD, "good.yaml")
    assert [p.key for p in s.params] == ["train.lr", "loss.similarity", "loss.ncc_window"]
    assert s.base.train.epochs == 3 and s.resources.gpu == 0.5
    cfg = s.trial_config({"train.lr": 0.01, "loss.similarity": "ncc", "loss.ncc_window": 7})
    assert cfg.train.lr == 0.01 and cfg.loss.ncc_window == 7 and cfg.train.epochs == 3


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")) + sorted((ROOT / "docs").glob("*/*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_spaces_parse(path):  # and the measured variants kept with their docs
    s = load_space(path)
    assert s.params and s.budget.num_samples >= 1


def test_objective_score_penalises_folding_and_divergence():
    from regtune.objective import DIVERGED_SCORE, SCORE_MIN

    s = parse_space({**GOOD, "objective": {"metric": "val_dice", "folding_limit_pct": 0.5, "folding_penalty": 0.1}}, "x")
    assert s.objective.score({"val_dice": 0.8, "val_folding_pct": 0.2}) == pytest.approx(0.8)
    assert s.objective.score({"val_dice": 0.8, "val_folding_pct": 2.5}) == pytest.approx(0.6)
    assert s.objective.score({"val_dice": math.nan, "val_folding_pct": math.nan}) == DIVERGED_SCORE
    # the diverged floor is below every finished score, whatever the folding penalty
    harsh = parse_space({**GOOD, "objective": {"metric": "val_hd95", "mode": "min", "folding_penalty": 1e12}}, "x")
    worst = harsh.objective.score({"val_hd95": 1e30, "val_folding_pct": 100.0})
    assert worst == SCORE_MIN > DIVERGED_SCORE


def test_objective_sets_the_trials_best_checkpoint_rule():
    """One definition of best: the space's objective becomes train.best_* of every trial,
    so best.pt is the epoch the study scores the trial by."""
    s = parse_space({**GOOD, "objective": {"metric": "val_hd95", "mode": "min", "folding_limit_pct": 1.0,
                                           "folding_penalty": 0.5}}, "x")
    t = s.trial_config({"train.lr": 0.01, "loss.similarity": "mse"}).train
    assert (t.best_metric, t.best_mode, t.best_folding_limit_pct, t.best_folding_penalty) == ("val_hd95", "min", 1.0, 0.5)
    with pytest.raises(SpaceError, match="base.train.best_metric.*objective"):
        parse_space({**GOOD, "base": {"train.best_metric": "val_loss"}}, "x")
    with pytest.raises(SpaceError, match="diverged_score.*is gone"):
        parse_space({**GOOD, "objective": {"metric": "val_dice", "diverged_score": 0.0}}, "x")


def test_promote_block_and_resource_overrides():
    s = parse_space({**GOOD, "promote": {"top_k": 2, "minutes": 5}}, "x")
    assert s.promote.top_k == 2 and s.promote.minutes == 5 and s.promote.mode == "continue"
    for doc, frag in (({"top_k": 1}, "one of epochs"), ({"epochs": 2}, "promote.epochs"), ({"epochs": 9, "mode": "x"}, "promote.mode"),
                      ({"epochs": 9, "k": 1}, "promote.k"), ({"epochs": 9, "cpu": 0}, "promote.cpu.*> 0"),
                      ({"epochs": 9, "gpu": 1.5}, "promote.gpu"), ({"epochs": 9, "set": {"aug.flipp": 1}}, "promote.set.*aug.flipp"),
                      ({"epochs": 9, "set": {"aug.flip": 2}}, "promote.set.*aug.flip.*probability"),
                      ({"epochs": 9, "set": [1]}, "promote.set"),
                      ({"epochs": 9, "incumbent": 1}, r"promote.incumbent.*start: point \(0..0\), got 1"),
                      ({"epochs": 9, "min_gain": 0.02}, "promote.min_gain.*needs promote.incumbent"),
                      ({"epochs": 9, "incumbent": 0, "min_gain": -1}, "promote.min_gain.*>= 0")):
        with pytest.raises(SpaceError, match=frag):
            parse_space({**GOOD, "promote": doc}, "x")
    # a promoted trial's resources: its own where given, else the search trials'
    assert s.promote.resources(s.resources) == s.resources
    p = parse_space({**GOOD, "promote": {"top_k": 1, "epochs": 9, "cpu": 2}}, "x").promote
    assert (p.resources(s.resources).cpu, p.resources(s.resources).gpu) == (2, s.resources.gpu)
    assert parse_space({**GOOD, "promote": {"epochs": 9, "gpu": 0.5}}, "x").promote.resources(s.resources).gpu == 0.5
    p = parse_space({**GOOD, "promote": {"epochs": 9, "set": {"train.schedule": "cosine", "aug.flip": 0.5}}}, "x").promote
    assert dict(p.set) == {"train.schedule": "cosine", "aug.flip": 0.5}
    o = s.with_overrides(cpu=2, gpu=0.25, num_samples=3)
    assert (o.resources.cpu, o.resources.gpu, o.budget.num_samples) == (2, 0.25, 3)
    with pytest.raises(SpaceError, match="--gpus-per-trial.*resources.gpu"):
        s.with_overrides(gpu=1.5)
    with pytest.raises(SpaceError, match="--cpus-per-trial.*resources.cpu"):
        s.with_overrides(cpu=0)


def test_the_incumbent_is_promoted_unless_a_trial_beats_it_beyond_the_margin():
    from regtune.search.promote import promotion_order

    space = parse_space({**GOOD, "start": [{"train.lr": 0.05, "loss.similarity": "mse"},
                                           {"train.lr": 0.001, "loss.similarity": "ncc", "loss.ncc_window": 9}],
                         "promote": {"top_k": 2, "epochs": 9, "incumbent": 1, "min_gain": 0.02}}, "x")
    inc = {"train.lr": 0.001, "loss.similarity": "ncc", "loss.ncc_window": 9}

    def row(tid, score, status="completed", **params):
        return {"trial_id": tid, "score": score, "status": status, "params": params or {"train.lr": 0.01}}

    rows = [row("a", 0.682), row("b", 0.675), row("inc", 0.666, **inc), row("d", 0.9, "diverged_nan")]
    top, said = promotion_order(rows, space)
    assert [r["trial_id"] for r in top] == ["inc", "a"]  # a's +0.016 is within the margin; diverged never
    assert "trial inc" in said and "min_gain 0.02" in said and "trial a, by +0.0160" in said
    rows[0]["score"] = 0.70
    top, said = promotion_order(rows, space)
    assert [r["trial_id"] for r in top] == ["a", "inc"] and "1 trial(s) beat it" in said
    # the incumbent diverged: the ranking alone decides, and says so
    top, said = promotion_order([row("a", 0.6), row("inc", None, "diverged_nan", **inc), row("c", 0.5)], space)
    assert [r["trial_id"] for r in top] == ["a", "c"] and "has no score" in said
    # no incumbent named: plain ranking, no note
    plain = parse_space({**GOOD, "promote": {"top_k": 1, "epochs": 9}}, "x")
    assert [r["trial_id"] for r in promotion_order(rows, plain)[0]] == ["a"] and promotion_order(rows, plain)[1] == ""


def test_tpe_is_multivariate_grouped_and_lies_for_running_trials():
    from regtune.search.searcher import make_sampler

    tpe = make_sampler(seed=3, n_start=2)
    assert tpe._multivariate and tpe._group and tpe._constant_liar


def bad(**changes):
    doc = {k: (dict(v) if isinstance(v, dict) else v) for k, v in GOOD.items()}
    for path, value in changes.items():
        keys = path.split("/")
        d = doc
        for k in keys[:-1]:
            d[k] = dict(d[k])
            d = d[k]
        if value is DELETE:
            del d[keys[-1]]
        else:
            d[keys[-1]] = value
    return doc


DELETE = object()


@pytest.mark.parametrize("doc, fragment", [
    (bad(**{"params/train.lrr": {"type": "float", "low": 1, "high": 2}}), "key 'params.train.lrr': unknown training parameter; did you mean train.lr"),
    (bad(**{"params/train.lr": {"type": "float", "low": 0.1, "high": 0.01}}), "low must be < high"),
    (bad(**{"params/train.lr": {"type": "float", "low": 0, "high": 0.01, "log": True}}), "must be > 0 with log"),
    (bad(**{"params/train.lr": {"type": "float", "low": "a", "high": 0.01}}), "key 'params.train.lr.low': must be a number"),
    (bad(**{"params/train.lr": {"type": "floaty", "low": 1e-4, "high": 0.01}}), "must be float, int or categorical"),
    (bad(**{"params/train.lr": {"low": 1e-4, "high": 0.01}}), "params.train.lr.type': missing"),
    (bad(**{"params/train.lr": {"type": "float", "high": 0.01}}), "params.train.lr.low': missing"),
    (bad(**{"params/loss.similarity": {"type": "categorical", "choices": ["ncc", "ssim"]}}), "value 'ssim' is not valid"),
    (bad(**{"params/train.batch_size": {"type": "int", "low": 1.5, "high": 4}}), "must be a whole number"),
    (bad(**{"params/loss.ncc_window": {"type": "int", "low": 5, "high": 9, "when": {"loss.nothing": "ncc"}}}), "declared above"),
    (bad(**{"objective/metric": "val_accuracy"}), "objective.metric"),
    (bad(**{"budget/num_samples": 0}), "budget.num_samples"),
    (bad(**{"budget/trials": 3}), "budget.trials': unknown field"),
    (bad(**{"resources/gpu": 1.5}), "resources.gpu"),
    (bad(**{"base/train.epochs": 0}), "train.epochs"),
    (bad(**{"params": DELETE}), "key 'params': missing"),
    (bad(**{"searchspace": 1}), "unknown top-level key"),
    (bad(**{"start": [{"model.enc": [8]}]}), "is not a searched parameter"),
])
def test_invalid_spaces_give_one_clear_line(doc, fragment):
    with pytest.raises(SpaceError) as e:
        parse_space(doc, "bad.yaml")
    msg = str(e.value)
    assert fragment in msg and msg.startswith("bad.yaml") and "\n" not in msg


def test_file_errors(tmp_path):
    with pytest.raises(SpaceError, match="not found"):
        load_space(tmp_path / "none.yaml")
    p = tmp_path / "x.yaml"
    p.write_text("params: [\n")
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(p)


def test_define_by_run_respects_conditions():
    optuna = pytest.importorskip("optuna")
    s = parse_space(GOOD, "good.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        t = study.ask()
        DefineByRun(s.params)(t)
        p = t.params
        assert ("loss.ncc_window" in p) == (p["loss.similarity"] == "ncc")
        seen.add(p["loss.similarity"])
        study.tell(t, 0.0)
    assert seen == {"ncc", "mse"}


def test_node_local_storage_is_refused_on_multi_node_clusters():
    from regtune.search.ray_env import StudyError, check_storage, filesystem_type

    mounts = ("/dev/vda / ext4 rw 0 0\n"
              "server:/export /mnt/shared nfs4 rw 0 0\n"
              "s3fs /mnt/bucket fuse.s3fs rw 0 0\n")
    assert filesystem_type("/mnt/shared/studies", mounts) == "nfs4"
    assert filesystem_type("/home/me", mounts) == "ext4"
    check_storage("/home/me/runs", 1, mounts)  # single node: anything goes
    check_storage("s3://bucket/regtune", 3, mounts)
    check_storage("/mnt/shared/regtune", 3, mounts)
    check_storage("/mnt/bucket/regtune", 3, mounts)
    with pytest.raises(StudyError, match="node-local filesystem \\(ext4\\).*3 machines.*s3://"):
        check_storage("/home/me/runs", 3, mounts)


def test_cluster_hosts_counts_machines_not_nodes():
    """Several Ray nodes on one machine share its disk (the loopback test cluster); dead nodes don't count."""
    from types import SimpleNamespace

    from regtune.search.ray_env import cluster_hosts

    nodes = [{"NodeManagerAddress": "10.0.0.1", "Alive": True}, {"NodeManagerAddress": "10.0.0.1", "Alive": True},
             {"NodeManagerAddress": "10.0.0.2", "Alive": False}]
    assert cluster_hosts(SimpleNamespace(nodes=lambda: nodes)) == 1
    nodes[2]["Alive"] = True
    assert cluster_hosts(SimpleNamespace(nodes=lambda: nodes)) == 2


@pytest.mark.parametrize("epochs,grace,rf", [(5, 2, 2), (4, 2, 2), (3, 3, 2), (20, 1, 3), (12, 2, 4), (1, 1, 2)])
def test_figures_are_drawn_where_asha_can_stop_a_trial(epochs, grace, rf, tmp_path):
    """figure_epochs = Ray ASHA's own rungs (read from the scheduler) + the last epoch."""
    from ray.tune.schedulers import ASHAScheduler

    from regtune.search.space import load_space
    from regtune.search.trainable import figure_epochs

    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"name": "f", "base": {"train.epochs": epochs},
                                 "params": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2}},
                                 "budget": {"grace_period": grace, "reduction_factor": rf}}))
    asha = ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=min(grace, epochs), reduction_factor=rf)
    rungs = {int(m) for m, _ in asha._brackets[0]._rungs}
    assert figure_epochs(load_space(p)) == rungs | {epochs}
