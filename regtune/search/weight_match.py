"""A reference network for an inference-time weight search (``regtune search-weights --match``).

The question a user with an ordinary network asks of a conditional one is not "which
weight scores best?" but "at no more roughness than my network, does it register better?".
A loss weight means different things in the two networks (a conditional network below the
strong end of its range is smoother than an ordinary one trained at the same weight), so
comparing them at the same number is not that question. :func:`load_reference` scores
the reference network on the conditional checkpoint's own validation pairs; its SDlogJ
(both definitions) and folding there become the search's caps (:func:`matched_settings`),
so the weight is chosen on validation pairs alone. The reference's test scores, and the
paired test Dice difference (:func:`paired_test_dice`), are reported beside the chosen
weight's and never used to choose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..data.dataset import Volumes
from ..data.pairs import Pair
from ..errors import ConfigError
from ..evaluate import evaluate_pairs
from .weight_results import SearchSettings, mean_scores


# data.* keys that change the images or labels a network is scored on
IMAGE_KEYS = ("clip_low", "clip_high", "normalise", "mask_padding", "labels")


@dataclass
class Reference:
    """The reference network and its scores on the conditional checkpoint's pairs."""

    checkpoint: str
    model: Any  # the reference's network (RegNet), evaluated at its own training resolution
    downsample: int
    val: dict[str, float] = field(default_factory=dict)  # on all validation pairs (the caps come from here)
    search: dict[str, float] = field(default_factory=dict)  # on the search's pairs (drawn against its curve)
    test: dict[str, float] = field(default_factory=dict)  # on the test pairs (reported only)
    test_rows: list[dict] = field(default_factory=list)

    def rows(self, vols: Volumes, pairs: list[Pair], device: torch.device | str = "cpu", with_hd95: bool = True) -> list[dict]:
        """Per-pair scores at full resolution (with HD95 unless told not), as ``regtune evaluate`` computes them."""
        return evaluate_pairs(self.model, vols, list(pairs), self.downsample, device, batch_size=8, with_hd95=with_hd95,
                              channels_last=torch.device(device).type == "cpu")

    def score_test(self, vols: Volumes, test: list[Pair], device: torch.device | str = "cpu") -> None:
        """The held-out scores on ``test``; reported beside the chosen weight's, never used to choose."""
        self.test_rows = self.rows(vols, test, device)
        self.test = mean_scores(self.test_rows)

    def summary(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "val": self.val, "search": self.search, "test": self.test}


def _key(pairs: list | None) -> list[tuple[str, str]]:
    return [tuple(p) for p in pairs or []]


def load_reference(path: str | Path, ck, vols: Volumes, val: list[Pair], device: torch.device | str = "cpu") -> Reference:
    """The reference checkpoint at ``path`` (any regtune checkpoint) scored on the validation
    pairs ``val`` of the conditional checkpoint ``ck``. Refuses, in one line, a reference
    trained on another split: its validation or test pairs would differ, and "held out"
    would not mean the same pairs for both."""
    from ..checkpoint import load_checkpoint

    ref = load_checkpoint(path)
    for what in ("val_pairs", "test_pairs"):
        if _key(ref.extra.get(what)) != _key(ck.extra.get(what)):
            raise ConfigError(f"--match {path}: its {what.replace('_', ' ')} are not the searched checkpoint's; train "
                              f"both on the same data with the same data.* split settings (split_seed, val_/test_subjects, "
                              f"val_/test_pairs)")
    for k in IMAGE_KEYS:  # the volumes are prepared by the searched checkpoint's data config
        a, b = getattr(ref.config.data, k), getattr(ck.config.data, k)
        if a != b:
            raise ConfigError(f"--match {path}: data.{k} is {a!r} there and {b!r} in the searched checkpoint; the two would "
                              f"see different images: compare networks trained with the same data.{k}")
    out = Reference(str(path), ref.model(device), ref.config.data.downsample)
    out.val = mean_scores(out.rows(vols, val, device))
    return out


ROUGHNESS = ("both", "logdet", "l2r")  # which SDlogJ definitions --match caps


def matched_settings(settings: SearchSettings, ref: Reference, folding: bool = True, roughness: str = "both") -> SearchSettings:
    """``settings`` capped at the reference's validation SDlogJ and (with ``folding``) its
    folding %: the chosen weight is no rougher than the reference on the same pairs.
    ``roughness``: which SDlogJ is capped, ``logdet`` (std(log det J)), ``l2r`` (the
    organisers' std(log(det J + 3))) or ``both`` (the default: the two weigh compression and
    expansion differently, and a field can be smoother on one and rougher on the other).
    Without ``folding`` the settings' own folding limit stays (a user's explicit one, or none)."""
    if roughness not in ROUGHNESS:
        raise ConfigError(f"--match-roughness {roughness!r}: choose one of {', '.join(ROUGHNESS)}")
    val = ref.val
    keys = ("folding_pct",) + {"both": ("sdlogj", "sdlogj_l2r"), "logdet": ("sdlogj",), "l2r": ("sdlogj_l2r",)}[roughness]
    if not all(math.isfinite(val.get(k, math.nan)) for k in keys):
        raise ConfigError(f"--match {ref.checkpoint}: its validation {', '.join(f'{k} {val.get(k)}' for k in keys)} are not "
                          f"all finite; it is no reference for roughness")
    return replace(settings, max_sdlogj=val["sdlogj"] if "sdlogj" in keys else None,
                   max_sdlogj_l2r=val["sdlogj_l2r"] if "sdlogj_l2r" in keys else None,
                   max_folding_pct=val["folding_pct"] if folding else settings.max_folding_pct)


def paired_test_dice(chosen_rows: list[dict], ref: Reference):
    """Test Dice, chosen weight minus reference, paired over the test pairs
    (:class:`regtune.compare.Paired`); ``None`` without test rows."""
    from ..compare import compare

    if not chosen_rows or not ref.test_rows:
        return None

    def by_pair(rows):
        return {(r["fixed"], r["moving"]): r for r in rows}

    return compare(by_pair(chosen_rows), by_pair(ref.test_rows), ("dice",), ("chosen", "reference"))[0]
