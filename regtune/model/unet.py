"""VoxelMorph-style 3D U-Net that predicts a displacement (or velocity) field."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from .transform import downsample_image, upsample_field, velocity_fields

# (head output, fixed, moving), all on the network's grid -> the head output to integrate
Adjust = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def conv(fn, x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` for a 3D convolution ``fn``; under CPU bf16 autocast, a volume smaller than
    3 voxels on a side (a U-Net's bottom level: 2^3 at a 32^3 grid with 4 levels) runs in
    float32. PyTorch 2.13's oneDNN bf16 conv3d gives a garbage *weight gradient* there on
    AVX512-BF16 CPUs (AMD Zen 5: 200 of 200 calls wrong, values up to 1e30 or NaN; 3^3 and
    up, float32, or oneDNN off: correct), which made bf16 training NaN intermittently.
    A 2^3 volume costs nothing in float32."""
    if x.device.type == "cpu" and min(x.shape[2:]) < 3 and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return fn(x.float())
    return fn(x)


class ConvBlock(nn.Module):
    """3x3x3 convolution + LeakyReLU(0.2), as in VoxelMorph."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 3, padding=1)
        self.act = nn.LeakyReLU(0.2, inplace=True)  # in place: one pass less over every feature map

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(conv(self.conv, x))


def upsample2(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour x2 upsampling of (B, C, X, Y, Z). On a ``channels_last_3d``
    tensor it stays in that layout as a broadcast + reshape, whose backward is a plain sum
    (PyTorch's upsample_nearest3d backward converts channels-last gradients to
    contiguous and back, ~5 % of a 64^3 CPU training step)."""
    if x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d):
        b, c, nx, ny, nz = x.shape
        v = x.permute(0, 2, 3, 4, 1)[:, :, None, :, None, :, None, :]  # (B, X, 1, Y, 1, Z, 1, C), a view
        v = v.expand(b, nx, 2, ny, 2, nz, 2, c).reshape(b, 2 * nx, 2 * ny, 2 * nz, c)
        return v.permute(0, 4, 1, 2, 3)
    return F.interpolate(x, scale_factor=2, mode="nearest")


class RegNet(nn.Module):
    """U-Net on the concatenated (moving, fixed) pair -> displacement in voxel units.

    Encoder level i: conv(enc[i]), keep as skip, max-pool x2. Decoder level i:
    conv(dec[i]), upsample x2, concatenate the skip. The remaining ``dec`` widths are
    full-resolution convs, then a 3-channel flow head initialised N(0, 1e-5) so the
    network starts at (almost exactly) the identity transform. With
    ``int_steps > 0`` the head output is a stationary velocity v integrated by scaling
    and squaring (diffeomorphic mode; on a grid ``int_downsize`` times coarser, then
    upsampled), and the inverse transform is exp(-v). With ``symmetric`` the velocity is
    0.5 (g(m, f) - g(f, m)) for the U-Net g (one batched pass over both orders).

    forward(moving, fixed): both (B, 1, X, Y, Z) -> (B, 3, X, Y, Z) displacement.
    fields(moving, fixed): (forward, backward) displacements; backward is the inverse
    transform exp(-v) (None for a plain-displacement model). Sizes that are not a multiple
    of 2**len(enc) are edge-padded internally and cropped back.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        nl = len(cfg.enc)
        self.enc = nn.ModuleList()
        c = 2
        for w in cfg.enc:
            self.enc.append(ConvBlock(c, w))
            c = w
        self.dec = nn.ModuleList()
        for i in range(nl):
            self.dec.append(ConvBlock(c, cfg.dec[i]))
            c = cfg.dec[i] + cfg.enc[nl - 1 - i]
        self.extra = nn.ModuleList()
        for w in cfg.dec[nl:]:
            self.extra.append(ConvBlock(c, w))
            c = w
        self.flow = nn.Conv3d(c, 3, 3, padding=1)
        nn.init.normal_(self.flow.weight, 0.0, 1e-5)
        nn.init.zeros_(self.flow.bias)
        self.conditioner = None  # loss-weight conditioning, set by regtune.model.conditioning.build_model

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.fields(moving, fixed, backward=False, cond=cond)[0]

    def velocity(self, moving: torch.Tensor, fixed: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The head's output in voxel units (B, 3, X, Y, Z), float32: a velocity when
        ``int_steps > 0``, else the displacement itself."""
        if moving.ndim != 5 or moving.shape[1] != 1 or moving.shape != fixed.shape:
            raise ValueError(f"RegNet expects moving and fixed of shape (B, 1, X, Y, Z), got {tuple(moving.shape)} and {tuple(fixed.shape)}")
        if not self.cfg.symmetric:
            return self._unet(torch.cat([moving, fixed], dim=1), cond)
        b = moving.shape[0]
        g = self._unet(torch.cat([torch.cat([moving, fixed], dim=1), torch.cat([fixed, moving], dim=1)], dim=0), cond)
        return 0.5 * (g[:b] - g[b:])

    def fields(self, moving: torch.Tensor, fixed: torch.Tensor, backward: bool = True, cond: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(forward, backward) voxel displacements on the input grid: forward warps
        moving onto fixed; backward (the inverse transform exp(-v), fixed onto moving) is
        None for a plain-displacement model or when not asked for."""
        return velocity_fields(self.velocity(moving, fixed, cond), self.cfg.int_steps, self.cfg.int_downsize, backward)

    def _unet(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        # a conditional network runs every block through its conditioner (cond: (B, K) loss-weight
        # positions; None = the conditioner's set values); an ordinary one (conditioner None) runs them as they are
        mod = self.conditioner(cond, x.shape[0]) if self.conditioner is not None else None
        size = x.shape[2:]
        m = 2 ** len(self.cfg.enc)
        pad = [(-s) % m for s in size]
        if any(pad):
            x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")
        skips = []
        for blk in self.enc:
            x = blk(x) if mod is None else mod(blk, x)
            skips.append(x)
            x = F.max_pool3d(x, 2)
        for blk in self.dec:
            x = blk(x) if mod is None else mod(blk, x)
            x = upsample2(x)
            x = torch.cat([x, skips.pop()], dim=1)
        for blk in self.extra:
            x = blk(x) if mod is None else mod(blk, x)
        flow = self.flow(x) if mod is None else mod(self.flow, x)
        if any(pad):
            flow = flow[:, :, : size[0], : size[1], : size[2]]
        return flow.float()


def predict_field(model: RegNet, fixed: torch.Tensor, moving: torch.Tensor, downsample: int,
                  channels_last: bool = False, adjust: Adjust | None = None) -> torch.Tensor:
    """Full-resolution voxel displacement (B, 3, X, Y, Z) for full-resolution images.

    The network runs at 1/``downsample`` resolution (as it was trained) and its field is
    upsampled to the input grid; ``adjust`` as in :func:`predict_fields`.
    """
    return predict_fields(model, fixed, moving, downsample, channels_last, backward=False, adjust=adjust)[0]


def predict_fields(model: RegNet, fixed: torch.Tensor, moving: torch.Tensor, downsample: int,
                   channels_last: bool = False, backward: bool = True, adjust: Adjust | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Full-resolution (forward, backward) displacements, see :meth:`RegNet.fields`.

    ``adjust(v, fixed, moving) -> v``, when given, replaces the network's head output ``v``
    (on its own grid, with the images on that grid) before integration: the hook
    :mod:`regtune.refine` refines each pair's field through."""
    f, m = downsample_image(fixed, downsample), downsample_image(moving, downsample)
    if channels_last:
        f, m = f.contiguous(memory_format=torch.channels_last_3d), m.contiguous(memory_format=torch.channels_last_3d)
    if adjust is None:
        fwd, bwd = model.fields(m, f, backward=backward)
    else:
        fwd, bwd = velocity_fields(adjust(model.velocity(m, f), f, m), model.cfg.int_steps, model.cfg.int_downsize, backward)
    size = tuple(fixed.shape[2:])
    return upsample_field(fwd, downsample, size), (upsample_field(bwd, downsample, size) if bwd is not None else None)
