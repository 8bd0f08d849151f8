"""The command line, end to end on small synthetic data, through real files."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
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
])
def test_bad_input_is_one_clear_line(argv, fragment, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


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
    from regtune.cli import _config, build_parser

    def cfg(*argv):
        return _config(build_parser().parse_args(["train", *argv])).train

    assert (cfg("--max-minutes", "5").epochs, cfg("--max-minutes", "5").max_minutes) == (0, 5.0)
    assert cfg("--max-minutes", "5", "--set", "train.epochs=7").epochs == 7  # given: whichever comes first
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 9\n")
    assert cfg("--config", str(f), "--max-minutes", "5").epochs == 9
    assert cfg().epochs == 20  # no budget: the default epochs
