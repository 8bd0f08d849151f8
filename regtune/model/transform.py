"""The one spatial transformer regtune uses everywhere.

Convention (the Learn2Reg one): a displacement ``u`` has shape (B, 3, X, Y, Z), is in
**voxel units**, channel c moves along array axis c (dim 2 + c of the image), lives on
the fixed grid, and warping means ``warped(x) = moving(x + u(x))``.

``torch.nn.functional.grid_sample`` wants normalised coordinates in [-1, 1] ordered
(last, middle, first) array axis; with ``align_corners=True`` index i maps to
``2 i / (n - 1) - 1``. Those two conversions happen here and nowhere else; getting
either wrong is the classic cause of black warps.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def _check_pair(img: torch.Tensor, disp: torch.Tensor) -> None:
    if img.ndim != 5 or disp.ndim != 5 or disp.shape[1] != 3:
        raise ValueError(f"warp expects img (B, C, X, Y, Z) and disp (B, 3, X, Y, Z), got {tuple(img.shape)} and {tuple(disp.shape)}")
    if img.shape[2:] != disp.shape[2:] or img.shape[0] != disp.shape[0]:
        raise ValueError(f"warp: img {tuple(img.shape)} and disp {tuple(disp.shape)} disagree in batch or spatial size")


@functools.lru_cache(maxsize=16)
def _identity(shape: tuple[int, int, int], device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised identity grid (1, X, Y, Z, 3) in grid_sample order, and the factor
    2 / (n - 1) per grid channel (also in grid_sample order) that turns voxel
    displacements into normalised ones."""
    axes = [torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype) if n > 1 else torch.zeros(1, device=device, dtype=dtype)
            for n in shape]
    mesh = torch.meshgrid(*axes, indexing="ij")  # mesh[c] varies along array axis c
    grid = torch.stack(mesh[::-1], dim=-1).unsqueeze(0)  # grid_sample order: (z, y, x) -> (W, H, D)
    # reversed like the grid's last axis: grid[..., k] moves along array axis 2 - k
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in shape][::-1], device=device, dtype=dtype)
    return grid, scale


def warp(img: torch.Tensor, disp: torch.Tensor, mode: str = "bilinear", padding_mode: str = "border") -> torch.Tensor:
    """Warp ``img`` (B, C, X, Y, Z) with voxel displacement ``disp`` (B, 3, X, Y, Z).

    ``mode``: "bilinear" (trilinear in 3D) or "nearest" (labels). ``padding_mode``
    "border" repeats the edge voxel for samples outside the volume (the hippocampus
    crops are edge-padded, so this is what the data itself does); "zeros" returns 0.
    """
    _check_pair(img, disp)
    grid, scale = _identity(tuple(disp.shape[2:]), disp.device, disp.dtype)
    # (B, 3, X, Y, Z) -> (B, X, Y, Z, 3) view, channel order reversed for grid_sample (one
    # copy), then identity + scale * d in one fused pass
    d = disp.movedim(1, -1).flip(-1)
    return F.grid_sample(img.to(disp.dtype) if img.dtype != disp.dtype else img, torch.addcmul(grid, d, scale),
                         mode=mode, padding_mode=padding_mode, align_corners=True)


def outside_fraction(disp: torch.Tensor) -> torch.Tensor:
    """Fraction (per batch item) of sample points ``x + u(x)`` outside the volume."""
    out = torch.zeros(disp.shape[0], *disp.shape[2:], dtype=torch.bool, device=disp.device)
    for c, n in enumerate(disp.shape[2:]):
        shape = [1, 1, 1]
        shape[c] = n
        pos = torch.arange(n, device=disp.device, dtype=disp.dtype).view(1, *shape) + disp[:, c]
        out |= (pos < -0.5) | (pos > n - 0.5)
    return out.flatten(1).float().mean(1)


def integrate_velocity(vel: torch.Tensor, steps: int) -> torch.Tensor:
    """Scaling and squaring: the displacement of exp(vel) with ``steps`` squarings."""
    disp = vel / (2 ** steps)
    for _ in range(steps):
        disp = disp + warp(disp, disp)
    return disp


def velocity_fields(v: torch.Tensor, int_steps: int, int_downsize: int = 1, backward: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(forward, backward) displacements of a network head's output ``v`` (B, 3, X, Y, Z),
    on ``v``'s grid: with ``int_steps > 0`` exp(v) and exp(-v) by scaling and squaring on a
    grid ``int_downsize`` times coarser (both directions in one batched integration), else
    ``v`` itself is the displacement and there is no backward field."""
    if int_steps == 0:
        return v, None
    size = tuple(v.shape[2:])
    k = int_downsize
    vc = downsample_image(v, k) / k if k > 1 else v
    if backward:
        fwd, bwd = integrate_velocity(torch.cat([vc, -vc]), int_steps).chunk(2)
    else:
        fwd, bwd = integrate_velocity(vc, int_steps), None
    if k > 1:
        fwd = upsample_field(fwd, k, size)
        bwd = upsample_field(bwd, k, size) if bwd is not None else None
    return fwd, bwd


def compose(u_first: torch.Tensor, u_second: torch.Tensor) -> torch.Tensor:
    """Displacement of the composed map x -> y + u_second(y), y = x + u_first(x):
    ``u_first(x) + u_second(x + u_first(x))``. With a forward field and its inverse this is
    ~0 (the inverse-consistency error)."""
    return u_first + warp(u_second, u_first)


def _pad_to_multiple(x: torch.Tensor, factor: int) -> torch.Tensor:
    pad = [(-s) % factor for s in x.shape[2:]]
    if not any(pad):
        return x
    return F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")


def downsample_image(img: torch.Tensor, factor: int) -> torch.Tensor:
    """Average-pool by ``factor``: small voxel k covers full voxels [f k, f k + f).
    A size that is not a multiple of ``factor`` is first edge-padded up to one (the last
    coarse voxel covers the last full voxels plus copies of the edge); :func:`upsample_field`
    undoes exactly this geometry."""
    return img if factor == 1 else F.avg_pool3d(_pad_to_multiple(img, factor), factor)


def upsample_field(disp: torch.Tensor, factor: int, size: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Voxel displacement on the ``factor``-times coarser grid of :func:`downsample_image`
    -> the full grid of ``size`` (default: ``factor`` x the coarse size).

    Geometry matches :func:`downsample_image` (``align_corners=False`` on the padded
    grid, then cropped to ``size``) and the values are multiplied by ``factor`` because
    a coarse voxel is ``factor`` full voxels.
    """
    if factor == 1:
        return disp
    coarse = tuple(disp.shape[2:])
    if size is None:
        size = tuple(factor * n for n in coarse)
    size = tuple(int(n) for n in size)
    expect = tuple(-(-n // factor) for n in size)
    if expect != coarse:
        raise ValueError(f"upsample_field: a {coarse} field is not the x{factor} coarse grid of {size} "
                         f"(expected {expect}), got disp {tuple(disp.shape)}")
    up = F.interpolate(disp * factor, scale_factor=factor, mode="trilinear", align_corners=False)
    return up[:, :, : size[0], : size[1], : size[2]]
