"""On-the-fly augmentation of training pairs: batched, on the training device, seeded.

One call augments a batch of (fixed, moving) images and their one-hot label maps:

- spatial: a random flip per pair (the same for both images, so the pair stays a
  plausible pair) composed with a random affine per image (rotation about the volume
  centre, anisotropic scaling, shear), applied to image and labels with one
  ``grid_sample`` per image (labels as soft one-hot maps, so image and labels stay in
  correspondence);
- intensity: a random gamma and additive Gaussian noise per image (images are in [0, 1]).

Matrices are built in voxel units (so a rotation is a rotation on any grid shape) and
converted to ``grid_sample``'s normalised, reversed-axis convention here and nowhere else.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import AugConfig


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """(B, 3) angles in radians about array axes 0, 1, 2 -> (B, 3, 3) rotation matrices."""
    b = angles.shape[0]
    out = torch.eye(3, device=angles.device, dtype=angles.dtype).expand(b, 3, 3).clone()
    for ax in range(3):
        i, j = [a for a in range(3) if a != ax]
        c, s = torch.cos(angles[:, ax]), torch.sin(angles[:, ax])
        r = torch.eye(3, device=angles.device, dtype=angles.dtype).expand(b, 3, 3).clone()
        r[:, i, i], r[:, i, j], r[:, j, i], r[:, j, j] = c, -s, s, c
        out = out @ r
    return out


class Augmenter:
    """Seeded, batched augmentation on ``device``; its generator state goes into checkpoints."""

    def __init__(self, cfg: AugConfig, device: torch.device | str, seed: int = 0):
        self.cfg = cfg
        self.device = torch.device(device)
        self.g = torch.Generator(device=self.device).manual_seed(seed)

    def _uniform(self, shape: tuple[int, ...], high: float) -> torch.Tensor:
        return (torch.rand(shape, device=self.device, generator=self.g) * 2 - 1) * high

    def matrices(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, 3) voxel-space linear maps for the fixed and the moving images (flip of
        the pair x each image's own affine), mapping output positions (about the centre)
        to input positions."""
        c = self.cfg
        flip = torch.ones(b, 3, device=self.device)
        if c.flip > 0:
            flip = torch.where(torch.rand(b, 3, device=self.device, generator=self.g) < c.flip, -1.0, 1.0)
        pair = torch.diag_embed(flip)
        out = []
        for _ in range(2):
            m = torch.eye(3, device=self.device).expand(b, 3, 3)
            if c.spatial:
                rot = _rotation(self._uniform((b, 3), math.radians(c.rotate)))
                scale = torch.diag_embed(torch.exp(self._uniform((b, 3), c.scale)))
                shear = torch.eye(3, device=self.device).expand(b, 3, 3).clone()
                if c.shear > 0:
                    off = ~torch.eye(3, dtype=torch.bool, device=self.device)
                    shear[:, off] = self._uniform((b, 6), c.shear)
                m = rot @ scale @ shear
            out.append(pair @ m)
        return out[0], out[1]

    @staticmethod
    def _resample(x: torch.Tensor, lin: torch.Tensor, centre: tuple[float, float, float] | None = None) -> torch.Tensor:
        """x (B, C, X, Y, Z) resampled at centre + lin (p - centre) (voxel units, array-axis
        order; ``centre`` defaults to the grid's own), trilinear, border padding."""
        size = x.shape[2:]
        half = torch.tensor([(n - 1) / 2.0 for n in size], device=x.device, dtype=lin.dtype)
        # normalised coordinates q = (p - half) / half (per array axis); grid_sample's axes are reversed
        theta_arr = lin * half.view(1, 1, 3) / half.view(1, 3, 1)  # diag(1/half) lin diag(half)
        shift = torch.zeros(lin.shape[0], 3, 1, device=x.device, dtype=lin.dtype)
        if centre is not None:  # about another point c: q = A q + diag(1/half) (I - lin) (c - half)
            off = torch.tensor(centre, device=x.device, dtype=lin.dtype) - half
            eye = torch.eye(3, device=x.device, dtype=lin.dtype)
            shift = ((eye - lin) @ off.view(1, 3, 1)) / half.view(1, 3, 1)
        rev = theta_arr.flip(1).flip(2)
        theta = torch.cat([rev, shift.flip(1)], dim=2)
        grid = F.affine_grid(theta, [x.shape[0], x.shape[1], *size], align_corners=True)
        return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=True)

    def _intensity(self, img: torch.Tensor) -> torch.Tensor:
        c, b = self.cfg, img.shape[0]
        if c.gamma > 0:
            gam = torch.exp(self._uniform((b,), c.gamma)).view(b, 1, 1, 1, 1)
            img = img.clamp_min(0).pow(gam)
        if c.noise > 0:
            sigma = (torch.rand(b, device=self.device, generator=self.g) * c.noise).view(b, 1, 1, 1, 1)
            img = img + sigma * torch.randn(img.shape, device=self.device, generator=self.g)
        return img

    def __call__(self, fixed: torch.Tensor, moving: torch.Tensor, fixed_onehot: torch.Tensor | None = None,
                 moving_onehot: torch.Tensor | None = None, label_centre: tuple[float, float, float] | None = None):
        """Augmented (fixed, moving, fixed_onehot, moving_onehot); one-hot maps may be None.
        One-hot maps on another grid than the images (finer, or a crop of a finer grid) are
        resampled on their own with the same voxel-space transform, about ``label_centre``:
        the voxel coordinates of the volume's centre in their grid (default: their grid's
        centre)."""
        if fixed.shape != moving.shape or fixed.ndim != 5:
            raise ValueError(f"Augmenter expects fixed and moving of one (B, 1, X, Y, Z) shape, got "
                             f"{tuple(fixed.shape)} and {tuple(moving.shape)}")
        b = fixed.shape[0]
        outs = []
        if self.cfg.flip > 0 or self.cfg.spatial:
            mats = self.matrices(b)
            for img, oh, lin in ((fixed, fixed_onehot, mats[0]), (moving, moving_onehot, mats[1])):
                if oh is not None and (oh.shape[2:] != img.shape[2:] or label_centre is not None):
                    # labels on a finer grid of the same volume (an integer multiple, as downsample_image makes
                    # it), or a crop of one (label_centre: where the volume's centre lies in the crop): the same
                    # voxel-space map about the volume's centre is the same transform on either grid
                    outs.append((self._resample(img.float(), lin), self._resample(oh.float(), lin, label_centre)))
                    continue
                x = img if oh is None else torch.cat([img, oh.to(img.dtype)], dim=1)
                y = self._resample(x.float(), lin)
                outs.append((y[:, :1], None if oh is None else y[:, 1:]))
        else:
            outs = [(fixed, fixed_onehot), (moving, moving_onehot)]
        (f, fo), (m, mo) = outs
        if self.cfg.gamma > 0 or self.cfg.noise > 0:
            f, m = self._intensity(f), self._intensity(m)
        return f, m, fo, mo

    def state(self) -> torch.Tensor:
        return self.g.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.g.set_state(state)
