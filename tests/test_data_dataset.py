import gzip
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from regtune.config import DataConfig
from regtune.data import load_folder, normalise_intensity, sanitise_labels
from regtune.data.dataset import padding_region
from regtune.errors import DataError


def copy_dataset(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_loads_quirky_synthetic_folder(synth_dir):
    vols = load_folder(synth_dir, DataConfig())
    assert len(vols) == 8 and vols.shape == (32, 32, 32)
    assert vols.images.dtype == torch.float32
    assert float(vols.images.min()) >= 0.0 and float(vols.images.max()) <= 1.0
    # dtype mix on disk (uint8 and float32) and scales spanning orders of magnitude
    dtypes = {nib.load(str(p)).get_data_dtype().name for p in sorted((synth_dir / "imagesTr").iterdir())}
    assert dtypes == {"uint8", "float32"}
    # the planted stray label is reported and mapped to background
    assert any("stray label values (7 x1" in n for n in vols.notes)
    assert set(torch.unique(vols.labels).tolist()) == {0, 1, 2}


def test_normalisation_is_per_image():
    a = np.random.default_rng(0).random((8, 8, 8)) * 5e5
    b = a / 1e4
    na, nb = normalise_intensity(a, 1, 99), normalise_intensity(b, 1, 99)
    assert np.allclose(na, nb, atol=1e-5) and na.min() == 0.0 and na.max() == 1.0
    with pytest.raises(DataError, match="constant"):
        normalise_intensity(np.ones((4, 4, 4)), 1, 99)


def test_sanitise_labels():
    lab = np.zeros((4, 4, 4), np.int32)
    lab[1, 1, 1] = 1
    lab[2, 2, 2] = -2
    out, note = sanitise_labels(lab, (1, 2), "x.nii.gz")
    assert out[2, 2, 2] == 0 and out.dtype == np.uint8 and "-2 x1" in note
    with pytest.raises(DataError, match="empty"):
        sanitise_labels(np.zeros((4, 4, 4), np.int32), (1, 2), "y.nii.gz")


def test_padding_region_and_mask(synth_dir):
    img = nib.load(str(synth_dir / "imagesTr" / "synth_001.nii.gz")).get_fdata()
    assert padding_region(img) == ((4, 28),) * 3
    vols = load_folder(synth_dir, DataConfig(mask_padding=True))
    assert float(vols.images[0, 0, :4].abs().max()) == 0.0 and float(vols.images[0, 0, 4:28, 4:28, 4:28].max()) > 0


def _save(path, arr, affine=None):
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), str(path))


@pytest.mark.parametrize("breakage, fragment", [
    ("missing_folder", "data folder not found"),
    ("no_labels_dir", "labelsTr: folder missing"),
    ("image_without_label", "no label map"),
    ("label_without_image", "label map without an image"),
    ("shape_mismatch", "does not match image shape"),
    ("affine_mismatch", "label affine does not match"),
    ("not_3d", "expected a 3D volume"),
    ("corrupt", "cannot read as NIfTI"),
    ("empty_label", "label map is empty"),
    ("nan_voxels", "NaN/inf voxels"),
])
def test_bad_input_names_the_file(synth_dir, tmp_path, breakage, fragment):
    root = copy_dataset(synth_dir, tmp_path / "d")
    name = "synth_003.nii.gz"
    img_p, lab_p = root / "imagesTr" / name, root / "labelsTr" / name
    if breakage == "missing_folder":
        root = tmp_path / "nothing"
    elif breakage == "no_labels_dir":
        shutil.rmtree(root / "labelsTr")
    elif breakage == "image_without_label":
        lab_p.unlink()
    elif breakage == "label_without_image":
        img_p.unlink()
    elif breakage == "shape_mismatch":
        _save(lab_p, np.zeros((32, 32, 30), np.int32))
    elif breakage == "affine_mismatch":
        lab = np.asarray(nib.load(str(lab_p)).dataobj)
        _save(lab_p, lab, np.diag([2.0, 1, 1, 1]))
    elif breakage == "not_3d":
        _save(img_p, np.zeros((32, 32, 32, 2), np.float32))
    elif breakage == "corrupt":
        img_p.write_bytes(gzip.compress(b"this is not a nifti file" * 10))
    elif breakage == "empty_label":
        _save(lab_p, np.zeros((32, 32, 32), np.int32))
    elif breakage == "nan_voxels":
        arr = np.asarray(nib.load(str(img_p)).dataobj).astype(np.float32)
        arr[3, 3, 3] = np.nan
        _save(img_p, arr)
    with pytest.raises(DataError, match=fragment) as exc:
        load_folder(root, DataConfig())
    if breakage not in ("missing_folder", "no_labels_dir"):
        assert "synth_003" in str(exc.value)


def test_affine_or_spacing_differing_between_subjects_is_refused(synth_dir, tmp_path):
    d = copy_dataset(synth_dir, tmp_path / "d")
    name = sorted((d / "imagesTr").iterdir())[3].name
    for folder in ("imagesTr", "labelsTr"):
        img = nib.load(str(d / folder / name))
        aff = img.affine.copy()
        aff[0, 0] = 1.5  # another voxel spacing along x for this subject only (image and label agree)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), aff), str(d / folder / name))
    with pytest.raises(DataError, match=f"{name}.*spacing"):
        load_folder(d, DataConfig())
    for folder in ("imagesTr", "labelsTr"):
        img = nib.load(str(d / folder / name))
        aff = np.eye(4)
        aff[:3, 3] = 7.0  # same spacing, another origin
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), aff), str(d / folder / name))
    with pytest.raises(DataError, match=f"{name}.*affine differs"):
        load_folder(d, DataConfig())


def test_official_release_layout_with_dataset_json(synth_dir, tmp_path):
    """HippocampusMR_0001_0000-style names and a HippocampusMR_dataset.json: the training list is
    read from it and its registration_val pairs become the validation pairs."""
    import json

    from regtune.config import Config
    from regtune.train import split_for

    d = tmp_path / "release"
    for folder in ("imagesTr", "labelsTr"):
        (d / folder).mkdir(parents=True)
    src = sorted(p.name for p in (synth_dir / "imagesTr").iterdir())
    entries = []
    for i, name in enumerate(src, start=1):
        new = f"HippocampusMR_{i:04d}_0000.nii.gz"
        for folder in ("imagesTr", "labelsTr"):
            shutil.copy(synth_dir / folder / name, d / folder / new)
        entries.append({"image": f"./imagesTr/{new}", "label": f"./labelsTr/{new}"})
    (d / "imagesTr" / "stray_not_listed.nii.gz").write_bytes((d / "imagesTr" / "HippocampusMR_0001_0000.nii.gz").read_bytes())
    val = [{"fixed": "./imagesTr/HippocampusMR_0007_0000.nii.gz", "moving": "./imagesTr/HippocampusMR_0008_0000.nii.gz"},
           {"fixed": "./imagesTr/HippocampusMR_0008_0000.nii.gz", "moving": "./imagesTr/HippocampusMR_0007_0000.nii.gz"}]
    (d / "HippocampusMR_dataset.json").write_text(json.dumps({"name": "HippocampusMR", "training": entries,
                                                              "registration_val": val}))
    vols = load_folder(d, DataConfig())
    assert len(vols) == len(src) and "stray_not_listed" not in vols.names
    assert vols.registration_val == [("HippocampusMR_0007_0000", "HippocampusMR_0008_0000"),
                                     ("HippocampusMR_0008_0000", "HippocampusMR_0007_0000")]
    cfg = Config().with_values({"data.test_subjects": 2, "data.val_subjects": 2})
    split, val_pairs, test_pairs = split_for(cfg, vols)
    assert [(vols.names[f], vols.names[m]) for f, m in val_pairs] == vols.registration_val
    assert {vols.names[i] for i in split.val} == {"HippocampusMR_0007_0000", "HippocampusMR_0008_0000"}
    assert len(split.test) == 2 and not set(split.test) & set(split.val)
    bad = json.loads((d / "HippocampusMR_dataset.json").read_text())
    bad["registration_val"][0]["moving"] = "./imagesTr/HippocampusMR_0099_0000.nii.gz"
    (d / "HippocampusMR_dataset.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match="HippocampusMR_0099_0000"):
        load_folder(d, DataConfig())
