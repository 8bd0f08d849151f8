"""Run (or resume) a study: Ray Tune + OptunaSearch + ASHA, tracked in MLflow.

Folder of a study (default ``regtune-runs/studies/<name>/``)::

    ray/<name>/        Ray's experiment (trial checkpoints, results, tuner state)
    optuna.db          the persisted Optuna study (SQLite)
    mlflow.json        MLflow parent run id and trial -> run ids
    space.yaml         the space file as run
    study.json         how the study was started (data, tracking URI, storage)

MLflow's store defaults to ``regtune-runs/mlflow.db`` with artifacts under
``regtune-runs/mlartifacts`` (one store for all studies, so ``regtune ui`` shows them all).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RegtuneError
from .space import DefineByRun, SearchSpace
from .tracking import StudyTracker, sqlite_uri

RUNS = Path("regtune-runs")


class StudyError(RegtuneError):
    """A study cannot be started or resumed as asked."""


@dataclass(frozen=True)
class StudyOptions:
    space: SearchSpace
    data: str | None = None  # Learn2Reg folder; None = synthetic
    name: str | None = None
    resume: bool = False
    address: str | None = None  # None = local Ray sized to this machine; "auto" or ray://...
    tracking_uri: str | None = None
    storage_path: str | None = None  # Ray storage; default regtune-runs/studies/<name>/ray
    runs_dir: Path = RUNS
    verbose: int = 1
    reuse_actors: bool = True  # a finished trial's worker process (torch imported, dataset mapped) runs the next one

    @property
    def study_name(self) -> str:
        return self.name or self.space.name

    @property
    def study_dir(self) -> Path:
        return (self.runs_dir / "studies" / self.study_name).resolve()

    @property
    def mlflow_uri(self) -> str:
        return self.tracking_uri or sqlite_uri(self.runs_dir / "mlflow.db")

    @property
    def ray_storage(self) -> str:
        return self.storage_path or str(self.study_dir / "ray")


@dataclass
class StudyResult:
    name: str
    trials: list[dict] = field(default_factory=list)  # one per trial: id, params, status, best metrics
    experiment_path: str = ""
    tracking_uri: str = ""
    parent_run_id: str = ""
    optuna_storage: str = ""
    seconds: float = 0.0  # whole call: data, Ray start, trials, wrap-up
    fit_seconds: float = 0.0  # Tuner.fit: first trial start to last trial end
    train_seconds: float = 0.0  # summed over trials: time inside training epochs (incl. validation)
    concurrency: int = 1

    def slot_use(self) -> float:
        """Fraction of the trial slots (concurrency x fit time) spent training; the rest is study overhead."""
        slots = self.concurrency * self.fit_seconds
        return min(1.0, self.train_seconds / slots) if slots > 0 else math.nan

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t["status"]] = out.get(t["status"], 0) + 1
        return out

    def best(self, k: int = 5) -> list[dict]:
        return sorted(self.trials, key=lambda t: -t.get("score", -math.inf))[:k]


def _init_ray(address: str | None, verbose: int):
    import ray

    if ray.is_initialized():
        return ray
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": verbose > 1, "configure_logging": True,
                          "logging_level": "WARNING"}
    if not address:
        # "local": always a fresh Ray on this machine, never a cluster recorded by an earlier
        # `ray start` (a stale /tmp/ray/ray_current_cluster or RAY_ADDRESS would hijack it)
        ray.init(address="local", **kw)
        return ray
    try:
        ray.init(address=address, **kw)
    except (ConnectionError, RuntimeError) as e:
        auth = "auth" in f"{e} {e.__cause__}".lower()
        hint = ("the cluster uses token authentication: copy its token to ~/.ray/auth_token (or set "
                "RAY_AUTH_TOKEN_PATH) and export RAY_AUTH_MODE=token" if auth else
                "check the address (`ray status` on the head prints it) and that this machine can reach port 6379/10001")
        raise StudyError(f"cannot connect to the Ray cluster at --address {address}: {hint}") from e
    return ray


def _slots(space: SearchSpace, total: dict) -> int:
    """How many trials the cluster's CPUs/GPUs can hold at once."""
    r = space.resources
    n = int(float(total.get("CPU", 0)) // r.cpu) if r.cpu > 0 else 10**6
    if r.gpu > 0:
        n = min(n, int(float(total.get("GPU", 0)) // r.gpu))
    return max(1, n)


def check_resources(space: SearchSpace, ray_mod) -> None:
    """Refuse a per-trial request the cluster can never satisfy (instead of pending forever)."""
    total = ray_mod.cluster_resources()
    cpu, gpu = float(total.get("CPU", 0)), float(total.get("GPU", 0))
    r = space.resources
    if r.gpu > 0 and gpu == 0:
        raise StudyError(f"{space.source}: resources.gpu={r.gpu:g} per trial but the Ray cluster has no GPU; "
                         f"set resources.gpu: 0 to train on CPU, or connect to a GPU cluster with --address")
    if r.gpu > gpu:
        raise StudyError(f"{space.source}: resources.gpu={r.gpu:g} per trial but the cluster has {gpu:g} GPU(s) in all")
    if r.cpu > cpu:
        raise StudyError(f"{space.source}: resources.cpu={r.cpu:g} per trial but the cluster has {cpu:g} CPU(s) in all; "
                         f"lower resources.cpu")


SHARED_FS = ("nfs", "nfs4", "cifs", "smb3", "lustre", "gpfs", "beegfs", "ceph", "glusterfs", "9p", "efs")


def filesystem_type(path: str | Path, mounts: str | None = None) -> str:
    """The filesystem type of the mount holding ``path`` (longest mount-point prefix)."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return "unknown"
    p = str(Path(path).resolve())
    best, fstype = "", "unknown"
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) >= 3 and (p == parts[1] or p.startswith(parts[1].rstrip("/") + "/")) and len(parts[1]) > len(best):
            best, fstype = parts[1], parts[2]
    return fstype


def cluster_hosts(ray_mod) -> int:
    """Machines in the Ray cluster (alive nodes with distinct addresses; several nodes on one host share its disk)."""
    return len({n.get("NodeManagerAddress") for n in ray_mod.nodes() if n.get("Alive")})


def check_storage(storage: str, n_hosts: int, mounts: str | None = None) -> None:
    """On a cluster spanning several machines trial checkpoints must go to storage every node reaches."""
    if n_hosts <= 1 or "://" in storage:
        return
    fstype = filesystem_type(storage, mounts)
    if fstype in SHARED_FS or fstype.startswith("fuse."):
        return
    raise StudyError(f"--storage-path {storage} is on a node-local filesystem ({fstype}) but the Ray cluster has "
                     f"nodes on {n_hosts} machines: trials on other machines could not save or restore checkpoints; pass shared "
                     f"storage, e.g. --storage-path s3://BUCKET/regtune, gs://BUCKET/regtune or an NFS mount")


def run_study(opts: StudyOptions) -> StudyResult:
    """Run the study described by ``opts`` to the end (or its time limit)."""
    t0 = time.monotonic()
    space = opts.space
    if opts.name:
        import dataclasses

        space = dataclasses.replace(space, name=opts.name)
    study_dir = opts.study_dir
    exp_path = str(Path(opts.ray_storage) / space.name) if "://" not in opts.ray_storage else f"{opts.ray_storage.rstrip('/')}/{space.name}"
    from ray import tune

    exists = tune.Tuner.can_restore(exp_path)
    if opts.resume and not exists:
        raise StudyError(f"nothing to resume: no study '{space.name}' at {exp_path}; run without --resume to start it")
    if exists and not opts.resume:
        raise StudyError(f"study '{space.name}' already exists at {exp_path}; add --resume to continue it, "
                         f"or --name NEW to start another")
    study_dir.mkdir(parents=True, exist_ok=True)
    if not opts.resume:
        (study_dir / "space.yaml").write_text(space.text)
        (study_dir / "study.json").write_text(json.dumps({
            "name": space.name, "space": space.source, "space_sha256": space.sha256, "data": opts.data,
            "tracking_uri": opts.mlflow_uri, "ray_storage": opts.ray_storage, "experiment_path": exp_path,
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))
    else:
        prev = json.loads((study_dir / "study.json").read_text()) if (study_dir / "study.json").is_file() else {}
        if prev.get("space_sha256") and prev["space_sha256"] != space.sha256:
            raise StudyError(f"{space.source} changed since study '{space.name}' started (sha256 differs); "
                             f"resume with the original file ({study_dir / 'space.yaml'}) or start a new --name")

    # ---- data: loaded and normalised once, shared with every trial -------------------
    from ..data.source import load_data
    from .trainable import run_trial, volumes_payload

    data_cfg = space.base.with_values({"data.root": opts.data}).data
    vols = load_data(data_cfg, synthetic_dir=opts.runs_dir / "synthetic", progress=opts.verbose > 0)
    payload = volumes_payload(vols)

    ray = _init_ray(opts.address, opts.verbose)
    check_resources(space, ray)
    hosts = cluster_hosts(ray)
    check_storage(opts.ray_storage, hosts)
    if hosts > 1 and not opts.mlflow_uri.startswith(("http://", "https://", "databricks")) and opts.verbose:
        print(f"note: the MLflow store {opts.mlflow_uri} is a file on this machine; on a team cluster pass "
              f"--tracking-uri http://MLFLOW-HOST:5000 (cluster/README.md) so everyone can browse the study", flush=True)

    import optuna
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage_url = sqlite_uri(study_dir / "optuna.db")
    trainable = tune.with_resources(tune.with_parameters(run_trial, data=payload, space=space),
                                    {"cpu": space.resources.cpu, "gpu": space.resources.gpu})
    tracker = StudyTracker(space, opts.mlflow_uri, study_dir, artifact_root=None if opts.tracking_uri else (opts.runs_dir / "mlartifacts"),
                           data_desc=opts.data or "synthetic", verbose=opts.verbose > 0)
    parent = tracker.start()
    if opts.resume:
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_errored=True)
    else:
        searcher = OptunaSearch(DefineByRun(space.params), metric="score", mode="max",
                                points_to_evaluate=[dict(p) for p in space.start] or None,
                                sampler=optuna.samplers.TPESampler(seed=space.seed, n_startup_trials=max(4, len(space.start) + 2)),
                                study_name=space.name, storage=optuna.storages.RDBStorage(storage_url), seed=space.seed)
        epochs = space.base.train.epochs
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=min(space.budget.grace_period, epochs),
                                  reduction_factor=space.budget.reduction_factor)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(metric="score", mode="max", search_alg=searcher, scheduler=scheduler,
                                        num_samples=space.budget.num_samples, max_concurrent_trials=space.budget.max_concurrent,
                                        time_budget_s=space.budget.time_limit_minutes * 60 or None,
                                        reuse_actors=opts.reuse_actors),
            run_config=tune.RunConfig(name=space.name, storage_path=opts.ray_storage, callbacks=[tracker],
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                                      failure_config=tune.FailureConfig(max_failures=2),
                                      verbose=0),
        )
    fit_slots = _slots(space, ray.cluster_resources())
    t_fit = time.monotonic()
    grid = tuner.fit()
    fit_seconds = time.monotonic() - t_fit
    _close_orphan_optuna_trials(storage_url, space.name)
    trials, train_s = [], 0.0
    for r in grid:
        cfg = {k: v for k, v in (r.config or {}).items()}
        trials.append(_trial_row(r, cfg, tracker))
        df = r.metrics_dataframe
        if df is not None and "epoch_seconds" in df:
            train_s += float(df["epoch_seconds"].fillna(0).sum())
    conc = min(space.budget.max_concurrent, fit_slots, max(1, len(trials)))
    return StudyResult(space.name, trials, exp_path, opts.mlflow_uri, parent, storage_url, time.monotonic() - t0,
                       fit_seconds, train_s, conc)


def _close_orphan_optuna_trials(storage_url: str, name: str) -> int:
    """Optuna trials left RUNNING by an interrupted driver (Ray re-sampled them) -> FAIL."""
    import optuna

    storage = optuna.storages.RDBStorage(storage_url)
    study_id = storage.get_study_id_from_name(name)
    n = 0
    for t in storage.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        storage.set_trial_user_attr(t._trial_id, "regtune_orphan", True)
        storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        n += 1
    return n


def _trial_row(r, cfg: dict, tracker: StudyTracker) -> dict:
    df = r.metrics_dataframe
    last = r.metrics or {}
    tid = last.get("trial_id", "")
    row: dict[str, Any] = {"trial_id": tid, "params": cfg, "epochs": int(last.get("epoch", 0) or 0),
                           "run_id": tracker.state.get("trials", {}).get(tid, "")}
    st = str(last.get("status", "running"))
    recorded = tracker.state.get("final_status", {}).get(tid)  # what MLflow holds for this trial
    row["status"] = "error" if r.error else (recorded or ("stopped_early" if st == "running" else st))
    if df is not None and len(df) and "score" in df:
        i = df["score"].idxmax()
        for k in ("score", "val_dice", "val_hd95", "val_sdlogj", "val_folding_pct"):
            if k in df:
                row[k] = float(df.loc[i, k])
    else:
        row["score"] = -math.inf
    row["reason"] = str(last.get("reason", r.error or ""))
    return row


def format_table(res: StudyResult, k: int = 50) -> str:
    lines = []
    counts = res.counts()
    lines.append(f"study '{res.name}': {len(res.trials)} trials in {res.seconds / 60:.1f} min  "
                 + "  ".join(f"{s}={n}" for s, n in sorted(counts.items())))
    if res.fit_seconds > 0 and math.isfinite(res.slot_use()):
        lines.append(f"time: {res.seconds - res.fit_seconds:.0f} s set-up (data, Ray, MLflow), {res.fit_seconds:.0f} s of trials at "
                     f"{res.concurrency} concurrent; {100 * res.slot_use():.0f}% of trial slots spent training, "
                     f"{100 * (1 - res.slot_use()):.0f}% start-up/scheduling/checkpoint overhead")
    hdr = f"{'trial':10s} {'status':16s} {'ep':>3s} {'score':>7s} {'Dice':>6s} {'HD95':>6s} {'SDlogJ':>6s} {'fold%':>6s}  params"
    lines.append(hdr)
    for t in res.best(k):
        p = ", ".join(f"{a.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{a.split('.')[-1]}={v}" for a, v in t["params"].items())
        lines.append(f"{t['trial_id']:10s} {t['status']:16s} {t['epochs']:3d} {t.get('score', math.nan):7.4f} "
                     f"{t.get('val_dice', math.nan):6.3f} {t.get('val_hd95', math.nan):6.2f} {t.get('val_sdlogj', math.nan):6.3f} "
                     f"{t.get('val_folding_pct', math.nan):6.3f}  {p}")
    return "\n".join(lines)


__all__ = ["StudyOptions", "StudyResult", "StudyError", "run_study", "format_table", "check_resources"]
