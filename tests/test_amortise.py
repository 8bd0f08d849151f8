"""Amortised loss weights: the ranges, the weight changing the output, checkpoints keeping the
conditioning, choosing a weight at inference (tiny synthetic data, 16^3 training grid)."""

from __future__ import annotations

import math

import pytest
import torch

from regtune import amortise
from regtune.checkpoint import load_checkpoint
from regtune.config import Config
from regtune.data.pairs import Split
from regtune.errors import ConfigError
from regtune.losses import diffusion
from regtune.metrics import jacobian_stats
from regtune.model.conditioning import HyperNet
from regtune.model.transform import downsample_image
from regtune.train import train

from .helpers import RANGE
from .helpers import tiny_amortised as tiny


# ---- the spec -------------------------------------------------------------------------
def test_ranges_parse_and_bad_specs_name_the_key():
    r = amortise.WeightRange.parse("loss.reg_weight=0.01:10:log")
    assert (r.key, r.low, r.high, r.log, r.term) == ("loss.reg_weight", 0.01, 10.0, True, "reg")
    assert r.reference == pytest.approx(math.sqrt(0.1)) and r.from_unit(r.to_unit(0.5)) == pytest.approx(0.5)
    assert r.grid(3) == pytest.approx([0.01, math.sqrt(0.1), 10.0]) and r.grid(2)[-1] <= 10.0
    lin = amortise.WeightRange.parse("loss.dice_weight=0:2")
    assert lin.reference == 1.0 and not lin.log
    cfg = Config.load(None, ["amortise.ranges=[loss.reg_weight=0.01:10:log, loss.sim_weight=0.5:1]"])
    assert [x.key for x in amortise.ranges_of(cfg)] == ["loss.reg_weight", "loss.sim_weight"]
    assert Config.from_dict(cfg.to_dict()) == cfg
    for bad, frag in (("train.lr=0.1:1", "cannot be amortised"), ("loss.reg_weight=1:0.1", "LOW < HIGH"),
                      ("loss.reg_weight=0:1:log", "LOW > 0"), ("loss.reg_weight=a:b", "must be numbers"),
                      ("loss.reg_weight", "KEY=LOW:HIGH"), ("loss.reg_weight=0.1:1:lg", "KEY=LOW:HIGH")):
        with pytest.raises(ConfigError, match="amortise.ranges") as e:
            Config().with_values({"amortise.ranges": [bad]})
        assert frag in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="listed twice"):
        Config().with_values({"amortise.ranges": ["loss.reg_weight=0.1:1", "loss.reg_weight=1:2"]})
    with pytest.raises(ConfigError, match="amortise.method"):
        Config().with_values({"amortise.method": "concat"})


# ---- the weight changes the output ----------------------------------------------------
def test_higher_reg_weight_gives_a_smoother_field(film_run, vols):
    net = load_checkpoint(film_run / "best.pt").model()
    f, m = vols.images[4:5], vols.images[5:6]
    fs, ms = downsample_image(f, 2), downsample_image(m, 2)
    energy, sdlogj = {}, {}
    with torch.no_grad():
        for lam in (0.1, 100.0):
            disp = net(ms, fs, cond=net.conditioner.unit({"loss.reg_weight": lam}))
            energy[lam] = float(diffusion(disp))
            net.conditioner.set_values({"loss.reg_weight": lam})  # the un-conditioned call path gives the same field
            assert torch.allclose(net(ms, fs), disp)
            sdlogj[lam] = jacobian_stats(disp[0].numpy())[0]
    # measured over train.seed 0-3: ratios 0.02-0.10 (with a ReLU conditioner MLP: 0.015, 0.38,
    # 0.47 and 1.0 -- its trunk died, all units off at every weight)
    assert energy[100.0] < 0.3 * energy[0.1], energy
    assert sdlogj[100.0] < 0.5 * sdlogj[0.1], sdlogj
    with torch.no_grad():  # the conditioner is alive: its hidden units differ along the range
        h = net.conditioner.trunk(torch.tensor([[0.0], [1.0]]))
    assert float((h[0] - h[1]).abs().max()) > 1e-3


def test_checkpoint_round_trip_keeps_the_conditioning(film_run, vols):
    blob = torch.load(film_run / "best.pt", weights_only=True)  # plain data only
    meta = blob["amortised"]
    assert meta["keys"] == ["loss.reg_weight"] and meta["ranges"] == [[0.1, 100.0]] and meta["log"] == [True]
    assert meta["method"] == "film" and meta["reference"][0] == pytest.approx(math.sqrt(10))
    ck = load_checkpoint(film_run / "best.pt")
    assert ck.extra["amortised"] == meta and ck.config.amortise.ranges == (RANGE,)
    a, b = ck.model(), load_checkpoint(film_run / "last.pt").model()
    assert a.conditioner.values()["loss.reg_weight"] == pytest.approx(math.sqrt(10))  # loads at its reference
    m, f = downsample_image(vols.images[5:6], 2), downsample_image(vols.images[4:5], 2)
    u = a.conditioner.unit({"loss.reg_weight": 3.0})
    with torch.no_grad():
        assert torch.equal(a(m, f, cond=u), b(m, f, cond=u))


def test_hypernetwork_trains_round_trips_and_resumes_exactly(vols, tmp_path):
    cfg = tiny(**{"amortise.ranges": [RANGE], "amortise.method": "hyper", "train.epochs": 2, "train.steps_per_epoch": 3})
    split = Split(train=(0, 1, 2, 3), val=(4, 5))
    straight = train(cfg, vols, tmp_path / "a", progress=False, split=split)
    assert straight.status == "completed"
    from regtune.train import StopTraining

    def stop(e):
        if e.epoch == 1:
            raise StopTraining("interrupted")

    train(cfg, vols, tmp_path / "b", progress=False, split=split, on_epoch=stop)
    train(cfg, vols, tmp_path / "b", progress=False, split=split, resume=tmp_path / "b" / "last.pt")
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert isinstance(a.model().conditioner, HyperNet)
    assert all(torch.equal(v, b.state_dict[k]) for k, v in a.state_dict.items())  # the per-sample draws resumed too


# ---- choosing a weight at inference ----------------------------------------------------
def test_choose_refuses_out_of_range_other_keys_and_baked_in_weights():
    cond = tiny(**{"amortise.ranges": [RANGE]})
    assert amortise.choose(cond, {}) == {"loss.reg_weight": pytest.approx(math.sqrt(10))}
    assert amortise.choose(cond, {"loss.reg_weight": 100}) == {"loss.reg_weight": 100.0}
    for values, frag in (({"loss.reg_weight": 1000}, "outside the range the network was trained over [0.1, 100]"),
                         ({"loss.reg_weight": "x"}, "must be a number"),
                         ({"loss.sim_weight": 1}, "amortised over loss.reg_weight only")):
        with pytest.raises(ConfigError) as e:
            amortise.choose(cond, values)
        assert frag in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="ordinary .* baked into its weights .*loss.reg_weight=1.0.*--amortise"):
        amortise.choose(tiny(), {"loss.reg_weight": 0.3})
