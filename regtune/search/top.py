"""``regtune evaluate --top K``: re-evaluate a study's best checkpoints on held-out pairs.

Picks the K best runs of the study from MLflow with the one ranking of
:mod:`regtune.search.outcome` (the trial's score = its best epoch's objective; promoted
runs compete with the same score), loads each run's ``checkpoint/best.pt``, scores it on
the reserved **test** pairs of its checkpoint (or a ``--pairs`` list), and writes
``test_*`` metrics and a per-pair CSV back to the run. ``test_*`` only ever names pairs
whose subjects were neither trained on nor used to pick an epoch or a trial: a ``--pairs``
list that shares subjects with the trial's train or validation split is refused, or with
``--allow-overlap`` scored and logged as ``overlap_*`` (labelled NOT held out). Works
against any tracking URI, so a study made on another machine can be re-evaluated.
"""

from __future__ import annotations

import csv
import math
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
    prefix: str = "test"  # test_* (held out), overlap_* (--allow-overlap), pairs_* (unknown split)
    label: str = ""
    kind: str = "trial"


def top_runs(client, study: str, k: int):
    exp = client.get_experiment_by_name(study)
    if exp is None:
        names = [e.name for e in client.search_experiments() if e.name != "Default"]
        raise RegtuneError(f"no study '{study}' in this MLflow store (studies: {', '.join(names) or 'none'}); pass --study NAME")
    from .outcome import DIVERGED_STATUSES, ranked

    runs = client.search_runs([exp.experiment_id], filter_string="tags.`regtune.kind` != 'study'", max_results=5000)
    rows = [{"run": r, "trial_id": r.data.tags.get("regtune.trial_id", ""), "score": r.data.metrics.get("best_score")}
            for r in runs if r.data.tags.get("regtune.kind") in ("trial", "promoted")
            and r.data.tags.get("regtune.orphan") != "true"
            and r.data.tags.get("regtune.status") not in DIVERGED_STATUSES + ("error", "interrupted", "cancelled", "running")
            and r.data.metrics.get("best_score") is not None]
    if not rows:
        raise RegtuneError(f"study '{study}' has no finished, non-diverged trial with a score yet")
    return [r["run"] for r in ranked(rows)[:k]]


def _split(client, run_id: str, tmp: str) -> dict:
    import json

    try:
        p = client.download_artifacts(run_id, "checkpoint/split.json", tmp)
        return json.loads(Path(p).read_text())
    except Exception:  # noqa: BLE001
        return {}


def overlap(pairs_names: list[tuple[str, str]], split: dict) -> dict[str, list[str]]:
    """Subjects of a pair list that the trial trained on or validated on."""
    used = {n for p in pairs_names for n in p}
    return {role: sorted(used & set(split.get(role, []))) for role in ("train", "val") if used & set(split.get(role, []))}


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
                 export_fields: str | None = None, device: str = "cpu", log: bool = True, progress: bool = True,
                 allow_overlap: bool = False):
    """Returns (no-registration summary, list of TopResult, what the pairs are), best first."""
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
    vols = None
    base = None
    label = ""
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
            split = _split(client, r.info.run_id, tmp + "/" + r.info.run_id)
            if pairs_csv:
                pairs = read_pairs_csv(pairs_csv, vols)
                names = [(vols.names[f], vols.names[m]) for f, m in pairs]
                bad = overlap(names, split) if split else {}
                if bad and not allow_overlap:
                    what = "; ".join(f"{len(v)} {role} subject(s) (e.g. {v[0]})" for role, v in bad.items())
                    raise RegtuneError(f"{pairs_csv}: not held out for trial {r.data.tags.get('regtune.trial_id')}: it "
                                       f"shares {what}; use the reserved test split (drop --pairs) or add "
                                       f"--allow-overlap to score it labelled as not held out")
                prefix = "overlap" if bad else "test"
                label = (f"{pairs_csv}: NOT held out (shares subjects with the trials' train/val split)" if bad
                         else f"{pairs_csv}: held out (no subject trained on or used for validation)")
                if not split:
                    prefix, label = "pairs", f"{pairs_csv}: held-out status unknown (the run has no split.json)"
            else:
                names = ck.extra.get("test_pairs") or []
                if not names:
                    raise RegtuneError(f"{local}: the checkpoint holds no test pair list (data.test_subjects=0 when it "
                                       f"was trained); pass --pairs CSV of subjects it never saw")
                pairs = [(vols.index(f), vols.index(m)) for f, m in names]
                prefix, label = "test", "the reserved test split (subjects never trained on or used to pick an epoch/trial)"
            if base is None:
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
            tr.prefix, tr.label, tr.kind = prefix, label, r.data.tags.get("regtune.kind", "trial")
            results.append(tr)
            if log:
                metrics = {f"{prefix}_{k_}": float(s[k_]) for k_ in ("dice", "dice30", "hd95", "sdlogj", "sdlogj_l2r",
                                                                     "folding_pct", "dice_std") if k_ in s}
                metrics[f"{prefix}_pairs"] = float(len(pairs))
                for k_, v in metrics.items():
                    client.log_metric(r.info.run_id, k_, v)
                p = Path(tmp) / f"{prefix}_pairs_{r.info.run_id}.csv"
                with p.open("w", newline="") as fh:
                    w = csv.DictWriter(fh, fieldnames=list(rows[0]))
                    w.writeheader()
                    w.writerows(rows)
                client.log_artifact(r.info.run_id, str(p), artifact_path="evaluation")
                client.set_tag(r.info.run_id, f"regtune.{prefix}_pairs", label[:5000])
    return base, results


def _short(v: str) -> str:
    try:
        return f"{float(v):.3g}"
    except ValueError:
        return v


def format_top(base: dict, results: list[TopResult]) -> str:
    head = "test" if all(getattr(r, "prefix", "test") == "test" for r in results) else "pairs"
    lines = [f"pairs: {getattr(results[0], 'label', '')}" if results else "",
             f"{'rank':4s} {'trial':12s} {'val Dice':>8s} {head + ' Dice':>10s} {'±':>6s} {'Dice30':>6s} {'HD95':>6s} "
             f"{'SDlogJ':>7s} {'fold %':>7s}  params",
             f"{'-':4s} {'no registration':21s} {base['dice']:10.3f} {base['dice_std']:6.3f} {base.get('dice30', math.nan):6.3f} "
             f"{base['hd95']:6.2f} {'—':>7s} {'—':>7s}"]
    for i, r in enumerate(results, 1):
        s = r.summary
        p = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in r.params.items())
        tid = r.trial_id + ("*" if getattr(r, "kind", "trial") == "promoted" else "")
        lines.append(f"{i:<4d} {tid:12s} {r.val_dice:8.3f} {s['dice']:10.3f} {s['dice_std']:6.3f} {s.get('dice30', math.nan):6.3f} "
                     f"{s['hd95']:6.2f} {s['sdlogj']:7.3f} {s['folding_pct']:7.3f}  {p}")
    if any(getattr(r, "kind", "") == "promoted" for r in results):
        lines.append("* promoted (trained to the full budget)")
    return "\n".join(lines)
