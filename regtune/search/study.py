"""Run (or resume) a study: Ray Tune + OptunaSearch + ASHA, tracked in MLflow.

Folder of a study (default ``regtune-runs/studies/<name>/``)::

    ray/<name>/        Ray's experiment (trial checkpoints, results, tuner state)
    optuna.db          the persisted Optuna study (SQLite)
    mlflow.json        MLflow parent run id and trial -> run ids
    space.yaml         the space file as run
    study.json         how the study was started (data, tracking URI, storage, budget)
    best_config.yaml   the study's model: a complete config (``regtune train --config``)
    best.pt            the study's model (the best trial's, or after --promote the promoted one's)
    test_scores.json   its scores on the reserved test subjects (and the no-registration row)
    promote/           promotion's Ray experiment (``--promote``)

MLflow's store defaults to ``regtune-runs/mlflow.db`` with artifacts under
``regtune-runs/mlartifacts`` (one store for all studies, so ``regtune ui`` shows them all).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RegtuneError
from .outcome import ranked, short_error, trial_score
from .space import DefineByRun, SearchSpace
from .tracking import StudyTracker, file_lock, sqlite_uri

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
    promote: bool = False  # after the search, train the top trials to the space's promote: budget
    command: str = ""  # the command line that started it (echoed with --resume after Ctrl-C)

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
    interrupted: bool = False  # Ctrl-C: unfinished trials are labelled interrupted; --resume continues them
    study_dir: str = ""
    promoted: list[dict] = field(default_factory=list)  # one row per promoted trial
    model: dict = field(default_factory=dict)  # the study's model: run, config/checkpoint paths, test scores
    notes: list[str] = field(default_factory=list)

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
        """The k best trials (the one ranking: regtune.search.outcome)."""
        return ranked(self.trials)[:k]

    @property
    def all_errored(self) -> bool:
        return bool(self.trials) and all(t["status"] == "error" for t in self.trials)

    def first_error(self) -> str:
        t = next((t for t in self.trials if t["status"] == "error"), None)
        return f"trial {t['trial_id']}: {t.get('error') or t.get('reason') or 'failed'}" if t else ""


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


def check_resources(space: SearchSpace, ray_mod, field: str = "resources") -> None:  # noqa: D401
    """Refuse a per-trial request the cluster can never satisfy (instead of pending forever).
    ``field``: the space block that asked (``resources``, or ``promote`` for the promoted trials)."""
    total = ray_mod.cluster_resources()
    cpu, gpu = float(total.get("CPU", 0)), float(total.get("GPU", 0))
    r = space.resources
    if r.gpu > 0 and gpu == 0:
        raise StudyError(f"{space.source}: {field}.gpu={r.gpu:g} per trial but the Ray cluster has no GPU; "
                         f"set {field}.gpu: 0 to train on CPU, or connect to a GPU cluster with --address")
    if r.gpu > gpu:
        raise StudyError(f"{space.source}: {field}.gpu={r.gpu:g} per trial but the cluster has {gpu:g} GPU(s) in all")
    if r.cpu > cpu:
        raise StudyError(f"{space.source}: {field}.cpu={r.cpu:g} per trial but the cluster has {cpu:g} CPU(s) in all; "
                         f"lower {field}.cpu")


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


def reference_point(space: SearchSpace) -> dict[str, Any]:
    """One setting of the searched parameters: each at its first choice, or the (geometric) middle of its range."""
    point: dict[str, Any] = {}
    for p in space.params:
        if any(point.get(k) != v for k, v in p.when):
            continue
        if p.type == "categorical":
            point[p.key] = p.choices[0]
        else:
            mid = math.sqrt(p.low * p.high) if p.log else 0.5 * (p.low + p.high)
            if p.step:
                mid = p.low + round((mid - p.low) / p.step) * p.step
            point[p.key] = int(round(mid)) if p.type == "int" else float(mid)
    return point


def preflight(space: SearchSpace, vols) -> None:
    """Refuse, before Ray starts, a study in which every trial would fail the same way:
    the core must accept, on this dataset, at least one of the settings a trial can have
    (the ``start:`` points and a reference point of the searched ranges): the config, the
    subject split, the model on these volumes and one loss evaluation. Otherwise the
    core's own one-line message stops the study."""
    import torch

    from ..train import split_for
    from ..trainer import Trainer

    points = [("reference point", reference_point(space))] + [(f"start[{i}]", dict(p)) for i, p in enumerate(space.start)]
    first = None
    for where, point in points:
        try:
            cfg = space.trial_config(point)
            split, val_pairs, _ = split_for(cfg, vols)
            tr = Trainer(cfg, vols, split, "cpu")
            with torch.no_grad():
                f, m = val_pairs[0]
                tr.loss(torch.tensor([f]), torch.tensor([m]))
            return
        except RegtuneError as e:
            first = first or (where, e)
    if first is not None:
        raise StudyError(f"{space.source}: every trial would fail ({first[0]}: {first[1]})") from None


@contextlib.contextmanager
def catch_interrupt(tracker_ref: list):
    """Ctrl-C (SIGINT) as a first-class event: the first one asks Ray Tune to stop (its
    SIGUSR1 path: trials checkpoint, the experiment state is saved) and marks the study
    interrupted; a second one stops at once."""
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    state = {"n": 0}

    def handler(sig, frame):
        state["n"] += 1
        for t in tracker_ref:
            t.interrupted = True
        if state["n"] == 1:
            print("\nregtune search: Ctrl-C: stopping the study (running trials are labelled interrupted; "
                  "Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
            if hasattr(signal, "SIGUSR1"):
                os.kill(os.getpid(), signal.SIGUSR1)
        else:
            raise KeyboardInterrupt

    old = signal.signal(signal.SIGINT, handler) if _main_thread() else None
    try:
        yield state
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _quiet_ray_tune() -> None:
    """Ray Tune logs each trial error with its traceback and ends with its own
    ``Tuner.restore(...)`` hint; regtune prints one line per failure and its own command.
    Ray's own progress output and its TensorBoard logger (which warns on every NaN of a
    diverged trial) are off; its JSON/CSV result files stay."""
    import logging
    import warnings

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    try:
        from optuna.exceptions import ExperimentalWarning

        warnings.filterwarnings("ignore", category=ExperimentalWarning)
    except ImportError:  # pragma: no cover
        pass

    for name in ("ray.tune", "ray.tune.tune", "ray.tune.execution.tune_controller", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _check_resume(opts: StudyOptions, space: SearchSpace, prev: dict) -> None:
    if prev.get("space_sha256") and prev["space_sha256"] != space.sha256:
        raise StudyError(f"{space.source} changed since study '{space.name}' started (sha256 differs); "
                         f"resume with the original file ({opts.study_dir / 'space.yaml'}) or start a new --name")
    for key, flag in (("num_samples", "--num-samples"), ("max_concurrent", "--max-concurrent")):
        was = prev.get("budget", {}).get(key)
        now = getattr(space.budget, key)
        if was is not None and was != now:
            raise StudyError(f"{flag} {now} on --resume: the study was started with {key}={was} and Ray restores its "
                             f"tuner as started; drop {flag}, or start a new study with --name NEW")
    if "data" in prev and (prev["data"] or None) != (opts.data or None):
        raise StudyError(f"--data {opts.data or '(synthetic)'} on --resume: the study was started on "
                         f"{prev['data'] or 'the synthetic phantoms'}; resume with the same --data")


def resume_command(opts: StudyOptions) -> str:
    """The exact command that continues this study."""
    if opts.command:
        cmd = opts.command
        if "--resume" not in cmd.split():
            cmd += " --resume"
        if opts.name is None and "--name" not in cmd.split():
            cmd += f" --name {opts.study_name}"
        return cmd
    parts = ["regtune search", f"--space {opts.space.source}", f"--name {opts.study_name}"]
    if opts.data:
        parts.append(f"--data {opts.data}")
    return " ".join(parts + ["--resume"])


def run_study(opts: StudyOptions) -> StudyResult:
    """Run (or resume) the study described by ``opts`` to the end, its time limit or Ctrl-C."""
    t0 = time.monotonic()
    space = opts.space
    if opts.name:
        import dataclasses

        space = dataclasses.replace(space, name=opts.name)
    if opts.promote and space.promote is None:
        raise StudyError(f"{space.source}: --promote needs a promote: block in the space file, e.g. "
                         f"promote: {{top_k: 2, epochs: {4 * space.base.train.epochs}}}")
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
            "runs_dir": str(Path(opts.runs_dir).resolve()), "command": opts.command,
            "budget": {"num_samples": space.budget.num_samples, "max_concurrent": space.budget.max_concurrent},
            "resources": {"cpu": space.resources.cpu, "gpu": space.resources.gpu},
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))
    else:
        prev = json.loads((study_dir / "study.json").read_text()) if (study_dir / "study.json").is_file() else {}
        _check_resume(opts, space, prev)

    # ---- data: loaded and normalised once, shared with every trial; refused here if no trial could run
    from ..data.source import load_data
    from .tracking import is_tty
    from .trainable import run_trial, volumes_payload

    data_cfg = space.base.with_values({"data.root": opts.data}).data
    with file_lock(Path(opts.runs_dir) / "synthetic.lock"):  # two studies at once must not write it twice
        vols = load_data(data_cfg, synthetic_dir=opts.runs_dir / "synthetic", progress=opts.verbose > 0 and is_tty())
    if opts.data:
        space = _with_data_root(space, opts.data)
    preflight(space, vols)
    payload = volumes_payload(vols)

    _quiet_ray_tune()
    ray = _init_ray(opts.address, opts.verbose)
    check_resources(space, ray)
    if space.promote is not None and opts.promote:  # before the search, not after it
        check_resources(dataclasses.replace(space, resources=space.promote.resources(space.resources)), ray, "promote")
    hosts = cluster_hosts(ray)
    check_storage(opts.ray_storage, hosts)
    if hosts > 1 and not opts.mlflow_uri.startswith(("http://", "https://", "databricks")) and opts.verbose:
        print(f"note: the MLflow store {opts.mlflow_uri} is a file on this machine; on a team cluster pass "
              f"--tracking-uri http://MLFLOW-HOST:5000 (cluster/README.md) so everyone can browse the study", flush=True)

    import optuna
    from ray.tune.schedulers import ASHAScheduler

    from .outcome import SCORE_KEY
    from .searcher import StudySearch, make_sampler, reconcile_optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage_url = sqlite_uri(study_dir / "optuna.db")
    work_root = Path(tempfile.gettempdir()) / "regtune-work" / f"{space.name}-{uuid.uuid4().hex[:8]}"
    trainable = tune.with_resources(tune.with_parameters(run_trial, data=payload, space=space, work_root=str(work_root)),
                                    {"cpu": space.resources.cpu, "gpu": space.resources.gpu})
    tracker = StudyTracker(space, opts.mlflow_uri, study_dir, artifact_root=None if opts.tracking_uri else (opts.runs_dir / "mlartifacts"),
                           data_desc=opts.data or "synthetic", verbose=opts.verbose > 0)
    parent = tracker.start()
    if opts.resume:
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_errored=False)
        _use_callbacks(tuner, [tracker, *result_loggers()])
    else:
        searcher = StudySearch(DefineByRun(space.params), metric=SCORE_KEY, mode="max",
                               points_to_evaluate=[dict(p) for p in space.start] or None,
                               sampler=make_sampler(space.seed, len(space.start)),
                               study_name=space.name, storage=optuna.storages.RDBStorage(storage_url), seed=space.seed)
        epochs = space.base.train.epochs
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=min(space.budget.grace_period, epochs),
                                  reduction_factor=space.budget.reduction_factor)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(metric=SCORE_KEY, mode="max", search_alg=searcher, scheduler=scheduler,
                                        num_samples=space.budget.num_samples, max_concurrent_trials=space.budget.max_concurrent,
                                        time_budget_s=space.budget.time_limit_minutes * 60 or None,
                                        reuse_actors=opts.reuse_actors),
            run_config=tune.RunConfig(name=space.name, storage_path=opts.ray_storage, callbacks=[tracker, *result_loggers()],
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                                      failure_config=tune.FailureConfig(max_failures=2),
                                      verbose=0),
        )
    fit_slots = _slots(space, ray.cluster_resources())
    t_fit = time.monotonic()
    try:
        with catch_interrupt([tracker]):
            tuner.fit()
        fit_seconds = time.monotonic() - t_fit
        rows = trial_rows(tracker)
        reconcile_optuna(storage_url, space.name, rows, tracker.interrupted)
        train_s = sum(r.get("train_seconds", 0.0) for r in rows)
        conc = min(space.budget.max_concurrent, fit_slots, max(1, len(rows)))
        res = StudyResult(space.name, rows, exp_path, opts.mlflow_uri, parent, storage_url, 0.0, fit_seconds, train_s, conc,
                          interrupted=tracker.interrupted, study_dir=str(study_dir))
        res._search_trials = tracker.trials_seen
        if not res.interrupted and not res.all_errored:
            from .promote import promote_top, write_study_model

            if opts.promote:
                res.promoted = promote_top(opts, space, res, tracker,
                                           trainable_args={"data": payload, "work_root": str(work_root)})
            if not res.interrupted:
                res.model = write_study_model(opts, space, res, vols)
    finally:
        shutil.rmtree(work_root, ignore_errors=True)  # trial work folders that a killed worker left behind
    res.seconds = time.monotonic() - t0
    return res


def _with_data_root(space: SearchSpace, data: str) -> SearchSpace:
    """The space whose trial configs record the data folder (so a trial's config is complete)."""
    import dataclasses

    root = str(Path(data).resolve()) if "://" not in data else data
    return dataclasses.replace(space, base=space.base.with_values({"data.root": root}, source="--data"))


def result_loggers() -> list:
    """Ray's per-trial result.json / progress.csv (the TensorBoard logger is left out)."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [JsonLoggerCallback(), CSVLoggerCallback()]


def _use_callbacks(tuner, callbacks: list) -> None:
    """A restored Tuner carries the callbacks pickled when the study started; use the fresh
    tracker (its MLflow state and interrupt flag) instead."""
    internal = getattr(tuner, "_local_tuner", None)
    rc = internal.get_run_config() if internal is not None else None
    if rc is not None:
        rc.callbacks = callbacks


def trial_rows(tracker: StudyTracker, kind_map: str = "trials") -> list[dict]:
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


def format_table(res: StudyResult, k: int = 50) -> str:
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


__all__ = ["StudyOptions", "StudyResult", "StudyError", "run_study", "format_table", "check_resources", "preflight",
           "resume_command", "trial_rows"]
