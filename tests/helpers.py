"""Settings shared by tests."""
from __future__ import annotations

from dataclasses import fields

from regtune.config import AugConfig, Config

# every augmentation off (the default recipe turns some on): for tiny trainings of a few
# dozen steps, whose assertions were set without augmentation
NO_AUG = {f"aug.{f.name}": 0.0 for f in fields(AugConfig)}

# a tiny conditional network (16^3 training grid, one pair, few steps) for the amortised-weight tests
AMORTISED_TINY = {"model.enc": [8, 16, 16], "model.dec": [16, 16, 16, 16, 8], "data.val_subjects": 2, "data.val_pairs": 2,
                  "data.test_subjects": 2, "data.downsample": 2, "train.batch_size": 4, "loss.dice_weight": 0.0,
                  "train.lr": 3e-3, "loss.ncc_window": 5, "model.int_steps": 0,
                  **NO_AUG}  # one pair, few steps
RANGE = "loss.reg_weight=0.1:100:log"


def tiny_amortised(**kw) -> Config:
    return Config().with_values({**AMORTISED_TINY, **kw})
