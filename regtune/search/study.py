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

import json
import math
import shutil
import tempfile
import time
import dataclasses
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import StudyError
from .outcome import ranked
from .preflight import preflight
from .ray_env import catch_interrupt, check_resources, check_storage, cluster_hosts, init_ray, quiet_ray_tune
from .ray_env import slots as trial_slots
from .space import SearchSpace
from .table import format_table, trial_rows
from .store import file_lock, sqlite_uri
from .tracking import StudyTracker

RUNS = Path("regtune-runs")


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
    from .store import is_tty
    from .trainable import run_trial, volumes_payload

    data_cfg = space.base.with_values({"data.root": opts.data}).data
    with file_lock(Path(opts.runs_dir) / "synthetic.lock"):  # two studies at once must not write it twice
        vols = load_data(data_cfg, synthetic_dir=opts.runs_dir / "synthetic", progress=opts.verbose > 0 and is_tty())
    if opts.data:
        space = _with_data_root(space, opts.data)
    preflight(space, vols)
    payload = volumes_payload(vols)

    quiet_ray_tune()
    ray = init_ray(opts.address, opts.verbose)
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
    from .searcher import DefineByRun, StudySearch, make_sampler, reconcile_optuna

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
    fit_slots = trial_slots(space, ray.cluster_resources())
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
            from .promote import promote_top
            from .study_model import write_study_model

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


__all__ = ["StudyOptions", "StudyResult", "StudyError", "run_study", "format_table", "check_resources", "preflight",
           "resume_command", "trial_rows"]
