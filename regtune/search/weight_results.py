"""What an inference-time weight search is told and what it gives back: its settings
(:class:`SearchSettings`), one scored weight setting (:class:`Point`) and the whole result
(:class:`SearchResult`). The search itself is :func:`regtune.search.weight_search.search_weights`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..amortise import WeightRange
from ..data.pairs import Pair
from ..errors import ConfigError
from ..objective import Objective

CURVE_KEYS = ("dice", "hd95", "sdlogj", "sdlogj_l2r", "folding_pct")


def mean_scores(rows: list[dict]) -> dict[str, float]:
    """The means over pairs of the per-pair rows of :func:`regtune.evaluate.evaluate_pairs`
    that a search reports (the curve's metrics, Dice's spread and its 30th percentile)."""
    from ..evaluate import summarise

    s = summarise(rows)
    return {k: s.get(k, math.nan) for k in (*CURVE_KEYS, "dice_std", "dice30")}


@dataclass(frozen=True)
class SearchSettings:
    """n: weight settings tried; pairs: validation pairs each is scored on (0 = all; the
    same pairs for every setting, so the curve is smooth); grid: of the n, how many are a
    log/linear grid over the range first (-1 = n // 4; one amortised weight only: with
    several the first settings are TPE's random start-up); per_round: settings asked
    from Optuna before telling it their scores; refine: best feasible settings re-scored
    on all validation pairs; max_folding_pct / max_sdlogj / max_sdlogj_l2r: hard constraints
    (None = off; ``sdlogj`` is std(log det J), ``sdlogj_l2r`` the organisers' std(log(det J + 3)));
    batch: network batch size."""

    n: int = 256
    pairs: int = 8
    grid: int = -1
    per_round: int = 16
    refine: int = 5
    max_folding_pct: float | None = 0.05
    max_sdlogj: float | None = None
    max_sdlogj_l2r: float | None = None
    batch: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ConfigError(f"--n {self.n}: try at least 2 weight settings")
        if self.pairs < 0:
            raise ConfigError(f"--pairs {self.pairs}: must be >= 0 (0 = all validation pairs)")
        if self.per_round < 1 or self.batch < 1 or self.refine < 1:
            raise ConfigError("--per-round, --batch and --refine must be >= 1")
        for k in ("max_folding_pct", "max_sdlogj", "max_sdlogj_l2r"):
            v = getattr(self, k)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"--{k.replace('_', '-')} {v}: must be a number >= 0")

    def constraints(self, m: dict[str, float]) -> dict[str, float]:
        """Optuna's convention: each value <= 0 means satisfied."""
        out = {}
        if self.max_folding_pct is not None:
            out["folding_pct"] = m["folding_pct"] - self.max_folding_pct
        if self.max_sdlogj is not None:
            out["sdlogj"] = m["sdlogj"] - self.max_sdlogj
        if self.max_sdlogj_l2r is not None:
            out["sdlogj_l2r"] = m["sdlogj_l2r"] - self.max_sdlogj_l2r
        return {k: v if math.isfinite(v) else 1e9 for k, v in out.items()}

    def violation(self, m: dict[str, float]) -> float:
        """How far ``m`` breaks the constraints: the sum of each excess over its limit, relative
        to the limit (0 = feasible). With no feasible setting the search reports the one with the
        least of it, so an SDlogJ cap is respected as nearly as the range allows."""
        limits = {"folding_pct": self.max_folding_pct, "sdlogj": self.max_sdlogj, "sdlogj_l2r": self.max_sdlogj_l2r}
        return sum(max(0.0, c) / max(limits[k], 1e-9) for k, c in self.constraints(m).items())

    def describe(self) -> str:
        c = []
        if self.max_folding_pct is not None:
            c.append(f"folding <= {self.max_folding_pct:g}%")
        if self.max_sdlogj is not None:
            c.append(f"SDlogJ <= {self.max_sdlogj:g}")
        if self.max_sdlogj_l2r is not None:
            c.append(f"SDlogJ (L2R) <= {self.max_sdlogj_l2r:g}")
        return " and ".join(c) or "none"


@dataclass
class Point:
    """One weight setting and its mean scores on the pairs it was scored on."""

    values: dict[str, float]
    metrics: dict[str, float]
    score: float
    feasible: bool
    trial: int = -1
    pairs: int = 0

    def row(self) -> dict[str, Any]:
        return {"trial": self.trial, **self.values, **{k: self.metrics.get(k, math.nan) for k in CURVE_KEYS},
                "score": self.score, "feasible": int(self.feasible), "pairs": self.pairs}


@dataclass
class SearchResult:
    ranges: tuple[WeightRange, ...]
    settings: SearchSettings
    objective: Objective
    points: list[Point]  # every setting tried, on the search pairs, in the order tried
    refined: list[Point]  # the best few, re-scored on all validation pairs
    chosen: Point  # the chosen setting, on all validation pairs
    noreg: dict[str, float]  # no-registration scores on the search pairs
    noreg_val: dict[str, float]  # ... on all validation pairs
    seconds: float  # the search itself (settings tried on the search pairs)
    refine_seconds: float
    search_pairs: list[Pair] = field(default_factory=list)
    val_pairs: list[Pair] = field(default_factory=list)
    test: dict[str, float] = field(default_factory=dict)  # chosen setting on the test pairs (held out)
    test_noreg: dict[str, float] = field(default_factory=dict)
    test_pairs: int = 0
    any_feasible: bool = True
    # with --match: the reference's checkpoint, val and test scores, and the paired test Dice
    # difference chosen - reference (regtune.compare.Paired's fields; None without test pairs)
    reference: dict[str, Any] = field(default_factory=dict)

    @property
    def chosen_on_curve(self) -> Point | None:
        """The chosen setting as scored on the search pairs (the curve's point), if it was tried there."""
        return next((p for p in self.points if p.trial == self.chosen.trial), None)

    def summary(self) -> dict[str, Any]:
        return {"keys": [r.key for r in self.ranges], "ranges": [r.spec for r in self.ranges],
                "settings": asdict(self.settings), "objective": self.objective.describe(),
                "constraints": self.settings.describe(), "n_tried": len(self.points),
                "search_pairs": len(self.search_pairs), "val_pairs": len(self.val_pairs),
                "seconds": self.seconds, "refine_seconds": self.refine_seconds,
                "per_setting_ms": 1000 * self.seconds / max(len(self.points), 1),
                "chosen": self.chosen.values, "chosen_val": self.chosen.metrics, "chosen_score": self.chosen.score,
                "chosen_feasible": self.chosen.feasible, "any_feasible": self.any_feasible,
                "noreg_val": self.noreg_val, "test": self.test, "test_noreg": self.test_noreg,
                "test_pairs": self.test_pairs, **({"reference": self.reference} if self.reference else {})}
