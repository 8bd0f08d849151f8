"""The study's progress on stdout, from the tracking callback's view of the trials.

On a terminal: one line per epoch and a compact table every ``interval`` s. Otherwise (a
log file, CI): one summary line per ``interval`` s -- statuses, the best trial and, during
promotion, each promoted trial's epoch of its full budget and the time left.
"""

from __future__ import annotations

import math
import time

from ..objective import is_diverged_score
from .outcome import SCORE_KEY, ranked
from .store import is_tty


class ProgressLines:
    """Mixed into :class:`regtune.search.tracking.StudyTracker` (which holds ``space``,
    ``kind``, ``verbose``, ``interval``, ``state``, ``last``, ``epoch_seconds`` and the
    print clock ``_t0`` / ``_last_print``)."""

    def progress(self, trials, trial=None, result=None, force: bool = False) -> None:
        """On a terminal: one line per epoch and a table every ``interval`` s. Otherwise
        (a log file, CI): one summary line per ``interval`` s and nothing in between."""
        if not self.verbose:
            return
        now = time.monotonic()
        due = force or now - self._last_print >= self.interval
        if is_tty():
            if due:
                self.print_table(trials)
            elif trial is not None and result is not None:
                print(f"[{trial.trial_id}] epoch {result.get('epoch')}: score {result.get('score', math.nan):.4f}  "
                      f"best {result.get(SCORE_KEY, math.nan):.4f}  val Dice {result.get('val_dice', math.nan):.4f}  "
                      f"fold {result.get('val_folding_pct', math.nan):.3f}%  {result.get('status')}", flush=True)
            return
        if not due:
            return
        self._last_print = now
        counts: dict[str, int] = {}
        for t in trials:
            st = t.status if t.status in ("RUNNING", "PENDING", "PAUSED") else self.state.get("final_status", {}).get(
                t.trial_id, t.status.lower())
            counts[st.lower()] = counts.get(st.lower(), 0) + 1
        rows = [{"trial_id": t.trial_id, "score": self.last.get(t.trial_id, {}).get(SCORE_KEY)} for t in trials]
        # a diverged trial's -1e9 is never "best": until a trial scores, the line says so
        best = next((r for r in ranked(rows) if r["score"] is not None and not is_diverged_score(r["score"])), None)
        what = "promotion" if self.kind == "promoted" else "study"
        print(f"{time.strftime('%H:%M:%S')} {what} '{self.space.name}' {(now - self._t0) / 60:.1f} min: "
              + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
              + (f"; best {best['score']:.4f} (trial {best['trial_id']})" if best else "; no score yet")
              + (self._eta([t for t in trials if t.status == "RUNNING"]) if self.kind == "promoted" else ""), flush=True)

    def _eta(self, running) -> str:
        """Promotion is one long wait: each running trial's epoch of its full budget and the
        time left at its measured seconds per epoch."""
        parts = []
        for t in running:
            last = self.last.get(t.trial_id, {})
            e, total = int(last.get("epoch", 0)), int(last.get("epochs_total", 0) or 0)
            if e < 1 or total < 1:
                continue
            left = (total - e) * self.epoch_seconds.get(t.trial_id, 0.0) / e / 60
            parts.append(f"{t.trial_id} epoch {e}/{total}, ~{left:.0f} min left")
        return ("; " + "; ".join(parts)) if parts else ""

    def print_table(self, trials) -> None:
        """A compact live table: one row per trial, best score first."""
        self._last_print = time.monotonic()
        rows = []
        for t in trials:
            last = self.last.get(t.trial_id, {})
            st = str(last.get("status", "pending")) if t.status in ("RUNNING", "PENDING", "PAUSED") else \
                self.state.get("final_status", {}).get(t.trial_id, t.status.lower())
            p = ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                          for k, v in (t.config or {}).items() if not k.startswith("regtune."))
            rows.append({"trial_id": t.trial_id, "score": last.get(SCORE_KEY),
                         "line": f"{t.trial_id:10s} {t.status:10s} {st:15s} {int(last.get('epoch', 0)):3d} "
                                 f"{last.get(SCORE_KEY, math.nan):7.4f} {last.get('val_dice', math.nan):6.3f} "
                                 f"{last.get('val_folding_pct', math.nan):6.3f}  {p}"})
        print(f"\n{'trial':10s} {'ray':10s} {'status':15s} {'ep':>3s} {'best':>7s} {'Dice':>6s} {'fold%':>6s}  params", flush=True)
        for r in ranked(rows):
            print(r["line"], flush=True)
