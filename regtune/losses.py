"""Similarity, regularisation and Dice loss terms, and their weighted sum.

All similarity losses are "lower is better" (NCC and MI are returned negated), so a
flipped sign cannot silently reward an empty image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import LossConfig

NCC_EPS = 1e-5


def mse(fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
    return torch.mean((fixed - warped) ** 2)


def _box_sum(x: torch.Tensor, window: int, dim: int) -> torch.Tensor:
    """Sum over a centred ``window`` along ``dim`` (zero outside), via a cumulative sum:
    O(1) per voxel whatever the window."""
    n, r = x.shape[dim], window // 2
    pad = [0, 0] * (x.ndim - dim - 1) + [r + 1, r]
    c = torch.cumsum(F.pad(x, pad), dim)
    return c.narrow(dim, window, n) - c.narrow(dim, 0, n)


def box_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean over ``window``^3 boxes clipped at the volume edge (like
    ``avg_pool3d(..., stride=1, count_include_pad=False)``), separable and fast."""
    out = x
    count = None
    for dim in (2, 3, 4):
        out = _box_sum(out, window, dim)
        shape = [1] * x.ndim
        shape[dim] = x.shape[dim]
        ones = torch.ones(shape, device=x.device, dtype=x.dtype)
        c = _box_sum(ones, window, dim)
        count = c if count is None else count * c
    return out / count


def local_ncc(fixed: torch.Tensor, warped: torch.Tensor, window: int = 9, eps: float = NCC_EPS) -> torch.Tensor:
    """Negative mean local normalised cross-correlation over ``window``^3 boxes.

    Local means are separable box filters over the five stacked moments;
    variances are clamped at 0 before ``eps`` is added, so flat regions (constant
    padding) give cc = 0 instead of NaN. Range: [-1, 0].
    """
    if fixed.shape != warped.shape or fixed.ndim != 5:
        raise ValueError(f"local_ncc expects two (B, C, X, Y, Z) tensors of one shape, got {tuple(fixed.shape)} and {tuple(warped.shape)}")
    fixed, warped = fixed.float(), warped.float()
    b, c = fixed.shape[:2]
    stack = torch.cat([fixed, warped, fixed * fixed, warped * warped, fixed * warped], dim=1)
    mom = box_mean(stack, window)
    mu_f, mu_w, ff, ww, fw = mom.split(c, dim=1)
    var_f = (ff - mu_f * mu_f).clamp_min(0)
    var_w = (ww - mu_w * mu_w).clamp_min(0)
    cross = fw - mu_f * mu_w
    cc = cross * cross / (var_f * var_w + eps)
    return -cc.clamp(max=1.0).mean()


def mutual_information(fixed: torch.Tensor, warped: torch.Tensor, bins: int = 32) -> torch.Tensor:
    """Negative global mutual information with Gaussian Parzen windows; images in [0, 1]."""
    b = fixed.shape[0]
    centres = torch.linspace(0, 1, bins, device=fixed.device, dtype=torch.float32)
    sigma = 0.5 / (bins - 1) * 2
    f = fixed.float().reshape(b, -1, 1).clamp(0, 1)
    w = warped.float().reshape(b, -1, 1).clamp(0, 1)
    pf = torch.exp(-0.5 * ((f - centres) / sigma) ** 2)
    pw = torch.exp(-0.5 * ((w - centres) / sigma) ** 2)
    pf = pf / (pf.sum(-1, keepdim=True) + 1e-8)
    pw = pw / (pw.sum(-1, keepdim=True) + 1e-8)
    joint = torch.bmm(pf.transpose(1, 2), pw) / f.shape[1]  # (B, bins, bins)
    mf, mw = joint.sum(2, keepdim=True), joint.sum(1, keepdim=True)
    mi = (joint * (torch.log(joint + 1e-10) - torch.log(mf * mw + 1e-10))).sum((1, 2))
    return -mi.mean()


def diffusion(disp: torch.Tensor) -> torch.Tensor:
    """Mean squared forward difference of the displacement (VoxelMorph's Grad-l2)."""
    dx = disp[:, :, 1:] - disp[:, :, :-1]
    dy = disp[:, :, :, 1:] - disp[:, :, :, :-1]
    dz = disp[:, :, :, :, 1:] - disp[:, :, :, :, :-1]
    return (dx.pow(2).mean() + dy.pow(2).mean() + dz.pow(2).mean()) / 3.0


def bending_energy(disp: torch.Tensor) -> torch.Tensor:
    """Mean squared second derivatives (pure and mixed, mixed counted twice)."""
    def d(t: torch.Tensor, ax: int) -> torch.Tensor:
        n = t.shape[ax]
        return t.narrow(ax, 2, n - 2) - 2 * t.narrow(ax, 1, n - 2) + t.narrow(ax, 0, n - 2)

    def g(t: torch.Tensor, ax: int) -> torch.Tensor:
        n = t.shape[ax]
        return (t.narrow(ax, 2, n - 2) - t.narrow(ax, 0, n - 2)) / 2

    pure = sum(d(disp, ax).pow(2).mean() for ax in (2, 3, 4))
    mixed = sum(g(g(disp, a), b).pow(2).mean() for a, b in ((2, 3), (2, 4), (3, 4)))
    return pure + 2 * mixed


def soft_dice_loss(fixed_onehot: torch.Tensor, warped_onehot: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """1 - mean soft Dice over label channels; ``mask`` (B,) weights pairs with labels."""
    dims = tuple(range(2, fixed_onehot.ndim))
    inter = (fixed_onehot * warped_onehot).sum(dims)
    denom = fixed_onehot.sum(dims) + warped_onehot.sum(dims)
    dice = (2 * inter + 1e-5) / (denom + 1e-5)  # (B, K)
    per_pair = 1 - dice.mean(1)
    if mask is None:
        return per_pair.mean()
    m = mask.float()
    return (per_pair * m).sum() / m.sum().clamp_min(1.0)


@dataclass
class LossTerms:
    total: torch.Tensor
    similarity: torch.Tensor
    regulariser: torch.Tensor
    dice: torch.Tensor

    def items(self) -> dict[str, float]:
        return {"loss": float(self.total.detach()), "loss_sim": float(self.similarity),
                "loss_reg": float(self.regulariser), "loss_dice": float(self.dice)}


def similarity(cfg: LossConfig, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
    if cfg.similarity == "ncc":
        return local_ncc(fixed, warped, cfg.ncc_window)
    if cfg.similarity == "mi":
        return mutual_information(fixed, warped, cfg.mi_bins)
    return mse(fixed, warped)


def regulariser(cfg: LossConfig, disp: torch.Tensor) -> torch.Tensor:
    return bending_energy(disp) if cfg.regulariser == "bending" else diffusion(disp)


def total_loss(cfg: LossConfig, fixed: torch.Tensor, warped: torch.Tensor, disp: torch.Tensor,
               fixed_onehot: torch.Tensor | None = None, warped_onehot: torch.Tensor | None = None,
               label_mask: torch.Tensor | None = None) -> LossTerms:
    """Weighted sum; each term is also returned on its own (unweighted)."""
    sim = similarity(cfg, fixed, warped)
    reg = regulariser(cfg, disp.float())
    if cfg.dice_weight > 0 and fixed_onehot is not None and warped_onehot is not None:
        dl = soft_dice_loss(fixed_onehot, warped_onehot, label_mask)
    else:
        dl = torch.zeros((), device=fixed.device)
    total = cfg.sim_weight * sim + cfg.reg_weight * reg + cfg.dice_weight * dl
    return LossTerms(total, sim.detach(), reg.detach(), dl.detach())
