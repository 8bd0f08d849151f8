"""NIfTI reading and writing with nibabel, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import DataError

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def stem(path: str | Path) -> str:
    """File name without ``.nii`` / ``.nii.gz``."""
    name = Path(path).name
    for suf in NIFTI_SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    return name


def list_nifti(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith("."))


def read_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Read a 3D NIfTI volume.

    Returns ``(array, affine, spacing)`` with the array in its on-disk dtype.
    Raises DataError for a missing, unreadable, non-3D or NaN-holding file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel raises many types for corrupt files
        raise DataError(f"{path}: cannot read as NIfTI ({type(e).__name__}: {e}); re-export or remove the file") from None
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        n = int((~np.isfinite(arr)).sum())
        raise DataError(f"{path}: {n} NaN/inf voxels; fix or remove this file")
    spacing = tuple(float(s) for s in img.header.get_zooms()[:3])
    return arr, np.asarray(img.affine, dtype=np.float64), spacing  # type: ignore[return-value]


def write_volume(path: str | Path, arr: np.ndarray, affine: np.ndarray | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(arr), np.eye(4) if affine is None else affine), str(path))
