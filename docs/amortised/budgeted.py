"""Issue 12 must-show runs on the real data, budget-equivalent (robust to a busy machine).

    flock /tmp/regtune-long.lock .venv/bin/python docs/amortised/budgeted.py OUT_DIR [T_MINUTES]

A wall-clock budget measured while anything else runs on this 2-core machine silently
gets fewer steps, so every training here runs the number of steps that ``--max-minutes T``
gives on an *idle* machine (:mod:`benchmarks.budget`: the conditional network's step is
timed against the ordinary one, alternating in one process), in two lanes of one thread
each. Timed parts (the calibration, the step times, the weight search) hold the CPU lock
(``/tmp/regtune-cpu.lock``) and run with nothing else of this script running.

1. one conditional network (reg_weight over [0.01, 10], log) vs ordinary networks at
   0.01, 0.316 (the geometric middle) and 10, each T idle-minutes; all scored on the test
   pairs (subjects never trained on, never used to pick an epoch);
2. the inference-time search of N weights on the validation pairs (timed), its chosen
   weight scored on the test pairs;
3. the conventional route: more ordinary trainings on a log grid (0.1, 1, 3.16), so that
   with (1) the grid has 6 points; the trainings needed to reach the conditional route's
   held-out Dice within 0.01.

The summary: ``python docs/amortised/summarise_budgeted.py OUT_DIR``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

LOCK = "/tmp/regtune-cpu.lock"
RANGE = "loss.reg_weight=0.01:10:log"
FIRST = ("0.01", "0.316228", "10")  # must-show 1
GRID = ("0.1", "1", "3.16228")  # must-show 3, with FIRST a 6-point log grid


def sh(cmd: list[str], log: Path, timed: bool = False) -> None:
    cmd = ["flock", LOCK, *cmd] if timed else cmd
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        t0 = time.time()
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
        fh.write(f"# rc {rc}, {time.time() - t0:.1f} s\n")
    if rc != 0:
        raise SystemExit(f"failed ({rc}): {' '.join(cmd)} -- see {log}")


def main(out: Path, minutes: float, n: int = 256) -> None:
    repo = Path(__file__).resolve().parents[2]
    py = sys.executable
    data = str((repo / "../shared/data/learn2reg-hippocampus").resolve())
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    recipe = out / "recipe.yaml"
    if not recipe.is_file():
        recipe.write_text(subprocess.check_output([py, "-m", "regtune", "config"], text=True))
        (out / "commit.txt").write_text(subprocess.check_output(["git", "-C", str(repo), "log", "-1", "--format=%H %s"], text=True))
    # --- timed: the ordinary recipe alone, then the conditional one against it, then step times
    ref = out / "ref.json"
    if not ref.is_file():
        sh([py, "-m", "benchmarks.budget", "--data", data, "--ref-config", str(recipe), "--reference-only",
            "--json", str(ref)], log, timed=True)
    r = json.loads(ref.read_text())["reference"]
    refargs = ["--ref-config", str(recipe), "--ref-step", str(r["s_per_step"]), "--ref-val", str(r["val_seconds"])]
    cond_budget = out / "cond_budget.json"
    if not cond_budget.is_file():
        sh([py, "-m", "benchmarks.budget", "--data", data, "--minutes", str(minutes), *refargs,
            "--set", f"amortise.ranges=[{RANGE}]", "--json", str(cond_budget)], log, timed=True)
    steptime = out / "steptime.json"
    if not steptime.is_file():
        txt = subprocess.check_output(["flock", LOCK, py, str(repo / "docs/amortised/steptime.py"), data, "4"], text=True,
                                      cwd=repo)
        steptime.write_text(txt[txt.index("{"):])
    spe = 100
    ord_steps = int(minutes * 60.0 / (r["s_per_step"] + r["val_seconds"] / spe))
    cond_steps = json.loads(cond_budget.read_text())["steps"][str(float(minutes))]
    plan = {"minutes": minutes, "ordinary_steps": ord_steps, "conditional_steps": cond_steps,
            "ordinary_epochs": max(1, round(ord_steps / spe)), "conditional_epochs": max(1, round(cond_steps / spe))}
    (out / "plan.json").write_text(json.dumps(plan, indent=1))

    def train_and_score(name: str, sets: list[str], epochs: int, evals: dict[str, list[str]]) -> None:
        run = out / name
        jlog = out / f"{name}.log"
        if not (run / "result.json").is_file():
            sh(["nice", "-n", "5", py, "-m", "regtune", "train", "--data", data, "--config", str(recipe), "--out", str(run),
                "--quiet", *[a for s in sets for a in ("--set", s)], "--set", f"train.epochs={epochs}",
                "--set", "train.threads=1"], jlog)
        for ev, extra in evals.items():
            if not (out / "eval" / ev / "summary.json").is_file():
                sh(["nice", "-n", "5", py, "-m", "regtune", "evaluate", "--checkpoint", str(run / "best.pt"), "--data", data,
                    "--out", str(out / "eval" / ev), "--quiet", *extra], jlog)

    cond = ("cond", [f"amortise.ranges=[{RANGE}]"], plan["conditional_epochs"],
            {f"cond-{lam}": ["--set", f"loss.reg_weight={lam}"] for lam in FIRST})
    fixed = [(f"fixed-{lam}", [f"loss.reg_weight={lam}"], plan["ordinary_epochs"], {f"fixed-{lam}": []}) for lam in FIRST + GRID]
    with ThreadPoolExecutor(2) as pool:  # two lanes, one thread each
        futs = [pool.submit(train_and_score, *job) for job in [cond, *fixed]]
        for f in futs:
            f.result()
    # --- timed: the inference-time search on the validation pairs, nothing else running
    if not (out / "search" / "result.json").is_file():
        sh(["/usr/bin/time", "-v", py, "-m", "regtune", "search-weights", "--checkpoint", str(out / "cond" / "best.pt"),
            "--data", data, "--n", str(n), "--out", str(out / "search"), "--tracking-uri", f"sqlite:///{out / 'mlflow.db'}"],
           out / "search.log", timed=True)
    (out / "DONE").write_text(time.ctime())


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve(), float(sys.argv[2]) if len(sys.argv) > 2 else 6.0)
