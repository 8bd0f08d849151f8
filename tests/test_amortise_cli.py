"""Amortised weights on the command line: train --amortise, evaluate/register at a chosen weight,
search-weights, and one-line errors for bad flags and baked-in weights."""

from __future__ import annotations

import pytest
import torch

from regtune import amortise
from regtune.checkpoint import load_checkpoint
from regtune.errors import ConfigError

from .helpers import RANGE


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
    assert {p.name for p in (tmp_path / "ws").iterdir()} >= {"curve.png", "tradeoff.png", "overlays.png", "points.csv", "result.json",
                                                          "chosen.yaml", "chosen.pt"}
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


def test_cli_search_weights_matched_to_a_reference_network(cli_runs, synth_dir, tmp_path, capsys):
    import json

    from mlflow.tracking import MlflowClient

    from regtune.cli import main

    ck, ordinary = cli_runs / "amortised" / "best.pt", cli_runs / "ordinary" / "best.pt"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    capsys.readouterr()
    assert main(["search-weights", "--checkpoint", str(ck), "--data", str(synth_dir), "--n", "6", "--pairs", "1",
                 "--refine", "2", "--out", str(tmp_path / "ws"), "--tracking-uri", uri, "--match", str(ordinary),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "ws" / "result.json").read_text())
    ref = res["reference"]
    # the caps are the reference's own validation SDlogJ (both definitions) and folding, and a feasible choice keeps to them
    caps = {"sdlogj": "max_sdlogj", "sdlogj_l2r": "max_sdlogj_l2r", "folding_pct": "max_folding_pct"}
    assert all(res["settings"][cap] == ref["val"][k] for k, cap in caps.items())
    assert res["chosen_feasible"] and all(res["chosen_val"][k] <= ref["val"][k] for k in caps)
    # the reference's held-out scores are what `regtune evaluate` gives it on the same pairs
    assert main(["evaluate", "--checkpoint", str(ordinary), "--data", str(synth_dir), "--out", str(tmp_path / "ev"), "--quiet"]) == 0
    ev = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert ev["pairs"] == res["test_pairs"] == ref["test_dice_diff"]["n"]
    assert ref["test"]["dice"] == pytest.approx(ev["registered"]["dice"], abs=1e-6)
    assert ref["test"]["sdlogj"] == pytest.approx(ev["registered"]["sdlogj"], rel=1e-4)
    assert ref["test_dice_diff"]["diff"] == pytest.approx(res["test"]["dice"] - ref["test"]["dice"], abs=1e-9)
    assert "--match reference" in out and "test Dice, chosen - reference:" in out
    run = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("weight-search").experiment_id])[0]
    assert run.data.params["match"] == str(ordinary)
    assert run.data.metrics["ref_val_sdlogj"] == pytest.approx(ref["val"]["sdlogj"])
    assert run.data.metrics["chosen_minus_ref_test_dice"] == pytest.approx(ref["test_dice_diff"]["diff"])
    # an explicit folding flag still rules; --no-folding-limit drops the folding cap; --match-roughness picks the definition
    assert main(["search-weights", "--checkpoint", str(ck), "--data", str(synth_dir), "--n", "4", "--pairs", "1",
                 "--refine", "1", "--out", str(tmp_path / "ws2"), "--no-mlflow", "--no-test", "--match", str(ordinary),
                 "--no-folding-limit", "--match-roughness", "logdet", "--quiet"]) == 0
    res2 = json.loads((tmp_path / "ws2" / "result.json").read_text())
    assert res2["settings"]["max_folding_pct"] is None and res2["settings"]["max_sdlogj"] == ref["val"]["sdlogj"]
    assert res2["settings"]["max_sdlogj_l2r"] is None
    assert res2["reference"]["test"] == {} and res2["reference"]["test_dice_diff"] is None


def test_search_weights_match_refuses_another_split_and_a_second_cap(cli_runs, synth_dir, tmp_path, capsys):
    from regtune.cli import main

    ck, ordinary = cli_runs / "amortised" / "best.pt", cli_runs / "ordinary" / "best.pt"
    blob = torch.load(ordinary, weights_only=True)
    blob["val_pairs"] = blob["val_pairs"][::-1] + [["synth_001.nii.gz", "synth_002.nii.gz"]]
    torch.save(blob, tmp_path / "other.pt")
    blob = torch.load(ordinary, weights_only=True)
    blob["config"]["data"]["mask_padding"] = True
    torch.save(blob, tmp_path / "masked.pt")
    base = ["search-weights", "--checkpoint", str(ck), "--data", str(synth_dir), "--n", "4", "--no-mlflow",
            "--out", str(tmp_path / "never")]
    for flags, says in ((["--match", str(tmp_path / "other.pt")], "its val pairs are not the searched checkpoint's"),
                        (["--match", str(tmp_path / "masked.pt")], "data.mask_padding is True there and False in the searched"),
                        (["--match", str(ordinary), "--max-sdlogj", "1"], "give --match or --max-sdlogj/--max-sdlogj-l2r, not both"),
                        (["--match", str(ordinary), "--max-sdlogj-l2r", "1"], "give --match or --max-sdlogj/--max-sdlogj-l2r"),
                        (["--match-roughness", "l2r"], "--match-roughness chooses what --match caps; give --match PT too"),
                        (["--no-folding-limit", "--max-folding-pct", "0.1"], "contradict each other")):
        capsys.readouterr()
        assert main(base + flags) == 2
        assert says in _one_line_error(capsys)
    assert not (tmp_path / "never").exists()
