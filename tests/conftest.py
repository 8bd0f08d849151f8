from __future__ import annotations

from pathlib import Path

import pytest
import torch

from regtune.data.synth import SynthSpec, write_dataset

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
