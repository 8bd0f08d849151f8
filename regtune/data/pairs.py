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
    """Subject-level split: no subject is in two lists.

    train: trained on. val: picks the best epoch (and a study's best trial). test: held
    out from both; only ``regtune evaluate`` scores it.
    """

    train: tuple[int, ...]
    val: tuple[int, ...]
    test: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if set(self.test) & (set(self.train) | set(self.val)):
            raise ValueError(f"Split: test subjects overlap train/val, got test {self.test}")

    def role(self, i: int) -> str:
        return "test" if i in self.test else "val" if i in self.val else "train" if i in self.train else "none"


def split_subjects(vols: Volumes, val_subjects: int, seed: int, test_subjects: int = 0,
                   val_names: list[str] | None = None) -> Split:
    """Hold out ``test_subjects`` and ``val_subjects`` labelled subjects (seeded);
    everything else (unlabelled images included) trains.

    The test subjects are the first ``test_subjects`` of one seeded permutation of the
    labelled subjects, so they do not change with ``val_subjects``. ``val_names`` (the
    subjects of an official validation pair list) fixes the validation subjects instead
    of drawing them; the test subjects are then drawn from the others.
    """
    labelled = [i for i in range(len(vols)) if bool(vols.labelled[i])]
    g = torch.Generator().manual_seed(seed)
    if val_names:
        val_set = {vols.index(n) for n in val_names}
        pool = [i for i in labelled if i not in val_set]
        perm = torch.randperm(len(pool), generator=g).tolist()
        test = sorted(pool[i] for i in perm[:test_subjects])
        val = sorted(val_set)
    else:
        need = val_subjects + test_subjects + 2
        if need > len(labelled):
            n = len(labelled)
            hint_test = n // 5 if n // 5 >= 2 and n - n // 5 >= 4 else 0
            raise DataError(f"data.val_subjects={val_subjects} + data.test_subjects={test_subjects} leave fewer than 2 of "
                            f"the {n} labelled subjects to train on; lower them, e.g. --set data.val_subjects="
                            f"{max(2, min(n // 10, n - hint_test - 2))} --set data.test_subjects={hint_test}")
        perm = torch.randperm(len(labelled), generator=g).tolist()
        test = sorted(labelled[i] for i in perm[:test_subjects])
        val = sorted(labelled[i] for i in perm[test_subjects: test_subjects + val_subjects])
    train = sorted(set(range(len(vols))) - set(val) - set(test))
    if len(train) < 2:
        raise DataError(f"the split leaves {len(train)} training subject(s); lower data.test_subjects ({test_subjects})")
    return Split(train=tuple(train), val=tuple(val), test=tuple(test))


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

    ``mode='random'`` draws independent pairs of distinct subjects every step, on
    ``device`` (its own generator there: no host work or sync per step);
    ``mode='all'`` walks a shuffled all-vs-all list and reshuffles at its end.
    """

    def __init__(self, idx: tuple[int, ...], mode: str, seed: int, device: torch.device | str = "cpu"):
        if len(idx) < 2:
            raise DataError(f"need at least 2 training subjects, got {len(idx)}")
        self.device = torch.device(device)
        self.mode = mode
        random_mode = mode != "all"
        self.idx = torch.tensor(idx, device=self.device if random_mode else "cpu")
        self.g = torch.Generator(device=self.device if random_mode else "cpu").manual_seed(seed)
        self._all = torch.tensor(all_pairs(idx)) if mode == "all" else None
        self._pos = 0
        self._order = None

    def state(self) -> dict:
        return {"rng": self.g.get_state(), "pos": self._pos, "order": self._order}

    def set_state(self, st: dict | torch.Tensor) -> None:
        if isinstance(st, torch.Tensor):  # older checkpoints: the generator state only
            self.g.set_state(st)
            return
        self.g.set_state(st["rng"])
        self._pos, self._order = int(st["pos"]), st["order"]

    def __call__(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._all is None:
            n = len(self.idx)
            f = torch.randint(n, (batch,), generator=self.g, device=self.device)
            m = (f + torch.randint(1, n, (batch,), generator=self.g, device=self.device)) % n  # never equal to f
            return self.idx[f], self.idx[m]
        out = []
        while len(out) < batch:
            if self._order is None or self._pos >= len(self._order):
                self._order = torch.randperm(len(self._all), generator=self.g)
                self._pos = 0
            take = self._order[self._pos: self._pos + batch - len(out)]
            self._pos += len(take)
            out.append(self._all[take])
        p = torch.cat(out).to(self.device)
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
