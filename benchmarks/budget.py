"""How many training steps fit a wall-clock budget on this machine, per recipe.

    python -m benchmarks.budget --data DATA --minutes 15 [--set KEY=VALUE ...]

Times the product's own step (:class:`regtune.trainer.Trainer`) and its per-epoch
validation (``regtune.train._validate``) and prints the steps that ``--max-minutes M``
would give on an otherwise idle machine: M x 60 / (s/step + validation s / steps_per_epoch).

Why: a wall-clock budget measured while anything else runs on the machine (another
training, a test suite -- even at idle priority, on 2 cores) silently gets fewer steps.
Recipe comparisons therefore train for the calibrated number of steps (``train.epochs``
x ``train.steps_per_epoch``), the budget-equivalent run, whatever else happens meanwhile.

How: the recipe and a reference recipe (the default config) run in one process and
alternate step by step (and validation by validation), so interference hits both alike;
the recipe's time is its ratio to the reference times the reference's time on an idle
machine (``--ref-step``, ``--ref-val``: measure them once with ``--reference-only`` when
nothing else runs; it reports the CPU share other processes took while it timed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def _cpu_jiffies() -> tuple[int, int]:
    """(busy jiffies of the whole machine, jiffies of this process incl. its threads)."""
    with open("/proc/stat") as fh:
        parts = [int(x) for x in fh.readline().split()[1:]]
    busy = sum(parts) - parts[3] - (parts[4] if len(parts) > 4 else 0)
    with open(f"/proc/{os.getpid()}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return busy, int(f[11]) + int(f[12])


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def interleaved(cfgs: dict, vols, steps: int = 30, warmup: int = 3, vals: int = 2, device: str = "cpu") -> dict:
    """Median s/step and s/validation of each config, timed alternately in one process;
    plus the CPU share other processes used meanwhile."""
    from regtune.train import _validate, split_for
    from regtune.trainer import Trainer

    runs = {}
    for name, cfg in cfgs.items():
        split, val_pairs, _ = split_for(cfg, vols)
        runs[name] = (cfg, Trainer(cfg, vols, split, device), val_pairs)
    for _, tr, _ in runs.values():
        for _ in range(warmup):
            tr.step()
    busy0, own0 = _cpu_jiffies()
    t0 = time.perf_counter()
    st = {n: [] for n in runs}
    vt = {n: [] for n in runs}
    for _ in range(steps):
        for n, (_, tr, _) in runs.items():
            st[n].append(_timed(tr.step))
    for _ in range(vals):
        for n, (cfg, tr, vp) in runs.items():
            vt[n].append(_timed(lambda: _validate(cfg, tr, vols, vp)))
    busy1, own1 = _cpu_jiffies()
    wall = time.perf_counter() - t0
    other = max(0.0, (busy1 - busy0) - (own1 - own0)) / os.sysconf("SC_CLK_TCK") / (wall * (os.cpu_count() or 1))
    return {n: {"s_per_step": statistics.median(st[n]), "val_seconds": statistics.median(vt[n])} for n in runs} | {"other_cpu": other}


def steps_for(minutes: float, s_per_step: float, val_seconds: float, steps_per_epoch: int) -> int:
    return int(minutes * 60.0 / (s_per_step + val_seconds / steps_per_epoch))


def main(argv: list[str] | None = None) -> int:
    from regtune.config import Config
    from regtune.data import load_folder

    p = argparse.ArgumentParser(prog="python -m benchmarks.budget", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--minutes", type=float, nargs="+", default=[15.0])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--ref-config", metavar="YAML", help="the reference recipe (default: the default config)")
    p.add_argument("--ref-step", type=float, help="s/step of the reference (default config) on an idle machine")
    p.add_argument("--ref-val", type=float, help="s per validation of the reference on an idle machine")
    p.add_argument("--reference-only", action="store_true", help="time the reference alone (run it on an idle machine)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--json", metavar="FILE")
    a = p.parse_args(argv)
    ref_cfg = Config.load(a.ref_config, [f"data.root={a.data}"])
    cfg = Config.load(a.ref_config, [*a.overrides, f"data.root={a.data}"])  # the recipe: the reference + overrides
    vols = load_folder(Path(a.data), cfg.data)
    if a.reference_only:
        t = interleaved({"reference": ref_cfg}, vols, a.steps)
        out = {"reference": t["reference"], "other_cpu": t["other_cpu"]}
    else:
        if a.ref_step is None or a.ref_val is None:
            p.error("give --ref-step and --ref-val (from --reference-only on an idle machine)")
        t = interleaved({"reference": ref_cfg, "recipe": cfg}, vols, a.steps)
        ratio_step = t["recipe"]["s_per_step"] / t["reference"]["s_per_step"]
        ratio_val = t["recipe"]["val_seconds"] / t["reference"]["val_seconds"]
        s_step, s_val = a.ref_step * ratio_step, a.ref_val * ratio_val
        spe = cfg.train.steps_per_epoch
        out = {"s_per_step": s_step, "val_seconds": s_val, "ratio_step": ratio_step, "ratio_val": ratio_val,
               "timed": t, "ref_step": a.ref_step, "ref_val": a.ref_val, "overrides": a.overrides, "steps_per_epoch": spe,
               "steps": {str(m): steps_for(m, s_step, s_val, spe) for m in a.minutes}}
    print(json.dumps(out))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
