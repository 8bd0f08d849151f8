"""Summarise the runs of docs/amortised/budgeted.py (markdown to stdout, OUT_DIR/summary.json).

Usage: .venv/bin/python docs/amortised/summarise_budgeted.py OUT_DIR
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

FIRST = ("0.01", "0.316228", "10")
GRID = ("0.01", "0.1", "0.316228", "0.562341", "1", "3.16228", "10")  # every ordinary training, by weight
# (eval prefix of the conditional run, weights, caption): budgeted.py makes "cond"; the other two
# are the follow-ups in the issue-12 note (trained with regtune train by hand, same recipe)
EXTRA = (("cond", FIRST, "range [0.01, 10] (log), T minutes"),
         ("cond2T", FIRST, "range [0.01, 10] (log), 2T minutes (the ordinary networks: T)"),
         ("condN", ("0.1", "0.562341", "3.16228"), "range [0.1, 3.16] (log), T minutes"),
         ("condE", FIRST, "range [0.01, 10] (log), T minutes, amortise.end_prob 0.5 (25 % of draws on each end)"))
COLS = ("dice", "dice30", "hd95", "sdlogj", "sdlogj_l2r", "folding_pct")


def _json(p: Path) -> dict:
    return json.loads(p.read_text()) if p.is_file() else {}


def _best_val(run: Path) -> dict:
    """The epoch best.pt holds (its validation metrics) from the run's history."""
    hist = run / "history.jsonl"
    res = _json(run / "result.json")
    if not hist.is_file():
        return {}
    rows = [json.loads(ln) for ln in hist.read_text().splitlines() if ln.strip()]
    be = res.get("best_epoch")
    return next((r for r in rows if r.get("epoch") == be), {})


def _compare(out: Path, prefix: str, lams) -> dict:
    rows = {}
    for lam in lams:
        c = _json(out / "eval" / f"{prefix}-{lam}" / "summary.json").get("registered")
        f = _json(out / "eval" / f"fixed-{lam}" / "summary.json").get("registered")
        if c and f:
            rows[lam] = {"cond": {k: c.get(k) for k in COLS}, "fixed": {k: f.get(k) for k in COLS},
                         "dice_diff": c["dice"] - f["dice"], "sdlogj_ratio": c["sdlogj"] / f["sdlogj"]}
    return rows


def main(out: Path) -> dict:
    plan, steptime = _json(out / "plan.json"), _json(out / "steptime.json")
    T = plan.get("minutes", math.nan)
    res: dict = {"plan": plan, "steptime": steptime, "commit": (out / "commit.txt").read_text().strip()}
    L = [f"T = {T:g} idle-CPU minutes per training (2 threads): {plan.get('ordinary_steps')} steps for an ordinary network, "
         f"{plan.get('conditional_steps')} for the conditional (FiLM) one -- trained as {plan.get('ordinary_epochs')} / "
         f"{plan.get('conditional_epochs')} epochs x 100 steps, batch 4, at 32^3.", ""]
    if steptime:
        L.append("Step time (Trainer.step, default recipe, 2 threads, interleaved medians): " + ", ".join(
            f"{k} {v['median_s']:.3f} s ({v['params']:,} parameters)" for k, v in steptime.items()))
        L.append("")
    L += ["## 1. One conditional network vs ordinary networks at three fixed weights (test pairs)", ""]
    res["comparison"] = {}
    for prefix, lams, what in EXTRA:
        rows = _compare(out, prefix, lams)
        if not rows:
            continue
        res["comparison"][prefix] = rows
        L += [f"**{what}**", "", "| reg weight | cond. Dice | ord. Dice | diff | within 0.015 | cond. SDlogJ | ord. SDlogJ | ratio | "
              "within 15 % | cond. HD95 | ord. HD95 | cond. fold % | ord. fold % |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for lam, r in rows.items():
            c, f, dd, ratio = r["cond"], r["fixed"], r["dice_diff"], r["sdlogj_ratio"]
            L.append(f"| {float(lam):g} | {c['dice']:.4f} | {f['dice']:.4f} | {dd:+.4f} | {'yes' if abs(dd) <= 0.015 else 'NO'} | "
                     f"{c['sdlogj']:.3f} | {f['sdlogj']:.3f} | {ratio:.2f} | {'yes' if abs(ratio - 1) <= 0.15 else 'NO'} | "
                     f"{c['hd95']:.2f} | {f['hd95']:.2f} | {c['folding_pct']:.4f} | {f['folding_pct']:.4f} |")
        L.append("")
    ev = _json(out / "eval" / f"fixed-{FIRST[0]}" / "summary.json")
    if ev:
        L.append(f"\n{ev['pairs']} pairs: {ev['pairs_are']}; no registration Dice {ev['no_registration']['dice']:.4f}.")

    s = _json(out / "search" / "result.json")
    res["search"] = s
    err = (out / "search.log").read_text() if (out / "search.log").is_file() else ""
    m = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", err)
    whole = re.search(r"# rc 0, ([0-9.]+) s", err)
    L += ["", "## 2. Inference-time search (validation pairs only)", ""]
    if s:
        L.append(f"{s['n_tried']} weights on {s['search_pairs']} validation pairs in {s['seconds']:.1f} s "
                 f"({s['per_setting_ms']:.0f} ms per weight); the best {len(s.get('refined', []))} re-scored on all "
                 f"{s['val_pairs']} validation pairs in {s['refine_seconds']:.1f} s; the whole command (loading, test scoring, "
                 f"figures, MLflow) {m.group(1) if m else '?'} wall.")
        L.append(f"Chosen: {s['chosen']} (constraints {s['constraints']}); validation Dice {s['chosen_val']['dice']:.4f}, "
                 f"SDlogJ {s['chosen_val']['sdlogj']:.3f}, folding {s['chosen_val']['folding_pct']:.4f} %.")
        t = s.get("test", {})
        if t:
            L.append(f"Held out ({s['test_pairs']} test pairs): Dice {t['dice']:.4f} (no registration "
                     f"{s['test_noreg']['dice']:.4f}), HD95 {t['hd95']:.2f}, SDlogJ {t['sdlogj']:.3f}, folding "
                     f"{t['folding_pct']:.4f} %.")
        res["search_wall"] = m.group(1) if m else None
        res["search_wall_s"] = float(whole.group(1)) if whole else None

    L += ["", "## 3. Cost to the same answer: the conventional route (one ordinary training per weight)", "",
          "| reg weight | best val Dice (epoch) | test Dice | test HD95 | test SDlogJ | test fold % |", "|---|---|---|---|---|---|"]
    conv = []
    for lam in GRID:
        e = _json(out / "eval" / f"fixed-{lam}" / "summary.json").get("registered")
        bv = _best_val(out / f"fixed-{lam}")
        if not e:
            continue
        conv.append({"reg_weight": float(lam), "val_score": bv.get("score", bv.get("val_dice", math.nan)),
                     "val_dice": bv.get("val_dice", math.nan), "epoch": bv.get("epoch"), **{f"test_{k}": e[k] for k in COLS}})
        c = conv[-1]
        L.append(f"| {float(lam):g} | {c['val_dice']:.4f} ({c['epoch']}) | {c['test_dice']:.4f} | {c['test_hd95']:.2f} | "
                 f"{c['test_sdlogj']:.3f} | {c['test_folding_pct']:.4f} |")
    res["conventional"] = conv
    target = s.get("test", {}).get("dice") if s else None
    if conv and target is not None:
        pick = max(conv, key=lambda c: c["val_score"] if c["val_score"] == c["val_score"] else -1e9)
        hits = [c for c in conv if c["test_dice"] >= target - 0.01]
        search_s = res.get("search_wall_s") or 0.0
        cond_cost = T * 60 + search_s
        L.append("")
        L.append(f"- The conditional route: one training (T = {T:g} min) + the search ({search_s:.0f} s) = "
                 f"{cond_cost / 60:.1f} min, held-out Dice {target:.4f}.")
        L.append(f"- The conventional grid ({len(conv)} trainings, {len(conv) * T:g} min) picks reg weight "
                 f"{pick['reg_weight']:g} by validation: held-out Dice {pick['test_dice']:.4f}.")
        L.append(f"- {len(hits)} of the {len(conv)} grid points reach the conditional route's held-out Dice within 0.01 "
                 f"({', '.join(format(c['reg_weight'], 'g') for c in hits) or 'none'}).")
        if hits:
            n = len(conv)
            expected = (n + 1) / (len(hits) + 1)  # draws without replacement until the first hit
            L.append(f"- Cost ratio, conventional / conditional: the grid {len(conv) * T * 60 / cond_cost:.1f}x; a study that draws "
                     f"grid points at random needs {expected:.1f} trainings on average before its first hit "
                     f"({expected * T * 60 / cond_cost:.1f}x), and it must train past the hit to know it is one.")
        res["target"] = target
        res["hits"] = [c["reg_weight"] for c in hits]
        res["grid_pick"] = pick
    text = "\n".join(L)
    (out / "summary.json").write_text(json.dumps(res, indent=1, default=str))
    (out / "summary.md").write_text(text + "\n")
    print(text)
    return res


if __name__ == "__main__":
    main(Path(sys.argv[1]))
