"""Promotion budgets: a budget in minutes becomes whole epochs from the search's own pace."""

from __future__ import annotations

import pytest

from regtune.search.promote import epochs_for_minutes


def test_minutes_follow_the_promoted_epoch_length_not_the_search_one():
    # the search measured 8 s per epoch of 40 steps (0.2 s/step); promote.set makes epochs of
    # 200 steps (40 s each), so 20 minutes are 30 of them, not the 150 the search's epochs give
    n, said = epochs_for_minutes(20, 8.0, 40, 200, 5)
    assert n == 30
    assert "0.200 s/step" in said and "200 steps/epoch" in said and "30 epochs" in said
    assert epochs_for_minutes(20, 8.0, 40, 40, 5)[0] == 150


def test_minutes_never_give_fewer_epochs_than_the_search_trained():
    assert epochs_for_minutes(0.1, 8.0, 40, 200, 5)[0] == 5


@pytest.mark.parametrize("args", [(0, 8.0, 40, 200, 5), (20, 0.0, 40, 200, 5), (20, 8.0, 0, 200, 5)])
def test_a_budget_without_a_pace_is_refused(args):
    with pytest.raises(ValueError, match="must be > 0"):
        epochs_for_minutes(*args)
