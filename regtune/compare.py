"""Paired comparison of two evaluations on the same pairs (``regtune compare``).

Two recipes scored by ``regtune evaluate`` on the same pairs differ by a few thousandths of
Dice; whether that is a difference or noise is a *paired* question: per pair, A minus B,
then the mean of those differences and its standard error (the pairs share their
difficulty, so the paired error is several times smaller than either run's spread). This
module reads two ``pairs.csv`` files and answers it per metric, with the share of pairs on
which A is better (in the metric's own direction).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError

# per-pair columns of ``regtune evaluate``'s pairs.csv, and which way is better
HIGHER_IS_BETTER = ("dice", "dice_1", "dice_2", "self_dice")
LOWER_IS_BETTER = ("hd95", "hd95_1", "hd95_2", "sdlogj", "sdlogj_l2r", "folding_pct", "ic_error", "self_disp")
DEFAULT_METRICS = ("dice", "hd95", "sdlogj", "sdlogj_l2r", "folding_pct", "ic_error", "self_dice")


@dataclass(frozen=True)
class Paired:
    """One metric over the pairs both evaluations scored (non-finite values dropped pairwise)."""

    metric: str
    n: int
    mean_a: float
    mean_b: float
    diff: float  # mean over pairs of (A - B)
    se: float  # standard error of that mean (sample std / sqrt(n)); nan for n < 2
    a_better: int  # pairs on which A is strictly better, in the metric's direction
    b_better: int

    @property
    def z(self) -> float:
        """diff / se: about 2 or more in size is a difference the pairs' noise rarely makes."""
        return self.diff / self.se if self.se > 0 else math.nan


def read_pairs(path: str | Path) -> tuple[Path, dict[tuple[str, str], dict[str, float]]]:
    """``pairs.csv`` of an evaluation (the file, or the folder ``regtune evaluate --out`` wrote)
    as {(fixed, moving): {column: value}}."""
    p = Path(path)
    if p.is_dir():
        p = p / "pairs.csv"
    if not p.is_file():
        raise DataError(f"{p}: no such file; give an evaluation folder (regtune evaluate --out DIR) or its pairs.csv")
    with p.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"fixed", "moving"} <= set(reader.fieldnames):
            raise DataError(f"{p}: not a pairs.csv of regtune evaluate (needs columns fixed, moving and metrics; "
                            f"got {reader.fieldnames})")
        rows: dict[tuple[str, str], dict[str, float]] = {}
        for r in reader:
            vals = {}
            for k, v in r.items():
                if k in ("fixed", "moving"):
                    continue
                try:
                    vals[k] = float(v)
                except (TypeError, ValueError):
                    continue
            rows[(r["fixed"], r["moving"])] = vals
    if not rows:
        raise DataError(f"{p}: no pairs in it")
    return p, rows


def compare(a: dict[tuple[str, str], dict[str, float]], b: dict[tuple[str, str], dict[str, float]],
            metrics: tuple[str, ...] = DEFAULT_METRICS, names: tuple[str, str] = ("A", "B")) -> list[Paired]:
    """Per metric, the paired difference A - B over the pairs. The two must hold the same pairs
    (a paired comparison on different pairs compares the pairs, not the recipes)."""
    only_a, only_b = set(a) - set(b), set(b) - set(a)
    if only_a or only_b:
        raise DataError(f"{names[0]} and {names[1]} scored different pairs ({len(a)} and {len(b)}, {len(set(a) & set(b))} "
                        f"in common): evaluate both on the same pairs (the same --pairs CSV, or checkpoints of one split)")
    out = []
    for m in metrics:
        if m not in HIGHER_IS_BETTER and m not in LOWER_IS_BETTER:
            raise DataError(f"unknown metric {m!r}: choose from {', '.join(HIGHER_IS_BETTER + LOWER_IS_BETTER)}")
        xs = [(a[k][m], b[k][m]) for k in sorted(a) if m in a[k] and m in b[k]]
        xs = [(x, y) for x, y in xs if math.isfinite(x) and math.isfinite(y)]
        if not xs:
            continue  # an older pairs.csv without this column
        n = len(xs)
        d = [x - y for x, y in xs]
        mean = sum(d) / n
        se = math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1) / n) if n > 1 else math.nan
        sign = 1.0 if m in HIGHER_IS_BETTER else -1.0
        out.append(Paired(m, n, sum(x for x, _ in xs) / n, sum(y for _, y in xs) / n, mean, se,
                          sum(sign * v > 0 for v in d), sum(sign * v < 0 for v in d)))
    return out


def format_table(rows: list[Paired], names: tuple[str, str]) -> str:
    """The comparison as aligned text, one metric per line."""
    a, b = names
    lines = [f"{'metric':12s} {'pairs':>5s} {'A':>10s} {'B':>10s} {'A - B':>9s} {'± SE':>8s} {'z':>6s}  A better / B better"]
    for r in rows:
        nd = 2 if r.metric.startswith(("hd95", "ic_error", "self_disp")) else 4
        z = f"{r.z:+.1f}" if math.isfinite(r.z) else "-"
        lines.append(f"{r.metric:12s} {r.n:5d} {r.mean_a:10.{nd}f} {r.mean_b:10.{nd}f} {r.diff:+9.{nd}f} {r.se:8.{nd}f} {z:>6s}  "
                     f"{r.a_better} / {r.b_better}")
    direction = ", ".join(m for m in (r.metric for r in rows) if m in LOWER_IS_BETTER)
    lines.append(f"A = {a}, B = {b}; A - B is the mean per-pair difference and SE its standard error; "
                 f"lower is better for {direction or 'none of these'}, higher for the rest")
    return "\n".join(lines)
