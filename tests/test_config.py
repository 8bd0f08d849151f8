import pytest

from regtune.config import Config
from regtune.errors import ConfigError


def test_defaults_roundtrip():
    cfg = Config()
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert cfg.flat()["train.lr"] == cfg.train.lr


def test_overrides_coerce_types(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 3e-4\nmodel:\n  enc: [8, 16]\n  dec: [16, 16, 8]\n")
    cfg = Config.load(p, ["train.batch_size=2", "loss.similarity=mse", "data.mask_padding=true", "data.root=/x"])
    assert cfg.train.lr == 3e-4 and cfg.train.batch_size == 2 and cfg.model.enc == (8, 16)
    assert cfg.loss.similarity == "mse" and cfg.data.mask_padding is True and cfg.data.root == "/x"


@pytest.mark.parametrize("override, fragment", [
    ("train.lrr=1", "unknown key 'train.lrr'"),
    ("trian.lr=1", "unknown key 'trian.lr'"),
    ("train.lr=-1", "train.lr"),
    ("train.lr=abc", "must be a number"),
    ("train.batch_size=1.5", "must be an integer"),
    ("loss.similarity=ssim", "loss.similarity"),
    ("loss.ncc_window=4", "odd"),
    ("data.downsample=3", "data.downsample"),
    ("model.dec=[8]", "model.dec"),
    ("train.amp=maybe", "true, false or auto"),
])
def test_bad_values_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace("[", r"\[")):
        Config.load(None, [override])


def test_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        Config.load(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("optim:\n  lr: 1\n")
    with pytest.raises(ConfigError, match="unknown section 'optim'"):
        Config.load(p)
    p.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Config.load(p)


def test_frozen():
    with pytest.raises(Exception):
        Config().train.lr = 1.0  # type: ignore[misc]
