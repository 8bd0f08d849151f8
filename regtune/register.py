"""Write registration outputs in the Learn2Reg convention.

For each pair a displacement field, X x Y x Z x 3, voxel units, on the fixed grid,
``warped(x) = moving(x + u(x))`` (the array layout the organisers' scorer loads):

- ``naming="regtune"`` (default): ``disp_<fixed name>_<moving name>.nii.gz``, float32;
- ``naming="l2r"``: the organisers' names ``disp_<fixed id>_<moving id>`` with 4-digit
  case ids (``HippocampusMR_0001_0000`` and ``hippocampus_001`` are both case ``0001``),
  so the files go into their evaluation script without renaming;
- ``fmt="npz"``: ``np.savez_compressed`` of the float16 array (key ``arr_0``), the
  compact format their submission system takes.

Unless ``images=False``, also ``warped_<fixed>_<moving>.nii.gz`` (the moving image
resampled trilinearly, normalised intensities) and, where the moving subject has labels,
``warpedseg_<fixed>_<moving>.nii.gz`` (nearest neighbour).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .data.dataset import Volumes
from .data.nifti import write_volume
from .data.pairs import Pair
from .errors import DataError

NAMINGS = ("regtune", "l2r")
FORMATS = ("nii.gz", "npz")


def case_id(name: str) -> str:
    """The Learn2Reg case id of a subject name: ``HippocampusMR_0001_0000`` -> ``0001``
    (release names: case then modality), ``hippocampus_001`` -> ``0001``."""
    m = re.fullmatch(r".*?_(\d{4})_(\d{4})", name)
    if m:
        return m.group(1)
    m = re.fullmatch(r".*?(\d+)", name)
    if m and len(m.group(1)) <= 4:
        return m.group(1).zfill(4)
    raise DataError(f"cannot derive a Learn2Reg case id from the subject name '{name}' (expected e.g. "
                    f"HippocampusMR_0001_0000 or hippocampus_001); use --naming regtune")


def field_name(fixed: str, moving: str, naming: str = "regtune", fmt: str = "nii.gz") -> str:
    if naming == "l2r":
        fixed, moving = case_id(fixed), case_id(moving)
    return f"disp_{fixed}_{moving}.{fmt}"


def write_field(path: Path, disp: np.ndarray, affine: np.ndarray, fmt: str = "nii.gz") -> None:
    """``disp`` (3, X, Y, Z) -> X x Y x Z x 3 on disk (float32 NIfTI, or float16 npz)."""
    arr = np.moveaxis(disp, 0, -1)
    if fmt == "npz":
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, arr.astype(np.float16))
    else:
        write_volume(path, arr.astype(np.float32), affine)


class FieldWriter:
    """Callable for :func:`regtune.evaluate.evaluate_pairs`'s ``on_field`` hook."""

    def __init__(self, out_dir: str | Path, vols: Volumes, images: bool = True, naming: str = "regtune", fmt: str = "nii.gz"):
        if naming not in NAMINGS or fmt not in FORMATS:
            raise ValueError(f"FieldWriter: naming in {NAMINGS}, fmt in {FORMATS}, got {naming!r}, {fmt!r}")
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.vols = vols
        self.images = images
        self.naming, self.fmt = naming, fmt
        self.written: list[Path] = []
        if naming == "l2r":  # fail before any work when a name has no case id, or two names share one
            ids: dict[str, str] = {}
            for n in vols.names:
                i = case_id(n)
                if i in ids and ids[i] != n:
                    raise DataError(f"subjects '{ids[i]}' and '{n}' both map to Learn2Reg case {i}; use --naming regtune")
                ids[i] = n

    def __call__(self, pair: Pair, disp: np.ndarray, warped: np.ndarray, wlab: np.ndarray) -> None:
        f, m = self.vols.names[pair[0]], self.vols.names[pair[1]]
        p = self.out / field_name(f, m, self.naming, self.fmt)
        write_field(p, disp, self.vols.affine, self.fmt)
        self.written.append(p)
        if self.images:
            write_volume(self.out / f"warped_{f}_{m}.nii.gz", warped.astype(np.float32), self.vols.affine)
            if bool(self.vols.labelled[pair[1]]):
                write_volume(self.out / f"warpedseg_{f}_{m}.nii.gz", wlab.astype(np.uint8), self.vols.affine)
