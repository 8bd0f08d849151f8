"""The training loop: Adam on random (or all-vs-all) pairs, per-epoch validation at
full resolution, divergence guards, best/last checkpoints and a per-epoch hook.

Statuses a run ends with (``TrainResult.status``):

- ``completed``: all epochs ran (or the wall-clock budget ended it);
- ``diverged_nan``: a NaN/inf loss or gradient norm;
- ``diverged_rising``: the validation loss (fixed pairs) stayed above its best for
  ``train.rising_patience`` epochs in a row, each time by more than
  ``train.rising_tolerance`` of what it had gained since the first epoch;
- ``collapsed``: the warped images lost their intensity (the "black warp") or the field
  sent too many sample points outside the volume;
- ``stopped``: the epoch hook asked to stop (e.g. a study's early-stopping scheduler).
"""

from __future__ import annotations

import itertools
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config
from .data.dataset import Volumes
from .data.pairs import Pair, Split, sample_pairs, split_subjects
from .evaluate import evaluate_pairs, summarise
from .guard import DivergenceGuard
from .model import RegNet
from .objective import Objective
from .progress import progress as progress_bar
from .trainer import Trainer

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
    metrics: dict[str, float]  # train_* and val_* numbers, and "score" (the objective)
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
    best_val_dice: float  # val Dice of the best epoch (the epoch with the best score)
    history: list[dict] = field(default_factory=list)
    out_dir: Path | None = None
    best_score: float = -math.inf
    steps: int = 0

    @property
    def best_checkpoint(self) -> Path | None:
        p = self.out_dir / "best.pt" if self.out_dir else None
        return p if p is not None and p.is_file() else None


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _validate(cfg: Config, trainer: Trainer, vols: Volumes, val_pairs: list[Pair]) -> dict[str, float]:
    model, device = trainer.model, trainer.device
    model.eval()
    with torch.no_grad():
        rows = evaluate_pairs(model, vols, val_pairs, cfg.data.downsample, device, batch_size=cfg.train.batch_size,
                              channels_last=cfg.train.channels_last)
        # loss terms on the validation pairs at training resolution (no augmentation)
        terms = []
        for i in range(0, len(val_pairs), cfg.train.batch_size):
            chunk = val_pairs[i: i + cfg.train.batch_size]
            f = torch.tensor([p[0] for p in chunk], device=device)
            m = torch.tensor([p[1] for p in chunk], device=device)
            terms.append(trainer.loss(f, m)[0].items())
    model.train()
    s = summarise(rows)
    out = {f"val_{k}": s[k] for k in ("dice", "hd95", "sdlogj", "sdlogj_l2r", "folding_pct", "warped_intensity",
                                      "moving_intensity", "outside_pct")}
    out["val_dice_std"] = s["dice_std"]
    for k in terms[0]:
        out[f"val_{k}"] = float(np.mean([t[k] for t in terms]))
    return out


def no_registration_baseline(vols: Volumes, pairs: list[Pair]) -> dict[str, float]:
    return summarise(evaluate_pairs(None, vols, pairs))


def split_for(cfg: Config, vols: Volumes) -> tuple[Split, list[Pair], list[Pair]]:
    """The subject split and the fixed validation and test pair lists of a config.

    An official Learn2Reg release (``*_dataset.json`` with ``registration_val``) fixes
    the validation pairs and subjects; the test subjects are then drawn from the others.
    """
    d = cfg.data
    official = [(vols.index(f), vols.index(m)) for f, m in vols.registration_val]
    split = split_subjects(vols, d.val_subjects, d.split_seed, d.test_subjects,
                           val_names=sorted({vols.names[i] for p in official for i in p}) if official else None)
    val_pairs = official or sample_pairs(split.val, d.val_pairs, d.split_seed)
    test_pairs = sample_pairs(split.test, d.test_pairs, d.split_seed) if split.test else []
    return split, val_pairs, test_pairs


def write_split(path: Path, vols: Volumes, split: Split, val_pairs: list[Pair], test_pairs: list[Pair]) -> None:
    names = vols.names
    path.write_text(json.dumps({"train": [names[i] for i in split.train], "val": [names[i] for i in split.val],
                                "test": [names[i] for i in split.test],
                                "val_pairs": [[names[f], names[m]] for f, m in val_pairs],
                                "test_pairs": [[names[f], names[m]] for f, m in test_pairs]}, indent=1))


def train(cfg: Config, vols: Volumes, out_dir: str | Path, device: torch.device | str = "cpu",
          on_epoch: Callable[[EpochResult], None] | None = None, resume: str | Path | None = None,
          progress: bool = True, split: Split | None = None,
          rescore: Callable[[int, RegNet, list[Pair], dict], dict] | None = None) -> TrainResult:
    """Train a registration network on ``vols``; checkpoints and history go to ``out_dir``.

    out_dir gets ``best.pt`` (the epoch with the best objective score, ``train.best_*``),
    ``last.pt`` (with optimiser and generator states, for an exact resume),
    ``history.jsonl`` (one line per epoch), ``split.json`` (train/val/test subjects and
    the val/test pair lists) and ``result.json``.
    ``resume``: a ``last.pt`` to continue from; the step after a resume is the step an
    uninterrupted run would have taken.
    ``rescore(epoch, model, val_pairs, metrics)``: a caller's own validation, after the
    divergence guard; the metrics it returns replace the epoch's before the objective
    scores it (an amortised study trial scores each epoch at the weight its search picks).
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

    if split is None:
        split, val_pairs, test_pairs = split_for(cfg, vols)
    else:
        val_pairs = sample_pairs(split.val, cfg.data.val_pairs, cfg.data.split_seed)
        test_pairs = sample_pairs(split.test, cfg.data.test_pairs, cfg.data.split_seed) if split.test else []
    write_split(out / "split.json", vols, split, val_pairs, test_pairs)
    val_names = [[vols.names[f], vols.names[m]] for f, m in val_pairs]
    test_names = [[vols.names[f], vols.names[m]] for f, m in test_pairs]
    split_names = {k: [vols.names[i] for i in getattr(split, k)] for k in ("train", "val", "test")}
    noreg_dice = summarise(evaluate_pairs(None, vols, val_pairs, with_hd95=False))["dice"]
    objective = Objective.from_train(t)
    trainer = Trainer(cfg, vols, split, device)
    model = trainer.model

    start_epoch, history = 0, []
    best_score, best_dice, best_epoch = -math.inf, math.nan, -1
    guard = DivergenceGuard(t)
    if resume is not None:
        ck = load_checkpoint(resume)
        model.load_state_dict(ck.state_dict)
        st = ck.extra["state"]
        trainer.load_state(ck.extra["trainer"])
        start_epoch, history = ck.epoch, list(ck.extra.get("history", []))
        best_score, best_dice, best_epoch = st["best_score"], st["best_dice"], st["best_epoch"]
        guard.best_loss, guard.rising = st["best_loss"], st["rising"]
        guard.first_loss = history[0]["val_loss"] if history else math.nan  # the gain's reference, kept in the history

    status, reason = "completed", f"{t.epochs} epochs"
    sync_every = 1 if device.type == "cpu" else 25
    epoch = start_epoch
    # train.epochs = 0: no epoch limit, the wall-clock budget (train.max_minutes, required then) ends the run
    epochs = range(start_epoch + 1, t.epochs + 1) if t.epochs else itertools.count(start_epoch + 1)
    for epoch in epochs:
        te = time.monotonic()
        budget_hit = False
        n_steps = 0
        # a step bar on a terminal only: in a log the epoch lines already say it
        bar = progress_bar(progress and sys.stderr.isatty(), t.steps_per_epoch,
                           f"epoch {epoch}/{t.epochs}" if t.epochs else f"epoch {epoch}", "step")
        for _ in range(t.steps_per_epoch):
            out_step = trainer.step()
            n_steps += 1
            if trainer.steps % sync_every == 0 or n_steps == t.steps_per_epoch:
                loss, gnorm = out_step.terms.total.detach(), out_step.grad_norm
                if not (torch.isfinite(loss) and torch.isfinite(gnorm)):
                    status, reason = "diverged_nan", (f"non-finite loss ({float(loss):.3g}) or gradient norm "
                                                      f"({float(gnorm):.3g}) at step {trainer.steps}")
                    break
            if bar is not None:
                if n_steps % 10 == 1:  # the only per-step sync, and only on a terminal
                    bar.set_postfix(loss=f"{float(out_step.terms.total.detach()):.4f}", lr=f"{trainer.lr():.2e}")
                bar.update(1)
            if trainer.budget_spent():
                budget_hit = True
                break
        if bar is not None:
            bar.close()
        train_m = trainer.epoch_means()
        # validation, best.pt, last.pt's weights and the epoch hook see the averaged weights (train.ema)
        with trainer.averaged():
            train_m["lr"] = trainer.lr()
            if status == "diverged_nan":
                train_m["train_loss"] = math.nan
                metrics = {**train_m, **{k: math.nan for k in VAL_KEYS}, "val_dice_noreg": noreg_dice}
            else:
                val = _validate(cfg, trainer, vols, val_pairs)
                val["val_dice_noreg"] = noreg_dice
                metrics = {**train_m, **val}
                status, reason = guard.check(train_m["train_loss"], val)
                if status == "running" and rescore is not None:
                    metrics.update(rescore(epoch, model, val_pairs, metrics))
                if status == "running":
                    status = "completed"
                    reason = f"wall-clock budget of {t.max_minutes:g} min reached" if budget_hit else f"{epoch} epochs"
            metrics["score"] = objective.score(metrics) if status in ("completed",) else objective.score({})
            is_best = status == "completed" and metrics["score"] > best_score
            if is_best:
                best_score, best_dice, best_epoch = metrics["score"], metrics["val_dice"], epoch
                save_checkpoint(out / "best.pt", cfg, model, epoch, metrics, val_pairs=val_names, test_pairs=test_names,
                                split=split_names, steps=trainer.steps)
            final = status != "completed" or epoch == t.epochs or budget_hit
            rec = {"epoch": epoch, "step": trainer.steps, "seconds": time.monotonic() - te,
                   "elapsed": trainer.elapsed(), "status": status if final else "running", **metrics}
            history.append(rec)
            state = {"best_score": best_score, "best_dice": best_dice, "best_epoch": best_epoch,
                     "best_loss": guard.best_loss, "rising": guard.rising}
            if status != "diverged_nan":  # never keep NaN weights as the state to resume from
                save_checkpoint(out / "last.pt", cfg, model, epoch, metrics, trainer=trainer.state(), state=state,
                                history=history, val_pairs=val_names, test_pairs=test_names, split=split_names,
                                steps=trainer.steps, status=rec["status"])
            with (out / "history.jsonl").open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
            result = EpochResult(epoch, trainer.steps, rec["seconds"], metrics, rec["status"], reason, is_best, out, model, val_pairs)
            if on_epoch is not None:
                try:
                    on_epoch(result)
                except StopTraining as e:
                    status, reason = "stopped", str(e) or "stopped by the epoch hook"
                    history[-1]["status"] = status
                    break
        if final:
            break
    res = TrainResult(status, reason, epoch, best_epoch, best_dice, history, out, best_score, trainer.steps)
    (out / "result.json").write_text(json.dumps({"status": status, "reason": reason, "epochs": epoch, "steps": trainer.steps,
                                                 "seconds": trainer.elapsed(), "best_epoch": best_epoch,
                                                 "best_score": best_score, "objective": objective.describe(),
                                                 "best_val_dice": best_dice}, indent=1))
    return res
