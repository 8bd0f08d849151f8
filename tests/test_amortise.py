"""Amortised loss weights: one network conditioned on the weights, used and searched at
any weight of its range (tiny synthetic data, 16^3 training grid)."""

from __future__ import annotations

import math

import pytest
import torch

from regtune import amortise
from regtune.checkpoint import load_checkpoint
from regtune.config import Config
from regtune.data import load_folder
from regtune.data.pairs import Split
from regtune.errors import ConfigError
from regtune.losses import diffusion
from regtune.metrics import jacobian_stats
from regtune.model.conditioning import FiLM, HyperNet, LambdaSampler, build_model, is_conditional
from regtune.model.transform import downsample_image
from regtune.train import train

from .helpers import NO_AUG

TINY = {"model.enc": [8, 16, 16], "model.dec": [16, 16, 16, 16, 8], "data.val_subjects": 2, "data.val_pairs": 2,
        "data.test_subjects": 2, "data.downsample": 2, "train.batch_size": 4, "loss.dice_weight": 0.0,
        "train.lr": 3e-3, "loss.ncc_window": 5, "model.int_steps": 0,
        **NO_AUG}  # one pair, few steps
RANGE = "loss.reg_weight=0.1:100:log"


def tiny(**kw) -> Config:
    return Config().with_values({**TINY, **kw})


@pytest.fixture(scope="module")
def vols(synth_dir):
    return load_folder(synth_dir, Config().data)


@pytest.fixture(scope="module")
def film_run(vols, tmp_path_factory):
    """A FiLM-conditioned network trained briefly over reg_weight in [0.1, 100] (with the Dice
    term and integration, so the phantoms' fields are learnt, not near zero, in 150 steps)."""
    out = tmp_path_factory.mktemp("film")
    cfg = tiny(**{"amortise.ranges": [RANGE], "train.epochs": 1, "train.steps_per_epoch": 150,
                  "loss.dice_weight": 1.0, "model.int_steps": 7})
    res = train(cfg, vols, out, progress=False, split=Split(train=(0, 1, 2, 3), val=(4, 5), test=(6, 7)))
    assert res.status == "completed"
    return out


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
    # the defaults: half the draws on the ends, 65 % of those on the high end
    u = LambdaSampler(Config().with_values({"amortise.ranges": ["loss.reg_weight=0.01:100:log"]}), seed=3).draw(20000)[0][:, 0]
    assert (u == 1).float().mean().item() == pytest.approx(0.325, abs=0.015)
    assert (u == 0).float().mean().item() == pytest.approx(0.175, abs=0.015)
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
    # uneven shares (the default's 65 % of end draws on the high end) over larger batches
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
    torch.save(blob, p)
    ck = load_checkpoint(p)
    assert ck.config.amortise.head_scaled is False and ck.model().conditioner.n_head == 0
    assert ck.config.train.ema == 0.0 and Config().train.ema == 0.999


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


# ---- the inference-time search ----------------------------------------------------------
def test_weight_search_end_to_end_with_optuna_and_mlflow(film_run, vols, tmp_path):
    from mlflow.tracking import MlflowClient

    from regtune.search import weight_outputs as wo
    from regtune.search import weight_search as ws

    ck = load_checkpoint(film_run / "best.pt")
    val = [(vols.index(f), vols.index(m)) for f, m in ck.extra["val_pairs"]]
    test = [(vols.index(f), vols.index(m)) for f, m in ck.extra["test_pairs"]]
    # the search's batched fast path scores exactly as the ordinary evaluation does
    scorer = ws.WeightScorer(ck.model(), ck.config, vols, batch=3)
    settings = [{"loss.reg_weight": v} for v in (0.1, 2.0, 100.0)]
    for fast, v in zip(scorer.many(settings, val), settings):
        slow = scorer(v, val)
        assert all(fast[k] == pytest.approx(slow[k], abs=1e-9) for k in ("dice", "sdlogj", "folding_pct"))
    st = ws.SearchSettings(n=12, pairs=1, per_round=4, refine=2, max_folding_pct=None, max_sdlogj=1e6)
    res = ws.search_weights(ck.model(), ck.config, vols, val, st, test_pairs=test)
    xs = [p.values["loss.reg_weight"] for p in res.points]
    assert len(xs) == 12 and min(xs) == pytest.approx(0.1) and max(xs) == pytest.approx(100.0)  # the grid spans the range
    assert all(0.1 - 1e-9 <= x <= 100 + 1e-9 for x in xs) and len(res.search_pairs) == 1
    assert len(res.refined) == 2 and all(p.pairs == len(val) for p in res.refined)
    assert res.chosen in res.refined and res.chosen.score == max(p.score for p in res.refined)
    assert math.isfinite(res.chosen.metrics["hd95"]) and res.test_pairs == len(test) and 0 <= res.test["dice"] <= 1
    # an impossible constraint: reported, the least-folding setting chosen
    strict = ws.search_weights(ck.model(), ck.config, vols, val, ws.SearchSettings(n=4, pairs=1, refine=1, max_sdlogj=0.0))
    assert not strict.any_feasible and not strict.chosen.feasible

    paths = wo.write_outputs(tmp_path / "ws", res, ck.model(), ck.config, vols, checkpoint="ck")
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    chosen = Config.load(paths["config"])
    assert chosen.amortise.ranges == () and chosen.loss.reg_weight == pytest.approx(res.chosen.values["loss.reg_weight"], rel=1e-6)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rid = wo.track(res, uri, checkpoint="ck", artifacts=paths)
    client = MlflowClient(uri)
    run = client.get_run(rid)
    assert run.data.tags["regtune.kind"] == "weight_search" and run.info.status == "FINISHED"
    assert float(run.data.params["chosen.loss.reg_weight"]) == pytest.approx(res.chosen.values["loss.reg_weight"], rel=1e-4)
    curve = client.get_metric_history(rid, "curve_lambda.loss.reg_weight")
    assert len(curve) == 12 and [m.value for m in sorted(curve, key=lambda m: m.step)] == sorted(xs)
    assert len(client.get_metric_history(rid, "curve_dice")) == 12 and "chosen_test_dice" in run.data.metrics
    assert {a.path for a in client.list_artifacts(rid)} >= {"curve.png", "overlays.png", "points.csv", "chosen.yaml"}


# ---- the command line -------------------------------------------------------------------
CLI_TINY = ["--set", "model.enc=[8,16,16]", "--set", "model.dec=[16,16,16,16,8]", "--set", "data.val_subjects=2",
            "--set", "data.test_subjects=2", "--set", "data.val_pairs=2", "--set", "data.test_pairs=2",
            "--set", "train.batch_size=2", "--set", "train.steps_per_epoch=3", "--set", "train.epochs=1",
            "--set", "data.downsample=2"]


@pytest.fixture(scope="module")
def cli_runs(synth_dir, tmp_path_factory):
    from regtune.cli import main

    root = tmp_path_factory.mktemp("cli")
    assert main(["train", "--data", str(synth_dir), "--out", str(root / "amortised"), "--quiet", *CLI_TINY,
                 "--amortise", RANGE]) == 0
    assert main(["train", "--data", str(synth_dir), "--out", str(root / "ordinary"), "--quiet", *CLI_TINY]) == 0
    return root


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("regtune "), err
    return err[0]


def test_cli_train_amortise_evaluate_and_register_at_a_chosen_weight(cli_runs, synth_dir, tmp_path, capsys):
    import json

    from regtune.cli import main

    ck = cli_runs / "amortised" / "best.pt"
    assert load_checkpoint(ck).extra["amortised"]["specs"] == [RANGE]
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(ck), "--data", str(synth_dir), "--out", str(tmp_path / "ev"), "--quiet",
                 "--set", "loss.reg_weight=3"]) == 0
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["loss_weights"] == {"loss.reg_weight": 3.0}
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("fixed,moving\nsynth_001.nii.gz,synth_002.nii.gz\n")
    assert main(["register", "--checkpoint", str(ck), "--pairs", str(pairs), "--images", str(synth_dir / "imagesTr"),
                 "--out", str(tmp_path / "fields"), "--quiet", "--set", "loss.reg_weight=100"]) == 0
    assert len(list((tmp_path / "fields").glob("*"))) >= 1
    capsys.readouterr()
    # outside the trained range: one line, exit 2
    assert main(["evaluate", "--checkpoint", str(ck), "--data", str(synth_dir), "--quiet", "--set", "loss.reg_weight=1000"]) == 2
    assert "outside the range the network was trained over [0.1, 100]" in _one_line_error(capsys)
    assert main(["register", "--checkpoint", str(ck), "--pairs", str(pairs), "--images", str(synth_dir / "imagesTr"),
                 "--out", str(tmp_path / "f2"), "--quiet", "--set", "loss.reg_weight=0.01"]) == 2
    assert "outside the range" in _one_line_error(capsys)
    # an ordinary checkpoint: the weight is baked in
    ordinary = cli_runs / "ordinary" / "best.pt"
    assert main(["evaluate", "--checkpoint", str(ordinary), "--data", str(synth_dir), "--quiet",
                 "--set", "loss.reg_weight=0.5"]) == 2
    assert "baked into its weights" in _one_line_error(capsys)
    assert main(["train", "--data", str(synth_dir), "--quiet", "--amortise", "train.lr=0.1:1"]) == 2
    assert "cannot be amortised" in _one_line_error(capsys)


def test_cli_search_weights(cli_runs, synth_dir, tmp_path, capsys):
    import json

    from regtune.cli import main

    ck = cli_runs / "amortised" / "best.pt"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["search-weights", "--checkpoint", str(ck), "--data", str(synth_dir), "--n", "6", "--pairs", "1",
                 "--refine", "1", "--out", str(tmp_path / "ws"), "--tracking-uri", uri, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "chosen: loss.reg_weight=" in out and "held out" in out and "next: regtune evaluate" in out
    assert {p.name for p in (tmp_path / "ws").iterdir()} >= {"curve.png", "overlays.png", "points.csv", "result.json", "chosen.yaml",
                                                          "chosen.pt"}
    # chosen.pt: the same network, registering at the chosen weight unless --set says otherwise
    chosen = json.loads((tmp_path / "ws" / "result.json").read_text())["chosen"]
    assert f"next: regtune evaluate --checkpoint {tmp_path / 'ws' / 'chosen.pt'}" in out
    at = load_checkpoint(tmp_path / "ws" / "chosen.pt")
    assert amortise.chosen_in(at.metrics) == chosen and at.extra["amortised"] == load_checkpoint(ck).extra["amortised"]
    assert all(torch.equal(v, load_checkpoint(ck).state_dict[k]) for k, v in at.state_dict.items())
    assert main(["evaluate", "--checkpoint", str(tmp_path / "ws" / "chosen.pt"), "--data", str(synth_dir),
                 "--out", str(tmp_path / "ev")]) == 0
    assert "(unset: the weight the checkpoint records as chosen)" in capsys.readouterr().err
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["loss_weights"] == chosen
    ordinary = cli_runs / "ordinary" / "best.pt"
    assert main(["search-weights", "--checkpoint", str(ordinary), "--data", str(synth_dir), "--no-mlflow"]) == 2
    assert "baked in" in _one_line_error(capsys)


def test_a_bad_amortise_flag_is_named_as_the_flag_not_as_a_set(tmp_path, capsys):
    from regtune.cli import main

    for flags, says in ((["--amortise", "loss.reg_weight=1:0.1"], "--amortise: 'loss.reg_weight=1:0.1': need 0 <= LOW < HIGH"),
                        (["--amortise", "loss.foo=0.1:1"], "--amortise: 'loss.foo' cannot be amortised"),
                        (["--amortise", "loss.reg_weight=0.1:1", "--amortise", "loss.reg_weight=0.2:1"],
                         "--amortise: loss.reg_weight is listed twice")):
        capsys.readouterr()
        assert main(["train", "--out", str(tmp_path / "never"), *flags]) == 2
        line = _one_line_error(capsys)
        assert says in line and "--set" not in line, line
    assert not (tmp_path / "never").exists()
    # the same range given as a config key keeps the config key's name
    assert main(["train", "--out", str(tmp_path / "never"), "--set", "amortise.ranges=[loss.reg_weight=1:0.1]"]) == 2
    assert "config key 'amortise.ranges'" in _one_line_error(capsys)


def test_save_at_weights_records_a_weight_inside_the_range_and_refuses_an_ordinary_network(cli_runs, tmp_path):
    from regtune.checkpoint import save_at_weights

    ck = load_checkpoint(cli_runs / "amortised" / "best.pt")  # RANGE: loss.reg_weight over [0.1, 100]
    at = load_checkpoint(save_at_weights(tmp_path / "at.pt", ck, {"loss.reg_weight": 2.0}))
    assert amortise.chosen_in(at.metrics) == {"loss.reg_weight": 2.0}
    assert at.model().conditioner.values()["loss.reg_weight"] == pytest.approx(2.0, rel=1e-5)
    with pytest.raises(ConfigError, match="outside the range"):
        save_at_weights(tmp_path / "no.pt", ck, {"loss.reg_weight": 1000.0})
    with pytest.raises(ConfigError, match="ordinary network"):
        save_at_weights(tmp_path / "no.pt", load_checkpoint(cli_runs / "ordinary" / "best.pt"), {"loss.reg_weight": 2.0})
    assert not (tmp_path / "no.pt").exists()
