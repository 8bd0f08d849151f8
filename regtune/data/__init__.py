"""Data: NIfTI I/O, the in-memory dataset, pairs, and synthetic phantoms (plain torch/numpy)."""

from .dataset import Volumes, load_folder, normalise_intensity, sanitise_labels
from .pairs import PairSampler, Split, all_pairs, read_pairs_csv, sample_pairs, split_subjects, write_pairs_csv

__all__ = ["Volumes", "load_folder", "normalise_intensity", "sanitise_labels", "PairSampler", "Split",
           "all_pairs", "sample_pairs", "split_subjects", "read_pairs_csv", "write_pairs_csv"]
