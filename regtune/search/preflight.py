"""Refuse, before Ray starts, a study in which every trial would fail the same way."""

from __future__ import annotations

import math
from typing import Any

from ..errors import RegtuneError, StudyError
from .space import SearchSpace


def reference_point(space: SearchSpace) -> dict[str, Any]:
    """One setting of the searched parameters: each at its first choice, or the (geometric) middle of its range."""
    point: dict[str, Any] = {}
    for p in space.params:
        if any(point.get(k) != v for k, v in p.when):
            continue
        if p.type == "categorical":
            point[p.key] = p.choices[0]
        else:
            mid = math.sqrt(p.low * p.high) if p.log else 0.5 * (p.low + p.high)
            if p.step:
                mid = p.low + round((mid - p.low) / p.step) * p.step
            point[p.key] = int(round(mid)) if p.type == "int" else float(mid)
    return point


def preflight(space: SearchSpace, vols) -> None:
    """Refuse, before Ray starts, a study in which every trial would fail the same way:
    the core must accept, on this dataset, at least one of the settings a trial can have
    (the ``start:`` points and a reference point of the searched ranges): the config, the
    subject split, the model on these volumes and one loss evaluation. Otherwise the
    core's own one-line message stops the study."""
    import torch

    from ..train import split_for
    from ..trainer import Trainer

    points = [("reference point", reference_point(space))] + [(f"start[{i}]", dict(p)) for i, p in enumerate(space.start)]
    first = None
    for where, point in points:
        try:
            cfg = space.trial_config(point)
            split, val_pairs, _ = split_for(cfg, vols)
            tr = Trainer(cfg, vols, split, "cpu")
            with torch.no_grad():
                f, m = val_pairs[0]
                tr.loss(torch.tensor([f]), torch.tensor([m]))
            return
        except RegtuneError as e:
            first = first or (where, e)
    if first is not None:
        raise StudyError(f"{space.source}: every trial would fail ({first[0]}: {first[1]})") from None


__all__ = ["reference_point", "preflight"]
