"""The conditioner of an amortised network: per-sample weight draws, FiLM modulation and its
velocity head, and old checkpoints loading as the network they were."""

from __future__ import annotations

import pytest
import torch

from regtune.checkpoint import load_checkpoint
from regtune.config import Config
from regtune.errors import ConfigError
from regtune.model.conditioning import FiLM, LambdaSampler, build_model, is_conditional

from .helpers import RANGE
from .helpers import tiny_amortised as tiny


def test_sampler_draws_each_sample_its_own_weight_log_uniform_with_the_ends_oversampled():
    cfg = Config().with_values({"amortise.ranges": ["loss.reg_weight=0.01:100:log", "loss.dice_weight=0:2"],
                                "amortise.end_prob": 0.2, "amortise.end_high": 0.5})
    s = LambdaSampler(cfg, seed=3)
    u, w = s.draw(20000)
    reg, dice = w["reg"], w["dice"]
    assert u.shape == (20000, 2) and set(w) == {"reg", "dice"}
    assert float(reg.min()) >= 0.01 - 1e-6 and float(reg.max()) <= 100 * (1 + 1e-5)
    at_ends = (u == 0) | (u == 1)
    assert at_ends[:, 0].float().mean().item() == pytest.approx(0.2, abs=0.015)
    assert (u[:, 0] == 0).float().mean().item() == pytest.approx(0.1, abs=0.01)
    inner = reg[~at_ends[:, 0]]
    assert float(inner.median()) == pytest.approx(1.0, rel=0.1)  # log-uniform: the median is the geometric middle
    assert float((inner < 0.1).float().mean()) == pytest.approx(0.25, abs=0.02)
    assert float(dice[~at_ends[:, 1]].mean()) == pytest.approx(1.0, abs=0.03)  # linear range: uniform
    assert not torch.equal(s.draw(4)[0], s.draw(4)[0])  # per sample, per step
    # end_high: the share of the end draws on the high end
    hi = LambdaSampler(cfg.with_values({"amortise.end_prob": 0.5, "amortise.end_high": 0.8}), seed=3)
    u = hi.draw(20000)[0][:, 0]
    assert (u == 1).float().mean().item() == pytest.approx(0.4, abs=0.015)
    assert (u == 0).float().mean().item() == pytest.approx(0.1, abs=0.01)
    # the defaults: half the draws on the high end, none exactly on the low end, the rest spread over the range
    u = LambdaSampler(Config().with_values({"amortise.ranges": ["loss.reg_weight=0.01:100:log"]}), seed=3).draw(20000)[0][:, 0]
    assert (u == 1).float().mean().item() == pytest.approx(0.5, abs=0.015)
    assert not bool((u == 0).any())
    assert float((u < 0.25).float().mean()) == pytest.approx(0.125, abs=0.01)  # the low quarter still drawn
    # high_first: before that share of the run, half the draws on the high end and none on the low
    cur = LambdaSampler(cfg.with_values({"amortise.high_first": 0.4}), seed=3)
    early, late = cur.draw(20000, progress=0.39)[0][:, 0], cur.draw(20000, progress=0.4)[0][:, 0]
    assert (early == 1).float().mean().item() == pytest.approx(0.5, abs=0.015) and not bool((early == 0).any())
    assert (late == 1).float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert (late == 0).float().mean().item() == pytest.approx(0.1, abs=0.01)
    with pytest.raises(ConfigError, match="amortise.high_first"):
        cfg.with_values({"amortise.high_first": 1.0})


def test_stratified_draws_keep_each_samples_distribution_and_cover_the_range_every_batch():
    vals = {"amortise.ranges": ["loss.reg_weight=0.01:100:log", "loss.dice_weight=0:2"],
            "amortise.end_prob": 0.5, "amortise.end_high": 0.5, "amortise.stratify": True}
    s = LambdaSampler(Config().with_values(vals), seed=3)
    batches = torch.stack([s.draw(4)[0] for _ in range(5000)])  # (5000, 4, 2)
    # one draw on each end and one in each half of the inner range, every batch and every range
    for col in range(2):
        u = batches[..., col]
        assert bool(((u == 0).sum(1) == 1).all()) and bool(((u == 1).sum(1) == 1).all())
        inner = u[(u > 0) & (u < 1)].view(5000, 2)
        assert bool(((inner < 0.5).sum(1) == 1).all())
    # each position of the batch (the order is random) has the unstratified shares
    first = batches[:, 0, 0]
    assert (first == 0).float().mean().item() == pytest.approx(0.25, abs=0.02)
    assert (first == 1).float().mean().item() == pytest.approx(0.25, abs=0.02)
    inner = first[(first > 0) & (first < 1)]
    assert float(inner.mean()) == pytest.approx(0.5, abs=0.02) and float((inner < 0.25).float().mean()) == pytest.approx(0.25, abs=0.03)
    # uneven shares (65 % of the end draws on the high end, the default until 2026-12-07) over larger batches
    t = LambdaSampler(Config().with_values({**vals, "amortise.end_high": 0.65}), seed=4)
    u = torch.cat([t.draw(8)[0][:, 0] for _ in range(3000)])
    assert (u == 1).float().mean().item() == pytest.approx(0.325, abs=0.01)
    assert (u == 0).float().mean().item() == pytest.approx(0.175, abs=0.01)
    w = t.draw(8)[1]["reg"]
    assert float(w.min()) >= 0.01 - 1e-6 and float(w.max()) <= 100 * (1 + 1e-5)
    # off (the default): the draws are the unstratified ones, unchanged
    plain = Config().with_values({**vals, "amortise.stratify": False})
    assert torch.equal(LambdaSampler(plain, seed=5).draw(4)[0], LambdaSampler(plain, seed=5).draw(4)[0])
    assert not Config().amortise.stratify


def test_normalised_weights_are_a_convex_combination_with_the_drawn_ratios():
    vals = {"amortise.ranges": ["loss.reg_weight=0.01:100:log"], "loss.sim_weight": 1.0, "loss.dice_weight": 0.5}
    plain = LambdaSampler(Config().with_values(vals), seed=5)
    norm = LambdaSampler(Config().with_values({**vals, "amortise.normalise": True}), seed=5)
    (u0, w0), (u1, w1) = plain.draw(64), norm.draw(64)
    assert torch.equal(u0, u1)  # the same draws, only rescaled
    total = sum(w1.values())
    assert torch.allclose(total, torch.ones(64))
    # every sample keeps its ratios (its minimiser): reg/sim is the drawn weight, dice/sim the config's
    assert torch.allclose(w1["reg"] / w1["sim"], w0["reg"], rtol=1e-5)
    assert torch.allclose(w1["dice"] / w1["sim"], torch.full((64,), 0.5))
    assert torch.allclose(w1["sim"], 1.0 / (1.5 + w0["reg"]))


def test_ordinary_network_has_no_conditioner_and_the_same_weights(vols):
    torch.manual_seed(0)
    plain = build_model(tiny())
    torch.manual_seed(0)
    cond = build_model(tiny(**{"amortise.ranges": [RANGE]}))
    assert not is_conditional(plain) and isinstance(cond.conditioner, FiLM)
    sd = cond.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in plain.state_dict().items())  # same U-Net init
    # the conditioner starts as the identity modulation: the conditional network starts as the plain one
    m, f = torch.rand(2, 1, 16, 16, 16), torch.rand(2, 1, 16, 16, 16)
    assert torch.allclose(plain(m, f), cond(m, f, cond=torch.rand(2, 1)), atol=1e-7)


def test_film_head_scales_the_velocity_per_sample_and_starts_as_the_plain_network():
    torch.manual_seed(0)
    plain = build_model(tiny())
    torch.manual_seed(0)
    net = build_model(tiny(**{"amortise.ranges": [RANGE], "amortise.film_head": True}))
    m, f = torch.rand(2, 1, 16, 16, 16), torch.rand(2, 1, 16, 16, 16)
    u = torch.tensor([[0.0], [1.0]])
    assert torch.allclose(plain(m, f), net(m, f, cond=u), atol=1e-7)  # zero head: the plain network
    with torch.no_grad():  # head scale outputs (the last 3) set to 0 at u = 0 and 0.5 at u = 1
        z = net.conditioner.trunk(u)
        d = z[1] - z[0]
        w = 0.5 * d / d.dot(d)
        net.conditioner.head.weight[-3:] = w
        net.conditioner.head.bias[-3:] = -w.dot(z[0])
    v_plain, v = plain.velocity(m, f), net.velocity(m, f, cond=u)
    assert torch.allclose(v[0], v_plain[0], atol=1e-6)
    assert torch.allclose(v[1], 1.5 * v_plain[1], rtol=1e-4, atol=1e-7)
    with pytest.raises(ConfigError, match="amortise.film_head"):
        tiny(**{"amortise.ranges": [RANGE], "amortise.method": "hyper", "amortise.film_head": True})


def test_film_head_is_on_by_default_for_film_and_off_for_a_hypernetwork():
    def head(**kw):
        c = build_model(tiny(**{"amortise.ranges": [RANGE], **kw})).conditioner
        return c.n_head if isinstance(c, FiLM) else None

    assert tiny().amortise.film_head is None  # null: decided by the method
    assert head() == 3 and head(**{"amortise.film_head": "false"}) == 0 and head(**{"amortise.film_head": "null"}) == 3
    assert head(**{"amortise.method": "hyper"}) is None  # no refusal: the default asks for no head there
    with pytest.raises(ConfigError, match="amortise.film_head.*true, false or null"):
        tiny(**{"amortise.film_head": "sometimes"})


def test_a_checkpoint_from_before_film_head_loads_as_the_network_it_was(tmp_path, vols):
    from regtune.checkpoint import save_checkpoint

    cfg = tiny(**{"amortise.ranges": [RANGE], "amortise.film_head": False})
    net = build_model(cfg)
    p = save_checkpoint(tmp_path / "old.pt", cfg, net, epoch=1)
    blob = torch.load(p, weights_only=True)
    del blob["config"]["amortise"]["film_head"]  # the key did not exist when it was written
    del blob["config"]["train"]["ema"]  # nor did the weight average (default 0 then, 0.999 now)
    del blob["config"]["amortise"]["end_high"]  # nor the split of the end draws (half on each end then)
    torch.save(blob, p)
    ck = load_checkpoint(p)
    assert ck.config.amortise.head_scaled is False and ck.model().conditioner.n_head == 0
    assert ck.config.train.ema == 0.0 and Config().train.ema == 0.999
    assert ck.config.amortise.end_high == 0.5 and Config().amortise.end_high == 1.0
