"""Write registration outputs in the Learn2Reg convention.

For each pair: ``disp_<fixed>_<moving>.nii.gz`` (X x Y x Z x 3 float32, voxel units, on
the fixed grid, ``warped(x) = moving(x + u(x))``), ``warped_<fixed>_<moving>.nii.gz``
(the moving image resampled trilinearly, normalised intensities) and, where the moving
subject has labels, ``warpedseg_<fixed>_<moving>.nii.gz`` (nearest neighbour).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data.dataset import Volumes
from .data.nifti import write_volume
from .data.pairs import Pair


def field_name(fixed: str, moving: str) -> str:
    return f"disp_{fixed}_{moving}.nii.gz"


class FieldWriter:
    """Callable for :func:`regtune.evaluate.evaluate_pairs`'s ``on_field`` hook."""

    def __init__(self, out_dir: str | Path, vols: Volumes, images: bool = True):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.vols = vols
        self.images = images
        self.written: list[Path] = []

    def __call__(self, pair: Pair, disp: np.ndarray, warped: np.ndarray, wlab: np.ndarray) -> None:
        f, m = self.vols.names[pair[0]], self.vols.names[pair[1]]
        p = self.out / field_name(f, m)
        write_volume(p, np.moveaxis(disp, 0, -1).astype(np.float32), self.vols.affine)
        self.written.append(p)
        if self.images:
            write_volume(self.out / f"warped_{f}_{m}.nii.gz", warped.astype(np.float32), self.vols.affine)
            if bool(self.vols.labelled[pair[1]]):
                write_volume(self.out / f"warpedseg_{f}_{m}.nii.gz", wlab.astype(np.uint8), self.vols.affine)
