"""Augmentation: image and labels move together, the pair's flip is shared, conventions exact."""

import math

import pytest
import torch

from regtune.augment import Augmenter
from regtune.config import AugConfig
from regtune.data.synth import make_pair

from .helpers import NO_AUG


def _aug(**kw) -> AugConfig:
    """Only the named augmentations (the config's defaults turn some on)."""
    return AugConfig(**{**{k.removeprefix("aug."): v for k, v in NO_AUG.items()}, **kw})


def _pair(b=3, size=20):
    f_img, f_lab, m_img, m_lab, _ = make_pair(size, seed=2)
    fl = torch.from_numpy(f_lab).long()
    ml = torch.from_numpy(m_lab).long()
    onehot = lambda lab: torch.stack([(lab == k).float() for k in (1, 2)])[None].repeat(b, 1, 1, 1, 1)  # noqa: E731
    return (torch.from_numpy(f_img)[None, None].repeat(b, 1, 1, 1, 1), torch.from_numpy(m_img)[None, None].repeat(b, 1, 1, 1, 1),
            onehot(fl), onehot(ml))


def test_spatial_augmentation_moves_image_and_labels_together():
    """An image that is a linear function of its label channels stays exactly that function
    of the augmented labels (one shared sampling grid per image)."""
    f, m, fo, mo = _pair()
    coef = torch.tensor([0.3, 0.8]).view(1, 2, 1, 1, 1)
    f_lin, m_lin = (fo * coef).sum(1, keepdim=True), (mo * coef).sum(1, keepdim=True)
    aug = Augmenter(_aug(flip=0.5, rotate=15.0, scale=0.1, shear=0.05), "cpu", seed=0)
    fa, ma, foa, moa = aug(f_lin, m_lin, fo, mo)
    assert torch.allclose(fa, (foa * coef).sum(1, keepdim=True), atol=1e-5)
    assert torch.allclose(ma, (moa * coef).sum(1, keepdim=True), atol=1e-5)
    assert not torch.allclose(fa, f_lin, atol=1e-3)  # something did move
    # soft one-hot maps stay a partition of unity-or-less and keep most of the structure
    assert float(foa.sum(1).max()) <= 1.0 + 1e-5 and float(foa.sum()) > 0.7 * float(fo.sum())


def _centre_of_mass(x: torch.Tensor) -> torch.Tensor:
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in x.shape[2:]], indexing="ij")
    return torch.stack([(x * g).sum(dim=(2, 3, 4)) / x.sum(dim=(2, 3, 4)) for g in grids], -1)


def test_labels_on_the_full_grid_move_with_the_downsampled_images():
    """loss.dice_full_res: images at 2x downsampling, labels at full resolution. The
    augmented full-resolution labels, average-pooled, land where the labels augmented on
    the coarse grid land (the same transform on both grids): same centres of mass within
    0.05 coarse voxel, overlap up to interpolation at the boundary."""
    from regtune.model import downsample_image
    f, m, fo, mo = _pair(b=2, size=32)
    coarse = lambda x: downsample_image(x, 2)  # noqa: E731
    cfg = _aug(flip=0.5, rotate=10.0, scale=0.05)
    _, _, foa_c, moa_c = Augmenter(cfg, "cpu", seed=4)(coarse(f), coarse(m), coarse(fo), coarse(mo))
    fa, ma, foa, moa = Augmenter(cfg, "cpu", seed=4)(coarse(f), coarse(m), fo, mo)
    assert foa.shape == fo.shape and fa.shape == coarse(f).shape
    for full, small in ((foa, foa_c), (moa, moa_c)):
        assert float((_centre_of_mass(coarse(full)) - _centre_of_mass(small)).abs().max()) < 0.05
        assert float((coarse(full) - small).abs().sum() / small.sum()) < 0.35  # 16^3 phantoms: mostly boundary
    # another draw lands elsewhere: the check can fail
    _, _, other, _ = Augmenter(cfg, "cpu", seed=5)(coarse(f), coarse(m), fo, mo)
    assert float((_centre_of_mass(coarse(other)) - _centre_of_mass(foa_c)).abs().max()) > 1.0


def test_augmenting_a_crop_about_the_volume_centre_equals_cropping_the_augmented_volume():
    """label_centre: labels kept as a box of the volume turn about the volume's centre."""
    f, m, fo, mo = _pair(b=2, size=24)
    box = (slice(3, 21), slice(5, 24), slice(2, 19))
    centre = tuple((n - 1) / 2.0 - b.start for n, b in zip(fo.shape[2:], box))
    cfg = _aug(flip=0.5, rotate=10.0, scale=0.05, shear=0.03)
    _, _, foa, moa = Augmenter(cfg, "cpu", seed=6)(f, m, fo, mo)
    _, _, fob, mob = Augmenter(cfg, "cpu", seed=6)(f, m, fo[(..., *box)], mo[(..., *box)], label_centre=centre)
    for whole, part in ((foa, fob), (moa, mob)):
        assert float(whole.abs().sum()) > 1.0
        assert torch.allclose(whole[(..., *box)], part, atol=1e-5)  # the phantom's labels lie inside the box
    _, _, wrong, _ = Augmenter(cfg, "cpu", seed=6)(f, m, fo[(..., *box)], mo[(..., *box)])  # about the box's centre
    assert not torch.allclose(foa[(..., *box)], wrong, atol=1e-3)


def test_flip_is_shared_by_the_pair_and_affine_is_per_image():
    f, _, fo, _ = _pair()
    only_flip = Augmenter(_aug(flip=0.5), "cpu", seed=1)
    fa, ma, _, _ = only_flip(f, f.clone())
    assert torch.equal(fa, ma)  # identical inputs, same flip -> identical outputs
    flipped = [not torch.allclose(fa[i], f[i]) for i in range(f.shape[0])]
    # flips are exact (voxel centres map to voxel centres)
    for i in range(f.shape[0]):
        cands = [f[i]] + [f[i].flip(d) for d in (1, 2, 3)] + [f[i].flip(a, b) for a, b in ((1, 2), (1, 3), (2, 3))] + [f[i].flip(1, 2, 3)]
        assert any(torch.allclose(fa[i], c, atol=1e-5) for c in cands)
    assert any(flipped)
    own = Augmenter(_aug(rotate=10.0), "cpu", seed=1)
    fa, ma, _, _ = own(f, f.clone())
    assert not torch.allclose(fa, ma, atol=1e-3)  # each image of the pair gets its own pose


def test_rotation_convention_matches_rot90_in_voxel_space():
    x = torch.rand(1, 1, 9, 9, 9)
    lin = torch.zeros(1, 3, 3)
    # output p = centre + R (q - centre) sampled from input: a 90 degree rotation in the (0, 1) plane
    lin[0, 0, 1], lin[0, 1, 0], lin[0, 2, 2] = -1.0, 1.0, 1.0
    out = Augmenter._resample(x, lin)
    cands = [torch.rot90(x, k, dims=(2, 3)) for k in (1, 3)]
    assert any(torch.allclose(out, c, atol=1e-5) for c in cands)


def test_intensity_augmentation_and_reproducibility():
    f, m, _, _ = _pair(b=4)
    aug = Augmenter(_aug(gamma=0.4, noise=0.05), "cpu", seed=3)
    fa, ma, _, _ = aug(f, m)
    assert not torch.allclose(fa, f)
    resid = (fa - f).flatten(1).std(1)
    assert float(resid.max()) < 0.3 and math.isfinite(float(fa.sum()))
    again = Augmenter(_aug(gamma=0.4, noise=0.05), "cpu", seed=3)
    assert torch.equal(again(f, m)[0], fa)  # seeded
    st = aug.state()
    x1 = aug(f, m)[0]
    aug.set_state(st)
    assert torch.equal(aug(f, m)[0], x1)  # state round trip (what a resume restores)


def test_bad_inputs_and_config():
    with pytest.raises(ValueError, match="got"):
        Augmenter(_aug(flip=0.5), "cpu")(torch.rand(1, 1, 4, 4, 4), torch.rand(1, 1, 4, 4, 5))
    from regtune.errors import ConfigError
    with pytest.raises(ConfigError, match="aug.rotate"):
        AugConfig(rotate=90.0)
