"""Learn2Reg Task 4 evaluation metrics (numpy/scipy, on full-resolution arrays).

- Dice per label, skipped (NaN) where the label is absent from the fixed labels;
  mean over the labels that are present.
- HD95: symmetric 95th-percentile surface distance in mm (voxel spacing applied),
  computed with DeepMind's ``surface-distance`` exactly as the Learn2Reg evaluation
  does (``compute_robust_hausdorff(compute_surface_distances(...), 95)``). A label
  that vanished from the warped map scores the volume diagonal (worst case) instead
  of infinity.
- Jacobian determinant of ``identity + u`` with central differences [-0.5, 0, 0.5],
  2-voxel border cropped; SDlogJ = std(log(clip(det, 1e-9, 1e9))); folding = % of
  voxels with det <= 0, counted on the unclipped determinant.

Displacement arrays here are (3, X, Y, Z) in voxel units (channel c along axis c).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import surface_distance as sd


def dice_per_label(fixed: np.ndarray, warped: np.ndarray, labels: tuple[int, ...]) -> dict[int, float]:
    out = {}
    for lab in labels:
        f, w = fixed == lab, warped == lab
        nf = int(f.sum())
        if nf == 0:
            out[lab] = math.nan
            continue
        out[lab] = 2.0 * float(np.logical_and(f, w).sum()) / (nf + int(w.sum()))
    return out


def hd95_per_label(fixed: np.ndarray, warped: np.ndarray, labels: tuple[int, ...],
                   spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> dict[int, float]:
    worst = float(np.linalg.norm(np.array(fixed.shape) * np.array(spacing)))
    out = {}
    for lab in labels:
        f, w = fixed == lab, warped == lab
        if not f.any():
            out[lab] = math.nan
        elif not w.any():
            out[lab] = worst
        else:
            out[lab] = float(sd.compute_robust_hausdorff(sd.compute_surface_distances(f, w, spacing), 95.0))
    return out


def jacobian_determinant(disp: np.ndarray) -> np.ndarray:
    """det(I + grad u) with central differences, 2-voxel border cropped.

    disp: (3, X, Y, Z) voxel displacement. Returns (X-4, Y-4, Z-4).
    """
    if disp.ndim != 4 or disp.shape[0] != 3:
        raise ValueError(f"jacobian_determinant expects a (3, X, Y, Z) displacement, got {disp.shape}")
    d = disp.astype(np.float64, copy=False)
    # J[i][j] = d u_i / d x_j + delta_ij on the cropped interior
    J = np.empty((3, 3) + tuple(s - 4 for s in d.shape[1:]))
    for j in range(3):
        hi = [slice(2, -2)] * 3
        lo = [slice(2, -2)] * 3
        hi[j] = slice(3, d.shape[1 + j] - 1)
        lo[j] = slice(1, d.shape[1 + j] - 3)
        J[:, j] = 0.5 * (d[(slice(None), *hi)] - d[(slice(None), *lo)])
    for i in range(3):
        J[i, i] += 1.0
    return (J[0, 0] * (J[1, 1] * J[2, 2] - J[1, 2] * J[2, 1])
            - J[0, 1] * (J[1, 0] * J[2, 2] - J[1, 2] * J[2, 0])
            + J[0, 2] * (J[1, 0] * J[2, 1] - J[1, 1] * J[2, 0]))


def jacobian_stats(disp: np.ndarray) -> tuple[float, float]:
    """(SDlogJ, % of voxels with det <= 0)."""
    det = jacobian_determinant(disp)
    folding = 100.0 * float((det <= 0).mean())
    sdlogj = float(np.log(np.clip(det, 1e-9, 1e9)).std())
    return sdlogj, folding


@dataclass(frozen=True)
class PairScore:
    dice: float
    hd95: float
    sdlogj: float
    folding_pct: float
    dice_per_label: dict[int, float]
    hd95_per_label: dict[int, float]

    def row(self) -> dict[str, float]:
        r = {"dice": self.dice, "hd95": self.hd95, "sdlogj": self.sdlogj, "folding_pct": self.folding_pct}
        r.update({f"dice_{k}": v for k, v in self.dice_per_label.items()})
        r.update({f"hd95_{k}": v for k, v in self.hd95_per_label.items()})
        return r


def _nanmean(vals) -> float:
    v = [x for x in vals if not math.isnan(x)]
    return float(np.mean(v)) if v else math.nan


def score_pair(fixed_lab: np.ndarray, warped_lab: np.ndarray, disp: np.ndarray | None,
               labels: tuple[int, ...], spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
               with_hd95: bool = True) -> PairScore:
    """All Learn2Reg metrics for one pair; ``disp`` None means identity (no registration)."""
    if fixed_lab.shape != warped_lab.shape:
        raise ValueError(f"score_pair: fixed labels {fixed_lab.shape} and warped labels {warped_lab.shape} differ")
    dpl = dice_per_label(fixed_lab, warped_lab, labels)
    hpl = hd95_per_label(fixed_lab, warped_lab, labels, spacing) if with_hd95 else {k: math.nan for k in labels}
    sdlogj, fold = jacobian_stats(disp) if disp is not None else (0.0, 0.0)
    return PairScore(_nanmean(dpl.values()), _nanmean(hpl.values()), sdlogj, fold, dpl, hpl)
