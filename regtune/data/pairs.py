"""Subject split, pair lists and pair sampling.

A pair is ``(fixed_index, moving_index)`` into :class:`~regtune.data.dataset.Volumes`;
registration warps the moving image onto the fixed one.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DataError
from .dataset import Volumes
from .nifti import stem

Pair = tuple[int, int]


@dataclass(frozen=True)
class Split:
    """Subject-level split: no subject is in both lists."""

    train: tuple[int, ...]
    val: tuple[int, ...]


def split_subjects(vols: Volumes, val_subjects: int, seed: int) -> Split:
    """Hold out ``val_subjects`` labelled subjects (seeded); everything else trains."""
    labelled = [i for i in range(len(vols)) if bool(vols.labelled[i])]
    if val_subjects > len(labelled) - 2:
        raise DataError(f"data.val_subjects={val_subjects} leaves fewer than 2 training subjects "
                        f"({len(labelled)} labelled); lower it, e.g. --set data.val_subjects={max(2, len(labelled) // 5)}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labelled), generator=g).tolist()
    val = sorted(labelled[i] for i in perm[:val_subjects])
    train = sorted(set(range(len(vols))) - set(val))
    return Split(train=tuple(train), val=tuple(val))


def all_pairs(idx: tuple[int, ...] | list[int]) -> list[Pair]:
    """All ordered pairs (i, j), i != j: the seed notebook's all-vs-all enumeration."""
    return [(i, j) for i in idx for j in idx if i != j]


def sample_pairs(idx: tuple[int, ...] | list[int], n: int, seed: int) -> list[Pair]:
    """``n`` distinct ordered pairs drawn without replacement (all of them if fewer)."""
    pairs = all_pairs(idx)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(pairs), generator=g).tolist()
    return sorted(pairs[i] for i in order[: min(n, len(pairs))])


class PairSampler:
    """Training batches of (fixed, moving) index tensors.

    ``mode='random'`` draws independent pairs of distinct subjects every step;
    ``mode='all'`` walks a shuffled all-vs-all list and reshuffles at its end.
    """

    def __init__(self, idx: tuple[int, ...], mode: str, seed: int):
        if len(idx) < 2:
            raise DataError(f"need at least 2 training subjects, got {len(idx)}")
        self.idx = torch.tensor(idx)
        self.mode = mode
        self.g = torch.Generator().manual_seed(seed)
        self._all = torch.tensor(all_pairs(idx)) if mode == "all" else None
        self._pos = 0
        self._order = None

    def __call__(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._all is None:
            n = len(self.idx)
            f = torch.randint(n, (batch,), generator=self.g)
            m = (f + torch.randint(1, n, (batch,), generator=self.g)) % n  # never equal to f
            return self.idx[f], self.idx[m]
        out = []
        while len(out) < batch:
            if self._order is None or self._pos >= len(self._order):
                self._order = torch.randperm(len(self._all), generator=self.g)
                self._pos = 0
            take = self._order[self._pos: self._pos + batch - len(out)]
            self._pos += len(take)
            out.append(self._all[take])
        p = torch.cat(out)
        return p[:, 0], p[:, 1]


def read_pairs_csv(path: str | Path, vols: Volumes) -> list[Pair]:
    """Read a ``fixed,moving`` CSV of file names (with or without .nii.gz)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: pairs file not found")
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise DataError(f"{path}: empty pairs file; expected a header 'fixed,moving' and one pair per row")
    header = [h.strip().lower() for h in rows[0]]
    if header[:2] != ["fixed", "moving"]:
        raise DataError(f"{path}: first row must be the header 'fixed,moving', got {','.join(rows[0])}")
    pairs = []
    for n, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise DataError(f"{path}, line {n}: expected 'fixed,moving', got {','.join(row)}")
        f, m = stem(row[0].strip()), stem(row[1].strip())
        for name in (f, m):
            if name not in vols.names:
                raise DataError(f"{path}, line {n}: '{name}' is not among the loaded images (e.g. {vols.names[0]})")
        pairs.append((vols.names.index(f), vols.names.index(m)))
    if not pairs:
        raise DataError(f"{path}: no pairs listed")
    return pairs


def write_pairs_csv(path: str | Path, pairs: list[Pair], vols: Volumes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["fixed", "moving"])
        for f, m in pairs:
            w.writerow([vols.names[f] + ".nii.gz", vols.names[m] + ".nii.gz"])
