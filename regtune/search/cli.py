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
    s.add_argument("--num-samples", type=int, metavar="N", help="override budget.num_samples")
    s.add_argument("--max-concurrent", type=int, metavar="N", help="override budget.max_concurrent")
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
    g.set_defaults(func=cmd_diagnose)

    u = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 for the study store")
    u.add_argument("--tracking-uri", metavar="URI", help="default: sqlite:///regtune-runs/mlflow.db")
    u.add_argument("--port", type=int, default=5000)
    u.add_argument("--runs-dir", default=str(RUNS), metavar="DIR")
    u.set_defaults(func=cmd_ui)


def cmd_search(args: argparse.Namespace) -> int:
    from .space import load_space

    space = load_space(args.space).with_overrides(num_samples=args.num_samples, max_concurrent=args.max_concurrent)
    from .study import StudyOptions, format_table, run_study
    from .tracking import open_ui_command

    opts = StudyOptions(space=space, data=args.data, name=args.name, resume=args.resume, address=args.address,
                        tracking_uri=args.tracking_uri, storage_path=args.storage_path, runs_dir=Path(args.runs_dir),
                        verbose=0 if args.quiet else 1)
    print(f"regtune search: study '{opts.study_name}' from {args.space}: {space.budget.num_samples} trials, "
          f"{space.budget.max_concurrent} at a time, {space.base.train.epochs} epochs each; data: {args.data or 'synthetic'}",
          file=sys.stderr)
    res = run_study(opts)
    print()
    print(format_table(res))
    print(f"\nMLflow: {res.tracking_uri}  (parent run {res.parent_run_id})")
    if res.tracking_uri.startswith(("http://", "https://")):
        print(f"browse: open {res.tracking_uri}/#/experiments in a browser (the tracking server is the UI)")
    else:
        print(f"browse: regtune ui    or    {open_ui_command(res.tracking_uri)}")
    print(f"Ray results: {res.experiment_path}\nOptuna study: {res.optuna_storage} (study '{res.name}')")
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
    from .diagnose import diagnose, explain, write_report

    uri = default_uri(args.runs_dir, args.tracking_uri)
    name = args.study or latest_study(uri)
    d, client = diagnose(uri, name)
    out = Path(args.out) if args.out else Path(args.runs_dir) / "studies" / name / "diagnosis"
    report = write_report(d, client, out)
    print(f"diagnosis of study '{name}' ({len(d.trials)} trials)")
    for line in explain(d):
        print(" -", line.replace("**", ""))
    print(f"\n{'trial':10s} {'class':30s} {'Dice':>6s} {'fold%':>6s}  params")
    for t in sorted(d.trials, key=lambda t: -t.metrics.get("best_score", -1e9)):
        p = ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}" for k, v in t.params.items())
        print(f"{t.trial_id:10s} {t.cls:30s} {t.metrics.get('best_val_dice', float('nan')):6.3f} "
              f"{t.metrics.get('best_val_folding_pct', float('nan')):6.3f}  {p}")
    if not args.no_log:
        client.log_artifacts(d.parent_run_id, str(out), artifact_path="diagnosis")
    print(f"\nreport: {report}\nnext space: {out / 'next_space.yaml'}  (regtune search --space {out / 'next_space.yaml'})")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    import subprocess

    uri = default_uri(args.runs_dir, args.tracking_uri)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(args.port)]
    print(f"MLflow UI on http://127.0.0.1:{args.port}  ({uri}); Ctrl-C to stop", file=sys.stderr)
    return subprocess.call(cmd)
