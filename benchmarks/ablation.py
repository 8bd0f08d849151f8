"""Recipes compared at the same CPU budget, scored on the held-out test subjects.

    python -m benchmarks.ablation --data DATA --minutes 15 --out runs/ablation \\
        --recipe "old=@/path/to/old-checkpoint.pt" \\
        --recipe "ncc=" --recipe "aug=aug.flip=0.5,aug.rotate=5" ...

Each ``--recipe NAME=KEY=VALUE,KEY=VALUE`` is the reference config (``--ref-config``, a
config file, so the rows do not move when regtune's defaults change) with those overrides.
For each: (1) :mod:`benchmarks.budget` times its step and validation against a
reference recipe (``--ref-config``, timed on an idle machine: ``--ref-step`` s/step and
``--ref-val`` s per validation), alternating the two in one process, and converts
``--minutes`` into the steps ``regtune train --max-minutes`` would do here on an idle
machine; (2)
``regtune train`` runs exactly that many steps (``train.epochs`` x ``steps_per_epoch``,
the schedule annealing over them) -- so results do not depend on what else ran on the
machine meanwhile; (3) ``regtune evaluate`` scores ``best.pt`` on the run's reserved test
pairs (subjects never trained on, never used to pick an epoch). ``NAME=@CHECKPOINT``
scores an existing checkpoint instead (e.g. one trained by an older regtune).

The table (markdown, and JSON next to it) has Dice, Dice30, HD95, SDlogJ (std log det),
the organisers' SDlogJ (std log(det + 3)), % folding, the mean inverse-consistency error
(voxels), the self-registration displacement and the steps done.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

COLUMNS = (("dice", "Dice", 3), ("dice30", "Dice30", 3), ("hd95", "HD95", 2), ("sdlogj", "SDlogJ", 3),
           ("sdlogj_l2r", "SDlogJ (L2R, +3)", 3), ("folding_pct", "% folding", 3), ("ic_error", "IC error (vox)", 2),
           ("self_disp", "self-reg. |u| (vox)", 2), ("self_dice", "self-reg. Dice", 3))


LOCK = "/tmp/regtune-cpu.lock"  # timed measurements take turns on this machine's CPU
LONG_LOCK = "/tmp/regtune-long.lock"  # long runs take turns too (two at once only thrash 2 cores)


def _run(cmd: list[str], log: Path, timed: bool = False, lane: str = LONG_LOCK) -> None:
    """Timed commands hold the CPU lock; the rest (step-budgeted training, scoring) run one
    per lane at a lower priority: their results do not depend on how long they take."""
    cmd = ["flock", LOCK, *cmd] if timed else ["flock", lane, "nice", "-n", "10", *cmd]
    with log.open("a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if rc != 0:
        raise SystemExit(f"command failed ({rc}), see {log}: {' '.join(cmd)}")


def run_recipe(name: str, spec: str, data: str, minutes: float, out: Path, py: str, ref: list[str],
               lane: str = LONG_LOCK) -> dict:
    run = out / name
    run.mkdir(parents=True, exist_ok=True)
    log = run / "log.txt"
    if spec.startswith("@"):
        ck, steps = spec[1:], None
    else:
        sets = [s for s in spec.split(",") if s]
        cal_file = run / "budget.json"
        if not cal_file.is_file():
            _run([py, "-m", "benchmarks.budget", "--data", data, "--minutes", str(minutes), "--json", str(cal_file),
                  *ref, *[a for s in sets for a in ("--set", s)]], log, timed=True)
        cal = json.loads(cal_file.read_text())
        steps = cal["steps"][str(float(minutes))]
        spe = cal["steps_per_epoch"]
        epochs = max(1, round(steps / spe))
        if not (run / "train" / "result.json").is_file():
            _run([py, "-m", "regtune.cli", "train", "--data", data, "--out", str(run / "train"), "--quiet", "--config", ref[1],
                  *[a for s in sets for a in ("--set", s)], "--set", f"train.epochs={epochs}"], log, lane=lane)
        ck = str(run / "train" / "best.pt")
        steps = epochs * spe
    ev = run / "eval"
    if not (ev / "summary.json").is_file():
        _run([py, "-m", "regtune.cli", "evaluate", "--checkpoint", ck, "--data", data, "--out", str(ev), "--quiet"], log,
             lane=lane)
    s = json.loads((ev / "summary.json").read_text())
    row = {"recipe": name, "spec": spec, "steps": steps if steps is not None else s.get("steps"), "pairs": s["pairs"],
           "pairs_are": s["pairs_are"], **{k: s["registered"].get(k) for k, _, _ in COLUMNS}}
    if not spec.startswith("@"):
        row["s_per_step"] = json.loads((run / "budget.json").read_text())["s_per_step"]
    row["noreg_dice"] = s["no_registration"]["dice"]
    return row


def table(rows: list[dict], minutes: float) -> str:
    head = "| recipe | " + " | ".join(c[1] for c in COLUMNS) + " | steps |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for r in rows:
        vals = [("—" if r.get(k) is None else f"{r[k]:.{nd}f}") for k, _, nd in COLUMNS]
        lines.append(f"| {r['recipe']} | " + " | ".join(vals) + f" | {r['steps'] if r['steps'] is not None else '—'} |")
    if rows:
        lines.append(f"\nno registration: Dice {rows[0]['noreg_dice']:.3f}; {rows[0]['pairs']} pairs, {rows[0]['pairs_are']}; "
                     f"budget {minutes:g} CPU minutes per recipe (steps calibrated on this machine)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ablation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--minutes", type=float, default=15.0)
    p.add_argument("--out", required=True)
    p.add_argument("--recipe", action="append", default=[], metavar="NAME=OVERRIDES", help="repeatable, in table order")
    p.add_argument("--ref-config", required=True, metavar="YAML", help="the reference recipe the step times are relative to")
    p.add_argument("--ref-step", type=float, required=True, help="its s/step on an idle machine")
    p.add_argument("--ref-val", type=float, required=True, help="its s per validation on an idle machine")
    p.add_argument("--lane", default=LONG_LOCK, help="lock file of this run's lane: runs of one lane go one at a time "
                   "(two lanes = two trainings at once; training.threads=1 each pays on 2 cores)")
    a = p.parse_args(argv)
    ref = ["--ref-config", a.ref_config, "--ref-step", str(a.ref_step), "--ref-val", str(a.ref_val)]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in a.recipe:
        name, _, spec = r.partition("=")
        rows.append(run_recipe(name, spec, a.data, a.minutes, out, sys.executable, ref, a.lane))
        (out / "ablation.json").write_text(json.dumps(rows, indent=1))
        (out / "ablation.md").write_text(table(rows, a.minutes) + "\n")
        print(table(rows, a.minutes), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
