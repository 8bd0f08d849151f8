from __future__ import annotations

from pathlib import Path

import pytest
import torch

from regtune.config import Config
from regtune.data import load_folder
from regtune.data.pairs import Split
from regtune.data.synth import SynthSpec, write_dataset
from regtune.train import train

from .helpers import RANGE, tiny_amortised

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = ROOT.parent / "shared" / "data" / "learn2reg-hippocampus"

torch.set_num_threads(2)


def real_data_or_skip() -> Path:
    if not (REAL_DATA / "imagesTr").is_dir():
        pytest.skip(f"real data not present at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """8 small (32^3) phantom subjects in Learn2Reg layout, with the quirks planted."""
    return write_dataset(tmp_path_factory.mktemp("synth"), SynthSpec(n_subjects=8, size=32, amplitude=2.0, seed=1))


@pytest.fixture(scope="session")
def real_data() -> Path:
    return real_data_or_skip()


@pytest.fixture(scope="session")
def vols(synth_dir):
    """The phantoms, loaded (read-only: tests must not change them in place)."""
    return load_folder(synth_dir, Config().data)


@pytest.fixture(scope="session")
def film_run(vols, tmp_path_factory):
    """A FiLM-conditioned network trained briefly over reg_weight in [0.1, 100] (with the Dice
    term and integration, so the phantoms' fields are learnt, not near zero, in 150 steps)."""
    out = tmp_path_factory.mktemp("film")
    cfg = tiny_amortised(**{"amortise.ranges": [RANGE], "train.epochs": 1, "train.steps_per_epoch": 150,
                         "loss.dice_weight": 1.0, "model.int_steps": 7})
    res = train(cfg, vols, out, progress=False, split=Split(train=(0, 1, 2, 3), val=(4, 5), test=(6, 7)))
    assert res.status == "completed"
    return out
