"""``regtune search`` and ``regtune ui`` (argument parsing only; heavy imports inside)."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

RUNS = Path("regtune-runs")

SEARCH_EPILOG = textwrap.dedent("""\
    what happens:
      each trial trains the registration network with one sampled setting (Ray Tune runs
      them in parallel with the per-trial cpu/gpu of the space file), Optuna picks the next
      settings, ASHA stops poor trials early, and MLflow records a parent run for the study
      and one nested run per trial (parameters, curves, Dice/HD95/Jacobian, figures, the
      best checkpoint). Diverging trials end themselves and are recorded as diverged.

    examples:
      regtune search --space search_spaces/smooth.yaml
      regtune search --space search_spaces/full.yaml --data ../shared/data/learn2reg-hippocampus --name full-real
      regtune search --space search_spaces/full.yaml --name full-real --resume     # after an interruption
      regtune ui                                                                    # browse the results
    """)


def add_commands(sub) -> None:
    s = sub.add_parser("search", help="run a hyperparameter study (Ray Tune + Optuna + MLflow)",
                       description="Run a hyperparameter study of the registration training.",
                       epilog=SEARCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--space", required=True, metavar="YAML", help="search-space file (see search_spaces/README.md)")
    s.add_argument("--data", metavar="DIR", help="Learn2Reg-layout folder (default: embedded synthetic phantoms)")
    s.add_argument("--name", help="study name (default: the space's name)")
    s.add_argument("--resume", action="store_true", help="continue an interrupted study (Ray restore + the persisted Optuna study)")
    s.add_argument("--address", metavar="ADDR", help="Ray cluster: auto, or ray://HOST:10001 (default: start a local Ray)")
    s.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (default: sqlite:///regtune-runs/mlflow.db)")
    s.add_argument("--storage-path", metavar="PATH", help="Ray storage for trial checkpoints (default: the study folder; "
                                                          "shared storage such as s3://, gs:// or NFS on a multi-node cluster)")
    s.add_argument("--num-samples", type=int, metavar="N", help="override budget.num_samples (refused on --resume unless unchanged)")
    s.add_argument("--max-concurrent", type=int, metavar="N", help="override budget.max_concurrent (refused on --resume unless unchanged)")
    s.add_argument("--cpus-per-trial", type=float, metavar="X", help="override resources.cpu of the space")
    s.add_argument("--gpus-per-trial", type=float, metavar="Y", help="override resources.gpu (a fraction such as 0.25 shares one GPU)")
    s.add_argument("--promote", action="store_true", help="after the search, train the top trials to the space's promote: budget "
                                                          "(works on a finished study with --resume too)")
    s.add_argument("--runs-dir", default=str(RUNS), metavar="DIR", help="project-local results folder (default regtune-runs)")
    s.add_argument("--quiet", action="store_true", help="only the final summary")
    s.set_defaults(func=cmd_search)

    g = sub.add_parser("diagnose", help="classify a study's trials and explain divergence (report + next space)",
                       description="Read a study back from MLflow (and its Optuna study) and explain it: each trial's "
                                   "class, which parameters separate diverged from converged trials, safe ranges, and "
                                   "a narrowed next space. Writes report.html/report.md with figures and logs them to "
                                   "the study's MLflow parent run.")
    g.add_argument("--study", help="study name (default: the most recent study in the store)")
    g.add_argument("--tracking-uri", metavar="URI", help="default: sqlite:///regtune-runs/mlflow.db")
    g.add_argument("--out", metavar="DIR", help="default: regtune-runs/studies/<name>/diagnosis")
    g.add_argument("--runs-dir", default=str(RUNS), metavar="DIR")
    g.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    g.add_argument("--optuna-storage", metavar="URL", help="the study's Optuna storage (default: regtune-runs/studies/<name>/optuna.db, "
                                                           "else the one its MLflow parent run records)")
    g.set_defaults(func=cmd_diagnose)

    u = sub.add_parser("ui", help="start the MLflow UI (or, with --optuna, Optuna Dashboard) on 127.0.0.1",
                       description="Browse studies: the MLflow UI on the study store, or with --optuna the Optuna "
                                   "Dashboard on one study's persisted Optuna storage (optuna.db). Both bind 127.0.0.1.")
    u.add_argument("--tracking-uri", metavar="URI", help="default: sqlite:///regtune-runs/mlflow.db")
    u.add_argument("--optuna", action="store_true", help="Optuna Dashboard on the study's optuna.db instead of the MLflow UI")
    u.add_argument("--study", metavar="NAME", help="with --optuna: the study (default: the most recent in --runs-dir)")
    u.add_argument("--port", type=int, help="default 5000 (MLflow) / 8080 (Optuna Dashboard)")
    u.add_argument("--runs-dir", default=str(RUNS), metavar="DIR")
    u.set_defaults(func=cmd_ui)


def _command_line(argv: list[str]) -> str:
    import shlex

    return "regtune " + " ".join(shlex.quote(a) for a in argv)


def cmd_search(args: argparse.Namespace) -> int:
    from .space import load_space

    space = load_space(args.space).with_overrides(num_samples=args.num_samples, max_concurrent=args.max_concurrent,
                                                  cpu=args.cpus_per_trial, gpu=args.gpus_per_trial)
    from .study import StudyOptions, format_table, resume_command, run_study
    from .store import open_ui_command

    opts = StudyOptions(space=space, data=args.data, name=args.name, resume=args.resume, address=args.address,
                        tracking_uri=args.tracking_uri, storage_path=args.storage_path, runs_dir=Path(args.runs_dir),
                        verbose=0 if args.quiet else 1, promote=args.promote,
                        command=_command_line([a for a in sys.argv[1:]] if sys.argv[1:2] == ["search"] else
                                              ["search", "--space", args.space] + (["--data", args.data] if args.data else [])
                                              + (["--name", args.name] if args.name else [])))
    r = space.resources
    print(f"regtune search: study '{opts.study_name}' from {args.space}: {space.budget.num_samples} trials, "
          f"{space.budget.max_concurrent} at a time, {space.base.train.epochs} epochs each, {r.cpu:g} CPU + {r.gpu:g} GPU "
          f"per trial; data: {args.data or 'synthetic'}", file=sys.stderr, flush=True)
    res = run_study(opts)
    print()
    print(format_table(res))
    for note in res.notes:
        print(f"note: {note}")
    uri = res.tracking_uri
    print(f"\nMLflow: {uri}  (parent run {res.parent_run_id})")
    if uri.startswith(("http://", "https://")):
        print(f"browse: open {uri}/#/experiments in a browser (the tracking server is the UI)")
    else:
        print(f"browse: regtune ui --tracking-uri {uri}    or    {open_ui_command(uri)}")
    print(f"Optuna study: {res.optuna_storage} (study '{res.name}'); dashboard: regtune ui --optuna --study {res.name}"
          + (f" --runs-dir {args.runs_dir}" if args.runs_dir != str(RUNS) else ""))
    print(f"Ray results: {res.experiment_path}")
    if res.interrupted:
        print(f"\ninterrupted: unfinished trials are labelled interrupted (MLflow tag regtune.status, Optuna RUNNING).\n"
              f"resume with: {resume_command(opts)}", flush=True)
        return 130
    if res.all_errored:
        print(f"regtune search: error: all {len(res.trials)} trials failed; first error: {res.first_error()}",
              file=sys.stderr, flush=True)
        return 1
    if res.model:
        m = res.model
        print(f"\nthe study's model: {'promoted trial' if m['promoted'] else 'trial'} {m['trial_id']}"
              + (f" (from {m['promoted_from']})" if m.get("promoted_from") else "") + f", score {m['score']:.4f}"
              + "".join(f", at the chosen {k}={v:.4g}" for k, v in (m.get("chosen_weights") or {}).items()))
        if "test" in m:
            t, b = m["test"], m["no_registration"]
            print(f"  held-out test ({m['test_pairs']} pairs of {m['test_subjects']} reserved subjects): Dice {t['dice']:.3f} "
                  f"(no registration {b['dice']:.3f}), Dice30 {t['dice30']:.3f}, HD95 {t['hd95']:.2f}, SDlogJ {t['sdlogj']:.3f}, "
                  f"folding {t['folding_pct']:.3f}%")
        print(f"  config:     {m['config']}   (regtune train --config {m['config']})\n"
              f"  checkpoint: {m['checkpoint']}\n  scores:     {Path(m['checkpoint']).with_name('test_scores.json')}")
    return 0


def default_uri(runs_dir: str, given: str | None) -> str:
    from ..errors import RegtuneError

    if given:
        return given
    db = Path(runs_dir) / "mlflow.db"
    if not db.is_file():
        raise RegtuneError(f"{db}: no MLflow store yet; run 'regtune search --space ...' first or pass --tracking-uri")
    return f"sqlite:///{db.resolve()}"


def latest_study(uri: str) -> str:
    from mlflow.tracking import MlflowClient

    from ..errors import RegtuneError

    client = MlflowClient(uri)
    exps = [e for e in client.search_experiments(order_by=["last_update_time DESC"]) if e.name != "Default"]
    if not exps:
        raise RegtuneError(f"no study in {uri}; run 'regtune search' first")
    return exps[0].name


def cmd_diagnose(args: argparse.Namespace) -> int:
    import os

    # MLflow draws a progress bar per artifact it downloads (a dozen bars in a log); the report says what was read
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from .diagnose import diagnose, explain, write_report

    from .outcome import rank_key

    uri = default_uri(args.runs_dir, args.tracking_uri)
    name = args.study or latest_study(uri)
    local_db = Path(args.runs_dir) / "studies" / name / "optuna.db"
    storage = args.optuna_storage or (f"sqlite:///{local_db.resolve()}" if local_db.is_file() else None)
    d, client = diagnose(uri, name, optuna_storage=storage)
    out = Path(args.out) if args.out else Path(args.runs_dir) / "studies" / name / "diagnosis"
    report = write_report(d, client, out)
    print(f"diagnosis of study '{name}' ({len(d.trials)} trials)")
    for line in explain(d):
        print(" -", line.replace("**", ""))
    print(f"\n{'trial':10s} {'class':40s} {'Dice':>6s} {'fold%':>6s}  params")
    for t in sorted(d.trials, key=lambda t: rank_key(t.metrics.get("best_score"), t.trial_id)):
        p = ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}" for k, v in t.params.items())
        print(f"{t.trial_id:10s} {t.cls:40s} {t.metrics.get('best_val_dice', float('nan')):6.3f} "
              f"{t.metrics.get('best_val_folding_pct', float('nan')):6.3f}  {p}")
    if not args.no_log:
        client.log_artifacts(d.parent_run_id, str(out), artifact_path="diagnosis")
    print(f"\nreport: {report}\nnext space: {out / 'next_space.yaml'}  (regtune search --space {out / 'next_space.yaml'})")
    return 0


def optuna_storage_of(runs_dir: str, study: str | None) -> tuple[str, str]:
    """(storage URL, study name) of a study's persisted Optuna study."""
    from ..errors import RegtuneError

    root = Path(runs_dir) / "studies"
    dbs = sorted(root.glob("*/optuna.db"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    if study is None:
        if not dbs:
            raise RegtuneError(f"{root}: no study with an optuna.db yet; run 'regtune search --space ...' first")
        study = dbs[-1].parent.name
    db = root / study / "optuna.db"
    if not db.is_file():
        raise RegtuneError(f"{db}: no Optuna storage for study '{study}' (studies: {', '.join(p.parent.name for p in dbs) or 'none'})")
    return f"sqlite:///{db.resolve()}", study


def optuna_dashboard_command(storage: str, port: int) -> list[str]:
    import shutil

    exe = Path(sys.executable).with_name("optuna-dashboard")
    exe = str(exe) if exe.is_file() else (shutil.which("optuna-dashboard") or "optuna-dashboard")
    return [exe, storage, "--host", "127.0.0.1", "--port", str(port)]


def cmd_ui(args: argparse.Namespace) -> int:
    if args.optuna:
        from ..errors import RegtuneError

        storage, study = optuna_storage_of(args.runs_dir, args.study)
        port = args.port or 8080
        cmd = optuna_dashboard_command(storage, port)
        if cmd[0] == "optuna-dashboard":
            raise RegtuneError("optuna-dashboard is not installed; pip install 'regtune[study]' (it is in the study extra)")
        print(f"Optuna Dashboard on http://127.0.0.1:{port}  (study '{study}', {storage}); Ctrl-C to stop", file=sys.stderr,
              flush=True)
        return _serve(cmd)
    if args.study:
        from ..errors import ConfigError

        raise ConfigError("ui: --study selects a study for --optuna; the MLflow UI shows every study of the store")
    uri = default_uri(args.runs_dir, args.tracking_uri)
    port = args.port or 5000
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    print(f"MLflow UI on http://127.0.0.1:{port}  ({uri}); Ctrl-C to stop", file=sys.stderr, flush=True)
    return _serve(cmd)


def _serve(cmd: list[str]) -> int:
    """Run a UI server in this process's place (its pid is regtune ui's: stopping one stops the other)."""
    import os
    import subprocess

    if hasattr(os, "execv"):
        os.execv(cmd[0], cmd)
    return subprocess.call(cmd)  # pragma: no cover


def config_from_study(args: argparse.Namespace) -> str:
    """``regtune train --from-study NAME [--trial ID]``: the config file to train from."""
    from ..errors import ConfigError
    from .study_model import study_config

    if args.trial and not args.from_study:
        raise ConfigError("--trial ID needs --from-study NAME")
    if args.config:
        raise ConfigError("--from-study and --config both give the config; use one (add --set KEY=VALUE for changes)")
    path = study_config(args.runs_dir, args.from_study, args.trial)
    print(f"regtune train: config of study '{args.from_study}'" + (f", trial {args.trial}" if args.trial else "")
          + f": {path}", file=sys.stderr)
    return str(path)
