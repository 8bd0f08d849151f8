"""PNG figures people would rather look at than read: overlays with label contours,
Jacobian determinant maps, loss curves. matplotlib (Agg) only; no study dependencies."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def overlay_png(path: str | Path, fixed: np.ndarray, moving: np.ndarray, warped: np.ndarray,
                fixed_lab: np.ndarray | None, moving_lab: np.ndarray | None, warped_lab: np.ndarray | None,
                title: str = "") -> Path:
    """Three columns (fixed, moving, warped) x three orthogonal mid-structure slices,
    with the fixed label contours drawn on every panel and each image's own contours."""
    plt = _plt()
    path = Path(path)
    ref = fixed_lab if fixed_lab is not None and fixed_lab.any() else None
    centre = [int(round(c)) for c in np.argwhere(ref).mean(0)] if ref is not None else [s // 2 for s in fixed.shape]
    fig, axes = plt.subplots(3, 3, figsize=(8, 8))
    cols = (("fixed", fixed, fixed_lab), ("moving", moving, moving_lab), ("warped", warped, warped_lab))
    for r in range(3):
        for c, (name, img, lab) in enumerate(cols):
            ax = axes[r, c]
            sl = [slice(None)] * 3
            sl[r] = centre[r]
            ax.imshow(np.rot90(img[tuple(sl)]), cmap="gray", vmin=0, vmax=1)
            if fixed_lab is not None:
                ax.contour(np.rot90(fixed_lab[tuple(sl)]), levels=[0.5, 1.5], colors=["#00ff88", "#00ff88"], linewidths=0.8)
            if lab is not None and c > 0:
                ax.contour(np.rot90(lab[tuple(sl)]), levels=[0.5, 1.5], colors=["#ff3366", "#ff3366"], linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{name} (mean {img.mean():.2f})", fontsize=9)
    fig.suptitle((title + "\n" if title else "") + "green: fixed labels, red: moving/warped labels", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def jacobian_png(path: str | Path, det: np.ndarray, title: str = "") -> Path:
    """Mid slices of the Jacobian determinant (blue < 1 < red, black = folding)."""
    plt = _plt()
    from matplotlib.colors import TwoSlopeNorm

    path = Path(path)
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.4), gridspec_kw={"width_ratios": [1, 1, 1, 1.2]})
    norm = TwoSlopeNorm(vmin=min(0.0, float(det.min())) - 1e-3, vcenter=1.0, vmax=max(2.0, float(det.max())))
    for ax_i in range(3):
        sl = [slice(None)] * 3
        sl[ax_i] = det.shape[ax_i] // 2
        d = np.rot90(det[tuple(sl)])
        im = axes[ax_i].imshow(d, cmap="coolwarm", norm=norm)
        folds = np.ma.masked_where(d > 0, np.ones_like(d))
        axes[ax_i].imshow(folds, cmap="gray", vmin=0, vmax=1)
        axes[ax_i].set_xticks([])
        axes[ax_i].set_yticks([])
    fig.colorbar(im, ax=axes[:3], fraction=0.02)
    axes[3].hist(det.ravel(), bins=80, color="#555")
    axes[3].axvline(0, color="k", lw=1)
    axes[3].set_yscale("log")
    axes[3].set_xlabel("det J")
    fold = 100.0 * float((det <= 0).mean())
    sd = float(np.log(np.clip(det, 1e-9, 1e9)).std())
    fig.suptitle(f"{title}  SDlogJ {sd:.3f}, folding {fold:.3f}% (black)", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def curves_png(path: str | Path, history: list[dict], title: str = "") -> Path:
    """Training/validation loss and validation Dice per epoch."""
    plt = _plt()
    path = Path(path)
    ep = [h["epoch"] for h in history]

    def col(k):
        return [h.get(k, math.nan) for h in history]

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    axes[0].plot(ep, col("train_loss"), "o-", label="train")
    axes[0].plot(ep, col("val_loss"), "s-", label="val")
    axes[0].set_title("total loss")
    axes[0].legend()
    for k in ("train_loss_sim", "train_loss_reg", "train_loss_dice"):
        axes[1].plot(ep, col(k), "o-", label=k.replace("train_loss_", ""))
    axes[1].set_title("training loss terms (unweighted)")
    axes[1].legend()
    axes[2].plot(ep, col("val_dice"), "o-", color="C2", label="val Dice")
    axes[2].set_ylim(0, 1)
    ax2 = axes[2].twinx()
    ax2.plot(ep, col("val_folding_pct"), "x--", color="C3", label="% folding")
    axes[2].set_title("validation")
    axes[2].legend(loc="lower left")
    ax2.legend(loc="lower right")
    for ax in axes:
        ax.set_xlabel("epoch")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def pair_figures(out_dir: str | Path, model, vols, pair: tuple[int, int], downsample: int, tag: str = "") -> list[Path]:
    """overlay.png and jacobian.png for one pair registered by ``model``."""
    from .evaluate import register_pairs
    from .metrics import jacobian_determinant

    out = Path(out_dir)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    (_, disp, warped, wlab), = list(register_pairs(model, vols, [pair], downsample, device, batch_size=1))
    if was_training:
        model.train()
    f, m = pair
    name = f"{vols.names[f]} <- {vols.names[m]}" + (f"  {tag}" if tag else "")
    return [
        overlay_png(out / "overlay.png", vols.images[f, 0].numpy(), vols.images[m, 0].numpy(), warped[0, 0].numpy(),
                    vols.labels[f].numpy(), vols.labels[m].numpy(), wlab[0].numpy(), title=name),
        jacobian_png(out / "jacobian.png", jacobian_determinant(disp[0].numpy()), title=name),
    ]
