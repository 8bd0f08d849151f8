"""Training step: regtune vs the voxelmorph package (VxmPairwise) vs MONAI VoxelMorph.

Every implementation trains its own network with its own modules (network, integrator,
spatial transformer, loss terms) on the same pairs of the same volumes, with the same
loss recipe: MSE + 0.01 x squared-gradient smoothness of the displacement (VoxelMorph's
documented MSE setting), Adam lr 1e-4, 7 scaling-and-squaring steps.

Two architecture groups, each measured at equal architecture:

- ``vxm-default arch``: enc 16,32,32,32 / dec 32,32,32,32,32,16,16 (VoxelMorph's
  defaults, regtune's defaults). MONAI expresses it exactly
  (``VoxelMorphUNet(channels=(16,32,32,32,32,32,32,32), final_conv_channels=(16,16))``,
  the same 12 convolutions and 327,331 parameters). The voxelmorph package's
  ``BasicUNet`` cannot add the full-resolution 32->16->16 tail, so it is not in this group.
- ``no-tail arch``: enc 16,32,32,32 / dec 32,32,32,32 (the largest U-Net all three
  express): regtune ``dec=(32,32,32,32)``, MONAI ``final_conv_channels=()`` (exact), and
  voxelmorph ``nb_features=[[16,32,32,32],[32,32,32,32]]`` with nearest upsampling; its
  head is a 1x1 conv 32->3 + 3x3 conv 3->3 (regtune/MONAI: one 3x3 conv 32->3) and its
  activation is ReLU (others LeakyReLU 0.2) -- the closest it allows.

Per group: batch 1 in the default memory format and in ``channels_last_3d``, then the
best batch (2, 4, 8 in ``channels_last_3d``: an implementation leaves the search when its
time per pair improves by less than 5 %). Within one measurement the implementations are
interleaved step by step (a drifting background load hits all alike); warm-up steps
excluded, medians over repeats. regtune also gets a ``torch.compile`` row at its best batch. On CUDA the variants add bf16 autocast and (regtune) ``torch.compile``; the
regtune rows time the product's own step (:class:`regtune.trainer.Trainer`, what
``regtune train`` and study trials run): the dataset held on the device, pairs drawn
there, no host sync per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from .common import REGTUNE, Context, Row, missing_row
from .sections import section

REG_WEIGHT = 0.01
LR = 1e-4
INT_STEPS = 7
ENC = (16, 32, 32, 32)
ARCHS = {  # group name -> regtune dec widths
    "vxm-default arch": (32, 32, 32, 32, 32, 16, 16),
    "no-tail arch": (32, 32, 32, 32),
}
ALL_VS_ALL_PAIRS_NOTE = "all-vs-all epoch = n_train x (n_train - 1) pairs x best s/pair (an estimate, not a timed epoch)"


# --------------------------------------------------------------------------------------
# The regtune training path: the product's own step (regtune.trainer.Trainer)
# --------------------------------------------------------------------------------------

def recipe(dec: tuple[int, ...] = ARCHS["vxm-default arch"], batch: int = 1, channels_last: bool = True, amp: bool = False,
           compile: bool = False, seed: int = 0, int_steps: int = INT_STEPS, enc: tuple[int, ...] = ENC):
    """The benchmark's recipe as a regtune config: MSE + 0.01 x diffusion, Adam 1e-4, full
    resolution (no downsampling), no Dice term, and none of what the peers' steps lack: no
    augmentation (every ``aug.*`` key 0, whatever the product's defaults are) and no weight
    average (``train.ema=0``)."""
    from dataclasses import fields

    from regtune.config import AugConfig, Config
    no_aug = {f"aug.{f.name}": 0.0 for f in fields(AugConfig)}
    return Config().with_values({
        "model.enc": list(enc), "model.dec": list(dec), "model.int_steps": int_steps, "data.downsample": 1,
        "loss.similarity": "mse", "loss.reg_weight": REG_WEIGHT, "loss.dice_weight": 0.0, "train.lr": LR,
        "train.batch_size": batch, "train.channels_last": channels_last, "train.amp": amp, "train.compile": compile,
        "train.seed": seed, "train.grad_clip": 0.0, "train.ema": 0.0, **no_aug})


class RegtuneStep:
    """The product's training step (:class:`regtune.trainer.Trainer`, the loop ``regtune
    train`` and study trials run) on the benchmark volumes: data resident on the device,
    pairs drawn there, no host sync per step (the loss sums stay on the device)."""

    note = "regtune.trainer.Trainer.step (the product's loop): device-resident data and sampling, no per-step sync"

    def __init__(self, vols, device: str = "cpu", **kw):
        from regtune.data.pairs import Split
        from regtune.trainer import Trainer
        self.trainer = Trainer(recipe(**kw), vols, Split(train=tuple(range(len(vols))), val=()), device)
        self.model = self.trainer.model

    def step(self):
        return self.trainer.step().terms.total

    @property
    def loss_sum(self):
        return self.trainer.sums[0]


# --------------------------------------------------------------------------------------
# Peers (imported only here, only when installed)
# --------------------------------------------------------------------------------------

@dataclass
class PeerStep:
    model: nn.Module
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (fixed, moving) -> scalar
    note: str


def voxelmorph_step(group: str) -> PeerStep:
    import neurite as ne
    import voxelmorph as vxm
    if group != "no-tail arch":
        raise ValueError("voxelmorph's BasicUNet cannot express the full-resolution tail")
    model = vxm.nn.models.VxmPairwise(ndim=3, source_channels=1, target_channels=1,
                                      nb_features=[list(ENC), [32, 32, 32, 32]], integration_steps=INT_STEPS,
                                      unet_kwargs={"upsample_mode": "nearest"})
    mse, grad = ne.nn.modules.MSE(), ne.nn.modules.SpatialGradient("l2")

    def loss(fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        disp, warped = model(moving, fixed, return_warped_source=True)
        return mse(warped, fixed) + REG_WEIGHT * grad(disp)
    return PeerStep(model, loss, "VxmPairwise: head 1x1 conv 32->3 + 3x3 conv 3->3, ReLU, neurite MSE + SpatialGradient('l2')")


def monai_step(group: str) -> PeerStep:
    from monai.losses import DiffusionLoss
    from monai.networks.nets import VoxelMorph, VoxelMorphUNet
    tail = (16, 16) if group == "vxm-default arch" else ()
    backbone = VoxelMorphUNet(spatial_dims=3, in_channels=2, unet_out_channels=32, channels=(16, 32, 32, 32, 32, 32, 32, 32),
                              final_conv_channels=tail)
    model = VoxelMorph(backbone=backbone, integration_steps=INT_STEPS)
    mse, diff = nn.MSELoss(), DiffusionLoss()

    def loss(fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        warped, ddf = model(moving, fixed)
        return mse(warped, fixed) + REG_WEIGHT * diff(ddf)
    return PeerStep(model, loss, "monai VoxelMorph(VoxelMorphUNet) + MSELoss + DiffusionLoss (exact same convolutions)")


PEER_BUILDERS = {"voxelmorph": voxelmorph_step, "monai": monai_step}


class PeerTrainer:
    """A peer's model + loss in a loop like the product's: device-resident images, pairs
    of distinct subjects drawn on the device, no per-step host sync."""

    def __init__(self, peer: str, group: str, images: torch.Tensor, device: str, batch: int, channels_last: bool,
                 amp: bool, seed: int = 0):
        torch.manual_seed(seed)
        ps = PEER_BUILDERS[peer](group)
        self.note = ps.note
        self.device = torch.device(device)
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        self.model = ps.model.to(self.device, memory_format=self.memory_format)
        self._loss = ps.loss
        self.images = images.to(self.device).float().contiguous(memory_format=self.memory_format)
        self.n, self.batch, self.amp = images.shape[0], batch, amp
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LR)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self.loss_sum = torch.zeros((), device=self.device)

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.randint(self.n, (self.batch,), device=self.device, generator=self.gen)
        m = (f + torch.randint(1, self.n, (self.batch,), device=self.device, generator=self.gen)) % self.n
        return f, m

    def step(self) -> torch.Tensor:
        f, m = self.sample()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss = self._loss(self.images[f], self.images[m])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.loss_sum += loss.detach().float()
        return loss


# --------------------------------------------------------------------------------------
# The section
# --------------------------------------------------------------------------------------

def _make(impl: str, group: str, vols, ctx: Context, batch: int, channels_last: bool, amp: bool,
          compile: bool = False):
    if impl == REGTUNE:
        return RegtuneStep(vols, ctx.device, dec=ARCHS[group], batch=batch, channels_last=channels_last, amp=amp,
                           compile=compile, seed=ctx.seed)
    return PeerTrainer(impl, group, vols.images, ctx.device, batch, channels_last, amp, seed=ctx.seed)


def _interleaved(trainers: dict, ctx: Context, repeats: int, warmup: int) -> dict[str, dict[str, float]]:
    """Time one step of every trainer in turn, ``repeats`` rounds after ``warmup`` untimed
    steps each: a background load drifting during the run hits all of them alike."""
    import statistics
    import time

    from .common import sync
    for tr in trainers.values():
        for _ in range(warmup):
            tr.step()
    sync(ctx.device)
    times: dict[str, list[float]] = {k: [] for k in trainers}
    for _ in range(max(1, repeats)):
        for k, tr in trainers.items():
            t0 = time.perf_counter()
            tr.step()
            sync(ctx.device)
            times[k].append(time.perf_counter() - t0)
    out = {}
    for k, tr in trainers.items():
        loss = float(tr.loss_sum)  # one host sync, after timing
        if not math.isfinite(loss):
            raise FloatingPointError(f"{k}: non-finite loss sum {loss}")
        ts = times[k]
        out[k] = {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts), "repeats": len(ts)}
    return out


def _row(group_label: str, impl: str, variant: str, batch: int, t: dict, note: str = "") -> Row:
    s_step = t["median_s"]
    return Row("train", group_label, impl, "s/pair", s_step / batch, unit="s", variant=variant,
               extra={"batch": batch, "s_per_step": s_step, "pairs_per_s": batch / s_step, **t}, note=note)


def _fmt_name(cl: bool, amp: bool) -> str:
    return ("channels_last_3d" if cl else "contiguous") + (", bf16" if amp else "")


@section("train", "Training step (MSE + 0.01 grad, Adam, 7 integration steps): time per pair, interleaved medians")
def run(ctx: Context) -> list[Row]:
    vols = ctx.volumes()
    images = vols.images
    size = "x".join(str(s) for s in images.shape[2:])
    cuda = ctx.device.startswith("cuda")
    amp = cuda  # bf16 autocast only pays (and is only the recipe) on the GPU
    batches = (1, 2) if ctx.quick else (1, 2, 4, 8)
    repeats, warmup = (1, 1) if ctx.quick else (ctx.repeats, ctx.warmup)
    rows: list[Row] = []
    best_s_pair: dict[str, float] = {}
    for group in ARCHS:
        g1, gb = f"{group}, {size}, batch 1", f"{group}, {size}, best batch"
        impls = []
        for impl in (REGTUNE, "voxelmorph", "monai"):
            if impl != REGTUNE and not ctx.peer_available(impl):
                rows += [missing_row("train", g, impl, "s/pair", "not installed", unit="s") for g in (g1, gb)]
            elif impl == "voxelmorph" and group == "vxm-default arch":
                rows.append(missing_row("train", g1, impl, "s/pair", "skipped", unit="s",
                                        note="voxelmorph's BasicUNet cannot express the 32->16->16 full-resolution tail"))
            else:
                impls.append(impl)
        notes: dict[str, str] = {}
        best: dict[str, tuple[float, int, bool, dict]] = {}  # impl -> (s/pair, batch, channels_last, timing)
        # batch 1, both memory formats, all implementations interleaved
        trainers = {}
        for impl in list(impls):
            for cl in (False, True):
                try:
                    trainers[(impl, cl)] = _make(impl, group, vols, ctx, 1, cl, amp)
                    notes[impl] = getattr(trainers[(impl, cl)], "note", "")
                except Exception as e:  # a peer failing must not hide the other rows
                    rows.append(Row("train", g1, impl, "s/pair", None, unit="s", status="error", note=f"{type(e).__name__}: {e}"[:200]))
                    impls.remove(impl)
                    trainers = {k: v for k, v in trainers.items() if k[0] != impl}
                    break
        ctx.log(f"[train] {group}: batch 1, {len(trainers)} configurations interleaved")
        res = _interleaved(trainers, ctx, repeats, warmup)
        del trainers
        for (impl, cl), t in res.items():
            rows.append(_row(g1, impl, _fmt_name(cl, amp), 1, t, notes.get(impl, "")))
            if impl not in best or t["median_s"] < best[impl][0]:
                best[impl] = (t["median_s"], 1, cl, t)
        # larger batches in channels_last_3d (the layout that pays at batch > 1 on CPU), interleaved,
        # until the time per pair improves by less than 5 %
        searching = list(impls)
        for b in batches[1:]:
            if not searching:
                break
            ctx.log(f"[train] {group}: batch {b}: {', '.join(searching)}")
            trainers = {impl: _make(impl, group, vols, ctx, b, True, amp) for impl in searching}
            res = _interleaved(trainers, ctx, max(3, repeats - 2) if not ctx.quick else 1, 1)
            del trainers
            for impl, t in res.items():
                if t["median_s"] / b < 0.95 * best[impl][0]:
                    best[impl] = (t["median_s"] / b, b, True, t)
                else:
                    searching.remove(impl)
        for impl in impls:
            s_pair, b, cl, t = best[impl]
            rows.append(_row(gb, impl, _fmt_name(cl, amp) + f", batch {b}", b, t, notes.get(impl, "")))
            best_s_pair[f"{impl} ({group})"] = s_pair
        if ctx.compile:
            s_pair, b, cl, _ = best[REGTUNE]
            ctx.log(f"[train] {group}: regtune batch {b} torch.compile")
            tr = _make(REGTUNE, group, vols, ctx, b, cl, amp, compile=True)
            tc = _interleaved({"c": tr}, ctx, repeats, warmup + 1)["c"]  # the first step compiles (excluded)
            del tr
            rows.append(_row(gb, REGTUNE, _fmt_name(cl, amp) + f", batch {b}, torch.compile", b, tc,
                             "torch.compile of the loss computation; the one-off compile time (~40 s on 2 CPU cores) is excluded"))
            best_s_pair[f"{REGTUNE} ({group})"] = min(s_pair, tc["median_s"] / b)
    rows += _all_vs_all(ctx, vols, best_s_pair)
    return rows


def _all_vs_all(ctx: Context, vols, best_s_pair: dict[str, float]) -> list[Row]:
    """The all-vs-all epoch of the original setup, estimated from the measured s/pair."""
    from regtune.data.pairs import split_subjects
    try:
        n_train = len(split_subjects(vols, 20 if len(vols) > 40 else 2, 0).train)
    except Exception:
        n_train = len(vols)
    pairs = n_train * (n_train - 1)
    rows = []
    for key, s in best_s_pair.items():
        impl, group = key.split(" (", 1)
        rows.append(Row("train", f"all-vs-all epoch estimate, {group[:-1]}", impl, "min/epoch", pairs * s / 60.0, unit="min",
                        variant=f"{pairs} pairs x best s/pair", extra={"pairs": pairs, "s_per_pair": s}, note=ALL_VS_ALL_PAIRS_NOTE))
    return rows
