"""MLflow tracking of a study: one run per trial, also when the driver was killed between
creating a trial's run and writing the trial -> run mapping (a real SQLite MLflow store)."""

from types import SimpleNamespace

import pytest

from regtune.search.space import parse_space
from regtune.search.tracking import StudyTracker

SPACE = {"name": "t", "params": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}


class Killed(BaseException):
    """Stands for SIGKILL of the driver: nothing after it runs."""


def _trial(tid: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=tid, config={"train.lr": 0.001}, status="RUNNING")


def _runs_of(tracker: StudyTracker, tid: str) -> list:
    return tracker.client.search_runs([tracker.state["experiment_id"]], filter_string=f"tags.`regtune.trial_id` = '{tid}'")


def _killed_driver(tmp_path, uri: str, at: str) -> str:
    """A driver that starts the study and is killed inside its first trial's run creation."""
    tr = StudyTracker(parse_space(SPACE, "t.yaml"), uri, tmp_path / "study")
    parent = tr.start()

    def die(*a, **k):
        raise Killed

    if at == "params":  # after create_run, before the parameters are logged
        tr.client.log_batch = die
    else:  # after the parameters, before mlflow.json is written
        tr._save = die
    with pytest.raises(Killed):
        tr._run_id(_trial("a"))
    return parent


@pytest.mark.parametrize("at", ["params", "mapping"])
def test_resumed_driver_adopts_the_run_a_killed_driver_left_instead_of_opening_a_second(tmp_path, at):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = _killed_driver(tmp_path, uri, at)
    tr = StudyTracker(parse_space(SPACE, "t.yaml"), uri, tmp_path / "study")
    assert tr.start() == parent  # the resumed driver reopens the same parent run
    left = _runs_of(tr, "a")
    assert len(left) == 1 and "a" not in tr._map
    rid = tr._run_id(_trial("a"))
    assert rid == left[0].info.run_id and tr._map["a"] == rid
    runs = _runs_of(tr, "a")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    assert runs[0].data.params["train.lr"] == "0.001" and "train.epochs" in runs[0].data.params
    # a trial the killed driver never saw still gets a run of its own
    assert tr._run_id(_trial("b")) != rid and len(_runs_of(tr, "b")) == 1


def test_orphans_and_other_studies_runs_are_not_adopted(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _killed_driver(tmp_path, uri, "mapping")
    tr = StudyTracker(parse_space(SPACE, "t.yaml"), uri, tmp_path / "study")
    tr.start()
    left = _runs_of(tr, "a")[0].info.run_id
    tr.client.set_tag(left, "regtune.orphan", "true")  # reconcile() closed it: Ray never persisted that trial
    assert tr._run_id(_trial("a")) != left
    # another study of the same name (its own folder, its own parent run) shares the experiment
    other = StudyTracker(parse_space(SPACE, "t.yaml"), uri, tmp_path / "other")
    other.start()
    assert other._run_id(_trial("a")) not in (left, tr._map["a"])
