"""The divergence guard: after each epoch, whether a run has diverged (a non-finite loss, or a
validation loss that keeps giving back its gain) or collapsed (the black warp, or sample points
leaving the volume). The statuses it returns are :data:`regtune.train.STATUSES`."""

from __future__ import annotations

import math

from .config import TrainConfig


class DivergenceGuard:
    """Decides after each epoch whether training has diverged or collapsed.

    check(train_loss, val_metrics) -> (status, reason); status is "running" while fine.
    """

    def __init__(self, t: TrainConfig):
        self.t = t
        self.first_loss = math.nan  # the first epoch's validation loss: the scale of the gain
        self.best_loss = math.inf
        self.rising = 0

    def check(self, train_loss: float, val: dict[str, float]) -> tuple[str, str]:
        t = self.t
        if not all(math.isfinite(val.get(k, math.nan)) for k in ("val_loss", "val_dice")) or not math.isfinite(train_loss):
            return "diverged_nan", "non-finite training/validation loss or Dice"
        if val["val_warped_intensity"] < t.collapse_intensity * val["val_moving_intensity"]:
            return "collapsed", (f"mean warped intensity {val['val_warped_intensity']:.3f} fell below "
                                 f"{t.collapse_intensity:g} x moving intensity {val['val_moving_intensity']:.3f} (black warp)")
        if val["val_outside_pct"] > 100 * t.collapse_outside:
            return "collapsed", f"{val['val_outside_pct']:.1f}% of sample points left the volume (field collapse)"
        # "keeps rising" is judged on the validation loss: a fixed pair list, so it has no
        # pair-sampling noise (the epoch-mean training loss of a few dozen random pairs has).
        # A rise counts when it gives back more than rising_tolerance of the gain since the
        # first epoch: a scale of the loss's own, where |best| is none (an NCC loss crosses
        # zero; on the real data a 5 % of |best| band sat inside the plateau's noise and
        # stopped the default recipe as "diverged" at 31 of its 50 minutes). A loss that never
        # improved on its first epoch has no gain, so any persistent rise counts.
        loss = val["val_loss"]
        if math.isnan(self.first_loss):
            self.first_loss = loss
        if loss < self.best_loss:
            self.best_loss, self.rising = loss, 0
        elif loss > self.best_loss + t.rising_tolerance * (self.first_loss - self.best_loss):
            self.rising += 1
            if self.rising >= t.rising_patience:
                return "diverged_rising", (f"validation loss {loss:.4g} stayed above its best {self.best_loss:.4g} "
                                           f"for {self.rising} epochs")
        else:
            self.rising = 0
        return "running", ""
