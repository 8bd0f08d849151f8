"""The study's progress line in a log (stdout not a terminal): one line per interval, and a
diverged trial's floor score is never shown as the study's best."""

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
