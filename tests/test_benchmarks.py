"""Smoke test of benchmarks/: the quick mode runs end to end on tiny synthetic volumes
and produces a well-formed table and JSON with finite figures. Not a timed test: no
speed is asserted here. Peers that are not installed show up as "not installed" rows.

The GPU recipe (the product's Trainer: device-resident data, on-device sampling, bf16
autocast, channels_last_3d) is checked for correctness on the CPU.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import PEERS, Row, peer_available  # noqa: E402
from benchmarks.run import compute_ratios, format_table, main  # noqa: E402
from benchmarks.sections import registry  # noqa: E402
from benchmarks.train_step import RegtuneStep  # noqa: E402


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    assert main(["--quick", "--only", "train,eval,ttq", "--device", "cpu", "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_quick_mode_writes_finite_rows_for_every_section(quick_result):
    rows = quick_result["rows"]
    assert {r["section"] for r in rows} == {"train", "eval", "ttq"}
    for r in rows:
        assert r["status"] in ("ok", "not installed", "skipped", "error")
        assert r["status"] != "error", r
        if r["status"] == "ok":
            assert r["value"] is not None and math.isfinite(r["value"]), r
            assert r["ratio"] is None or math.isfinite(r["ratio"])
    ok_regtune = [r for r in rows if r["impl"] == "regtune" and r["status"] == "ok"]
    assert {r["section"] for r in ok_regtune} == {"train", "eval", "ttq"}
    assert quick_result["machine"]["torch"] == torch.__version__
    assert "| group | impl |" in quick_result["table"]


def test_peers_are_measured_or_reported_missing(quick_result):
    rows = quick_result["rows"]
    for peer in ("voxelmorph", "monai"):
        statuses = {r["status"] for r in rows if r["impl"] == peer and r["section"] == "train"}
        assert statuses, peer
        if peer_available(peer):
            assert "ok" in statuses
        else:
            assert statuses == {"not installed"}


def test_eval_regtune_agrees_with_surface_distance(quick_result):
    if not peer_available("surface-distance"):
        pytest.skip("surface-distance not installed")
    agree = {r["metric"]: r["value"] for r in quick_result["rows"]
             if r["section"] == "eval" and r["group"].startswith("agreement regtune vs surface-distance")}
    assert agree["max |d dice|"] <= 1e-6 and agree["max |d hd95|"] <= 0.05


def test_ratios_are_against_the_best_peer_of_the_group():
    rows = [Row("s", "g", "regtune", "t", 2.0), Row("s", "g", "a", "t", 4.0), Row("s", "g", "b", "t", 5.0),
            Row("s", "g", "c", "t", None, status="not installed"),
            Row("s", "h", "regtune", "dice", 0.8, better="higher"), Row("s", "h", "a", "dice", 0.4, better="higher")]
    compute_ratios(rows)
    assert [r.ratio for r in rows[:4]] == [0.5, 1.0, 1.25, None]
    assert rows[4].ratio == pytest.approx(0.5) and rows[5].ratio == 1.0
    table = format_table(rows, {"s": "title"})
    assert "not installed" in table and "0.50x" in table


def test_sections_registry_and_unknown_section():
    names = set(registry())
    assert {"train", "eval", "ttq"} <= names
    assert main(["--only", "nope", "--quick"]) == 2
    assert set(PEERS) == {"voxelmorph", "monai", "surface-distance"}


def test_peers_are_not_runtime_imports_of_regtune():
    import subprocess
    code = ("import sys, regtune.train, regtune.evaluate, regtune.metrics, regtune.cli; "
            "bad = [m for m in ('monai', 'voxelmorph', 'neurite') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_the_benchmark_times_the_products_own_step(synth_dir):
    from regtune.config import DataConfig
    from regtune.data import load_folder
    from regtune.trainer import Trainer
    tr = RegtuneStep(load_folder(synth_dir, DataConfig()), dec=(8, 8, 8, 8), enc=(4, 8, 8, 8), batch=2, int_steps=2)
    assert type(tr.trainer) is Trainer and tr.trainer.cfg.loss.similarity == "mse" and tr.trainer.cfg.data.downsample == 1
    # the peers' steps neither augment nor average weights: neither may regtune's, whatever the product's defaults
    assert tr.trainer.augment is None and tr.trainer.ema is None and not tr.trainer.cfg.aug.any
    tr.step()
    assert tr.trainer.steps == 1


@pytest.mark.parametrize("amp,compile_", [(False, False), (True, False)])
def test_gpu_recipe_is_correct_on_cpu(amp, compile_, synth_dir):
    """The product's step with the benchmark recipe (resident data, on-device sampling,
    channels_last_3d, optionally bf16 autocast): the loss is finite every step and
    accumulates on the device, pairs are of distinct subjects, and training moves the
    weights. Repeated over seeds: an intermittent non-finite loss fails it."""
    from regtune.config import DataConfig
    from regtune.data import load_folder
    vols = load_folder(synth_dir, DataConfig())
    for seed in range(3):
        torch.manual_seed(seed)
        tr = RegtuneStep(vols, dec=(8, 8, 8, 8), enc=(4, 8, 8, 8), batch=2, channels_last=True, amp=amp, compile=compile_,
                         int_steps=3, seed=seed)
        t = tr.trainer
        assert t.prep.images.is_contiguous(memory_format=torch.channels_last_3d) and t.use_amp == amp
        for _ in range(20):
            f, m = t.sampler(2)
            assert bool((f != m).all()) and f.device == t.prep.images.device
        before = [p.detach().clone() for p in tr.model.parameters()]
        for _ in range(4):
            loss = tr.step()
            assert loss.device == t.prep.images.device and math.isfinite(float(loss.detach()))
        assert math.isfinite(float(tr.loss_sum)) and t.steps == 4
        assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))


def test_refine_sweep_scores_validation_pairs_only(synth_dir, tmp_path, capsys):
    """benchmarks.refine_sweep: one row per setting, scored on the checkpoint's validation pairs."""
    from benchmarks.refine_sweep import main as sweep, parse_settings
    from regtune.cli import main as cli

    assert parse_settings("0;5,0.1;10,0.05,3") == [(0, 0.05, None), (5, 0.1, None), (10, 0.05, 3.0)]
    run = tmp_path / "run"
    assert cli(["train", "--data", str(synth_dir), "--out", str(run), "--quiet", "--set", "model.enc=[8,16,16]",
                "--set", "model.dec=[16,16,16,16,8]", "--set", "data.val_subjects=3", "--set", "data.test_subjects=2",
                "--set", "data.val_pairs=3", "--set", "train.steps_per_epoch=4", "--set", "train.epochs=1"]) == 0
    out = tmp_path / "sweep.json"
    assert sweep(["--checkpoint", str(run / "best.pt"), "--data", str(synth_dir), "--out", str(out),
                  "--settings", "0;4,0.1,2"]) == 0
    rows = json.loads(out.read_text())
    assert [(r["steps"], r["lr"]) for r in rows] == [(0, 0.05), (4, 0.1)] and rows[1]["reg_weight"] == 2.0
    assert rows[0]["dice"] != rows[1]["dice"] or rows[0]["sdlogj"] != rows[1]["sdlogj"]
    assert all(0 <= r["dice"] <= 1 and -1 <= r["ncc64"] <= 1 for r in rows)
    split = json.loads((run / "split.json").read_text())
    assert all(r["pairs"] == len(split["val_pairs"]) for r in rows) and len(split["val_pairs"]) != len(split["test_pairs"])
