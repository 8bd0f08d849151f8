"""Synthetic hippocampus-like phantoms related by known smooth deformations.

A template holds a curved two-part tube (label 1 = head, the thicker anterior part;
label 2 = body) in textured tissue with a dark rim, like a hippocampus crop. Every
subject is the template warped by its own random smooth displacement ``v_i``
(``subject_i(x) = template(x + v_i(x))``), then given its own intensity scale, noise,
on-disk dtype and replicated edge padding around a crop, the quirks of the real data.
The ground-truth ``v_i`` is written next to the images (``fields/``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.spatial import cKDTree

from ..model.transform import warp
from .nifti import write_volume
from ..progress import progress as progress_bar


@dataclass(frozen=True)
class SynthSpec:
    # 96 subjects: the default split (20 validation + 40 test subjects) leaves 36 to train on
    n_subjects: int = 96
    size: int = 64
    amplitude: float = 5.0  # voxels, peak of each subject's random displacement (no registration: Dice ~0.54)
    seed: int = 0
    pad_crop: bool = True  # replicate edge voxels outside a central crop, as in the real data
    stray_label: bool = True  # plant one stray label voxel (value 7) in the second subject
    texture_sigma: float = 2.0  # voxels: correlation length of the tissue texture (larger = wider capture range)


def _template(size: int, rng: np.random.Generator, texture_sigma: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    s = size
    t = np.linspace(0.0, 1.0, 240)
    theta = np.deg2rad(-60 + 120 * t)
    R = 0.32 * s
    cx, cy, cz = 0.5 * s, 0.5 * s - 0.5 * R, 0.5 * s
    pts = np.stack([cx + R * np.sin(theta), cy + R * np.cos(theta), cz + 0.12 * s * (t - 0.5)], 1)
    radius = np.where(t < 0.4, 0.075 * s, 0.075 * s - 0.03 * s * (t - 0.4) / 0.6)
    grid = np.stack(np.meshgrid(*(np.arange(s),) * 3, indexing="ij"), -1).reshape(-1, 3).astype(np.float64)
    dist, idx = cKDTree(pts).query(grid)
    inside = dist < radius[idx]
    labels = np.zeros(s ** 3, np.uint8)
    labels[inside & (t[idx] < 0.45)] = 1
    labels[inside & (t[idx] >= 0.45)] = 2
    rim = (dist < radius[idx] + 0.03 * s) & ~inside
    tissue = ndimage.gaussian_filter(rng.standard_normal((s, s, s)), texture_sigma)
    tissue = tissue / (tissue.std() + 1e-8)
    img = 0.45 + 0.05 * tissue.reshape(-1)
    img[rim] = 0.15 + 0.03 * tissue.reshape(-1)[rim]
    img[inside] = 0.75 + 0.04 * tissue.reshape(-1)[inside] + 0.05 * (labels[inside] == 1)
    return img.reshape(s, s, s).astype(np.float32), labels.reshape(s, s, s)


def random_field(size: int, amplitude: float, rng: np.random.Generator, control: int = 5) -> np.ndarray:
    """Smooth random voxel displacement (3, S, S, S) with max |v| about ``amplitude``."""
    coarse = torch.from_numpy(rng.uniform(-1, 1, (1, 3, control, control, control)).astype(np.float32))
    v = F.interpolate(coarse, size=(size,) * 3, mode="trilinear", align_corners=True)[0].numpy()
    return (v * amplitude / max(np.abs(v).max(), 1e-6)).astype(np.float32)


def apply_field(img: np.ndarray, v: np.ndarray, order: int = 1) -> np.ndarray:
    """``img(x + v(x))`` with regtune's transformer (nearest for labels)."""
    t = torch.from_numpy(img.astype(np.float32))[None, None]
    d = torch.from_numpy(v)[None]
    out = warp(t, d, mode="nearest" if order == 0 else "bilinear")[0, 0].numpy()
    return out.astype(img.dtype) if order == 0 else out


def make_pair(size: int = 32, amplitude: float = 2.0, seed: int = 0):
    """A (fixed, moving) pair for tests: ``moving(x) = fixed(x + v(x))``.

    Returns (fixed_img, fixed_lab, moving_img, moving_lab, v) as numpy arrays, images in [0, 1].
    """
    rng = np.random.default_rng(seed)
    img, lab = _template(size, rng)
    v = random_field(size, amplitude, rng)
    return img, lab, apply_field(img, v), apply_field(lab, v, order=0), v


def _pad_outside_crop(a: np.ndarray, lo: int, hi: int) -> np.ndarray:
    crop = a[lo:hi, lo:hi, lo:hi]
    return np.pad(crop, [(lo, a.shape[0] - hi)] * 3, mode="edge")


def write_dataset(out: str | Path, spec: SynthSpec = SynthSpec(), progress: bool = False) -> Path:
    """Write a Learn2Reg-layout folder (imagesTr/, labelsTr/, fields/, synth.json)."""
    out = Path(out)
    rng = np.random.default_rng(spec.seed)
    tmpl_img, tmpl_lab = _template(spec.size, rng, spec.texture_sigma)
    bar = progress_bar(progress, spec.n_subjects, "synthesising", "subject")
    for i in range(spec.n_subjects):
        name = f"synth_{i + 1:03d}.nii.gz"
        v = random_field(spec.size, spec.amplitude, rng)
        img = apply_field(tmpl_img, v)
        lab = apply_field(tmpl_lab, v, order=0).astype(np.int32)
        img = np.clip(img + 0.02 * rng.standard_normal(img.shape), 0, None)
        scale = 10 ** rng.uniform(0, 3.5)  # intensity scales spanning orders of magnitude
        img = img * scale
        if spec.pad_crop:
            lo, hi = spec.size // 8, spec.size - spec.size // 8
            img = _pad_outside_crop(img, lo, hi)
            lab = _pad_outside_crop(lab, lo, hi)
        if spec.stray_label and i == 1:
            lab[0, 0, 0] = 7
        # uint8 on disk (a quirk of the real data) only where the scale leaves enough grey levels
        img = img.astype(np.uint8) if 4 <= scale and scale * 1.2 < 255 and i % 2 == 0 else img.astype(np.float32)
        write_volume(out / "imagesTr" / name, img)
        write_volume(out / "labelsTr" / name, lab)
        write_volume(out / "fields" / name, np.moveaxis(v, 0, -1))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    (out / "synth.json").write_text(json.dumps(asdict(spec), indent=2))
    return out


def ensure_dataset(out: str | Path, spec: SynthSpec = SynthSpec(), progress: bool = False) -> Path:
    """Reuse ``out`` if it holds the same spec, else (re)generate it."""
    out = Path(out)
    meta = out / "synth.json"
    if meta.is_file():
        try:
            if json.loads(meta.read_text()) == asdict(spec):
                return out
        except json.JSONDecodeError:
            pass
    return write_dataset(out, spec, progress=progress)
