"""regtune doctor: passes on good data, fails on deliberately broken inputs."""

import torch
import torch.nn.functional as F

from regtune.cli import main
from regtune.config import Config
from regtune.data import load_folder
from regtune.doctor import FAIL, OK, check_transformer, run_doctor

SMALL = {"model.enc": [8, 16, 16], "model.dec": [16, 16, 16, 16, 8], "data.downsample": 1, "loss.ncc_window": 5}


def swapped_axes_warp(img, disp, mode="bilinear", padding_mode="border"):
    """The classic bug: the sampling grid's channels are not reversed for grid_sample."""
    shape = disp.shape[2:]
    axes = [torch.linspace(-1, 1, n) for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).unsqueeze(0)
    scale = torch.tensor([2.0 / (n - 1) for n in shape])
    g = grid + disp.permute(0, 2, 3, 4, 1) * scale
    return F.grid_sample(img, g, mode=mode, padding_mode=padding_mode, align_corners=True)


def test_doctor_passes_on_good_data(synth_dir, capsys):
    args = ["doctor", "--data", str(synth_dir), "--quiet", "--steps", "30"]
    for k, v in SMALL.items():
        args += ["--set", f"{k}={v}".replace(" ", "")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "verdict: ok" in out and "FAIL" not in out


def test_swapped_axes_transformer_fails(synth_dir):
    vols = load_folder(synth_dir, Config().data)
    c = check_transformer(vols, swapped_axes_warp)
    assert c.verdict == FAIL and "axis" in c.finding
    assert check_transformer(vols).verdict == OK


def test_unnormalised_intensities_fail(synth_dir, capsys):
    assert main(["doctor", "--data", str(synth_dir), "--quiet", "--steps", "5", "--set", "data.normalise=false",
                 "--set", "model.enc=[8,16,16]", "--set", "model.dec=[16,16,16,16,8]"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] intensities" in out and "normalise every image" in out


def test_seed_settings_fail_the_overfit_check(synth_dir):
    cfg = Config().with_values({**SMALL, "train.lr": 0.05, "train.grad_clip": 0.0, "model.int_steps": 0,
                                "loss.reg_weight": 0.01, "loss.similarity": "mse"})
    vols = load_folder(synth_dir, cfg.data)
    checks = {c.name: c for c in run_doctor(cfg, vols, steps=30)}
    assert checks["overfit one pair"].verdict == FAIL, checks["overfit one pair"]
    assert checks["transformer"].verdict == OK and checks["intensities"].verdict == OK
