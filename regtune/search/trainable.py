"""The Ray Tune function trainable that wraps the core training loop.

One trial: trial dict -> typed Config (once) -> ``regtune.train.train`` with an epoch hook
that reports every epoch with ``ray.tune.report`` and a ``tune.Checkpoint`` (last.pt,
best.pt, history, figures). A restarted trial resumes from ``tune.get_checkpoint()``.
The dataset arrives through ``tune.with_parameters`` (put in the object store once; on
each node trials read the same shared-memory arrays, zero-copy).
"""

from __future__ import annotations

import math
import os
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
from ..errors import RegtuneError
from ..train import EpochResult, train
from .outcome import DIVERGED_STATUSES, SCORE_KEY, running_score
from .space import SearchSpace

CHECKPOINT_FILES = ("last.pt", "best.pt", "history.jsonl", "split.json", "result.json")
BEST_KEYS = ("val_dice", "val_hd95", "val_sdlogj", "val_folding_pct")


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


def report_metrics(e: EpochResult, reason: str, trial_score: float, resumed_from: int = 0) -> dict[str, Any]:
    """One epoch's report: the core's metrics (``score`` is the epoch's objective, computed
    by the core from ``train.best_*``) plus ``trial_score``, the trial's best so far."""
    m = {k: (float(v) if v is not None else math.nan) for k, v in e.metrics.items()}
    diverged = e.status in DIVERGED_STATUSES
    m[SCORE_KEY] = trial_score
    m["epoch"] = e.epoch
    m["step"] = e.step
    m["epoch_seconds"] = e.seconds
    m["status"] = e.status
    m["reason"] = reason
    m["diverged"] = int(diverged)
    m["resumed_from_epoch"] = resumed_from  # 0: fresh start; k: restarted from the epoch-k checkpoint
    return m


def trial_device(gpu: float) -> torch.device:
    """The device of a trial: the GPU Ray assigned it (Ray sets CUDA_VISIBLE_DEVICES for the
    worker, so it is cuda:0 here), pinned as torch's current device; CPU when the trial
    asked for no GPU. A trial that asked for a GPU never falls back to the CPU silently."""
    if gpu <= 0:
        return torch.device("cpu")
    ids = ray.get_gpu_ids() if ray.is_initialized() else []
    if not torch.cuda.is_available():
        raise RegtuneError(f"trial asked for {gpu:g} GPU and Ray assigned GPU {ids or '?'} on this node, but torch "
                           f"{torch.__version__} sees no CUDA device (a CPU build of torch, or no driver); install the "
                           f"CUDA build of torch==2.13.0 on the GPU nodes or set resources.gpu: 0")
    # Ray narrows CUDA_VISIBLE_DEVICES to the assigned GPU, so it is device 0 here (unless told not to)
    idx = int(ids[0]) if ids and os.environ.get("RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES") else 0
    torch.cuda.set_device(idx)
    return torch.device(f"cuda:{idx}")


def run_trial(config: dict[str, Any], data: dict[str, Any] | None = None, space: SearchSpace | None = None,
              work_root: str | None = None, promote: dict[str, Any] | None = None) -> None:
    """Ray Tune function trainable. ``config``: the trial's sampled values (dotted keys).

    ``promote`` (promotion trials only): ``{"epochs": full budget, "mode": continue|retrain,
    "sources": {trial id: {file name: bytes}}}``; ``config["regtune.promote_from"]`` names the
    search trial whose settings (and, to continue, checkpoint) this trial takes.
    The trial's work folder lives under ``work_root`` and is removed however the trial ends
    (finished, stopped by ASHA, errored); the driver removes ``work_root`` at the end.
    """
    if space is None or data is None:
        raise ValueError("run_trial needs data= and space= bound with tune.with_parameters")
    cfg = space.trial_config(config)
    source = config.get("regtune.promote_from")
    if promote is not None:
        cfg = cfg.with_values({"train.epochs": int(promote["epochs"])}, source="promote")
    if cfg.train.threads == 0:
        cfg = cfg.with_values({"train.threads": max(1, int(space.resources.cpu))})
    root = Path(work_root or tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"trial-{os.getpid()}-", dir=root))
    try:
        _run(cfg, config, data, space, work, promote, source)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(cfg, config, data, space, work: Path, promote, source) -> None:
    # the object store hands out read-only views of its shared memory: no per-trial copy of the dataset
    zero_copy = int(not data["images"].flags.owndata and not data["images"].flags.writeable)
    vols = volumes_from_payload(data)
    device = trial_device(space.resources.gpu)
    resume = None
    ck = tune.get_checkpoint()
    if ck is not None:
        with ck.as_directory() as d:
            for name in CHECKPOINT_FILES:
                if (Path(d) / name).is_file():
                    shutil.copy2(Path(d) / name, work / name)
        if (work / "last.pt").is_file():
            resume = work / "last.pt"
    elif promote is not None and promote.get("mode") == "continue" and source in promote.get("sources", {}):
        for name, blob in promote["sources"][source].items():  # the search trial's last.pt, best.pt, history
            (work / name).write_bytes(blob)
        resume = work / "last.pt" if (work / "last.pt").is_file() else None
    resumed_from = load_checkpoint(resume).epoch if resume is not None else 0
    best_so_far, best_metrics = -math.inf, {}
    if resume is not None:
        best_so_far = float(load_checkpoint(resume).extra.get("state", {}).get("best_score", -math.inf))
        if (work / "best.pt").is_file():
            bk = load_checkpoint(work / "best.pt")
            best_metrics = {"best_epoch": bk.epoch, **{f"best_{k}": bk.metrics.get(k, math.nan) for k in BEST_KEYS}}
    # per-trial facts every report carries: where it runs, on which device, and that the dataset arrived without a copy
    trial_facts = {"node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else "",
                   "data_zero_copy": zero_copy, "device": str(device),
                   "gpu_ids": ",".join(str(i) for i in (ray.get_gpu_ids() if ray.is_initialized() else [])),
                   "epochs_total": cfg.train.epochs}  # the progress line's "epoch e/E"
    if promote is not None:
        trial_facts["promoted_from"] = str(source)
    draw_at = figure_epochs(space, cfg.train.epochs)
    figure_seconds: list[float] = []
    title = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items()
                      if not k.startswith("regtune."))
    state = {"best": best_so_far, "metrics": best_metrics}

    def on_epoch(e: EpochResult) -> None:
        state["best"] = running_score(state["best"], float(e.metrics.get("score", -math.inf)), e.status)
        if e.is_best:  # the epoch saved as best.pt: its metrics are the trial's best_* metrics
            state["metrics"] = {"best_epoch": e.epoch, **{f"best_{k}": float(e.metrics.get(k, math.nan)) for k in BEST_KEYS},
                                **{f"best_{k}": float(v) for k, v in e.metrics.items() if k.startswith("lambda.")}}
        with tempfile.TemporaryDirectory(prefix="regtune-ck-", dir=work.parent) as tmp:
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
            for png in (work / "figures").glob("*.*") if (work / "figures").is_dir() else []:  # PNGs, weight_curve.json
                shutil.copy2(png, figs / png.name)
            m = {**report_metrics(e, e.reason, state["best"], resumed_from), **state["metrics"], **trial_facts,
                 "figure_seconds": sum(figure_seconds)}
            tune.report(m, checkpoint=tune.Checkpoint.from_directory(tmp))

    rescore = None
    if cfg.amortise.ranges:  # amortised loss weights: each epoch is scored at the weight its search picks
        from .amortised import TrialRescore

        rescore = TrialRescore(cfg, vols, device, space.weight_search, work / "figures", draw_at, seed=cfg.train.seed)
    train(cfg, vols, work, device=device, on_epoch=on_epoch, resume=resume, progress=False, rescore=rescore)


def figure_epochs(space: SearchSpace, last: int | None = None) -> set[int]:
    """Epochs after which a trial may end: ASHA's rungs (grace x factor^k < epochs) and the last epoch."""
    b, last = space.budget, last or space.base.train.epochs
    out, t = {last}, b.grace_period
    while t < last:
        out.add(t)
        t *= b.reduction_factor
    return out


def _history(work: Path) -> list[dict]:
    import json

    p = work / "history.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.is_file() else []


__all__ = ["run_trial", "volumes_payload", "volumes_from_payload", "report_metrics", "figure_epochs", "trial_device"]
