"""The Ray Tune function trainable that wraps the core training loop.

One trial: trial dict -> typed Config (once) -> ``regtune.train.train`` with an epoch hook
that reports every epoch with ``ray.tune.report`` and a ``tune.Checkpoint`` (last.pt,
best.pt, history, figures). A restarted trial resumes from ``tune.get_checkpoint()``.
The dataset arrives through ``tune.with_parameters`` (put in the object store once; on
each node trials read the same shared-memory arrays, zero-copy).
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import tune

from ..checkpoint import load_checkpoint
from ..data.dataset import Volumes
from ..figures import curves_png, pair_figures
from ..train import EpochResult, train
from .space import SearchSpace

CHECKPOINT_FILES = ("last.pt", "best.pt", "history.jsonl", "split.json", "result.json")


def volumes_payload(vols: Volumes) -> dict[str, Any]:
    """Plain numpy/python form of the dataset for the object store."""
    return {"names": list(vols.names), "images": vols.images.numpy(), "labels": vols.labels.numpy(),
            "labelled": vols.labelled.numpy(), "spacing": tuple(vols.spacing), "affine": np.asarray(vols.affine),
            "label_values": tuple(vols.label_values), "notes": list(vols.notes),
            "raw_p99": dict(vols.raw_p99)}


def volumes_from_payload(p: dict[str, Any]) -> Volumes:
    with warnings.catch_warnings():  # object-store arrays are read-only; regtune never writes to them
        warnings.simplefilter("ignore", UserWarning)
        return Volumes(names=list(p["names"]), images=torch.from_numpy(p["images"]), labels=torch.from_numpy(p["labels"]),
                       labelled=torch.from_numpy(p["labelled"]), spacing=tuple(p["spacing"]), affine=p["affine"],
                       label_values=tuple(p["label_values"]), notes=list(p["notes"]), raw_p99=dict(p.get("raw_p99", {})))


def report_metrics(space: SearchSpace, e: EpochResult, reason: str, resumed_from: int = 0) -> dict[str, Any]:
    m = {k: (float(v) if v is not None else math.nan) for k, v in e.metrics.items()}
    diverged = e.status in ("diverged_nan", "diverged_rising", "collapsed")
    m["score"] = space.objective.diverged_score if diverged else space.objective.score(m)
    m["epoch"] = e.epoch
    m["step"] = e.step
    m["epoch_seconds"] = e.seconds
    m["status"] = e.status
    m["reason"] = reason
    m["diverged"] = int(diverged)
    m["resumed_from_epoch"] = resumed_from  # 0: fresh start; k: restarted from the epoch-k checkpoint
    return m


def run_trial(config: dict[str, Any], data: dict[str, Any] | None = None, space: SearchSpace | None = None) -> None:
    """Ray Tune function trainable. ``config``: the trial's sampled values (dotted keys)."""
    if space is None or data is None:
        raise ValueError("run_trial needs data= and space= bound with tune.with_parameters")
    cfg = space.trial_config(config)
    if cfg.train.threads == 0:
        cfg = cfg.with_values({"train.threads": max(1, int(space.resources.cpu))})
    # the object store hands out read-only views of its shared memory: no per-trial copy of the dataset
    zero_copy = int(not data["images"].flags.owndata and not data["images"].flags.writeable)
    vols = volumes_from_payload(data)
    device = torch.device("cuda" if space.resources.gpu > 0 and torch.cuda.is_available() else "cpu")
    work = Path(tempfile.mkdtemp(prefix="regtune-trial-"))
    resume = None
    ck = tune.get_checkpoint()
    if ck is not None:
        with ck.as_directory() as d:
            for name in CHECKPOINT_FILES:
                if (Path(d) / name).is_file():
                    shutil.copy2(Path(d) / name, work / name)
        if (work / "last.pt").is_file():
            resume = work / "last.pt"
    resumed_from = load_checkpoint(resume).epoch if resume is not None else 0
    # per-trial facts every report carries: where it runs, and that the dataset arrived without a copy
    trial_facts = {"node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else "",
                   "data_zero_copy": zero_copy}
    draw_at = figure_epochs(space)
    figure_seconds: list[float] = []
    title = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items())

    def on_epoch(e: EpochResult) -> None:
        with tempfile.TemporaryDirectory(prefix="regtune-ck-") as tmp:
            t = Path(tmp)
            for name in CHECKPOINT_FILES:
                if (work / name).is_file():
                    shutil.copy2(work / name, t / name)
            figs = t / "figures"
            if e.epoch in draw_at or e.status != "running":
                # figures cost ~1 s of the trial's slot: drawn where a trial can end (ASHA rungs, the
                # last epoch, a failure), from the best model so far; other epochs carry the last ones
                t0 = time.perf_counter()
                curves_png(work / "figures" / "curves.png", _history(work), title=title)
                if e.val_pairs and e.model is not None and (e.is_best or (work / "best.pt").is_file()):
                    best, best_epoch = e.model, e.epoch
                    if not e.is_best:
                        ck = load_checkpoint(work / "best.pt")
                        best, best_epoch = ck.model(device), ck.epoch
                    pair_figures(work / "figures", best, vols, e.val_pairs[0], cfg.data.downsample,
                                 tag=f"best, epoch {best_epoch}")
                figure_seconds.append(time.perf_counter() - t0)
            if e.status in ("collapsed", "diverged_rising") and e.model is not None and e.val_pairs:
                # what the failure looks like: the warp of the model as it diverged
                pair_figures(work / "figures" / "diverged", e.model, vols, e.val_pairs[0], cfg.data.downsample,
                             tag=f"{e.status} at epoch {e.epoch}")
                for png in (work / "figures" / "diverged").glob("*.png"):
                    shutil.copy2(png, work / "figures" / f"diverged_{png.name}")
            figs.mkdir(exist_ok=True)
            for png in (work / "figures").glob("*.png") if (work / "figures").is_dir() else []:
                shutil.copy2(png, figs / png.name)
            m = {**report_metrics(space, e, e.reason, resumed_from), **trial_facts, "figure_seconds": sum(figure_seconds)}
            tune.report(m, checkpoint=tune.Checkpoint.from_directory(tmp))

    train(cfg, vols, work, device=device, on_epoch=on_epoch, resume=resume, progress=False)
    shutil.rmtree(work, ignore_errors=True)


def figure_epochs(space: SearchSpace) -> set[int]:
    """Epochs after which a trial may end: ASHA's rungs (grace x factor^k < epochs) and the last epoch."""
    b, last = space.budget, space.base.train.epochs
    out, t = {last}, b.grace_period
    while t < last:
        out.add(t)
        t *= b.reduction_factor
    return out


def _history(work: Path) -> list[dict]:
    import json

    p = work / "history.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.is_file() else []


__all__ = ["run_trial", "volumes_payload", "volumes_from_payload", "report_metrics", "figure_epochs"]
