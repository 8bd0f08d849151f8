"""``regtune evaluate --top K``: re-evaluate a study's best checkpoints on held-out pairs.

Picks the K best trials from MLflow (``search_runs`` ordered by the trial's best score),
loads each trial's ``checkpoint/best.pt`` artifact, scores it with the core metrics on a
pair list, and writes ``test_*`` metrics and a per-pair CSV back to the trial's run.
Works against any tracking URI, so a study made on another machine can be re-evaluated.
"""

from __future__ import annotations

import csv
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import RegtuneError


@dataclass
class TopResult:
    trial_id: str
    run_id: str
    params: dict
    val_dice: float
    summary: dict
    rows: list[dict]


def top_runs(client, study: str, k: int):
    exp = client.get_experiment_by_name(study)
    if exp is None:
        names = [e.name for e in client.search_experiments() if e.name != "Default"]
        raise RegtuneError(f"no study '{study}' in this MLflow store (studies: {', '.join(names) or 'none'}); pass --study NAME")
    runs = client.search_runs([exp.experiment_id],
                              filter_string="tags.`regtune.kind` = 'trial' and metrics.best_score > -1e9",
                              order_by=["metrics.best_score DESC"], max_results=max(k * 3, 10))
    runs = [r for r in runs if r.data.tags.get("regtune.orphan") != "true"
            and r.data.tags.get("regtune.status") not in ("diverged_nan", "diverged_rising", "collapsed", "error")]
    if not runs:
        raise RegtuneError(f"study '{study}' has no finished, non-diverged trial with a score yet")
    return runs[:k]


def _searched_keys(client, run) -> list[str]:
    """The study's searched parameter names: from the trial's tag, else its space.yaml."""
    tag = run.data.tags.get("regtune.searched")
    if tag:
        return tag.split(",")
    import yaml

    try:
        with tempfile.TemporaryDirectory() as tmp:
            p = client.download_artifacts(run.data.tags["mlflow.parentRunId"], "space.yaml", tmp)
            return list((yaml.safe_load(Path(p).read_text()) or {}).get("params", {}))
    except Exception:
        return []


def evaluate_top(tracking_uri: str, study: str, k: int, data: str | None, pairs_csv: str | None,
                 export_fields: str | None = None, device: str = "cpu", log: bool = True, progress: bool = True):
    """Returns (no-registration summary, list of TopResult), best first."""
    from mlflow.tracking import MlflowClient

    from ..checkpoint import load_checkpoint
    from ..data.dataset import load_files, match_labels
    from ..data.pairs import read_pairs_csv
    from ..data.source import data_root
    from ..evaluate import evaluate_pairs, summarise
    from ..register import FieldWriter

    client = MlflowClient(tracking_uri)
    runs = top_runs(client, study, k)
    searched = _searched_keys(client, runs[0])
    results: list[TopResult] = []
    vols = pairs = None
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for r in runs:
            try:
                local = client.download_artifacts(r.info.run_id, "checkpoint/best.pt", tmp + "/" + r.info.run_id)
            except Exception as e:
                raise RegtuneError(f"trial run {r.info.run_id}: no checkpoint/best.pt artifact ({type(e).__name__})") from None
            ck = load_checkpoint(local)
            if vols is None:
                cfg = ck.config.data
                root = Path(data) if data else data_root(cfg)
                vols = load_files(match_labels(root / "imagesTr", root / "labelsTr"), cfg, progress=progress)
                if pairs_csv:
                    pairs = read_pairs_csv(pairs_csv, vols)
                else:
                    names = ck.extra.get("val_pairs") or []
                    if not names:
                        raise RegtuneError(f"{local}: no val pair list in the checkpoint; pass --pairs CSV")
                    pairs = [(vols.index(f), vols.index(m)) for f, m in names]
                base = summarise(evaluate_pairs(None, vols, pairs))
            writer = None
            if export_fields:
                writer = FieldWriter(Path(export_fields) / r.data.tags.get("regtune.trial_id", r.info.run_id), vols, images=False)
            rows = evaluate_pairs(ck.model(device), vols, pairs, ck.config.data.downsample, device, on_field=writer,
                                  progress=progress)
            s = summarise(rows)
            tr = TopResult(r.data.tags.get("regtune.trial_id", ""), r.info.run_id,
                           {k_: r.data.params[k_] for k_ in searched if k_ in r.data.params},
                           r.data.metrics.get("best_val_dice", float("nan")), s, rows)
            results.append(tr)
            if log:
                metrics = {f"test_{k_}": float(s[k_]) for k_ in ("dice", "hd95", "sdlogj", "folding_pct", "dice_std")}
                metrics["test_pairs"] = float(len(pairs))
                for k_, v in metrics.items():
                    client.log_metric(r.info.run_id, k_, v)
                p = Path(tmp) / f"test_pairs_{r.info.run_id}.csv"
                with p.open("w", newline="") as fh:
                    w = csv.DictWriter(fh, fieldnames=list(rows[0]))
                    w.writeheader()
                    w.writerows(rows)
                client.log_artifact(r.info.run_id, str(p), artifact_path="evaluation")
                client.set_tag(r.info.run_id, "regtune.test_pairs", pairs_csv or "checkpoint val pairs")
    return base, results


def _short(v: str) -> str:
    try:
        return f"{float(v):.3g}"
    except ValueError:
        return v


def format_top(base: dict, results: list[TopResult]) -> str:
    lines = [f"{'rank':4s} {'trial':10s} {'val Dice':>8s} {'test Dice':>9s} {'±':>6s} {'HD95':>6s} {'SDlogJ':>7s} {'fold %':>7s}  params",
             f"{'-':4s} {'no registration':19s} {base['dice']:9.3f} {base['dice_std']:6.3f} {base['hd95']:6.2f} {'—':>7s} {'—':>7s}"]
    for i, r in enumerate(results, 1):
        s = r.summary
        p = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in r.params.items())
        lines.append(f"{i:<4d} {r.trial_id:10s} {r.val_dice:8.3f} {s['dice']:9.3f} {s['dice_std']:6.3f} {s['hd95']:6.2f} "
                     f"{s['sdlogj']:7.3f} {s['folding_pct']:7.3f}  {p}")
    return "\n".join(lines)
