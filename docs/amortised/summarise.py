"""Summarise the issue-12 must-show runs written by docs/amortised/run.sh.

Usage: .venv/bin/python docs/amortised/summarise.py OUT_DIR  (prints markdown, writes OUT_DIR/summary.json)
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

LOW, MID, HIGH = "0.01", "0.316228", "10"


def _json(p: Path) -> dict:
    return json.loads(p.read_text()) if p.is_file() else {}


def _wall(out: Path, name: str) -> float:
    t0, t1 = out / f"{name}.t0", out / f"{name}.t1"
    return float(t1.read_text()) - float(t0.read_text()) if t0.is_file() and t1.is_file() else math.nan


def main(out: Path) -> dict:
    res: dict = {"out": str(out), "commit": (out / "commit.txt").read_text().strip() if (out / "commit.txt").is_file() else ""}
    st = (out / "steptime.log").read_text() if (out / "steptime.log").is_file() else ""
    m = re.search(r"\{.*\}", st, re.S)
    res["steptime"] = json.loads(m.group(0)) if m else {}
    lines = ["## 1. One conditional network vs three ordinary ones (held-out test pairs)", ""]
    runs = {}
    for name in ("cond", f"fixed-{LOW}", f"fixed-{MID}", f"fixed-{HIGH}"):
        r = _json(out / name / "result.json")
        runs[name] = {"status": r.get("status"), "steps": r.get("steps"), "seconds": r.get("seconds"),
                      "best_epoch": r.get("best_epoch"), "s_per_step_incl_validation": (r.get("seconds") or math.nan) / max(r.get("steps") or 1, 1)}
    res["runs"] = runs
    lines.append("| run | status | steps | wall s | s/step (incl. validation) | best epoch |")
    lines.append("|---|---|---|---|---|---|")
    for k, r in runs.items():
        lines.append(f"| {k} | {r['status']} | {r['steps']} | {r['seconds'] or math.nan:.0f} | "
                     f"{r['s_per_step_incl_validation']:.3f} | {r['best_epoch']} |")
    if res["steptime"]:
        lines += ["", "Step time (interleaved, 5 steps x REPS each; s/step): " + ", ".join(
            f"{k} median {v['median_s']:.3f} (min {v['min_s']:.3f}, {v['params']} params)" for k, v in res["steptime"].items())]
    lines += ["", "| reg weight | conditional Dice | ordinary Dice | diff | within 0.015 | conditional SDlogJ | ordinary SDlogJ | "
              "ratio | within 15 % | cond. fold % | ord. fold % |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    comp = {}
    for lam in (LOW, MID, HIGH):
        c = _json(out / "eval" / f"cond-{lam}" / "summary.json").get("registered", {})
        f = _json(out / "eval" / f"fixed-{lam}" / "summary.json").get("registered", {})
        if not c or not f:
            continue
        dd = c["dice"] - f["dice"]
        ratio = c["sdlogj"] / f["sdlogj"] if f["sdlogj"] else math.nan
        comp[lam] = {"cond": {k: c[k] for k in ("dice", "hd95", "sdlogj", "folding_pct")},
                     "fixed": {k: f[k] for k in ("dice", "hd95", "sdlogj", "folding_pct")},
                     "dice_diff": dd, "sdlogj_ratio": ratio, "dice_ok": abs(dd) <= 0.015, "sdlogj_ok": abs(ratio - 1) <= 0.15}
        lines.append(f"| {float(lam):g} | {c['dice']:.4f} | {f['dice']:.4f} | {dd:+.4f} | {'yes' if abs(dd) <= 0.015 else 'NO'} | "
                     f"{c['sdlogj']:.4f} | {f['sdlogj']:.4f} | {ratio:.3f} | {'yes' if abs(ratio - 1) <= 0.15 else 'NO'} | "
                     f"{c['folding_pct']:.4f} | {f['folding_pct']:.4f} |")
    res["comparison"] = comp

    s = _json(out / "search" / "result.json")
    res["search"] = s
    wall = _wall(out, "search")
    err = (out / "search.err").read_text() if (out / "search.err").is_file() else ""
    m = re.search(r"Elapsed \(wall clock\) time.*: (.*)", err)
    lines += ["", "## 2. Inference-time search", ""]
    if s:
        lines.append(f"{s['n_tried']} weights on {s['search_pairs']} validation pairs in {s['seconds']:.1f} s "
                     f"({s['per_setting_ms']:.0f} ms each); best {len(s.get('refined', []))} re-scored on {s['val_pairs']} "
                     f"validation pairs in {s['refine_seconds']:.1f} s; whole command (data loading, test scoring, figures, "
                     f"MLflow) {wall:.0f} s{f' (/usr/bin/time: {m.group(1)})' if m else ''}.")
        lines.append(f"Chosen: {s['chosen']} (constraints {s['constraints']}); validation Dice {s['chosen_val']['dice']:.4f}, "
                     f"SDlogJ {s['chosen_val']['sdlogj']:.4f}, folding {s['chosen_val']['folding_pct']:.4f} %.")
        t = s.get("test", {})
        if t:
            lines.append(f"Held out ({s['test_pairs']} test pairs): Dice {t['dice']:.4f} (no registration "
                         f"{s['test_noreg']['dice']:.4f}), HD95 {t['hd95']:.2f}, SDlogJ {t['sdlogj']:.4f}, folding "
                         f"{t['folding_pct']:.4f} %.")

    lines += ["", "## 3. Cost to the same answer", ""]
    conv = conventional(out)
    res["conventional"] = conv
    cond_wall = _wall(out, "cond")
    target = s.get("test", {}).get("dice", math.nan) if s else math.nan
    if conv:
        lines.append("| trial | reg weight | status | wall s | best val Dice | test Dice | test fold % |")
        lines.append("|---|---|---|---|---|---|---|")
        for t in conv:
            lines.append(f"| {t['trial']} | {t['reg_weight']:.4g} | {t['status']} | {t['seconds']:.0f} | {t['val_dice']:.4f} | "
                         f"{t['test_dice']:.4f} | {t['test_folding_pct']:.4f} |")
        for label, ok in (("Dice within 0.01", lambda t: t["test_dice"] >= target - 0.01),
                          ("Dice within 0.01 and test folding <= 0.05 %",
                           lambda t: t["test_dice"] >= target - 0.01 and t["test_folding_pct"] <= 0.05)):
            hit = next((i for i, t in enumerate(conv) if ok(t)), None)
            cond_cost = cond_wall + wall
            if hit is None:
                conv_s = sum(t["seconds"] for t in conv)
                lines.append(f"- {label} of the conditional route's {target:.4f}: **not reached** in {len(conv)} trainings "
                             f"({conv_s:.0f} s); the conditional route took {cond_cost:.0f} s (training {cond_wall:.0f} s + search "
                             f"{wall:.0f} s); ratio > {conv_s / cond_cost:.2f}")
                res[f"ratio {label}"] = None
            else:
                conv_s = sum(t["seconds"] for t in conv[: hit + 1])
                lines.append(f"- {label} of the conditional route's {target:.4f}: reached by training #{hit + 1} "
                             f"(reg weight {conv[hit]['reg_weight']:.4g}), {conv_s:.0f} s of trainings; the conditional route "
                             f"{cond_cost:.0f} s (training {cond_wall:.0f} s + search {wall:.0f} s): ratio {conv_s / cond_cost:.2f}")
                res[f"ratio {label}"] = conv_s / cond_cost
    (out / "summary.json").write_text(json.dumps(res, indent=1, default=str))
    text = "\n".join(lines)
    (out / "summary.md").write_text(text + "\n")
    print(text)
    return res


def conventional(out: Path) -> list[dict]:
    db = out / "runs" / "mlflow.db"
    if not db.is_file():
        return []
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("conventional-reg")
    if exp is None:
        return []
    rows = []
    for r in client.search_runs([exp.experiment_id], filter_string="tags.`regtune.kind` = 'trial'", max_results=1000):
        m, p = r.data.metrics, r.data.params
        end = r.info.end_time or r.info.start_time
        rows.append({"trial": r.data.tags.get("regtune.trial_id", ""), "reg_weight": float(p.get("loss.reg_weight", "nan")),
                     "status": r.data.tags.get("regtune.status", ""), "seconds": (end - r.info.start_time) / 1000.0,
                     "val_dice": m.get("best_val_dice", math.nan), "test_dice": m.get("test_dice", math.nan),
                     "test_folding_pct": m.get("test_folding_pct", math.nan), "start": r.info.start_time})
    return sorted(rows, key=lambda t: t["start"])


if __name__ == "__main__":
    main(Path(sys.argv[1]))
