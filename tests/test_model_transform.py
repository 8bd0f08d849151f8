import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates

from regtune.model import integrate_velocity, outside_fraction, upsample_field, downsample_image, warp


def test_identity_reproduces_image_exactly():
    img = torch.rand(2, 1, 9, 10, 11)
    out = warp(img, torch.zeros(2, 3, 9, 10, 11))
    assert torch.allclose(out, img, atol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_known_shift_moves_along_right_axis(axis):
    img = torch.zeros(1, 1, 12, 13, 14)
    idx = [6, 6, 7]
    img[(0, 0, *idx)] = 1.0
    disp = torch.zeros(1, 3, 12, 13, 14)
    disp[:, axis] = 2.0  # warped(x) = moving(x + 2 e_axis): content moves 2 voxels towards lower index
    out = warp(img, disp)
    peak = np.unravel_index(int(out.argmax()), out.shape[2:])
    expect = list(idx)
    expect[axis] -= 2
    assert list(peak) == expect
    assert float(out.max()) == pytest.approx(1.0, abs=1e-5)


def test_matches_scipy_map_coordinates():
    rng = np.random.default_rng(0)
    img = rng.random((10, 11, 12)).astype(np.float32)
    disp = rng.uniform(-1.5, 1.5, (3, 10, 11, 12)).astype(np.float32)
    grid = np.stack(np.meshgrid(*(np.arange(s) for s in img.shape), indexing="ij")).astype(np.float32)
    ref = map_coordinates(img, grid + disp, order=1, mode="nearest")
    out = warp(torch.from_numpy(img)[None, None], torch.from_numpy(disp)[None])[0, 0].numpy()
    assert np.abs(out - ref).max() < 1e-4
    ref0 = map_coordinates(img, grid + disp, order=0, mode="nearest")
    out0 = warp(torch.from_numpy(img)[None, None], torch.from_numpy(disp)[None], mode="nearest")[0, 0].numpy()
    assert (out0 == ref0).mean() > 0.999


def test_border_padding_never_black():
    img = torch.rand(1, 1, 8, 8, 8) + 0.5
    out = warp(img, torch.full((1, 3, 8, 8, 8), 20.0))
    assert float(out.min()) >= 0.5
    assert outside_fraction(torch.full((1, 3, 8, 8, 8), 20.0)).item() == 1.0
    assert outside_fraction(torch.zeros(1, 3, 8, 8, 8)).item() == 0.0


def test_integration_of_constant_velocity_is_the_shift():
    v = torch.zeros(1, 3, 16, 16, 16)
    v[:, 1] = 1.5
    d = integrate_velocity(v, 7)
    assert torch.allclose(d[:, :, 4:-4, 4:-4, 4:-4], v[:, :, 4:-4, 4:-4, 4:-4], atol=1e-4)


def test_upsample_field_keeps_voxel_units():
    d = torch.full((1, 3, 8, 8, 8), 1.25)
    up = upsample_field(d, 2)
    assert up.shape == (1, 3, 16, 16, 16) and torch.allclose(up, torch.full_like(up, 2.5))
    assert downsample_image(torch.ones(1, 1, 16, 16, 16), 2).shape == (1, 1, 8, 8, 8)


def test_shape_errors():
    with pytest.raises(ValueError, match="got"):
        warp(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 2, 4, 4, 4))


def _smooth_velocity(size: int, amp: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 4, 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(size,) * 3, mode="trilinear", align_corners=True) * amp


def test_scaling_and_squaring_of_a_non_constant_field_inverts_with_minus_v():
    from regtune.model import compose

    v = _smooth_velocity(24, 3.0)
    fwd, bwd = integrate_velocity(v, 7), integrate_velocity(-v, 7)
    assert float(fwd.abs().max()) > 1.5  # a real, non-constant deformation
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4), slice(4, -4))
    err = compose(fwd, bwd)[inner].norm(dim=1)
    assert float(err.mean()) < 0.05 and float(err.max()) < 0.25  # ~1 % of a 3-voxel deformation
    # and more steps approximate the exponential better (the error shrinks from 1 to 7 steps)
    crude = compose(integrate_velocity(v, 1), integrate_velocity(-v, 1))[inner].norm(dim=1)
    assert float(crude.mean()) > 3 * float(err.mean())


def test_upsample_field_handles_sizes_not_divisible_by_the_factor():
    img = torch.rand(1, 1, 15, 16, 17)
    small = downsample_image(img, 2)
    assert small.shape == (1, 1, 8, 8, 9)
    d = torch.full((1, 3, 8, 8, 9), 0.5)
    up = upsample_field(d, 2, (15, 16, 17))
    assert up.shape == (1, 3, 15, 16, 17) and torch.allclose(up, torch.full_like(up, 1.0))
    # geometry: a linear field on the coarse grid stays the same linear map on the full grid
    xs = torch.arange(8, dtype=torch.float32).view(1, 1, 8, 1, 1).expand(1, 3, 8, 8, 9).clone()
    full = upsample_field(xs, 2, (15, 16, 17))  # coarse voxel k is centred at full 2k + 0.5
    i = torch.arange(15, dtype=torch.float32)
    assert torch.allclose(full[0, 0, 2:13, 4, 4], (2 * ((i - 0.5) / 2))[2:13], atol=1e-5)
    with pytest.raises(ValueError, match="coarse grid"):
        upsample_field(torch.zeros(1, 3, 7, 8, 9), 2, (15, 16, 17))
