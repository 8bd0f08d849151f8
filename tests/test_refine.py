"""Instance optimisation (regtune.refine): each pair's field refined on its own images."""

import dataclasses

import pytest
import torch

from regtune.config import Config, ModelConfig
from regtune.errors import ConfigError
from regtune.evaluate import evaluate_pairs, summarise
from regtune.losses import total_loss
from regtune.metrics import jacobian_stats
from regtune.model import RegNet, downsample_image, predict_field, velocity_fields, warp
from regtune.refine import Refinement, refine_fields, refine_velocity


def _net() -> RegNet:
    """An untrained diffeomorphic network, nudged off the identity: a field of about a voxel."""
    torch.manual_seed(0)
    net = RegNet(ModelConfig(enc=(8, 8), dec=(8, 8, 8), int_steps=5))
    with torch.no_grad():
        net.flow.weight.normal_(0, 0.05)
    return net.eval()


def _images(vols, pairs):
    f = vols.images[torch.tensor([p[0] for p in pairs])]
    m = vols.images[torch.tensor([p[1] for p in pairs])]
    return f, m


def test_zero_steps_is_the_networks_field(vols):
    net = _net()
    f, m = _images(vols, [(0, 1), (2, 3)])
    r = Refinement(steps=0).bind(Config().loss)
    ours = refine_fields(net, f, m, 2, r)[0]
    assert torch.equal(ours, predict_field(net, f, m, 2).float())


def test_refinement_lowers_the_pairs_own_image_loss_and_leaves_the_network_alone(vols):
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    f, m = _images(vols, [(0, 1), (2, 3), (4, 5)])
    r = Refinement(steps=30, lr=0.05).bind(Config().loss)
    assert r.loss.dice_weight == 0 and r.loss.ic_weight == 0  # no labels at registration time
    fd, md = downsample_image(f, 2), downsample_image(m, 2)

    def loss_of(v):  # the refined objective, per pair, on the network's grid
        d = velocity_fields(v, net.cfg.int_steps, net.cfg.int_downsize, backward=False)[0]
        return torch.stack([total_loss(r.loss, fd[i:i + 1], warp(md[i:i + 1], d[i:i + 1]), d[i:i + 1]).total
                            for i in range(len(v))])

    refined = refine_fields(net, f, m, 2, r)[0]
    with torch.no_grad():
        l0 = loss_of(net.velocity(md, fd))
        l1 = loss_of(refine_velocity(net, net.velocity(md, fd), fd, md, r))
    assert bool((l1 < l0 - 1e-3).all()), (l0, l1)  # every pair's own loss falls
    assert not torch.allclose(refined, predict_field(net, f, m, 2).float())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_each_pair_is_refined_on_its_own(vols):
    """A pair's refined field does not depend on the other pairs of its batch."""
    net = _net()
    r = Refinement(steps=10, lr=0.05).bind(Config().loss)
    f, m = _images(vols, [(0, 1), (2, 3)])
    both = refine_fields(net, f, m, 2, r)[0]
    alone = refine_fields(net, f[:1], m[:1], 2, r)[0]
    assert torch.allclose(both[:1], alone, atol=1e-4)


def test_a_stronger_regulariser_refines_to_a_smoother_field(vols):
    net = _net()
    f, m = _images(vols, [(0, 1), (2, 3)])
    rough = refine_fields(net, f, m, 2, Refinement(steps=40, lr=0.1, reg_weight=0.01).bind(Config().loss))[0]
    smooth = refine_fields(net, f, m, 2, Refinement(steps=40, lr=0.1, reg_weight=100.0).bind(Config().loss))[0]
    s_rough = [jacobian_stats(d.numpy())[0] for d in rough]
    s_smooth = [jacobian_stats(d.numpy())[0] for d in smooth]
    assert all(a < b for a, b in zip(s_smooth, s_rough)), (s_smooth, s_rough)


def test_evaluate_pairs_scores_the_refined_field(vols):
    net = _net()
    pairs = [(0, 1), (2, 3)]
    r = Refinement(steps=10, lr=0.05).bind(Config().loss)
    plain = summarise(evaluate_pairs(net, vols, pairs, 2, with_hd95=False))
    refined_rows = evaluate_pairs(net, vols, pairs, 2, with_hd95=False, refine=r, with_consistency=True)
    seen = []
    evaluate_pairs(net, vols, pairs, 2, with_hd95=False, refine=r, on_field=lambda p, d, w, lab: seen.append(d))
    f, m = _images(vols, pairs)
    direct = refine_fields(net, f, m, 2, r)[0]
    assert torch.allclose(torch.from_numpy(seen[0]), direct[0], atol=1e-5)
    assert summarise(refined_rows)["sdlogj"] != plain["sdlogj"]
    assert all("ic_error" in row for row in refined_rows)


def test_refinement_settings_are_checked_and_take_the_amortised_weight():
    loss = Config().loss
    for bad in (dict(steps=-1), dict(steps=1.5), dict(steps=True), dict(lr=0.0), dict(reg_weight=-1.0)):
        with pytest.raises(ConfigError):
            Refinement(**bad)
    r = Refinement(steps=5).bind(loss, {"loss.reg_weight": 0.3})
    assert r.loss.reg_weight == 0.3 and r.loss.similarity == loss.similarity
    assert Refinement(steps=5, reg_weight=2.0).bind(loss, {"loss.reg_weight": 0.3}).loss.reg_weight == 2.0
    assert dataclasses.replace(loss, dice_weight=0.0, ic_weight=0.0) == Refinement(steps=5).bind(loss).loss
    with pytest.raises(ValueError, match="no loss"):
        refine_fields(_net(), torch.zeros(1, 1, 16, 16, 16), torch.zeros(1, 1, 16, 16, 16), 2, Refinement(steps=1))
    with pytest.raises(ValueError, match=r"got \(1, 16, 16, 16\)"):
        refine_fields(_net(), torch.zeros(1, 16, 16, 16), torch.zeros(1, 16, 16, 16), 2, Refinement(steps=0))


def test_refinement_alone_registers_a_phantom_pair_of_known_deformation():
    """From a network that predicts (almost) the identity, refinement is classical registration: on a phantom
    pair moving(x) = fixed(x + v(x)) it must recover most of the label overlap the known v destroyed."""
    import numpy as np

    from regtune.data.synth import make_pair
    from regtune.metrics import dice_per_label

    f_img, f_lab, m_img, m_lab, v = make_pair(32, amplitude=3.0, seed=3)
    torch.manual_seed(0)
    net = RegNet(ModelConfig(enc=(8, 8), dec=(8, 8, 8), int_steps=5)).eval()  # flow head ~N(0, 1e-5): the identity
    fixed, moving = torch.from_numpy(f_img)[None, None], torch.from_numpy(m_img)[None, None]
    r = Refinement(steps=150, lr=0.1, reg_weight=0.1).bind(Config().loss)
    disp = refine_fields(net, fixed, moving, 1, r)[0]
    warped = warp(torch.from_numpy(m_lab.astype(np.float32))[None, None], disp, mode="nearest")[0, 0].numpy()

    def dice(a):
        return float(np.mean(list(dice_per_label(f_lab, a.astype(f_lab.dtype), (1, 2)).values())))

    before, after = dice(m_lab), dice(warped)
    assert before < 0.8 and after > before + 0.1, (before, after)
    assert float(np.abs(v).max()) > 2.5  # the deformation was a real one
