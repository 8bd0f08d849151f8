"""The command line, end to end on small synthetic data, through real files."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates

from regtune.cli import main

TINY = ["--set", "model.enc=[8,16,16]", "--set", "model.dec=[16,16,16,16,8]", "--set", "data.val_subjects=3", "--set", "data.test_subjects=2",
        "--set", "data.val_pairs=3", "--set", "train.batch_size=2", "--set", "train.steps_per_epoch=4",
        "--set", "train.epochs=1", "--set", "train.lr=1e-3"]


@pytest.fixture(scope="module")
def trained(synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--data", str(synth_dir), "--out", str(out), "--quiet", *TINY]) == 0
    return out / "best.pt"


def test_train_writes_checkpoint_and_history(trained, capsys):
    run = trained.parent
    assert (run / "last.pt").is_file() and (run / "split.json").is_file()
    assert json.loads((run / "result.json").read_text())["status"] == "completed"


def test_resume_trains_a_run_on_and_refuses_recipe_changes(synth_dir, tmp_path, capsys):
    """regtune train --resume RUN: a finished run trained longer ends where an uninterrupted
    run of that length ends (weights bit for bit); other keys than its length are refused."""
    args = ["train", "--data", str(synth_dir), "--quiet", *TINY]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main([*args, "--out", str(full), "--set", "train.epochs=2"]) == 0
    assert main([*args, "--out", str(part)]) == 0
    assert "to train on: regtune train --resume" in capsys.readouterr().out
    assert main(["train", "--resume", str(part), "--quiet", "--set", "train.epochs=2"]) == 0
    a = torch.load(full / "last.pt", weights_only=True)
    b = torch.load(part / "last.pt", weights_only=True)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]) and b["epoch"] == 2
    assert len((part / "history.jsonl").read_text().splitlines()) == 2
    capsys.readouterr()
    assert main(["train", "--resume", str(part), "--set", "loss.reg_weight=2"]) == 2
    assert "--set loss.reg_weight: --resume continues the run's own recipe" in capsys.readouterr().err
    assert main(["train", "--resume", str(part)]) == 2
    assert "already has 2 of train.epochs=2 epochs; raise it" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "none")]) == 2
    assert "no last.pt to resume from" in capsys.readouterr().err


def test_ctrl_c_in_train_keeps_the_finished_epochs_and_says_how_to_resume(synth_dir, tmp_path, capsys, monkeypatch):
    import regtune.train as train_mod

    real = train_mod.train

    def interrupted(*a, on_epoch=None, **kw):
        def hook(e):
            on_epoch(e)
            if e.epoch == 1:
                raise KeyboardInterrupt
        return real(*a, on_epoch=hook, **kw)

    monkeypatch.setattr(train_mod, "train", interrupted)
    run = tmp_path / "run"
    assert main(["train", "--data", str(synth_dir), "--quiet", "--out", str(run), *TINY, "--set", "train.epochs=3"]) == 130
    err = capsys.readouterr().err
    assert f"continue with: regtune train --resume {run} --data {synth_dir}" in err
    monkeypatch.setattr(train_mod, "train", real)
    assert main(["train", "--resume", str(run), "--data", str(synth_dir), "--quiet"]) == 0
    assert [json.loads(line)["epoch"] for line in (run / "history.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_evaluate_prints_table_against_no_registration(trained, synth_dir, capsys, tmp_path):
    assert main(["evaluate", "--checkpoint", str(trained), "--data", str(synth_dir), "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "no registration" in out and "regtune" in out
    # by default the reserved test split is scored: 2 test subjects -> 2 ordered pairs, none seen in training
    assert "test pairs: held out" in out and "Dice30" in out and "IC err" in out
    rows = list(csv.DictReader((tmp_path / "pairs.csv").open()))
    split = json.loads((trained.parent / "split.json").read_text())
    assert len(rows) == 2 and {(r["fixed"], r["moving"]) for r in rows} <= {tuple(p) for p in split["test_pairs"]}
    assert {"dice", "hd95", "sdlogj", "sdlogj_l2r", "folding_pct", "noreg_dice", "ic_error", "self_disp", "self_dice"} <= set(rows[0])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert 0 <= summary["registered"]["dice"] <= 1 and summary["pairs_are"].startswith("the checkpoint's test pairs: held out")
    # a pair list with training subjects is labelled as not held out
    p = tmp_path / "train_pairs.csv"
    tr = split["train"]
    p.write_text(f"fixed,moving\n{tr[0]}.nii.gz,{tr[1]}.nii.gz\n")
    assert main(["evaluate", "--checkpoint", str(trained), "--data", str(synth_dir), "--pairs", str(p),
                 "--out", str(tmp_path / "e2"), "--quiet"]) == 0
    assert "NOT held out: 2 subject(s) were trained on" in capsys.readouterr().out
    # regtune compare reads evaluate's own files: the same scores give a zero difference, other pairs are refused
    assert main(["compare", str(tmp_path), str(tmp_path / "pairs.csv")]) == 0
    assert next(x for x in capsys.readouterr().out.splitlines() if x.startswith("dice ")).split()[4] in ("+0.0000", "-0.0000")
    assert main(["compare", str(tmp_path), str(tmp_path / "e2")]) == 2
    assert "scored different pairs" in capsys.readouterr().err


def test_register_writes_fields_the_organisers_scorer_loads(trained, synth_dir, tmp_path, capsys):
    """--naming l2r --format npz: disp_<fixed id>_<moving id>.npz, float16, X x Y x Z x 3 under
    key arr_0, read back the way the organisers' script does and applied with map_coordinates."""
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("fixed,moving\nsynth_001.nii.gz,synth_002.nii.gz\n")
    out = tmp_path / "l2r"
    assert main(["register", "--checkpoint", str(trained), "--pairs", str(pairs), "--images", str(synth_dir / "imagesTr"),
                 "--labels", str(synth_dir / "labelsTr"), "--out", str(out), "--fields-only", "--naming", "l2r",
                 "--format", "npz", "--quiet"]) == 0
    assert [q.name for q in out.iterdir()] == ["disp_0001_0002.npz"]
    arr = np.load(out / "disp_0001_0002.npz")["arr_0"]
    assert arr.dtype == np.float16 and arr.shape == (32, 32, 32, 3)
    ref = tmp_path / "ref"
    assert main(["register", "--checkpoint", str(trained), "--pairs", str(pairs), "--images", str(synth_dir / "imagesTr"),
                 "--out", str(ref), "--fields-only", "--quiet"]) == 0
    full = nib.load(str(ref / "disp_synth_001_synth_002.nii.gz")).get_fdata()
    assert np.abs(arr.astype(np.float64) - full).max() < 5e-3  # float16 rounding only


def independent_dice(fixed_lab, moving_lab, disp_xyz3, labels=(1, 2)):
    """Learn2Reg's own recipe: map_coordinates(order=0) at identity + u, Dice per label."""
    grid = np.stack(np.meshgrid(*(np.arange(s) for s in fixed_lab.shape), indexing="ij"))
    warped = map_coordinates(moving_lab, grid + np.moveaxis(disp_xyz3, -1, 0), order=0, mode="nearest")
    ds = []
    for lab in labels:
        f, w = fixed_lab == lab, warped == lab
        if f.sum():
            ds.append(2 * (f & w).sum() / (f.sum() + w.sum()))
    return float(np.mean(ds))


def test_register_fields_scored_independently_match_evaluate(trained, synth_dir, tmp_path, capsys):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("fixed,moving\nsynth_001.nii.gz,synth_002.nii.gz\nsynth_004.nii.gz,synth_003.nii.gz\n")
    out = tmp_path / "fields"
    assert main(["register", "--checkpoint", str(trained), "--pairs", str(pairs), "--images", str(synth_dir / "imagesTr"),
                 "--labels", str(synth_dir / "labelsTr"), "--out", str(out), "--quiet"]) == 0
    assert main(["evaluate", "--checkpoint", str(trained), "--pairs", str(pairs), "--data", str(synth_dir),
                 "--out", str(tmp_path / "ev"), "--quiet"]) == 0
    rows = list(csv.DictReader((tmp_path / "ev" / "pairs.csv").open()))
    for row in rows:
        disp = nib.load(str(out / f"disp_{row['fixed']}_{row['moving']}.nii.gz")).get_fdata()
        assert disp.shape == (32, 32, 32, 3)
        fl = np.asarray(nib.load(str(synth_dir / "labelsTr" / f"{row['fixed']}.nii.gz")).dataobj)
        ml = np.asarray(nib.load(str(synth_dir / "labelsTr" / f"{row['moving']}.nii.gz")).dataobj)
        ml = np.where(np.isin(ml, (0, 1, 2)), ml, 0)
        assert independent_dice(fl, ml, disp) == pytest.approx(float(row["dice"]), abs=0.005)
    assert (out / "warped_synth_001_synth_002.nii.gz").is_file()


def test_evaluate_and_register_refine_each_field_on_its_pair(trained, synth_dir, tmp_path, capsys):
    """--refine N: instance optimisation, recorded in summary.json; register writes the same refined field
    that evaluate scores."""
    common = ["--checkpoint", str(trained), "--quiet"]
    assert main(["evaluate", *common, "--data", str(synth_dir), "--out", str(tmp_path / "plain")]) == 0
    assert main(["evaluate", *common, "--data", str(synth_dir), "--out", str(tmp_path / "io"), "--refine", "8",
                 "--refine-lr", "0.1", "--refine-reg-weight", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "8 refinement steps per pair (Adam, lr 0.1, diffusion weight 0.5; images only)" in out
    summary = json.loads((tmp_path / "io" / "summary.json").read_text())
    assert summary["refinement"] == {"steps": 8, "lr": 0.1, "similarity": "ncc", "regulariser": "diffusion",
                                     "reg_weight": 0.5, "jacobian_weight": 0.0}
    assert json.loads((tmp_path / "plain" / "summary.json").read_text())["refinement"] == {"steps": 0}
    io_rows = list(csv.DictReader((tmp_path / "io" / "pairs.csv").open()))
    plain_rows = list(csv.DictReader((tmp_path / "plain" / "pairs.csv").open()))
    assert [r["sdlogj"] for r in io_rows] != [r["sdlogj"] for r in plain_rows]
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("fixed,moving\n" + "".join(f"{r['fixed']}.nii.gz,{r['moving']}.nii.gz\n" for r in io_rows))
    fields = tmp_path / "fields"
    assert main(["register", *common, "--pairs", str(pairs), "--images", str(synth_dir / "imagesTr"), "--labels",
                 str(synth_dir / "labelsTr"), "--out", str(fields), "--fields-only", "--refine", "8", "--refine-lr", "0.1",
                 "--refine-reg-weight", "0.5"]) == 0
    for row in io_rows:
        disp = nib.load(str(fields / f"disp_{row['fixed']}_{row['moving']}.nii.gz")).get_fdata()
        fl = np.asarray(nib.load(str(synth_dir / "labelsTr" / f"{row['fixed']}.nii.gz")).dataobj)
        ml = np.asarray(nib.load(str(synth_dir / "labelsTr" / f"{row['moving']}.nii.gz")).dataobj)
        ml = np.where(np.isin(ml, (0, 1, 2)), ml, 0)
        assert independent_dice(fl, ml, disp) == pytest.approx(float(row["dice"]), abs=0.005)
    assert main(["evaluate", *common, "--data", str(synth_dir), "--out", str(tmp_path / "bad"), "--refine", "-1"]) == 2
    assert "--refine: the number of refinement steps per pair, an int >= 0, got -1" in capsys.readouterr().err


def test_register_single_pair(trained, synth_dir, tmp_path):
    assert main(["register", "--checkpoint", str(trained), "--fixed", str(synth_dir / "imagesTr" / "synth_001.nii.gz"),
                 "--moving", str(synth_dir / "imagesTr" / "synth_005.nii.gz"), "--out", str(tmp_path), "--fields-only",
                 "--quiet"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["disp_synth_001_synth_005.nii.gz"]


@pytest.mark.parametrize("argv, fragment", [
    (["train", "--data", "/no/such/dir"], "data folder not found"),
    (["train", "--set", "train.lr=fast"], "train.lr"),
    (["train", "--set", "nonsense"], "expected key=value"),
    (["evaluate", "--checkpoint", "/no/such.pt", "--data", "."], "checkpoint not found"),
    (["evaluate", "--checkpoint", "/no/such.pt", "--refine-lr", "0.1"], "give --refine N too"),
    (["register", "--checkpoint", "/no/such.pt", "--out", "x", "--refine-reg-weight", "2"], "give --refine N too"),
    (["evaluate", "--top", "2", "--refine", "5"], "--refine would be ignored here"),
])
def test_bad_input_is_one_clear_line(argv, fragment, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_reader_that_leaves_early_ends_the_command_quietly():
    """``regtune config | head -1``: the pipe closes before regtune writes; no BrokenPipeError traceback."""
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "regtune", "config"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before the first write
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and err == "", err


def test_corrupt_checkpoint(tmp_path, capsys):
    p = tmp_path / "x.pt"
    p.write_bytes(b"not a checkpoint")
    assert main(["evaluate", "--checkpoint", str(p), "--data", "."]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


def test_help_and_synth(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--subjects", "3", "--size", "16"]) == 0
    assert len(list((tmp_path / "s" / "imagesTr").iterdir())) == 3


def test_max_minutes_alone_is_a_time_budget_not_capped_by_the_default_epochs(tmp_path):
    from regtune.cli import build_parser
    from regtune.cli_config import config_from_args

    def cfg(*argv):
        return config_from_args(build_parser().parse_args(["train", *argv])).train

    assert (cfg("--max-minutes", "5").epochs, cfg("--max-minutes", "5").max_minutes) == (0, 5.0)
    assert cfg("--max-minutes", "5", "--set", "train.epochs=7").epochs == 7  # given: whichever comes first
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 9\n")
    assert cfg("--config", str(f), "--max-minutes", "5").epochs == 9
    assert cfg().epochs == 20  # no budget: the default epochs
