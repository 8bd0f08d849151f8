"""The small parts of a search-space file: its error type, ``budget:``, ``resources:`` and
``promote:`` blocks, and the checks of single fields (``regtune.search.space`` parses the whole file).

This module imports neither Ray nor Optuna.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from ..config import Config
from ..errors import ConfigError

PROMOTE_MODES = ("continue", "retrain")


class SpaceError(ConfigError):
    """A search-space file is invalid."""


@dataclass(frozen=True)
class Budget:
    num_samples: int = 8
    max_concurrent: int = 2
    grace_period: int = 2
    reduction_factor: int = 2
    time_limit_minutes: float = 0.0


@dataclass(frozen=True)
class Resources:
    cpu: float = 1.0
    gpu: float = 0.0


@dataclass(frozen=True)
class Promote:
    """``promote:``: after the search, train the ``top_k`` best trials to a full budget.

    epochs / minutes: the full budget (one of them); minutes are turned into epochs from
    the trial's own measured seconds per epoch, so the promoted config is reproducible.
    mode: ``continue`` from the trial's last checkpoint (same steps as a fresh run when the
    learning-rate schedule is constant; other schedules are retrained) or ``retrain`` from scratch.
    cpu / gpu: resources of each promoted trial (0 / unset: the search trials' ``resources``);
    a single promoted trial can take the whole machine the search shared between trials.
    set: config values for the promoted trials only (``{train.schedule: cosine, aug.flip:
    0.5}``): levers that pay only over the full budget; a trial given any is retrained.
    incumbent / min_gain: ``start[incumbent]`` is the recipe in hand (0-based; -1 = none): a
    trial takes its place among the promoted only if it scores more than ``min_gain`` above it
    (the spread of replicated short trials), so a win within the noise of a short trial
    does not replace a recipe known to train well at full length (:func:`promotion_order`).
    """

    top_k: int = 1
    epochs: int = 0
    minutes: float = 0.0
    mode: str = "continue"
    cpu: float = 0.0
    gpu: float | None = None
    set: tuple[tuple[str, Any], ...] = ()
    incumbent: int = -1
    min_gain: float = 0.0

    def resources(self, search: "Resources") -> "Resources":
        return Resources(cpu=self.cpu or search.cpu, gpu=search.gpu if self.gpu is None else self.gpu)


def _err(src: str, key: str, msg: str) -> SpaceError:
    return SpaceError(f"{src}: key '{key}': {msg}")


def _num(src: str, key: str, v: Any, integer: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        raise _err(src, key, f"must be a {'whole ' if integer else ''}number, got {v!r}")
    if integer and not float(v).is_integer():
        raise _err(src, key, f"must be a whole number, got {v!r}")
    return int(v) if integer else float(v)


def _mapping(src: str, key: str, v: Any) -> Mapping:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise _err(src, key, f"must be a mapping, got {type(v).__name__}")
    return v


def _check_budget(b: Budget, src: str) -> None:
    if b.num_samples < 1:
        raise _err(src, "budget.num_samples", f"must be >= 1, got {b.num_samples}")
    if b.max_concurrent < 1:
        raise _err(src, "budget.max_concurrent", f"must be >= 1, got {b.max_concurrent}")
    if b.grace_period < 1:
        raise _err(src, "budget.grace_period", f"must be >= 1 epoch, got {b.grace_period}")
    if b.reduction_factor < 2:
        raise _err(src, "budget.reduction_factor", f"must be >= 2, got {b.reduction_factor}")
    if b.time_limit_minutes < 0:
        raise _err(src, "budget.time_limit_minutes", f"must be >= 0 (0 = none), got {b.time_limit_minutes}")


GPU_RULE = "must be >= 0 (a fraction <= 1 shares one GPU, or a whole number)"


def _gpu_ok(g: float) -> bool:
    return math.isfinite(g) and g >= 0 and (g <= 1 or float(g).is_integer())


def _check_resources(r: Resources, src_cpu: str, src_gpu: str) -> None:
    if not (math.isfinite(r.cpu) and r.cpu > 0):
        raise SpaceError(f"{src_cpu}: resources.cpu must be > 0, got {r.cpu:g}")
    if not _gpu_ok(r.gpu):
        raise SpaceError(f"{src_gpu}: resources.gpu {GPU_RULE}, got {r.gpu:g}")


def parse_promote(src: str, doc: Any, base: Config, start: tuple[dict, ...] = ()) -> Promote | None:
    if doc is None:
        return None
    doc = _mapping(src, "promote", doc)
    allowed = {"top_k": True, "epochs": True, "minutes": False, "mode": None, "cpu": False, "gpu": False, "set": None,
               "incumbent": True, "min_gain": False}
    for k in doc:
        if k not in allowed:
            raise _err(src, f"promote.{k}", f"unknown field (allowed: {', '.join(allowed)})")
    vals = {k: _num(src, f"promote.{k}", v, allowed[k]) for k, v in doc.items() if k not in ("mode", "set")}
    sets = dict(_mapping(src, "promote.set", doc.get("set") or {}))
    try:
        base.with_values(sets, source=f"{src} promote.set")
    except ConfigError as e:
        raise SpaceError(str(e)) from None
    p = Promote(**vals, mode=doc.get("mode", "continue"), set=tuple(sets.items()))
    if p.top_k < 1:
        raise _err(src, "promote.top_k", f"must be >= 1, got {p.top_k}")
    if (p.epochs > 0) == (p.minutes > 0):
        raise _err(src, "promote", "give the full budget as one of epochs: N or minutes: M (> 0)")
    if p.epochs and p.epochs < base.train.epochs:
        raise _err(src, "promote.epochs", f"must be >= the search's train.epochs ({base.train.epochs}), got {p.epochs}")
    if p.epochs < 0 or p.minutes < 0:
        raise _err(src, "promote", "epochs and minutes must be > 0")
    if "incumbent" in doc and not 0 <= p.incumbent < len(start):
        raise _err(src, "promote.incumbent", f"must index a start: point (0..{len(start) - 1}), got {p.incumbent}"
                   if start else "names a start: point, but the space has no start: list (add the recipe in hand there)")
    if p.min_gain < 0:
        raise _err(src, "promote.min_gain", f"must be >= 0 (a score margin), got {p.min_gain:g}")
    if p.min_gain > 0 and p.incumbent < 0:
        raise _err(src, "promote.min_gain", "needs promote.incumbent: the start: point a trial must beat by that margin")
    if p.mode not in PROMOTE_MODES:
        raise _err(src, "promote.mode", f"must be one of {', '.join(PROMOTE_MODES)}, got {p.mode!r}")
    if "cpu" in doc and not p.cpu > 0:
        raise _err(src, "promote.cpu", f"must be > 0 (leave it out to use resources.cpu), got {p.cpu:g}")
    if p.gpu is not None and not _gpu_ok(p.gpu):
        raise _err(src, "promote.gpu", f"{GPU_RULE}, got {p.gpu:g}")
    return p
