"""One training step, and everything it needs resident on the training device.

:class:`Trainer` is the product's step: ``regtune train``, study trials and the
benchmarks all run it (the epoch loop, validation and checkpoints live in
:mod:`regtune.train`). Per step it draws pairs on the device, augments them there, runs
the network (both directions when ``train.symmetric``), computes the loss under bf16
autocast on CUDA when ``train.amp``, and updates the weights (and their moving average,
``train.ema``), all without a host sync; the epoch's loss sums accumulate on the device.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from .augment import Augmenter
from .config import Config
from .data.dataset import Volumes
from .data.pairs import PairSampler, Split
from .losses import TERMS, LossTerms, combine, loss_terms
from .amortise import reference_config
from .model import downsample_image, upsample_field, warp
from .model.conditioning import LambdaSampler, build_model
from .schedule import lr_factor, progress


#: full-resolution voxels kept around the training subjects' labels (loss.dice_full_res): more than
#: a field moves a label there (augmentation ~3 voxels, registration a few more)
LABEL_MARGIN = 8


def label_box(labels: torch.Tensor, idx: tuple[int, ...], margin: int = LABEL_MARGIN) -> tuple[slice, slice, slice]:
    """The box around every foreground voxel of subjects ``idx`` (N, X, Y, Z label maps),
    grown by ``margin`` voxels and clipped to the volume; the whole volume when none is labelled."""
    fg = (labels[list(idx)] > 0).any(0) if len(idx) else torch.zeros(labels.shape[1:], dtype=torch.bool)
    if not bool(fg.any()):
        return tuple(slice(0, n) for n in labels.shape[1:])
    nz = fg.nonzero()
    lo, hi = nz.min(0).values, nz.max(0).values
    return tuple(slice(max(0, int(a) - margin), min(n, int(b) + 1 + margin)) for a, b, n in zip(lo, hi, labels.shape[1:]))


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), as PyTorch detects it."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def amp_enabled(amp: bool | str, device: torch.device) -> bool:
    """``train.amp`` on ``device``: true/false as given (bf16 autocast exists for CUDA and
    CPU only), ``auto`` = CUDA, or a CPU with native bf16."""
    if device.type not in ("cuda", "cpu"):
        return False
    if amp == "auto":
        return device.type == "cuda" or native_bf16_cpu()
    return bool(amp)


class Prepared:
    """Training-resolution tensors on the device, made once.

    With ``loss.dice_full_res`` (and a downsampled training grid) the one-hot labels stay
    at full resolution, cropped to :func:`label_box` of the training subjects (``box``;
    ~40 % of a Learn2Reg volume) and stored as uint8, made float per batch."""

    def __init__(self, cfg: Config, vols: Volumes, device: torch.device, train: tuple[int, ...] = ()):
        ds = cfg.data.downsample
        self.images = downsample_image(vols.images, ds).to(device)
        self.full_size = tuple(int(n) for n in vols.images.shape[2:])
        # one-hot labels built a few subjects at a time: the full-resolution one-hot of every
        # subject at once would be K x 4 bytes per voxel (~0.7 GB on Learn2Reg)
        self.onehot = self.box = self.box_centre = None
        if cfg.loss.dice_weight > 0:
            n, step = len(vols), 16
            if cfg.loss.dice_full_res and ds > 1:
                self.box = label_box(vols.labels, train)
                # the volume's centre in the box's voxel coordinates (augmentation turns about it)
                self.box_centre = tuple((m - 1) / 2.0 - b.start for m, b in zip(self.full_size, self.box))
                parts = [vols.onehot(list(range(i, min(i + step, n))))[(..., *self.box)].to(torch.uint8)
                         for i in range(0, n, step)]
            else:
                parts = [downsample_image(vols.onehot(list(range(i, min(i + step, n)))), ds) for i in range(0, n, step)]
            self.onehot = torch.cat(parts).to(device)
        self.labelled = vols.labelled.to(device)
        if cfg.train.channels_last:
            self.images = self.images.contiguous(memory_format=torch.channels_last_3d)


@dataclass
class StepOutput:
    terms: LossTerms
    grad_norm: torch.Tensor


class Trainer:
    """Model, optimiser, pair sampler, augmentation and schedule of one run.

    ``step()`` runs one optimiser step; ``loss(f, m)`` the loss of given pairs (used by
    validation without augmentation). ``state()`` / ``load_state()`` capture everything
    a bit-identical continuation needs (weights, optimiser, every generator, step, time, and
    with ``train.ema`` both the trained and the averaged weights); ``averaged()`` swaps the
    average into the model for validation and checkpoints.
    """

    def __init__(self, cfg: Config, vols: Volumes, split: Split, device: torch.device | str = "cpu"):
        # amortised loss weights: every step draws them per sample (self.lam); a call without
        # them (validation) uses their reference values, which this cfg holds
        self.cfg = cfg = reference_config(cfg)
        self.device = torch.device(device)
        t = cfg.train
        self.prep = Prepared(cfg, vols, self.device, tuple(split.train))
        self.model = build_model(cfg).to(self.device)
        self.lam = LambdaSampler(cfg, self.device, seed=t.seed + 2) if cfg.amortise.ranges else None
        if t.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        if t.compile:  # the U-Net only: integration, warps and losses stay eager (and exact)
            self.model._unet = torch.compile(self.model._unet)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=t.lr)
        # train.ema: the averaged weights; swapped into the model by averaged() (validation, checkpoints)
        self._params = list(self.model.parameters())
        self.ema = [p.detach().clone() for p in self._params] if t.ema > 0 else None
        self._swapped = False
        self.sampler = PairSampler(split.train, cfg.data.pairs, t.seed, device=self.device)
        self.augment = Augmenter(cfg.aug, self.device, seed=t.seed + 1) if cfg.aug.any else None
        self.use_amp = amp_enabled(t.amp, self.device)
        self.steps = 0
        self.seconds = 0.0  # training time spent before this process (resume) -- the budget clock
        self._t0 = time.monotonic()
        self.sums = torch.zeros(1 + len(TERMS), device=self.device)
        self.n_sum = 0

    # ---- time and schedule ------------------------------------------------------
    def elapsed(self) -> float:
        """Seconds of this run so far (across resumes): what ``train.max_minutes`` counts."""
        return self.seconds + time.monotonic() - self._t0

    def progress(self) -> float:
        return progress(self.cfg.train, self.steps, self.elapsed())

    def lr(self, progress: float | None = None) -> float:
        """``train.lr`` under the schedule at ``progress`` (default: the run's progress now)."""
        return self.cfg.train.lr * lr_factor(self.cfg.train, self.progress() if progress is None else progress)

    def budget_spent(self) -> bool:
        t = self.cfg.train
        return t.max_minutes > 0 and self.elapsed() >= 60.0 * t.max_minutes

    # ---- the loss -----------------------------------------------------------------
    def loss(self, f: torch.Tensor, m: torch.Tensor, augment: bool = False,
             weights: dict[str, torch.Tensor | float] | None = None,
             cond: torch.Tensor | None = None) -> tuple[LossTerms, torch.Tensor]:
        """Loss of pairs (fixed index ``f``, moving index ``m``) and the forward field.
        ``cond``: a conditional network's (B, K) loss-weight inputs (``weights`` then holds
        the same weights for the loss)."""
        cfg, prep = self.cfg, self.prep
        fixed, moving = prep.images[f], prep.images[m]
        fo = mo = mask = None
        if prep.onehot is not None:
            fo, mo = prep.onehot[f].float(), prep.onehot[m].float()
            mask = prep.labelled[f] & prep.labelled[m]
        if augment and self.augment is not None:
            fixed, moving, fo, mo = self.augment(fixed, moving, fo, mo, label_centre=prep.box_centre)
            if cfg.train.channels_last:
                fixed = fixed.contiguous(memory_format=torch.channels_last_3d)
                moving = moving.contiguous(memory_format=torch.channels_last_3d)
        need_bwd = cfg.train.symmetric or cfg.loss.ic_weight > 0
        # the inverse-consistency penalty compares the field with the network's own field for the
        # swapped pair; exp(-v) is that field only for a symmetric network (else the penalty
        # would see nothing but the integration error of exp(v) o exp(-v))
        swapped = cfg.loss.ic_weight > 0 and not cfg.model.symmetric
        if cfg.model.int_steps > 0 and not swapped:
            fwd, bwd = self.model.fields(moving, fixed, backward=need_bwd, cond=cond)  # bwd = exp(-v), the exact inverse
        elif need_bwd:  # the backward field is the network's own for the swapped pair: one pass over both orders
            b = fixed.shape[0]
            both = self.model(torch.cat([moving, fixed]), torch.cat([fixed, moving]), cond=cond)
            fwd, bwd = both[:b], both[b:]
        else:
            fwd, bwd = self.model(moving, fixed, cond=cond), None
        terms = self._terms(fixed, moving, fo, mo, mask, fwd, bwd)
        if cfg.train.symmetric:
            back = self._terms(moving, fixed, mo, fo, mask, bwd, fwd)
            terms = {k: 0.5 * (terms[k] + back[k]) for k in terms}
        return combine(cfg.loss, terms, mask, weights), fwd

    def _terms(self, fixed, moving, fo, mo, mask, fwd, bwd) -> dict[str, torch.Tensor]:
        """Per-sample loss terms of warping ``moving`` (and its labels) with ``fwd``; labels
        kept at full resolution (``loss.dice_full_res``) are warped by the field upsampled
        as evaluation does, on their box."""
        if self.prep.box is not None and mo is not None:
            warped = warp(moving, fwd)
            up = upsample_field(fwd.float(), self.cfg.data.downsample, self.prep.full_size)
            wo = warp(mo, up[(..., *self.prep.box)])
        elif mo is not None:  # image and label channels in one grid_sample
            w = warp(torch.cat([moving.float(), mo.float()], dim=1), fwd)
            warped, wo = w[:, :1], w[:, 1:]
        else:
            warped, wo = warp(moving, fwd), None
        return loss_terms(self.cfg.loss, fixed, warped, fwd, fo, wo, mask, backward=bwd)

    # ---- one step -----------------------------------------------------------------
    def step(self) -> StepOutput:
        t = self.cfg.train
        prog = self.progress()  # one clock reading for the schedule and the weight draws
        lr = self.lr(prog)
        for group in self.opt.param_groups:
            group["lr"] = lr
        f, m = self.sampler(t.batch_size)
        cond, weights = self.lam.draw(t.batch_size, prog) if self.lam is not None else (None, None)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            terms, _ = self.loss(f, m, augment=True, weights=weights, cond=cond)
        self.opt.zero_grad(set_to_none=True)
        terms.total.backward()
        if t.grad_clip > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        else:  # the norm only: clip_grad_norm_(max_norm=inf) scales every gradient by inf/inf = NaN when it overflows
            gnorm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
        self.opt.step()
        self.steps += 1
        if self.ema is not None:
            self._update_average()
        self.sums += terms.stacked()
        self.n_sum += 1
        return StepOutput(terms, gnorm)

    def epoch_means(self) -> dict[str, float]:
        """Mean of each loss term since the last call (one host sync), then reset."""
        vals = (self.sums / max(self.n_sum, 1)).tolist()
        self.sums.zero_()
        self.n_sum = 0
        return {"train_loss": vals[0], **{f"train_loss_{k}": v for k, v in zip(TERMS, vals[1:])}}

    # ---- the weight average (train.ema) ----------------------------------------------
    def _update_average(self) -> None:
        decay = min(self.cfg.train.ema, (1.0 + self.steps) / (10.0 + self.steps))
        with torch.no_grad():  # one fused update per step (what torch.optim.swa_utils' EMA uses)
            torch._foreach_lerp_(self.ema, self._params, 1.0 - decay)

    def _swap(self) -> None:
        with torch.no_grad():
            for e, p in zip(self.ema, self._params):
                held = p.detach().clone()
                p.copy_(e)
                e.copy_(held)
        self._swapped = not self._swapped

    @contextmanager
    def averaged(self) -> Iterator[None]:
        """Inside, the model holds the averaged weights (``train.ema``; the trained ones when
        it is off): what validation scores and checkpoints keep. The trained weights are back after."""
        if self.ema is None or self._swapped:
            yield
            return
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def _weights(self) -> dict:
        """The trained and averaged weights, whichever the model holds now."""
        live = [p.detach().cpu().clone() for p in self._params]
        kept = [e.cpu().clone() for e in self.ema]
        return {"trained": kept, "averaged": live} if self._swapped else {"trained": live, "averaged": kept}

    # ---- exact resume -------------------------------------------------------------
    def state(self) -> dict:
        return {"optimizer": self.opt.state_dict(), "sampler": self.sampler.state(),
                "augment_rng": self.augment.state() if self.augment is not None else None,
                "torch_rng": torch.get_rng_state(), "steps": self.steps, "seconds": self.elapsed(),
                "lambda_rng": self.lam.state() if self.lam is not None else None,
                "ema": self._weights() if self.ema is not None else None}

    def load_state(self, st: dict) -> None:
        self.opt.load_state_dict(st["optimizer"])
        self.sampler.set_state(st["sampler"])
        if self.augment is not None and st.get("augment_rng") is not None:
            self.augment.set_state(st["augment_rng"])
        torch.set_rng_state(st["torch_rng"])
        if self.lam is not None and st.get("lambda_rng") is not None:
            self.lam.set_state(st["lambda_rng"])
        self.steps = int(st["steps"])
        self.seconds = float(st.get("seconds", 0.0))
        self._t0 = time.monotonic()
        if self.ema is not None:  # the checkpoint's weights are the averaged ones; train on from the trained ones
            w = st.get("ema")
            with torch.no_grad():
                params = self._params
                if w is not None:
                    for p, tr, av, e in zip(params, w["trained"], w["averaged"], self.ema):
                        p.copy_(tr)
                        e.copy_(av)
                else:  # a run that did not average until now starts its average here
                    for p, e in zip(params, self.ema):
                        e.copy_(p.detach())
            self._swapped = False
