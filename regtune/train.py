"""The training loop: Adam on random (or all-vs-all) pairs, per-epoch validation at
full resolution, divergence guards, best/last checkpoints and a per-epoch hook.

Statuses a run ends with (``TrainResult.status``):

- ``completed``: all epochs ran (or the wall-clock budget ended it);
- ``diverged_nan``: a NaN/inf loss or gradient norm;
- ``diverged_rising``: the validation loss (fixed pairs) stayed above its best for
  ``train.rising_patience`` epochs in a row;
- ``collapsed``: the warped images lost their intensity (the "black warp") or the field
  sent too many sample points outside the volume;
- ``stopped``: the epoch hook asked to stop (e.g. a study's early-stopping scheduler).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config, TrainConfig
from .data.dataset import Volumes
from .data.pairs import Pair, PairSampler, Split, sample_pairs, split_subjects
from .evaluate import evaluate_pairs, summarise
from .losses import total_loss
from .model import RegNet, downsample_image, outside_fraction, warp

VAL_KEYS = ("val_dice", "val_hd95", "val_sdlogj", "val_folding_pct", "val_warped_intensity", "val_moving_intensity",
            "val_outside_pct", "val_dice_std", "val_loss", "val_loss_sim", "val_loss_reg", "val_loss_dice")
STATUSES = ("completed", "diverged_nan", "diverged_rising", "collapsed", "stopped")


class StopTraining(Exception):
    """Raise from an epoch hook to end training with status ``stopped``."""


@dataclass
class EpochResult:
    """What one epoch produced; passed to the hook and kept in the history."""

    epoch: int
    step: int
    seconds: float
    metrics: dict[str, float]  # train_* and val_* numbers
    status: str  # "running" or a final status
    reason: str
    is_best: bool
    checkpoint_dir: Path
    model: RegNet | None = None  # the live model (for figures); do not keep a reference
    val_pairs: list[Pair] = field(default_factory=list)

    def record(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "seconds": self.seconds, "status": self.status, **self.metrics}


@dataclass
class TrainResult:
    status: str
    reason: str
    epochs: int
    best_epoch: int
    best_val_dice: float
    history: list[dict] = field(default_factory=list)
    out_dir: Path | None = None

    @property
    def best_checkpoint(self) -> Path | None:
        p = self.out_dir / "best.pt" if self.out_dir else None
        return p if p is not None and p.is_file() else None


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class _Prepared:
    """Training-resolution tensors on the device, made once."""

    def __init__(self, cfg: Config, vols: Volumes, device: torch.device):
        ds = cfg.data.downsample
        self.images = downsample_image(vols.images, ds).to(device)
        # one-hot labels at training resolution, built a few subjects at a time: the full-resolution
        # one-hot of every subject at once would be K x 4 bytes per voxel (~0.7 GB on Learn2Reg)
        self.onehot = None
        if cfg.loss.dice_weight > 0:
            n, step = len(vols), 16
            self.onehot = torch.cat([downsample_image(vols.onehot(list(range(i, min(i + step, n)))), ds)
                                     for i in range(0, n, step)]).to(device)
        self.labelled = vols.labelled.to(device)
        if cfg.train.channels_last:
            self.images = self.images.contiguous(memory_format=torch.channels_last_3d)


def _validate(cfg: Config, model: RegNet, vols: Volumes, prep: _Prepared, val_pairs: list[Pair], device: torch.device) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        rows = evaluate_pairs(model, vols, val_pairs, cfg.data.downsample, device, batch_size=cfg.train.batch_size,
                              channels_last=cfg.train.channels_last)
        # loss terms on the validation pairs at training resolution
        terms = []
        for i in range(0, len(val_pairs), cfg.train.batch_size):
            chunk = val_pairs[i: i + cfg.train.batch_size]
            f = torch.tensor([p[0] for p in chunk], device=device)
            m = torch.tensor([p[1] for p in chunk], device=device)
            terms.append(_loss(cfg, model, prep, f, m)[0].items())
    model.train()
    s = summarise(rows)
    out = {f"val_{k}": s[k] for k in ("dice", "hd95", "sdlogj", "folding_pct", "warped_intensity", "moving_intensity", "outside_pct")}
    out["val_dice_std"] = s["dice_std"]
    for k in terms[0]:
        out[f"val_{k}"] = float(np.mean([t[k] for t in terms]))
    return out


def _loss(cfg: Config, model: RegNet, prep: _Prepared, f: torch.Tensor, m: torch.Tensor):
    fixed, moving = prep.images[f], prep.images[m]
    disp = model(moving, fixed)
    warped = warp(moving, disp)
    fo = wo = mask = None
    if prep.onehot is not None:
        fo = prep.onehot[f]
        wo = warp(prep.onehot[m], disp)
        mask = prep.labelled[f] & prep.labelled[m]
    return total_loss(cfg.loss, fixed, warped, disp, fo, wo, mask), disp


class DivergenceGuard:
    """Decides after each epoch whether training has diverged or collapsed.

    check(train_loss, val_metrics) -> (status, reason); status is "running" while fine.
    """

    def __init__(self, t: TrainConfig):
        self.t = t
        self.best_loss = math.inf
        self.rising = 0

    def check(self, train_loss: float, val: dict[str, float]) -> tuple[str, str]:
        t = self.t
        if not all(math.isfinite(val.get(k, math.nan)) for k in ("val_loss", "val_dice")) or not math.isfinite(train_loss):
            return "diverged_nan", "non-finite training/validation loss or Dice"
        if val["val_warped_intensity"] < t.collapse_intensity * val["val_moving_intensity"]:
            return "collapsed", (f"mean warped intensity {val['val_warped_intensity']:.3f} fell below "
                                 f"{t.collapse_intensity:g} x moving intensity {val['val_moving_intensity']:.3f} (black warp)")
        if val["val_outside_pct"] > 100 * t.collapse_outside:
            return "collapsed", f"{val['val_outside_pct']:.1f}% of sample points left the volume (field collapse)"
        # "keeps rising" is judged on the validation loss: a fixed pair list, so it has no
        # pair-sampling noise (the epoch-mean training loss of a few dozen random pairs has)
        loss = val["val_loss"]
        if loss < self.best_loss:
            self.best_loss, self.rising = loss, 0
        elif loss > self.best_loss + t.rising_tolerance * abs(self.best_loss):
            self.rising += 1
            if self.rising >= t.rising_patience:
                return "diverged_rising", (f"validation loss {loss:.4g} stayed above its best {self.best_loss:.4g} "
                                           f"for {self.rising} epochs")
        else:
            self.rising = 0
        return "running", ""


def no_registration_baseline(vols: Volumes, pairs: list[Pair]) -> dict[str, float]:
    return summarise(evaluate_pairs(None, vols, pairs))


def train(cfg: Config, vols: Volumes, out_dir: str | Path, device: torch.device | str = "cpu",
          on_epoch: Callable[[EpochResult], None] | None = None, resume: str | Path | None = None,
          progress: bool = True, split: Split | None = None) -> TrainResult:
    """Train a registration network on ``vols``; checkpoints and history go to ``out_dir``.

    out_dir gets ``best.pt`` (best val Dice), ``last.pt`` (with optimizer state, for
    resuming), ``history.jsonl`` (one line per epoch) and ``split.json``.
    ``resume``: a ``last.pt`` to continue from (model, optimizer, epoch, history, RNG).
    """
    device = torch.device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t = cfg.train
    if t.threads > 0:
        torch.set_num_threads(t.threads)
    torch.manual_seed(t.seed)
    random.seed(t.seed)
    np.random.seed(t.seed)

    split = split or split_subjects(vols, cfg.data.val_subjects, cfg.data.split_seed)
    val_pairs = sample_pairs(split.val, cfg.data.val_pairs, cfg.data.split_seed)
    (out / "split.json").write_text(json.dumps({"train": [vols.names[i] for i in split.train],
                                                "val": [vols.names[i] for i in split.val],
                                                "val_pairs": [[vols.names[f], vols.names[m]] for f, m in val_pairs]}, indent=1))
    val_names = [[vols.names[f], vols.names[m]] for f, m in val_pairs]
    noreg_dice = summarise(evaluate_pairs(None, vols, val_pairs, with_hd95=False))["dice"]
    prep = _Prepared(cfg, vols, device)
    model = RegNet(cfg.model).to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    opt = torch.optim.Adam(model.parameters(), lr=t.lr)
    sampler = PairSampler(split.train, cfg.data.pairs, t.seed)
    use_amp = t.amp and device.type == "cuda"

    start_epoch, step, history = 0, 0, []
    best_dice, best_epoch = -math.inf, -1
    guard = DivergenceGuard(t)
    if resume is not None:
        ck = load_checkpoint(resume)
        model.load_state_dict(ck.state_dict)
        opt.load_state_dict(ck.extra["optimizer"])
        sampler.g.set_state(ck.extra["sampler_rng"])
        torch.set_rng_state(ck.extra["torch_rng"])
        st = ck.extra["state"]
        start_epoch, step, history = ck.epoch, st["step"], list(ck.extra.get("history", []))
        best_dice, best_epoch = st["best_dice"], st["best_epoch"]
        guard.best_loss, guard.rising = st["best_loss"], st["rising"]

    t0 = time.monotonic()
    budget = t.max_minutes * 60.0
    status, reason = "completed", f"{t.epochs} epochs"
    sync_every = 1 if device.type == "cpu" else 25
    epoch = start_epoch
    for epoch in range(start_epoch + 1, t.epochs + 1):
        te = time.monotonic()
        budget_hit = False
        sums = torch.zeros(4, device=device)  # accumulated on the device: no host sync per step
        n_steps = 0
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=t.steps_per_epoch, desc=f"epoch {epoch}/{t.epochs}", unit="step", leave=False)
        for _ in range(t.steps_per_epoch):
            f, m = sampler(t.batch_size)
            f, m = f.to(device), m.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                terms, _ = _loss(cfg, model, prep, f, m)
            opt.zero_grad(set_to_none=True)
            terms.total.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip if t.grad_clip > 0 else float("inf"))
            step += 1
            n_steps += 1
            if step % sync_every == 0 or n_steps == t.steps_per_epoch:
                if not (torch.isfinite(terms.total) and torch.isfinite(gnorm)):
                    status, reason = "diverged_nan", f"non-finite loss ({float(terms.total.detach()):.3g}) or gradient norm ({float(gnorm):.3g}) at step {step}"
                    break
            opt.step()
            sums += torch.stack([terms.total.detach(), terms.similarity, terms.regulariser, terms.dice]).float()
            if bar is not None:
                if n_steps % 10 == 1:  # the only per-step sync, and only for the progress bar
                    bar.set_postfix(loss=f"{float(terms.total.detach()):.4f}")
                bar.update(1)
            if budget and time.monotonic() - t0 > budget:
                budget_hit = True
                break
        if bar is not None:
            bar.close()
        means = (sums / max(n_steps, 1)).tolist()
        train_m = {f"train_{k}": v for k, v in zip(("loss", "loss_sim", "loss_reg", "loss_dice"), means)}
        train_m["lr"] = t.lr
        if status == "diverged_nan":
            train_m["train_loss"] = math.nan
            metrics = {**train_m, **{k: math.nan for k in VAL_KEYS}, "val_dice_noreg": noreg_dice}
        else:
            val = _validate(cfg, model, vols, prep, val_pairs, device)
            val["val_dice_noreg"] = noreg_dice
            metrics = {**train_m, **val}
            status, reason = guard.check(train_m["train_loss"], val)
            if status == "running":
                status = "completed"
                reason = f"wall-clock budget of {t.max_minutes:g} min reached" if budget_hit else f"{epoch} epochs"
        is_best = status == "completed" and metrics["val_dice"] > best_dice
        if is_best:
            best_dice, best_epoch = metrics["val_dice"], epoch
            save_checkpoint(out / "best.pt", cfg, model, epoch, metrics, val_pairs=val_names)
        final = status != "completed" or epoch == t.epochs or budget_hit
        rec = {"epoch": epoch, "step": step, "seconds": time.monotonic() - te,
               "status": status if final else "running", **metrics}
        history.append(rec)
        state = {"step": step, "best_dice": best_dice, "best_epoch": best_epoch, "best_loss": guard.best_loss, "rising": guard.rising}
        if status != "diverged_nan":  # never keep NaN weights as the state to resume from
            save_checkpoint(out / "last.pt", cfg, model, epoch, metrics, optimizer=opt.state_dict(),
                            sampler_rng=sampler.g.get_state(), torch_rng=torch.get_rng_state(), state=state,
                            history=history, val_pairs=val_names, status=rec["status"])
        with (out / "history.jsonl").open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
        result = EpochResult(epoch, step, rec["seconds"], metrics, rec["status"], reason, is_best, out, model, val_pairs)
        if on_epoch is not None:
            try:
                on_epoch(result)
            except StopTraining as e:
                status, reason = "stopped", str(e) or "stopped by the epoch hook"
                history[-1]["status"] = status
                break
        if final:
            break
    res = TrainResult(status, reason, epoch, best_epoch, best_dice, history, out)
    (out / "result.json").write_text(json.dumps({"status": status, "reason": reason, "epochs": epoch,
                                                 "best_epoch": best_epoch, "best_val_dice": best_dice}, indent=1))
    return res
