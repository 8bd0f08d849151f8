import pytest

from regtune.config import TrainConfig
from regtune.errors import ConfigError
from regtune.guard import DivergenceGuard


def test_guard_rules():
    g = DivergenceGuard(TrainConfig(rising_patience=2, rising_tolerance=0.05))
    ok = {"val_loss": 0.1, "val_dice": 0.7, "val_warped_intensity": 0.5, "val_moving_intensity": 0.5, "val_outside_pct": 0.0}

    def v(loss):
        return {**ok, "val_loss": loss}

    assert g.check(1.0, v(1.0))[0] == "running"
    assert g.check(0.8, v(0.8))[0] == "running"
    assert g.check(0.9, v(0.9))[0] == "running"  # rising 1
    st, why = g.check(0.95, v(0.95))
    assert st == "diverged_rising" and "2 epochs" in why
    g = DivergenceGuard(TrainConfig(rising_patience=2))
    for train_loss in (1.0, 1.5, 2.0, 2.5):  # noisy training loss, steady validation loss: not divergence
        assert g.check(train_loss, v(0.5))[0] == "running"
    g = DivergenceGuard(TrainConfig())
    assert g.check(1.0, {**ok, "val_warped_intensity": 0.1})[0] == "collapsed"
    assert g.check(1.0, {**ok, "val_outside_pct": 50.0})[0] == "collapsed"
    assert g.check(float("nan"), ok)[0] == "diverged_nan"
    g = DivergenceGuard(TrainConfig(rising_patience=2))
    for loss in (1.0, 1.2, 0.9, 1.2, 0.8):  # noisy but not persistently rising
        assert g.check(loss, v(loss))[0] == "running"


def test_guard_judges_a_rise_against_the_gain_not_the_sign_of_the_loss():
    ok = {"val_dice": 0.8, "val_warped_intensity": 0.5, "val_moving_intensity": 0.5, "val_outside_pct": 0.0}
    # the default recipe's val losses on the real data (NCC: they cross zero), epochs 1, 2, 56-61 of a
    # 50-minute run: a plateau's noise. 5 % of |best| (the old rule) called it diverged at epoch 61.
    plateau = (0.139, 0.011, -0.3435, -0.3426, -0.3412, -0.3241, -0.3177, -0.3258)
    g = DivergenceGuard(TrainConfig())
    assert all(g.check(0.0, {**ok, "val_loss": x})[0] == "running" for x in plateau)
    # a run that gives back its gain does diverge
    g = DivergenceGuard(TrainConfig())
    statuses = [g.check(0.0, {**ok, "val_loss": x})[0] for x in (0.14, 0.0, 0.05, 0.10, 0.14)]
    assert statuses == ["running"] * 4 + ["diverged_rising"], statuses
    # the brief's failure: a loss that rises from the first epoch on (no gain at all)
    g = DivergenceGuard(TrainConfig())
    statuses = [g.check(0.0, {**ok, "val_loss": x})[0] for x in (-0.30, -0.29, -0.28, -0.27)]
    assert statuses == ["running"] * 3 + ["diverged_rising"], statuses
    with pytest.raises(ConfigError, match="train.rising_tolerance"):
        TrainConfig(rising_tolerance=-0.1)
