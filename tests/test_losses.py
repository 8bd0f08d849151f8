import pytest
import torch

from regtune.config import LossConfig
from regtune.losses import bending_energy, diffusion, local_ncc, mse, mutual_information, soft_dice_loss, total_loss


def test_ncc_finite_on_constant_images_and_perfect_on_identical():
    c = torch.ones(1, 1, 12, 12, 12)
    v = local_ncc(c, c)
    assert torch.isfinite(v) and float(v) == 0.0
    x = torch.rand(1, 1, 12, 12, 12, requires_grad=True)
    v = local_ncc(c, x)
    v.backward()
    assert torch.isfinite(x.grad).all()
    y = torch.rand(1, 1, 12, 12, 12)
    assert float(local_ncc(y, y)) < -0.99
    assert float(local_ncc(y, y * 3 + 1)) < -0.99  # invariant to affine intensity
    assert float(local_ncc(y, torch.rand_like(y))) > -0.3


def test_ncc_window_and_range():
    y = torch.rand(2, 1, 10, 10, 10)
    for w in (3, 5, 9):
        v = float(local_ncc(y, torch.rand_like(y), w))
        assert -1.0 <= v <= 0.0


def test_mi_prefers_aligned():
    y = torch.rand(1, 1, 16, 16, 16)
    assert float(mutual_information(y, y)) < float(mutual_information(y, torch.rand_like(y))) - 0.5
    assert float(mutual_information(y, 1 - y)) < float(mutual_information(y, torch.rand_like(y))) - 0.5


def test_regularisers_zero_for_constant_and_affine():
    d = torch.zeros(1, 3, 8, 8, 8) + 2.0
    assert float(diffusion(d)) == 0.0 and float(bending_energy(d)) == 0.0
    lin = torch.arange(8.0).view(1, 1, 8, 1, 1).expand(1, 3, 8, 8, 8) * 0.1
    assert float(bending_energy(lin)) == pytest.approx(0.0, abs=1e-10)
    assert float(diffusion(lin)) > 0
    bumpy = torch.randn(1, 3, 8, 8, 8)
    assert float(bending_energy(bumpy)) > 0


def test_dice_loss_and_total():
    a = torch.zeros(2, 2, 6, 6, 6)
    a[:, 0, :3] = 1
    a[:, 1, 3:] = 1
    assert float(soft_dice_loss(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert float(soft_dice_loss(a, a.flip(1))) == pytest.approx(1.0, abs=1e-4)
    assert float(soft_dice_loss(a, a.flip(1), mask=torch.tensor([False, False]))) == 0.0
    cfg = LossConfig(similarity="mse", reg_weight=0.5, dice_weight=2.0)
    f = torch.rand(2, 1, 6, 6, 6)
    disp = torch.randn(2, 3, 6, 6, 6)
    t = total_loss(cfg, f, f * 0.5, disp, a, a.flip(1))
    assert float(t.total) == pytest.approx(float(mse(f, f * 0.5)) + 0.5 * float(diffusion(disp)) + 2.0 * float(t.dice), rel=1e-5)
    assert set(t.items()) == {"loss", "loss_sim", "loss_reg", "loss_dice", "loss_jac", "loss_ic"}


def test_box_mean_matches_avg_pool():
    import torch.nn.functional as F

    from regtune.losses import box_mean
    x = torch.rand(2, 3, 9, 10, 11, dtype=torch.float64)
    for w in (3, 5, 9):
        ref = F.avg_pool3d(x, w, stride=1, padding=w // 2, count_include_pad=False)
        assert torch.allclose(box_mean(x, w), ref, atol=1e-10)
