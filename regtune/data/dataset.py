"""A Learn2Reg-layout folder loaded once into memory as normalised tensors.

Layout::

    ROOT/imagesTr/NAME.nii.gz   one 3D image per subject
    ROOT/labelsTr/NAME.nii.gz   its label map (same file name, shape and affine)
    ROOT/imagesTs/NAME.nii.gz   optional unlabelled images
    ROOT/<Task>_dataset.json    optional: an official Learn2Reg release's file list
                                ("training") and validation pairs ("registration_val")

Every image is normalised on its own (clip to its [clip_low, clip_high] percentiles,
rescale to [0, 1]); label values outside ``data.labels`` are mapped to background and
reported. After loading nothing touches the disk again: training and evaluation index
into the tensors held here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DataError
from ..progress import progress as progress_bar
from .nifti import list_nifti, read_volume, stem


@dataclass
class Volumes:
    """Subjects held in memory.

    names: subject stems, index i of every tensor.
    images: (N, 1, X, Y, Z) float32 in [0, 1], full resolution.
    labels: (N, X, Y, Z) uint8; rows of unlabelled subjects are all zero.
    labelled: (N,) bool, True where the subject has a label map.
    spacing: voxel size in mm of the first volume (all must agree).
    notes: what the loader changed (stray labels, padding masks), one line each.
    registration_val: the official validation pairs (fixed, moving names) of a Learn2Reg
        release's ``*_dataset.json``; empty otherwise.
    """

    names: list[str]
    images: torch.Tensor
    labels: torch.Tensor
    labelled: torch.Tensor
    spacing: tuple[float, float, float]
    affine: np.ndarray
    label_values: tuple[int, ...]
    notes: list[str] = field(default_factory=list)
    raw_p99: dict[str, float] = field(default_factory=dict)  # 99th percentile as stored on disk
    registration_val: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[2:])  # type: ignore[return-value]

    def index(self, name: str) -> int:
        key = stem(name)
        try:
            return self.names.index(key)
        except ValueError:
            raise DataError(f"subject '{name}' is not in the loaded data ({len(self)} subjects, e.g. {self.names[0]})") from None

    def onehot(self, idx: torch.Tensor | list[int]) -> torch.Tensor:
        """(B, K, X, Y, Z) float one-hot of the foreground labels of subjects ``idx``."""
        lab = self.labels[idx]
        vals = torch.tensor(self.label_values, dtype=lab.dtype, device=lab.device).view(1, -1, 1, 1, 1)
        return (lab.unsqueeze(1) == vals).float()


def normalise_intensity(arr: np.ndarray, clip_low: float, clip_high: float, where: str = "image") -> np.ndarray:
    """Clip to the [clip_low, clip_high] percentiles and rescale to [0, 1] (float32)."""
    a = arr.astype(np.float32, copy=False)
    lo, hi = np.percentile(a, [clip_low, clip_high])
    if not hi > lo:
        lo, hi = float(a.min()), float(a.max())
        if not hi > lo:
            raise DataError(f"{where}: image is constant ({lo}); it cannot be registered, remove it")
    return ((np.clip(a, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def sanitise_labels(lab: np.ndarray, values: Iterable[int], where: str) -> tuple[np.ndarray, str | None]:
    """Map label values outside ``values`` to 0; returns (uint8 labels, note or None)."""
    if not np.issubdtype(lab.dtype, np.integer):
        if not np.all(np.isfinite(lab)) or not np.allclose(lab, np.round(lab)):
            raise DataError(f"{where}: label map holds non-integer values; labels must be integers")
        lab = np.round(lab).astype(np.int64)
    values = tuple(values)
    ok = np.isin(lab, (0,) + values)
    note = None
    if not ok.all():
        stray, counts = np.unique(lab[~ok], return_counts=True)
        desc = ", ".join(f"{int(v)} x{int(c)}" for v, c in zip(stray, counts))
        note = f"{where}: stray label values ({desc} voxels) mapped to background"
        lab = np.where(ok, lab, 0)
    if not np.isin(lab, values).any():
        raise DataError(f"{where}: label map is empty (no voxel with label {list(values)}); fix or remove this subject")
    return lab.astype(np.uint8), note


def padding_region(img: np.ndarray) -> tuple[tuple[int, int], ...]:
    """The real (unpadded) region: per axis the [lo, hi) range inside the replicated
    edge padding. Padding slices are exact copies of their inner neighbour."""
    region = []
    for ax in range(3):
        a = np.moveaxis(img, ax, 0)
        same = np.array([np.array_equal(a[i], a[i + 1]) for i in range(a.shape[0] - 1)])
        lo = 0
        while lo < len(same) and same[lo]:
            lo += 1
        hi = a.shape[0]
        while hi - 1 > lo and same[hi - 2]:
            hi -= 1
        region.append((lo, hi))
    return tuple(region)


def _load_image(path: Path, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, tuple, float]:
    arr, aff, spacing = read_volume(path)
    raw_p99 = float(np.percentile(arr, 99))
    if cfg.mask_padding:
        (x0, x1), (y0, y1), (z0, z1) = padding_region(arr)
    if cfg.normalise:
        img = normalise_intensity(arr, cfg.clip_low, cfg.clip_high, where=str(path))
    else:
        img = arr.astype(np.float32)
    if cfg.mask_padding:
        mask = np.zeros(img.shape, bool)
        mask[x0:x1, y0:y1, z0:z1] = True
        if not mask.all():
            img = np.where(mask, img, 0).astype(np.float32)
    return img, aff, spacing, raw_p99


def load_folder(root: str | Path, cfg: DataConfig, progress: bool = False) -> Volumes:
    """Load a Learn2Reg-layout folder. Raises DataError naming the file on bad input."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found (expected imagesTr/ and labelsTr/ inside; "
                        f"or run 'regtune data synth --out DIR' to make one)")
    img_dir, lab_dir = root / "imagesTr", root / "labelsTr"
    for d in (img_dir, lab_dir):
        if not d.is_dir():
            raise DataError(f"{d}: folder missing; a Learn2Reg-layout folder has imagesTr/ and labelsTr/")
    release = find_release_json(root)
    if release is not None:
        files, val_pairs = read_release_json(release)
    else:
        files, val_pairs = match_labels(img_dir, lab_dir), []
    if cfg.use_unlabelled and (root / "imagesTs").is_dir():
        files += [(p, None) for p in list_nifti(root / "imagesTs")]
    vols = load_files(files, cfg, progress=progress, desc=root.name)
    vols.registration_val = val_pairs
    return vols


def find_release_json(root: Path) -> Path | None:
    """``<Task>_dataset.json`` of an official Learn2Reg release in ``root`` (None if absent)."""
    found = sorted(Path(root).glob("*_dataset.json"))
    return found[0] if found else None


def read_release_json(path: Path) -> tuple[list[tuple[Path, Path | None]], list[tuple[str, str]]]:
    """Files of the "training" list and the "registration_val" pairs of a Learn2Reg
    ``*_dataset.json`` (paths relative to its folder, e.g. ``./imagesTr/HippocampusMR_0001_0000.nii.gz``)."""
    import json

    root = path.parent
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read the release's dataset JSON ({e}); fix it or move it away to use imagesTr/labelsTr") from None
    entries = doc.get("training")
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{path}: no 'training' list of {{image, label}} entries")
    files: list[tuple[Path, Path | None]] = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or "image" not in e:
            raise DataError(f"{path}: training[{i}] has no 'image' entry")
        img = (root / e["image"]).resolve()
        lab = (root / e["label"]).resolve() if e.get("label") else None
        for p in (img, lab):
            if p is not None and not p.is_file():
                raise DataError(f"{path}: training[{i}] lists {p}, which does not exist")
        files.append((img, lab))
    pairs = []
    for i, pr in enumerate(doc.get("registration_val") or []):
        if not isinstance(pr, dict) or "fixed" not in pr or "moving" not in pr:
            raise DataError(f"{path}: registration_val[{i}] needs 'fixed' and 'moving'")
        pairs.append((stem(pr["fixed"]), stem(pr["moving"])))
    known = {stem(p) for p, _ in files}
    for f, m in pairs:
        for n in (f, m):
            if n not in known:
                raise DataError(f"{path}: registration_val names {n}, which is not in its training list")
    return files, pairs


def match_labels(img_dir: Path, lab_dir: Path | None) -> list[tuple[Path, Path | None]]:
    """Pair every image in ``img_dir`` with the same-named file in ``lab_dir``."""
    img_dir = Path(img_dir)
    if not img_dir.is_dir():
        raise DataError(f"{img_dir}: image folder not found")
    images = list_nifti(img_dir)
    if not images:
        raise DataError(f"{img_dir}: no NIfTI images (.nii.gz / .nii) found")
    if lab_dir is None:
        return [(p, None) for p in images]
    lab_dir = Path(lab_dir)
    if not lab_dir.is_dir():
        raise DataError(f"{lab_dir}: label folder not found")
    label_files = {stem(p): p for p in list_nifti(lab_dir)}
    missing = [p.name for p in images if stem(p) not in label_files]
    if missing:
        raise DataError(f"{img_dir / missing[0]}: no label map {lab_dir / missing[0]} "
                        f"({len(missing)} image(s) without labels); add the labels or move those images to imagesTs/")
    extra = sorted(set(label_files) - {stem(p) for p in images})
    if extra:
        raise DataError(f"{label_files[extra[0]]}: label map without an image in {img_dir} ({len(extra)} such); remove it or add the image")
    return [(p, label_files[stem(p)]) for p in images]


def load_files(files: list[tuple[Path, Path | None]], cfg: DataConfig, progress: bool = False, desc: str = "volumes") -> Volumes:
    """Load (image, label-or-None) file pairs into one :class:`Volumes`."""
    if len(files) < 1:
        raise DataError("no images to load")
    notes: list[str] = []
    names, imgs, labs, has_lab, p99 = [], [], [], [], {}
    ref_shape = ref_aff = ref_spacing = None
    bar = progress_bar(progress, len(files), f"loading {desc}", "vol")
    for ipath, lpath in files:
        ipath = Path(ipath)
        img, aff, spacing, p99[stem(ipath)] = _load_image(ipath, cfg)
        if ref_shape is None:
            ref_shape, ref_aff, ref_spacing = img.shape, aff, spacing
        elif img.shape != ref_shape:
            raise DataError(f"{ipath}: shape {img.shape} differs from {Path(files[0][0]).name}'s {ref_shape}; "
                            f"resample all volumes to one grid first")
        elif not np.allclose(spacing, ref_spacing, rtol=1e-4, atol=1e-4):
            raise DataError(f"{ipath}: voxel spacing {tuple(round(x, 4) for x in spacing)} mm differs from "
                            f"{Path(files[0][0]).name}'s {tuple(round(x, 4) for x in ref_spacing)}; resample all volumes "
                            f"to one spacing first (metrics in mm assume one)")
        elif not np.allclose(aff, ref_aff, atol=1e-3):
            raise DataError(f"{ipath}: affine differs from {Path(files[0][0]).name}'s (another orientation or origin); "
                            f"resample all volumes onto one grid first (registration pairs voxels by index)")
        if lpath is not None:
            lpath = Path(lpath)
            lab, laff, _ = read_volume(lpath)
            if lab.shape != img.shape:
                raise DataError(f"{lpath}: label shape {lab.shape} does not match image shape {img.shape} of {ipath.name}")
            if not np.allclose(laff, aff, atol=1e-3):
                raise DataError(f"{lpath}: label affine does not match the affine of {ipath.name}; "
                                f"resample the label onto the image grid")
            lab, note = sanitise_labels(lab, cfg.labels, where=str(lpath))
            if note:
                notes.append(note)
        else:
            lab = np.zeros(img.shape, np.uint8)
        names.append(stem(ipath))
        imgs.append(img)
        labs.append(lab)
        has_lab.append(lpath is not None)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"duplicate subject name '{dup}' among the images; names must be unique")
    return Volumes(
        names=names,
        images=torch.from_numpy(np.stack(imgs)[:, None]),
        labels=torch.from_numpy(np.stack(labs)),
        labelled=torch.tensor(has_lab),
        spacing=ref_spacing,  # type: ignore[arg-type]
        affine=ref_aff,  # type: ignore[arg-type]
        label_values=tuple(cfg.labels),
        notes=notes,
        raw_p99=p99,
    )
