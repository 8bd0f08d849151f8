"""A study's trials as rows (status, score, best metrics, from the tracker's MLflow state)
and the table ``regtune search`` prints."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .outcome import ranked, short_error, trial_score


def trial_rows(tracker, kind_map: str = "trials") -> list[dict]:
    """One row per Ray trial the tracker saw, with the status and score it recorded in MLflow."""
    rows = []
    fs, scores = tracker.state.get("final_status", {}), tracker.state.get("scores", {})
    runs = tracker.state.get(kind_map, {})
    for t in getattr(tracker, "trials_seen", []):
        last = tracker.last.get(t.trial_id) or dict(t.last_result or {})
        status = fs.get(t.trial_id, "interrupted" if tracker.interrupted else "running")
        score = scores.get(t.trial_id, trial_score(status, last) if status != "running" else None)
        row: dict[str, Any] = {"trial_id": t.trial_id, "params": {k: v for k, v in (t.config or {}).items()},
                               "status": status, "score": score, "epochs": int(last.get("epoch", 0) or 0),
                               "best_epoch": int(last.get("best_epoch", 0) or 0), "run_id": runs.get(t.trial_id, ""),
                               "reason": str(last.get("reason", "")), "train_seconds": tracker.epoch_seconds.get(t.trial_id, 0.0)}
        for k in ("val_dice", "val_hd95", "val_sdlogj", "val_folding_pct"):
            v = last.get(f"best_{k}")
            if isinstance(v, (int, float)):
                row[k] = float(v)
        if status == "error":
            row["error"] = _trial_error(t)
        rows.append(row)
    return rows


def _trial_error(t) -> str:
    try:
        p = Path(t.local_path) / "error.txt"
        if p.is_file():
            return short_error(p.read_text())
    except Exception:  # noqa: BLE001
        pass
    return short_error(getattr(t, "error_msg", None) or "failed")


def format_table(res, k: int = 50) -> str:
    lines = []
    counts = res.counts()
    lines.append(f"study '{res.name}': {len(res.trials)} trials in {res.seconds / 60:.1f} min  "
                 + "  ".join(f"{s}={n}" for s, n in sorted(counts.items())))
    if res.fit_seconds > 0 and math.isfinite(res.slot_use()):
        lines.append(f"time: {res.seconds - res.fit_seconds:.0f} s outside the search's trials (data, Ray, MLflow, promotion, "
                     f"test scores), {res.fit_seconds:.0f} s of trials at {res.concurrency} concurrent; "
                     f"{100 * res.slot_use():.0f}% of trial slots spent training, "
                     f"{100 * (1 - res.slot_use()):.0f}% start-up/scheduling/checkpoint overhead")
    lines.append("score = the objective of each trial's best epoch (its best.pt); diverged trials score -1e9")
    hdr = f"{'trial':12s} {'status':15s} {'ep':>3s} {'best':>4s} {'score':>8s} {'Dice':>6s} {'HD95':>6s} {'SDlogJ':>6s} {'fold%':>6s}  params"
    lines.append(hdr)
    for t in res.best(k):
        lines.append(_row_line(t))
    if res.promoted:
        lines.append("promoted (full budget):")
        lines.append(hdr)
        for t in ranked(res.promoted):
            lines.append(_row_line(t))
    return "\n".join(lines)


def _row_line(t: dict) -> str:
    p = ", ".join(f"{a.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{a.split('.')[-1]}={v}"
                  for a, v in t["params"].items() if not a.startswith("regtune."))
    if t["params"].get("regtune.promote_from"):
        p = f"from {t['params']['regtune.promote_from']}: " + p
    sc = t.get("score")
    return (f"{t['trial_id']:12s} {t['status']:15s} {t['epochs']:3d} {t.get('best_epoch', 0):4d} "
            f"{(f'{sc:8.4f}' if sc is not None and sc > -1e8 else ('   -1e9 ' if sc is not None else '      — '))} "
            f"{t.get('val_dice', math.nan):6.3f} {t.get('val_hd95', math.nan):6.2f} {t.get('val_sdlogj', math.nan):6.3f} "
            f"{t.get('val_folding_pct', math.nan):6.3f}  {p}")


__all__ = ["trial_rows", "format_table"]
