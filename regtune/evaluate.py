"""Register pair lists with a model and score them with the Learn2Reg metrics.

Used by validation during training, by ``regtune evaluate`` and by ``regtune register``
(which also writes the fields). The model always sees images at its training
resolution; fields are upsampled and every score is computed at full resolution.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import numpy as np
import torch

from .data.dataset import Volumes
from .data.pairs import Pair
from .metrics import nanmean, dice_per_label, score_pair
from .model import RegNet, compose, outside_fraction, predict_field, warp
from .progress import progress as progress_bar
from .refine import Refinement, refine_fields

METRIC_KEYS = ("dice", "hd95", "sdlogj", "sdlogj_l2r", "folding_pct")


def _batches(pairs: list[Pair], size: int) -> Iterator[list[Pair]]:
    for i in range(0, len(pairs), size):
        yield pairs[i: i + size]


def warp_labels(labels: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
    """Label maps (B, X, Y, Z) warped by ``disp`` (B, 3, X, Y, Z) with nearest-neighbour
    sampling (the organisers' order-0 warp), as uint8 on the CPU."""
    w = warp(labels.to(disp.device).unsqueeze(1).float(), disp, mode="nearest")
    return w[:, 0].round().to(torch.uint8).cpu()


def _field(model: RegNet, fixed: torch.Tensor, moving: torch.Tensor, downsample: int, channels_last: bool,
           refine: Refinement | None) -> torch.Tensor:
    """The full-resolution field of the pairs: the network's, refined on each pair when
    ``refine`` asks for steps (:mod:`regtune.refine`)."""
    if refine is not None and refine.steps:
        return refine_fields(model, fixed, moving, downsample, refine, channels_last=channels_last)[0]
    return predict_field(model, fixed, moving, downsample, channels_last=channels_last).float()


@torch.no_grad()
def register_pairs(model: RegNet | None, vols: Volumes, pairs: list[Pair], downsample: int,
                   device: torch.device | str = "cpu", batch_size: int = 4, channels_last: bool = False,
                   refine: Refinement | None = None) -> Iterator[tuple[list[Pair], torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (pairs, disp, warped_image, warped_labels) per batch, all full resolution on CPU.

    disp: (B, 3, X, Y, Z) voxel displacement in the Learn2Reg convention; ``model=None``
    gives the identity (no registration); ``refine`` refines each pair's field
    (:mod:`regtune.refine`).
    """
    for chunk in _batches(pairs, batch_size):
        f_idx = torch.tensor([p[0] for p in chunk])
        m_idx = torch.tensor([p[1] for p in chunk])
        fixed = vols.images[f_idx].to(device)
        moving = vols.images[m_idx].to(device)
        if model is None:
            disp = torch.zeros(len(chunk), 3, *vols.shape, device=device)
        else:
            disp = _field(model, fixed, moving, downsample, channels_last, refine)
        warped = warp(moving, disp)
        yield chunk, disp.cpu(), warped.cpu(), warp_labels(vols.labels[m_idx], disp)


@torch.no_grad()
def consistency(model: RegNet, vols: Volumes, pairs: list[Pair], downsample: int, device: torch.device | str = "cpu",
                batch_size: int = 4, channels_last: bool = False, refine: Refinement | None = None,
                progress: bool = False) -> list[dict[str, float]]:
    """Per pair, what users take for granted of a registration method:

    - ``ic_error``: mean |u_fm(x) + u_mf(x + u_fm(x))| in voxels, where u_fm registers the
      pair and u_mf the swapped pair (fixed and moving exchanged): forward then backward
      should land where it started;
    - ``self_disp``: mean |u(x)| in voxels over the fixed image's labelled voxels when the
      fixed image is registered to itself (should be ~0);
    - ``self_dice``: Dice of the fixed labels warped by that self-registration field against
      themselves (should be 1; a network that pulls every structure towards a population
      mean shape scores well below 1 here while scoring well on pairs).

    With ``refine``, every one of these fields is refined on its own pair.
    """
    out = []
    bar = progress_bar(progress, len(pairs), "consistency (swapped and self pairs)", "pair")
    for chunk in _batches(pairs, batch_size):
        fixed = vols.images[torch.tensor([p[0] for p in chunk])].to(device)
        moving = vols.images[torch.tensor([p[1] for p in chunk])].to(device)
        u_fm = _field(model, fixed, moving, downsample, channels_last, refine)
        u_mf = _field(model, moving, fixed, downsample, channels_last, refine)
        u_ff = _field(model, fixed, fixed, downsample, channels_last, refine)
        ic = compose(u_fm, u_mf).norm(dim=1).flatten(1).mean(1).cpu()
        self_mag = u_ff.norm(dim=1).cpu()
        flab = vols.labels[torch.tensor([p[0] for p in chunk])]
        wself = warp_labels(flab, u_ff)
        for b, (f, _) in enumerate(chunk):
            lab = vols.labels[f] > 0
            sd = float(self_mag[b][lab].mean()) if bool(lab.any()) else float(self_mag[b].mean())
            dl = dice_per_label(flab[b].numpy(), wself[b].numpy(), vols.label_values)
            out.append({"ic_error": float(ic[b]), "self_disp": sd, "self_dice": nanmean(dl.values())})
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return out


def evaluate_pairs(model: RegNet | None, vols: Volumes, pairs: list[Pair], downsample: int = 1,
                   device: torch.device | str = "cpu", batch_size: int = 4, with_hd95: bool = True,
                   channels_last: bool = False, progress: bool = False,
                   on_field: Callable[[Pair, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
                   with_consistency: bool = False, refine: Refinement | None = None) -> list[dict]:
    """One row per pair: names, Dice/HD95 (mean and per label), SDlogJ (both
    definitions), % folding, mean warped and moving intensity, % of sample points outside
    the volume; with ``with_consistency`` also ``ic_error`` and ``self_disp`` (see
    :func:`consistency`).

    ``on_field(pair, disp (3,X,Y,Z), warped_image (X,Y,Z), warped_labels (X,Y,Z))`` is
    called per pair when given (``regtune register`` writes files there). ``refine``
    refines each field on its pair before it is scored (:mod:`regtune.refine`).
    """
    rows: list[dict] = []
    bar = progress_bar(progress, len(pairs), "evaluating", "pair")
    for chunk, disp, warped, wlab in register_pairs(model, vols, pairs, downsample, device, batch_size, channels_last,
                                                     refine):
        outside = outside_fraction(disp)
        for b, (f, m) in enumerate(chunk):
            d = disp[b].numpy()
            sc = score_pair(vols.labels[f].numpy(), wlab[b].numpy(), d if model is not None else None,
                            vols.label_values, vols.spacing, with_hd95=with_hd95, moving_lab=vols.labels[m].numpy())
            row = {"fixed": vols.names[f], "moving": vols.names[m], **sc.row(),
                   "warped_intensity": float(warped[b].mean()), "moving_intensity": float(vols.images[m].mean()),
                   "outside_pct": 100.0 * float(outside[b])}
            rows.append(row)
            if on_field is not None:
                on_field((f, m), d, warped[b, 0].numpy(), wlab[b].numpy())
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    if with_consistency:
        if model is None:
            extra = [{"ic_error": 0.0, "self_disp": 0.0, "self_dice": 1.0}] * len(rows)
        else:
            extra = consistency(model, vols, pairs, downsample, device, batch_size, channels_last, refine, progress)
        for r, e in zip(rows, extra):
            r.update(e)
    return rows


def summarise(rows: list[dict]) -> dict[str, float]:
    """Mean (ignoring NaN) of every numeric column, plus the Dice std and Dice30 (the
    30th percentile of the per-pair Dice, as the organisers report it)."""
    if not rows:
        return {}
    out = {}
    for k, v in rows[0].items():
        if isinstance(v, (int, float)):
            vals = [r[k] for r in rows if not math.isnan(r[k])]
            out[k] = float(np.mean(vals)) if vals else math.nan
    dices = [r["dice"] for r in rows if not math.isnan(r["dice"])]
    out["dice_std"] = float(np.std(dices)) if dices else math.nan
    out["dice30"] = float(np.quantile(dices, 0.3)) if dices else math.nan
    return out


def held_out_label(pairs: list[Pair], vols: Volumes, split: dict | None) -> str:
    """How held out a pair list is against a checkpoint's split (``{"train": names, "val": names,
    "test": names}``): "held out" only when no subject of the pairs was trained on or
    picked an epoch."""
    if not split:
        return "unknown split (checkpoint records none)"
    used = {n for p in pairs for n in (vols.names[p[0]], vols.names[p[1]])}
    train, val = used & set(split.get("train", [])), used & set(split.get("val", []))
    if train:
        return f"NOT held out: {len(train)} subject(s) were trained on (e.g. {sorted(train)[0]})"
    if val:
        return f"NOT held out: {len(val)} subject(s) picked the best epoch (validation, e.g. {sorted(val)[0]})"
    return "held out (no subject trained on or used for validation)"


def checkpoint_pairs(extra: dict, vols: Volumes, pairs_csv: str | None = None) -> tuple[list[Pair], str]:
    """The pairs ``regtune evaluate`` scores and what they are: ``pairs_csv`` when given,
    else the checkpoint's test pairs (the reserved test split), else its validation pairs
    (labelled as not held out)."""
    from .data.pairs import read_pairs_csv
    from .errors import DataError

    split = extra.get("split")
    if pairs_csv:
        pairs = read_pairs_csv(pairs_csv, vols)
        return pairs, f"{pairs_csv}: {held_out_label(pairs, vols, split)}"
    for key, what in (("test_pairs", "the checkpoint's test pairs"), ("val_pairs", "the checkpoint's validation pairs")):
        names = extra.get(key) or []
        if names:
            pairs = [(vols.index(f), vols.index(m)) for f, m in names]
            return pairs, f"{what}: {held_out_label(pairs, vols, split)}"
    raise DataError("the checkpoint holds no test or validation pair list; pass --pairs CSV (header fixed,moving)")
