"""The study's progress line in a log (stdout not a terminal): one line per interval, a
diverged trial's floor score is never shown as the study's best, promotion shows epochs and time left."""

from types import SimpleNamespace

from regtune.objective import DIVERGED_SCORE
from regtune.search.outcome import SCORE_KEY
from regtune.search.space import parse_space
from regtune.search.tracking import StudyTracker

SPACE = {"name": "p", "params": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}


def _line(tracker, trials, capsys) -> str:
    tracker.progress(trials, force=True)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out
    return out[0]


def test_progress_line_never_calls_a_diverged_trial_best(tmp_path, capsys):
    tr = StudyTracker(parse_space(SPACE, "p.yaml"), f"sqlite:///{tmp_path / 'm.db'}", tmp_path)
    bad, good = SimpleNamespace(trial_id="bad", status="RUNNING"), SimpleNamespace(trial_id="good", status="RUNNING")
    tr.last = {"bad": {SCORE_KEY: DIVERGED_SCORE}}
    line = _line(tr, [bad, good], capsys)
    assert "no score yet" in line and "-1000000000" not in line and "running 2" in line
    tr.last["good"] = {SCORE_KEY: 0.61}
    line = _line(tr, [bad, good], capsys)
    assert line.endswith("best 0.6100 (trial good)"), line
    # within the interval and not forced: nothing (a log gets one line per interval, not one per epoch)
    tr.progress([bad, good])
    assert capsys.readouterr().out == ""


def test_promotion_line_gives_each_trial_its_epoch_of_the_full_budget_and_the_time_left(tmp_path, capsys):
    tr = StudyTracker(parse_space(SPACE, "p.yaml"), f"sqlite:///{tmp_path / 'm.db'}", tmp_path, kind="promoted")
    t = SimpleNamespace(trial_id="p0", status="RUNNING")
    tr.last = {"p0": {SCORE_KEY: 0.8, "epoch": 50, "epochs_total": 200}}
    tr.epoch_seconds = {"p0": 50 * 12.0}  # 12 s per epoch so far: 150 epochs left = 30 min
    line = _line(tr, [t], capsys)
    assert line.startswith(tuple("0123456789")) and " promotion 'p' " in line, line
    assert line.endswith("best 0.8000 (trial p0); p0 epoch 50/200, ~30 min left"), line
    # the search's lines do not carry it (its trials are short), nor a trial that has not reported
    tr.kind = "trial"
    assert _line(tr, [t], capsys).endswith("best 0.8000 (trial p0)")
    tr.kind, tr.last = "promoted", {}
    assert _line(tr, [t], capsys).endswith("no score yet")
