"""Similarity, regularisation and Dice loss terms, and their weighted sum.

All similarity losses are "lower is better" (NCC and MI are returned negated), so a
flipped sign cannot silently reward an empty image. Every term takes
``reduction="none"`` to return one value per batch item (B,), which is how
:func:`total_loss` weights samples individually (per-sample loss weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import LossConfig

NCC_EPS = LossConfig.ncc_eps  # 1e-5, added to products of window *sums* (VoxelMorph, MONAI); see local_ncc


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_sample
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def _mean_per_sample(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).mean(1)


def mse(fixed: torch.Tensor, warped: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return _reduce(_mean_per_sample((fixed.float() - warped.float()) ** 2), reduction)


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


def local_ncc_map(fixed: torch.Tensor, warped: torch.Tensor, window: int = 9, eps: float = NCC_EPS) -> torch.Tensor:
    """Per-voxel squared local normalised cross-correlation cc in [0, 1] (B, C, X, Y, Z).

    cc = cov^2 / (var_f var_w + eps / n^2) with the local (co)variances as *mean* moments
    over the n = window^3 voxels of a box: identical to VoxelMorph's and MONAI's
    cross^2 / (var_f var_w + eps) on window *sums* (each sum is n x the mean moment), so
    ``eps`` = 1e-5 means what it means there. (Adding eps to the mean-moment product
    instead damps cc ~n^2 = 5e5 times harder at window 9: identical low-contrast images
    then score well below 1.) Local means are separable box filters over the five stacked
    moments; variances are clamped at 0, so flat regions (constant padding) give cc = 0
    instead of NaN. Each image is first centred on its own mean (cc is shift-invariant):
    in float32, E[x^2] - E[x]^2 of values near 0.5 loses the variance of faint texture.
    """
    if fixed.shape != warped.shape or fixed.ndim != 5:
        raise ValueError(f"local_ncc expects two (B, C, X, Y, Z) tensors of one shape, got {tuple(fixed.shape)} and {tuple(warped.shape)}")
    fixed, warped = fixed.float(), warped.float()
    fixed = fixed - fixed.mean(dim=(2, 3, 4), keepdim=True)
    warped = warped - warped.mean(dim=(2, 3, 4), keepdim=True)
    c = fixed.shape[1]
    stack = torch.cat([fixed, warped, fixed * fixed, warped * warped, fixed * warped], dim=1)
    mom = box_mean(stack, window)
    mu_f, mu_w, ff, ww, fw = mom.split(c, dim=1)
    var_f = (ff - mu_f * mu_f).clamp_min(0)
    var_w = (ww - mu_w * mu_w).clamp_min(0)
    cross = fw - mu_f * mu_w
    n = float(window) ** 3
    return (cross * cross / (var_f * var_w + eps / (n * n))).clamp(max=1.0)


def local_ncc(fixed: torch.Tensor, warped: torch.Tensor, window: int = 9, eps: float = NCC_EPS,
              reduction: str = "mean") -> torch.Tensor:
    """Negative mean local NCC (see :func:`local_ncc_map`); range [-1, 0], lower is better."""
    return _reduce(-_mean_per_sample(local_ncc_map(fixed, warped, window, eps)), reduction)


def mutual_information(fixed: torch.Tensor, warped: torch.Tensor, bins: int = 32, reduction: str = "mean") -> torch.Tensor:
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
    return _reduce(-mi, reduction)


def diffusion(disp: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean squared forward difference of the displacement (VoxelMorph's Grad-l2)."""
    dx = disp[:, :, 1:] - disp[:, :, :-1]
    dy = disp[:, :, :, 1:] - disp[:, :, :, :-1]
    dz = disp[:, :, :, :, 1:] - disp[:, :, :, :, :-1]
    return _reduce((_mean_per_sample(dx.pow(2)) + _mean_per_sample(dy.pow(2)) + _mean_per_sample(dz.pow(2))) / 3.0, reduction)


def bending_energy(disp: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean squared second derivatives (pure and mixed, mixed counted twice)."""
    def d(t: torch.Tensor, ax: int) -> torch.Tensor:
        n = t.shape[ax]
        return t.narrow(ax, 2, n - 2) - 2 * t.narrow(ax, 1, n - 2) + t.narrow(ax, 0, n - 2)

    def g(t: torch.Tensor, ax: int) -> torch.Tensor:
        n = t.shape[ax]
        return (t.narrow(ax, 2, n - 2) - t.narrow(ax, 0, n - 2)) / 2

    pure = sum(_mean_per_sample(d(disp, ax).pow(2)) for ax in (2, 3, 4))
    mixed = sum(_mean_per_sample(g(g(disp, a), b).pow(2)) for a, b in ((2, 3), (2, 4), (3, 4)))
    return _reduce(pure + 2 * mixed, reduction)


def negative_jacobian(disp: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean of relu(-det(I + grad u)) with central differences on the interior: zero for
    a field that does not fold, growing with how much and where it folds."""
    def grad(ax: int) -> torch.Tensor:  # d u / d x_ax on the interior (1-voxel crop on every axis)
        n = disp.shape[ax]
        g = (disp.narrow(ax, 2, n - 2) - disp.narrow(ax, 0, n - 2)) / 2
        for other in (2, 3, 4):
            if other != ax:
                g = g.narrow(other, 1, disp.shape[other] - 2)
        return g

    gx, gy, gz = grad(2), grad(3), grad(4)  # each (B, 3, ...): row i = d u_i / d x_ax
    j = [[gx[:, i] + (i == 0), gy[:, i] + (i == 1), gz[:, i] + (i == 2)] for i in range(3)]
    det = (j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1]) - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
           + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0]))
    return _reduce(_mean_per_sample(torch.relu(-det)), reduction)


def inverse_consistency(forward: torch.Tensor, backward: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean squared composition error |u_f(x) + u_b(x + u_f(x))|^2 (voxels^2) of a forward
    field and its claimed inverse; 0 for an exact inverse."""
    from .model.transform import compose

    return _reduce(_mean_per_sample(compose(forward, backward).pow(2).sum(1)), reduction)


def _masked(per_pair: torch.Tensor, mask: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """A label term's (B,) values over the pairs that have labels (``mask``): their mean, or
    per pair with the unlabelled ones 0."""
    if mask is None:
        return _reduce(per_pair, reduction)
    m = mask.float()
    if reduction == "none":
        return per_pair * m
    return (per_pair * m).sum() / m.sum().clamp_min(1.0)


def soft_dice_loss(fixed_onehot: torch.Tensor, warped_onehot: torch.Tensor, mask: torch.Tensor | None = None,
                   reduction: str = "mean") -> torch.Tensor:
    """1 - mean soft Dice over label channels; ``mask`` (B,) selects the pairs that have
    labels (the mean is over those; with ``reduction="none"`` masked pairs give 0)."""
    dims = tuple(range(2, fixed_onehot.ndim))
    fo, wo = fixed_onehot.float(), warped_onehot.float()
    inter = (fo * wo).sum(dims)
    denom = fo.sum(dims) + wo.sum(dims)
    dice = (2 * inter + 1e-5) / (denom + 1e-5)  # (B, K)
    return _masked(1 - dice.mean(1), mask, reduction)


def label_sq_error(fixed_onehot: torch.Tensor, warped_onehot: torch.Tensor, mask: torch.Tensor | None = None,
                   reduction: str = "mean") -> torch.Tensor:
    """Squared error of warped label maps, per label sum (p - q)^2 / (2 sum q), averaged
    over labels: for hard maps of equal volume exactly 1 - Dice, but a *proper* score for
    soft maps, lowest when the warped map equals the fixed one.

    Soft Dice is not: against a soft (average-pooled) fixed map q it is maximised by a
    sharper map than q, so a network can lower it by magnifying the moving labels (a
    local compression of the field) instead of aligning them: that shows as self-
    registration moving the labels and as extreme Jacobians near them. The denominator
    depends on the fixed labels only, so it rewards no change of the warped volume.
    ``mask`` as in :func:`soft_dice_loss`."""
    dims = tuple(range(2, fixed_onehot.ndim))
    fo, wo = fixed_onehot.float(), warped_onehot.float()
    err = (wo - fo).pow(2).sum(dims) / (2 * fo.sum(dims) + 1e-5)  # (B, K)
    return _masked(err.mean(1), mask, reduction)


def label_loss(cfg: LossConfig, fixed_onehot: torch.Tensor, warped_onehot: torch.Tensor,
               mask: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """The label term ``loss.label_loss`` chooses: ``dice`` (soft Dice) or ``sqerr``."""
    fn = label_sq_error if cfg.label_loss == "sqerr" else soft_dice_loss
    return fn(fixed_onehot, warped_onehot, mask, reduction)


TERMS = ("sim", "reg", "dice", "jac", "ic")  # loss-term names (history keys loss_<name>)
WEIGHT_KEYS = {"sim": "sim_weight", "reg": "reg_weight", "dice": "dice_weight", "jac": "jacobian_weight", "ic": "ic_weight"}


@dataclass
class LossTerms:
    """total: the weighted loss (with its graph); terms: each term's unweighted batch
    mean (detached), one entry per name in :data:`TERMS`."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]

    @property
    def similarity(self) -> torch.Tensor:
        return self.terms["sim"]

    @property
    def regulariser(self) -> torch.Tensor:
        return self.terms["reg"]

    @property
    def dice(self) -> torch.Tensor:
        return self.terms["dice"]

    def stacked(self) -> torch.Tensor:
        """(1 + len(TERMS),) on the device: total then each term (no host sync)."""
        return torch.stack([self.total.detach().float(), *(self.terms[k].float() for k in TERMS)])

    def items(self) -> dict[str, float]:
        return {"loss": float(self.total.detach()), **{f"loss_{k}": float(self.terms[k]) for k in TERMS}}


def similarity(cfg: LossConfig, fixed: torch.Tensor, warped: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    if cfg.similarity == "ncc":
        return local_ncc(fixed, warped, cfg.ncc_window, cfg.ncc_eps, reduction=reduction)
    if cfg.similarity == "mi":
        return mutual_information(fixed, warped, cfg.mi_bins, reduction=reduction)
    return mse(fixed, warped, reduction=reduction)


def regulariser(cfg: LossConfig, disp: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return bending_energy(disp, reduction) if cfg.regulariser == "bending" else diffusion(disp, reduction)


def loss_terms(cfg: LossConfig, fixed: torch.Tensor, warped: torch.Tensor, disp: torch.Tensor,
               fixed_onehot: torch.Tensor | None = None, warped_onehot: torch.Tensor | None = None,
               label_mask: torch.Tensor | None = None, backward: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Every term per sample, (B,) each, unweighted. Terms whose weight is 0 (and that
    cost anything) are zeros; ``ic`` needs ``backward``, the field claimed to invert ``disp``."""
    zero = torch.zeros(fixed.shape[0], device=fixed.device)
    disp = disp.float()
    out = {"sim": similarity(cfg, fixed, warped, "none"), "reg": regulariser(cfg, disp, "none")}
    use_dice = cfg.dice_weight > 0 and fixed_onehot is not None and warped_onehot is not None
    out["dice"] = label_loss(cfg, fixed_onehot, warped_onehot, label_mask, "none") if use_dice else zero
    out["jac"] = negative_jacobian(disp, "none") if cfg.jacobian_weight > 0 else zero
    out["ic"] = inverse_consistency(disp, backward.float(), "none") if cfg.ic_weight > 0 and backward is not None else zero
    return out


def combine(cfg: LossConfig, terms: dict[str, torch.Tensor], label_mask: torch.Tensor | None = None,
            weights: dict[str, torch.Tensor | float] | None = None) -> LossTerms:
    """Weighted sum of per-sample terms. ``weights`` overrides the config's weight of a
    term (``"sim"``, ``"reg"``, ``"dice"``, ...) with a number or one weight per sample.
    The Dice term is averaged over the pairs with labels (``label_mask``), the others
    over the batch."""
    b = terms["sim"].shape[0]
    n_lab = label_mask.float().sum().clamp_min(1.0) if label_mask is not None else torch.tensor(float(b))
    total = torch.zeros((), device=terms["sim"].device)
    means = {}
    for k in TERMS:
        t = terms[k]
        denom = n_lab if k == "dice" else b
        means[k] = (t.sum() / denom).detach()
        w = weights.get(k) if weights and k in weights else getattr(cfg, WEIGHT_KEYS[k])
        if isinstance(w, torch.Tensor):
            total = total + (w.to(t.dtype) * t).sum() / denom
        elif w != 0:
            total = total + w * t.sum() / denom
    return LossTerms(total, means)


def total_loss(cfg: LossConfig, fixed: torch.Tensor, warped: torch.Tensor, disp: torch.Tensor,
               fixed_onehot: torch.Tensor | None = None, warped_onehot: torch.Tensor | None = None,
               label_mask: torch.Tensor | None = None, backward: torch.Tensor | None = None,
               weights: dict[str, torch.Tensor | float] | None = None) -> LossTerms:
    """Weighted sum of the terms of one registration direction; each term is also
    returned on its own (unweighted)."""
    terms = loss_terms(cfg, fixed, warped, disp, fixed_onehot, warped_onehot, label_mask, backward)
    return combine(cfg, terms, label_mask, weights)
