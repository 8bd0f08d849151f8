"""Settings shared by tests."""
from __future__ import annotations

from dataclasses import fields

from regtune.config import AugConfig

# every augmentation off (the default recipe turns some on): for tiny trainings of a few
# dozen steps, whose assertions were set without augmentation
NO_AUG = {f"aug.{f.name}": 0.0 for f in fields(AugConfig)}
