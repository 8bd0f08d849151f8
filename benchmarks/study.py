"""Study benchmark (section "study"): what a Ray Tune + Optuna + MLflow study costs on top of training.

Figures (real Ray, Optuna and MLflow; the data of the run: real hippocampus volumes when
present):

- **slot use / overhead**: with ``c`` concurrent trials over the fit time ``W`` the study
  reserves ``c x W`` trial-seconds; the time trials spend inside training epochs (training
  + validation, reported by each trial) is the useful part. Overhead = the rest: worker
  start-up, data hand-over, scheduling gaps, checkpoint reports. Set-up before the first
  trial (data loading, ``ray.init``, MLflow) is reported on its own.
- **start-up per trial**: overhead trial-seconds / number of trials.
- **trials per hour** at this trial length, with and without actor reuse (same run).
- **memory per trial as concurrency grows**: private memory (USS) and proportional set
  size (PSS) of each trial worker process sampled from /proc while the study runs, and
  the sum over workers. The dataset sits in Ray's shared-memory object store once per
  node; if trials copied it, each worker's USS would carry the dataset's size.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .common import Context, Row
from .sections import section


def _smaps(pid: int) -> tuple[int, int] | None:
    """(USS, PSS) in bytes from /proc/<pid>/smaps_rollup, or None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    kb: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            kb[parts[0][:-1]] = int(parts[1])
    uss = kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)
    return uss * 1024, kb.get("Pss", 0) * 1024


def _trial_workers() -> list[int]:
    """PIDs of Ray worker processes running a Tune function trainable."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if cmd.startswith(b"ray::ImplicitFunc"):
            out.append(int(d.name))
    return out


@dataclass
class MemorySampler:
    """Samples every trial worker's USS/PSS while a study runs (a background thread)."""

    every: float = 0.5
    peak_uss: dict[int, int] = field(default_factory=dict)
    peak_pss: dict[int, int] = field(default_factory=dict)
    peak_total_pss: int = 0
    peak_workers: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            total, n = 0, 0
            for pid in _trial_workers():
                m = _smaps(pid)
                if m is None:
                    continue
                uss, pss = m
                self.peak_uss[pid] = max(self.peak_uss.get(pid, 0), uss)
                self.peak_pss[pid] = max(self.peak_pss.get(pid, 0), pss)
                total += pss
                n += 1
            self.peak_total_pss = max(self.peak_total_pss, total)
            self.peak_workers = max(self.peak_workers, n)
            self._stop.wait(self.every)

    def __enter__(self) -> "MemorySampler":
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def study_space(path: Path, name: str, trials: int, concurrent: int, epochs: int, steps: int, cpu: float,
                tiny: bool) -> Path:
    base = {"train.epochs": epochs, "train.steps_per_epoch": steps, "data.val_pairs": 6, "loss.dice_weight": 1.0}
    if tiny:
        base.update({"model.enc": [8, 16, 16], "model.dec": [16, 16, 16, 16, 8], "model.int_steps": 0,
                     "data.val_subjects": 3, "data.val_pairs": 2, "data.test_subjects": 2, "train.batch_size": 2})
    doc = {"name": name, "base": base,
           # a safe range: every trial trains its full length (overhead is measured on real trials)
           "params": {"train.lr": {"type": "float", "low": 3e-4, "high": 1e-3, "log": True}},
           "objective": {"metric": "val_loss", "mode": "min"},
           "budget": {"num_samples": trials, "max_concurrent": concurrent, "grace_period": epochs, "reduction_factor": 2},
           "resources": {"cpu": cpu, "gpu": 0}, "seed": 0}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def dataset_bytes(data: str | None, runs: Path) -> int:
    from regtune.config import Config
    from regtune.data.source import load_data

    vols = load_data(Config().with_values({"data.root": data}).data, synthetic_dir=runs / "synthetic", progress=False)
    return int(vols.images.nbytes + vols.labels.nbytes)


def run_one(data: str | None, workdir: Path, name: str, trials: int, concurrent: int, epochs: int, steps: int,
            cpu: float, reuse: bool, tiny: bool) -> dict:
    """One study in a fresh local Ray; returns its timing and memory figures."""
    import ray

    from regtune.search.space import load_space
    from regtune.search.study import StudyOptions, run_study

    space = load_space(study_space(workdir / f"{name}.yaml", name, trials, concurrent, epochs, steps, cpu, tiny))
    opts = StudyOptions(space=space, data=data, runs_dir=workdir / "runs", verbose=0, reuse_actors=reuse)
    with MemorySampler() as mem:
        res = run_study(opts)
    ray.shutdown()
    flags = [json.loads(line).get("data_zero_copy") for f in Path(res.experiment_path).glob("*/result.json")
             for line in f.read_text().splitlines() if line.strip()]
    done = sum(1 for t in res.trials if t["status"] == "completed")
    use = res.slot_use()
    uss = sorted(mem.peak_uss.values())
    return {"name": name, "trials": len(res.trials), "completed": done, "concurrent": res.concurrency, "reuse_actors": reuse,
            "setup_s": res.seconds - res.fit_seconds, "fit_s": res.fit_seconds, "train_s": res.train_seconds,
            "slot_use": use, "overhead_frac": 1 - use, "startup_s_per_trial": (res.concurrency * res.fit_seconds - res.train_seconds) / max(1, len(res.trials)),
            "trials_per_hour": 3600 * len(res.trials) / res.fit_seconds if res.fit_seconds else float("nan"),
            "trial_train_s": res.train_seconds / max(1, len(res.trials)),
            "workers_seen": len(uss), "peak_workers": mem.peak_workers,
            "worker_uss_mb": uss[len(uss) // 2] / 2**20 if uss else float("nan"),
            "worker_uss_max_mb": uss[-1] / 2**20 if uss else float("nan"),
            "workers_total_pss_mb": mem.peak_total_pss / 2**20,
            "data_zero_copy": bool(flags) and all(v == 1 for v in flags)}


def measure(data: str | None, quick: bool = False, workdir: Path | None = None, log=print) -> dict:
    """The study section: actor reuse off/on at 2 concurrent trials, then memory at 1/2/4 concurrent."""
    tmp = Path(workdir or tempfile.mkdtemp(prefix="regtune-bench-study-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        return _measure(data, quick, tmp, log)
    finally:
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)


def _measure(data: str | None, quick: bool, tmp: Path, log) -> dict:
    tiny = quick or data is None
    # quick (the CI smoke run): the same code paths on tiny trials, one study per kind
    n, epochs, steps = (2, 1, 3) if quick else (4, 3, 40)
    out: dict = {"dataset_mb": dataset_bytes(data, tmp / "runs") / 2**20, "runs": []}
    for reuse in ((True,) if quick else (False, True)):
        log(f"study: {n} trials x {epochs} epochs x {steps} steps, 2 concurrent, reuse_actors={reuse} ...")
        out["runs"].append(run_one(data, tmp, f"overhead-reuse{int(reuse)}", n, 2, epochs, steps, 1.0, reuse, tiny))
    for conc in ((1,) if quick else (1, 2, 4)):
        log(f"study: memory with {conc} concurrent trial(s) ...")
        out["runs"].append(run_one(data, tmp, f"memory-c{conc}", conc, conc, 1, min(steps, 15), 2.0 / max(conc, 2) if conc > 1 else 1.0,
                                   True, tiny))
    return out


# ---- the benchmark section ------------------------------------------------------------------


def study_rows(out: dict) -> list[Row]:
    rows: list[Row] = []
    runs = {r["name"]: r for r in out["runs"]}
    for reuse in (0, 1):
        r = runs.get(f"overhead-reuse{reuse}")
        if r is None:
            continue
        group = f"study, {r['trials']} trials x {r['trial_train_s']:.0f} s training, {r['concurrent']} concurrent"
        variant = "actor reuse" if reuse else "new worker per trial"
        ex = {k: r[k] for k in ("setup_s", "fit_s", "train_s", "startup_s_per_trial", "trials_per_hour", "completed")}
        rows.append(Row("study", group, "regtune", "overhead", 100 * r["overhead_frac"], unit="% of trial slots",
                        variant=variant, extra=ex,
                        note="overhead = 1 - (time inside training epochs) / (concurrent x fit time); set-up "
                             "(data, ray.init, MLflow) before the first trial is extra (setup_s)"))
        rows.append(Row("study", group, "regtune", "start-up", r["startup_s_per_trial"], unit="s/trial", variant=variant))
        rows.append(Row("study", group, "regtune", "trials/hour", r["trials_per_hour"], unit="", better="higher",
                        variant=variant))
    for name, r in sorted(runs.items()):
        if not name.startswith("memory-c"):
            continue
        group = f"study memory (dataset {out['dataset_mb']:.0f} MB in the object store)"
        rows.append(Row("study", group, "regtune", "worker USS", r["worker_uss_mb"], unit="MB/trial",
                        variant=f"{r['concurrent']} concurrent", extra={"worker_uss_max_mb": r["worker_uss_max_mb"],
                        "workers_total_pss_mb": r["workers_total_pss_mb"], "peak_workers": r["peak_workers"],
                        "dataset_mb": out["dataset_mb"], "data_zero_copy": r["data_zero_copy"]},
                        note="USS: private memory of one trial worker (a copied dataset would add its size per trial); "
                             "PSS sum: all trial workers together, shared pages split among them"))
        rows.append(Row("study", group, "regtune", "all workers PSS", r["workers_total_pss_mb"], unit="MB",
                        variant=f"{r['concurrent']} concurrent"))
        rows.append(Row("study", group, "regtune", "dataset copies per trial", 0.0 if r["data_zero_copy"] else 1.0,
                        variant=f"{r['concurrent']} concurrent",
                        note="0: every trial reported its arrays as read-only object-store views (data_zero_copy)"))
    return rows


@section("study", "Studies: overhead, trials/hour, memory per trial as concurrency grows (real Ray + Optuna + MLflow)")
def run(ctx: Context) -> list[Row]:
    try:
        import ray  # noqa: F401
        import optuna  # noqa: F401
        import mlflow  # noqa: F401
    except ImportError as e:
        return [Row("study", "study", "regtune", "overhead", None, status="not installed",
                    note=f"the study stack is missing ({e.name}): pip install -e '.[study]'")]
    data = str(ctx.data_root) if ctx.data_root is not None and not ctx.quick else None
    out = measure(data, quick=ctx.quick, log=ctx.log)  # studies in a temporary folder, removed afterwards
    return study_rows(out)
