"""VoxelMorph-style 3D U-Net that predicts a displacement (or velocity) field."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from .transform import downsample_image, integrate_velocity, upsample_field


class ConvBlock(nn.Module):
    """3x3x3 convolution + LeakyReLU(0.2), as in VoxelMorph."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 3, padding=1)
        self.act = nn.LeakyReLU(0.2, inplace=True)  # in place: one pass less over every feature map

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


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
    ``int_steps > 0`` the head output is a stationary velocity integrated by scaling
    and squaring (diffeomorphic mode).

    forward(moving, fixed): both (B, 1, X, Y, Z) -> (B, 3, X, Y, Z). Sizes that are not
    a multiple of 2**len(enc) are edge-padded internally and cropped back.
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

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        if moving.ndim != 5 or moving.shape[1] != 1 or moving.shape != fixed.shape:
            raise ValueError(f"RegNet expects moving and fixed of shape (B, 1, X, Y, Z), got {tuple(moving.shape)} and {tuple(fixed.shape)}")
        size = moving.shape[2:]
        m = 2 ** len(self.cfg.enc)
        pad = [(-s) % m for s in size]
        x = torch.cat([moving, fixed], dim=1)
        if any(pad):
            x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")
        skips = []
        for blk in self.enc:
            x = blk(x)
            skips.append(x)
            x = F.max_pool3d(x, 2)
        for blk in self.dec:
            x = blk(x)
            x = upsample2(x)
            x = torch.cat([x, skips.pop()], dim=1)
        for blk in self.extra:
            x = blk(x)
        flow = self.flow(x)
        if any(pad):
            flow = flow[:, :, : size[0], : size[1], : size[2]]
        flow = flow.float()
        if self.cfg.int_steps > 0:
            flow = integrate_velocity(flow, self.cfg.int_steps)
        return flow


def predict_field(model: RegNet, fixed: torch.Tensor, moving: torch.Tensor, downsample: int,
                  channels_last: bool = False) -> torch.Tensor:
    """Full-resolution voxel displacement (B, 3, X, Y, Z) for full-resolution images.

    The network runs at 1/``downsample`` resolution (as it was trained) and its field is
    upsampled to the input grid.
    """
    f, m = downsample_image(fixed, downsample), downsample_image(moving, downsample)
    if channels_last:
        f, m = f.contiguous(memory_format=torch.channels_last_3d), m.contiguous(memory_format=torch.channels_last_3d)
    disp = model(m, f)
    return upsample_field(disp, downsample, size=tuple(fixed.shape[2:]))
