"""The core on the real Learn2Reg hippocampus data (skipped when ../shared is absent)."""

import csv

import nibabel as nib
import numpy as np
import pytest
import torch

from regtune.cli import main
from regtune.config import DataConfig
from regtune.data import load_folder

from .test_cli import independent_dice


@pytest.fixture(scope="module")
def real_vols(real_data):
    return load_folder(real_data, DataConfig())


def test_real_data_loads_with_its_quirks(real_vols, real_data):
    v = real_vols
    assert len(v) == 200 and v.shape == (64, 64, 64) and v.spacing == (1.0, 1.0, 1.0)
    # intensity scales span orders of magnitude on disk; after per-image normalisation all live in [0, 1]
    assert float(v.images.min()) == 0.0 and float(v.images.max()) == 1.0
    per_image_max = v.images.flatten(1).max(1).values
    assert torch.all(per_image_max == 1.0)
    # stray negative label voxels are reported, not silently kept
    assert sum("stray label values" in n for n in v.notes) >= 1
    assert set(torch.unique(v.labels).tolist()) == {0, 1, 2}
    dtypes = {nib.load(str(p)).get_data_dtype().name for p in sorted((real_data / "imagesTr").iterdir())[:40]}
    assert len(dtypes) >= 2


def test_short_real_training_register_and_independent_scoring(real_data, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", str(real_data), "--out", str(out), "--quiet",
            "--set", "train.epochs=1", "--set", "train.steps_per_epoch=15", "--set", "data.val_pairs=4",
            "--set", "model.enc=[8,16,16,16]", "--set", "model.dec=[16,16,16,16,16,8,8]"]
    assert main(args) == 0
    ck = out / "best.pt"
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("fixed,moving\nhippocampus_001.nii.gz,hippocampus_003.nii.gz\nhippocampus_004.nii.gz,hippocampus_006.nii.gz\n")
    fields = tmp_path / "fields"
    assert main(["register", "--checkpoint", str(ck), "--pairs", str(pairs), "--images", str(real_data / "imagesTr"),
                 "--labels", str(real_data / "labelsTr"), "--out", str(fields), "--fields-only", "--quiet"]) == 0
    assert main(["evaluate", "--checkpoint", str(ck), "--pairs", str(pairs), "--data", str(real_data),
                 "--out", str(tmp_path / "ev"), "--quiet"]) == 0
    for row in csv.DictReader((tmp_path / "ev" / "pairs.csv").open()):
        disp = nib.load(str(fields / f"disp_{row['fixed']}_{row['moving']}.nii.gz")).get_fdata()
        assert disp.shape == (64, 64, 64, 3)
        fl = np.asarray(nib.load(str(real_data / "labelsTr" / f"{row['fixed']}.nii.gz")).dataobj)
        ml = np.asarray(nib.load(str(real_data / "labelsTr" / f"{row['moving']}.nii.gz")).dataobj)
        fl, ml = np.where(np.isin(fl, (0, 1, 2)), fl, 0), np.where(np.isin(ml, (0, 1, 2)), ml, 0)
        assert independent_dice(fl, ml, disp) == pytest.approx(float(row["dice"]), abs=0.005)
