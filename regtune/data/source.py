"""Resolve ``data.root`` to loaded volumes: a Learn2Reg folder, or the embedded
synthetic dataset (generated on first use under ``regtune-runs/synthetic``)."""

from __future__ import annotations

from pathlib import Path

from ..config import DataConfig
from .dataset import Volumes, load_folder
from .synth import SynthSpec, ensure_dataset

DEFAULT_SYNTH_DIR = Path("regtune-runs") / "synthetic"


def data_root(cfg: DataConfig, synthetic_dir: str | Path = DEFAULT_SYNTH_DIR, progress: bool = False) -> Path:
    """The folder to read: ``cfg.root``, or the synthetic dataset (made if missing)."""
    if cfg.root is not None:
        return Path(cfg.root)
    return ensure_dataset(synthetic_dir, SynthSpec(), progress=progress)


def load_data(cfg: DataConfig, synthetic_dir: str | Path = DEFAULT_SYNTH_DIR, progress: bool = False) -> Volumes:
    return load_folder(data_root(cfg, synthetic_dir, progress), cfg, progress=progress)
