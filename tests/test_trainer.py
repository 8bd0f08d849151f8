"""The one training step: symmetric and inverse-consistent losses, schedules, exact resume."""

import math

import pytest
import torch

from regtune.config import Config
from regtune.errors import ConfigError
from regtune.data.pairs import Split
from regtune.losses import combine, inverse_consistency, loss_terms
from regtune.model import warp
from regtune.schedule import lr_factor, progress
from regtune.train import StopTraining, train
from regtune.trainer import Trainer

TINY = {"model.enc": [8, 16, 16], "model.dec": [16, 16, 16, 16, 8], "data.val_subjects": 2, "data.val_pairs": 2,
        "data.test_subjects": 2, "data.downsample": 2, "train.batch_size": 2, "model.int_steps": 4}


def tiny(**kw) -> Config:
    return Config().with_values({**TINY, **kw})


SPLIT = Split(train=(0, 1, 2, 3), val=(4, 5), test=(6, 7))


def _nudge(model):
    """Weights off the identity start, so both directions differ measurably."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        model.flow.weight.add_(torch.randn(model.flow.weight.shape, generator=g) * 0.05)


def test_symmetric_loss_is_the_mean_of_both_directions_with_the_exact_inverse(vols):
    cfg = tiny(**{"train.symmetric": True, "loss.dice_weight": 1.0})
    tr = Trainer(cfg, vols, SPLIT)
    _nudge(tr.model)
    f, m = torch.tensor([0, 2]), torch.tensor([1, 3])
    with torch.no_grad():
        got, fwd = tr.loss(f, m)
        # by hand: moving->fixed with exp(v), fixed->moving with exp(-v), one U-Net pass
        p = tr.prep
        fixed, moving, fo, mo = p.images[f], p.images[m], p.onehot[f], p.onehot[m]
        mask = p.labelled[f] & p.labelled[m]
        u, ub = tr.model.fields(moving, fixed)
        a = loss_terms(cfg.loss, fixed, warp(moving, u), u, fo, warp(mo, u), mask)
        b = loss_terms(cfg.loss, moving, warp(fixed, ub), ub, mo, warp(fo, ub), mask)
        want = combine(cfg.loss, {k: 0.5 * (a[k] + b[k]) for k in a}, mask)
        one_way = combine(cfg.loss, a, mask)
    assert float(got.total) == pytest.approx(float(want.total), rel=1e-5)
    assert abs(float(got.total) - float(one_way.total)) > 1e-6  # the backward direction counts
    assert torch.allclose(fwd, u)
    # the backward field is the inverse: forward then backward lands where it started
    from regtune.model import compose
    assert float(compose(u, ub).abs().max()) < 0.05 * max(float(u.abs().max()), 1e-3) + 1e-3


def test_full_resolution_dice_warps_the_full_labels_with_the_upsampled_field(vols):
    """loss.dice_full_res: the Dice term is the soft Dice of the full-resolution label maps
    warped by the training-grid field upsampled as evaluation does (computed here on the
    whole grid: the trainer's box around the labels loses nothing); the other terms stay
    on the training grid."""
    from regtune.losses import soft_dice_loss
    from regtune.model import upsample_field
    cfg = tiny(**{"loss.dice_full_res": True, "loss.dice_weight": 1.0})
    base = Trainer(tiny(**{"loss.dice_weight": 1.0}), vols, SPLIT)
    tr = Trainer(cfg, vols, SPLIT)
    tr.model.load_state_dict(base.model.state_dict())
    _nudge(tr.model)
    _nudge(base.model)
    box = tr.prep.box
    assert tr.prep.onehot.dtype == torch.uint8 and tuple(tr.prep.onehot.shape[2:]) == tuple(b.stop - b.start for b in box)
    inside = torch.zeros(vols.labels.shape[1:], dtype=torch.bool)
    inside[box] = True
    assert not bool((vols.labels[list(SPLIT.train)] > 0)[:, ~inside].any())  # every training label is in the box
    f, m = torch.tensor([0, 2]), torch.tensor([1, 3])
    with torch.no_grad():
        got, fwd = tr.loss(f, m)
        ref, _ = base.loss(f, m)
        fo, mo = vols.onehot(f), vols.onehot(m)
        up = upsample_field(fwd, 2, tuple(fo.shape[2:]))
        mask = tr.prep.labelled[f] & tr.prep.labelled[m]
        want = soft_dice_loss(fo, warp(mo, up), mask, "none").sum() / mask.float().sum()
    assert float(got.terms["dice"]) == pytest.approx(float(want), rel=1e-5)
    assert float(got.terms["sim"]) == pytest.approx(float(ref.terms["sim"]), rel=1e-6)
    assert abs(float(got.terms["dice"]) - float(ref.terms["dice"])) > 1e-4  # a different grid, a different value
    # and it trains: a step with augmentation runs and moves the weights
    tr = Trainer(cfg.with_values({"aug.rotate": 5.0, "aug.scale": 0.05}), vols, SPLIT)
    before = [p.detach().clone() for p in tr.model.parameters()]
    out = tr.step()
    assert math.isfinite(float(out.terms.total.detach()))
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))


@pytest.mark.parametrize("int_steps", [0, 4])
def test_inverse_consistency_penalty_uses_the_swapped_pass(vols, int_steps):
    # the penalty alone (no similarity, no smoothness): its gradient must pull the network's
    # fields for (m, f) and (f, m) towards inverses of each other -- in the diffeomorphic mode
    # too, where exp(-v) would be the inverse of the forward field by construction
    cfg = tiny(**{"model.int_steps": int_steps, "loss.ic_weight": 1.0, "loss.dice_weight": 0.0,
                  "loss.sim_weight": 0.0, "loss.reg_weight": 0.0})
    tr = Trainer(cfg, vols, SPLIT)
    _nudge(tr.model)
    with torch.no_grad():
        t, _ = tr.loss(torch.tensor([0]), torch.tensor([1]))
        p = tr.prep
        by_hand = inverse_consistency(tr.model(p.images[[1]], p.images[[0]]), tr.model(p.images[[0]], p.images[[1]]))
    before = float(t.terms["ic"])
    assert before == pytest.approx(float(by_hand), rel=1e-4)
    assert before > 0 and float(t.total) == pytest.approx(before)
    opt = torch.optim.Adam(tr.model.parameters(), lr=1e-3)
    for _ in range(10):
        t, _ = tr.loss(torch.tensor([0]), torch.tensor([1]))
        opt.zero_grad()
        t.total.backward()
        opt.step()
    with torch.no_grad():
        after = float(tr.loss(torch.tensor([0]), torch.tensor([1]))[0].terms["ic"])
    assert after < 0.5 * before


def test_schedules_fit_steps_and_wall_clock():
    t = Config().with_values({"train.schedule": "cosine", "train.warmup": 0.1, "train.epochs": 10,
                              "train.steps_per_epoch": 10}).train
    assert lr_factor(t, 0.05) == pytest.approx(0.5)
    assert lr_factor(t, 0.1) == pytest.approx(1.0)
    assert lr_factor(t, 1.0) == pytest.approx(0.0, abs=1e-9)
    assert progress(t, 50, 0.0) == 0.5
    tb = Config().with_values({"train.max_minutes": 1.0, "train.epochs": 1000}).train
    assert progress(tb, 10, 30.0) == pytest.approx(0.5)  # the budget, not the epochs, sets the pace
    one = Config().with_values({"train.schedule": "onecycle", "train.warmup": 0.3}).train
    assert lr_factor(one, 0.0) == pytest.approx(1 / 25) and lr_factor(one, 0.3) == pytest.approx(1.0)
    assert lr_factor(one, 1.0) == pytest.approx(1e-4)
    assert lr_factor(Config().train, 0.7) == 1.0
    wsd = Config().with_values({"train.schedule": "wsd", "train.warmup": 0.0, "train.decay": 0.2}).train
    assert [lr_factor(wsd, p) for p in (0.0, 0.5, 0.8)] == [1.0, 1.0, 1.0]  # the constant rate until the decay
    assert lr_factor(wsd, 0.9) == pytest.approx(0.5) and lr_factor(wsd, 1.0) == 0.0
    warm = Config().with_values({"train.schedule": "wsd", "train.warmup": 0.1, "train.decay": 0.5}).train
    assert lr_factor(warm, 0.05) == pytest.approx(0.5) and lr_factor(warm, 0.75) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="train.decay"):
        Config().with_values({"train.schedule": "wsd", "train.warmup": 0.5, "train.decay": 0.6})


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_annealing_schedules_reach_zero_at_the_last_step(vols, tmp_path, schedule):
    cfg = tiny(**{"train.schedule": schedule, "train.epochs": 2, "train.steps_per_epoch": 3, "loss.dice_weight": 0.0})
    res = train(cfg, vols, tmp_path, progress=False, split=SPLIT)
    lrs = [h["lr"] for h in res.history]
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12) and res.steps == 6


@pytest.mark.parametrize("extra", [{}, {"aug.flip": 0.5, "aug.rotate": 10.0, "aug.noise": 0.05, "train.symmetric": True},
                                   {"train.ema": 0.0}])
def test_resume_is_bit_identical_to_an_uninterrupted_run(vols, tmp_path, extra):
    cfg = tiny(**{"train.epochs": 3, "train.steps_per_epoch": 3, "loss.dice_weight": 1.0, "train.schedule": "cosine", **extra})
    full = train(cfg, vols, tmp_path / "full", progress=False, split=SPLIT)

    def stop_after_first(e):
        if e.epoch == 1:
            raise StopTraining("simulated interruption")

    part = tmp_path / "part"
    assert train(cfg, vols, part, progress=False, split=SPLIT, on_epoch=stop_after_first).status == "stopped"
    resumed = train(cfg, vols, part, progress=False, split=SPLIT, resume=part / "last.pt")
    assert resumed.steps == full.steps == 9
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(part / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a), "weights after resume differ from the uninterrupted run"
    for h1, h2 in zip(full.history, resumed.history):
        assert h1["train_loss"] == h2["train_loss"] and h1["lr"] == h2["lr"]
        assert h1["val_dice"] == h2["val_dice"]


def test_weight_average_is_what_validation_and_checkpoints_see_and_leaves_training_alone(vols, tmp_path):
    """train.ema: the trained trajectory is the plain run's step for step; best.pt/last.pt hold
    the average, which is the hand-computed EMA of the trained weights after each step."""
    base = {"train.epochs": 2, "train.steps_per_epoch": 3, "loss.dice_weight": 1.0, "train.ema": 0.0}
    plain = train(tiny(**base), vols, tmp_path / "plain", progress=False, split=SPLIT)
    avg = train(tiny(**{**base, "train.ema": 0.5}), vols, tmp_path / "ema", progress=False, split=SPLIT)
    assert [h["train_loss"] for h in plain.history] == [h["train_loss"] for h in avg.history]
    assert [h["val_loss"] for h in plain.history] != [h["val_loss"] for h in avg.history]
    # the trained weights of the averaged run are the plain run's; its checkpoint's are their average
    p_last = torch.load(tmp_path / "plain" / "last.pt", weights_only=True)
    e_last = torch.load(tmp_path / "ema" / "last.pt", weights_only=True)
    trained = e_last["trainer"]["ema"]["trained"]
    assert all(torch.equal(t, w) for t, w in zip(trained, p_last["state_dict"].values()))
    assert all(torch.equal(a, w) for a, w in zip(e_last["trainer"]["ema"]["averaged"], e_last["state_dict"].values()))
    assert not all(torch.equal(a, w) for a, w in zip(trained, e_last["state_dict"].values()))
    # by hand: replay the plain run's steps and average with decay min(0.5, (1 + n) / (10 + n)) = 0.5 from step 0
    tr = Trainer(tiny(**base), vols, SPLIT)
    torch.manual_seed(0)
    tr2 = Trainer(tiny(**{**base, "train.ema": 0.5}), vols, SPLIT)
    tr2.model.load_state_dict(tr.model.state_dict())
    ema = [p.detach().clone() for p in tr.model.parameters()]
    tr2.ema = [e.clone() for e in ema]
    for _ in range(4):
        tr.step()
        tr2.step()
        d = min(0.5, (1.0 + tr.steps) / (10.0 + tr.steps))
        ema = [d * e + (1 - d) * p.detach() for e, p in zip(ema, tr.model.parameters())]
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(ema, tr2.ema))
    with tr2.averaged():
        assert all(torch.allclose(a, p, atol=1e-7) for a, p in zip(ema, tr2.model.parameters()))
    assert all(torch.equal(a, p) for a, p in zip(tr.model.parameters(), tr2.model.parameters()))


def test_no_epoch_limit_trains_until_the_budget(vols, tmp_path):
    """train.epochs 0 (what --max-minutes alone sets): epochs go on past any count until the
    time is spent (here a hook stops it at epoch 4 of a 10-minute budget)."""
    cfg = tiny(**{"train.max_minutes": 10.0, "train.epochs": 0, "train.steps_per_epoch": 1, "loss.dice_weight": 0.0})

    def stop_at_4(e):
        if e.epoch == 4:
            raise StopTraining("enough")

    res = train(cfg, vols, tmp_path, progress=False, split=SPLIT, on_epoch=stop_at_4)
    assert (res.status, res.epochs, res.steps) == ("stopped", 4, 4)
    assert progress(cfg.train, 10**6, 300.0) == pytest.approx(0.5)  # the time budget alone sets the pace
    with pytest.raises(ConfigError, match="train.epochs.*needs a wall-clock budget"):
        tiny(**{"train.epochs": 0})


def test_wall_clock_budget_ends_training_and_is_recorded(vols, tmp_path):
    cfg = tiny(**{"train.max_minutes": 0.0005, "train.epochs": 50, "train.steps_per_epoch": 50, "loss.dice_weight": 0.0})
    res = train(cfg, vols, tmp_path, progress=False, split=SPLIT)
    assert res.status == "completed" and "budget" in res.reason and res.epochs == 1 and res.steps < 50
    assert math.isfinite(res.best_score)


def test_amp_auto_follows_the_device_and_the_cpu():
    """train.amp accepts true, false and auto; auto is bf16 on CUDA and on CPUs with native bf16."""
    from regtune.trainer import amp_enabled, native_bf16_cpu
    assert Config.load(None, ["train.amp=auto"]).train.amp == "auto"
    assert Config.load(None, ["train.amp=true"]).train.amp is True
    assert Config.load(None, ["train.amp=false"]).train.amp is False
    cpu = torch.device("cpu")
    assert amp_enabled("auto", cpu) is native_bf16_cpu()
    assert amp_enabled("auto", torch.device("cuda")) is True  # resolution only: nothing runs on the device
    assert amp_enabled(True, cpu) is True and amp_enabled(False, torch.device("cuda")) is False
    assert amp_enabled(True, torch.device("meta")) is False  # no bf16 autocast there
    with pytest.raises(ConfigError, match="train.amp"):
        Config().with_values({"train.amp": "fast"})
