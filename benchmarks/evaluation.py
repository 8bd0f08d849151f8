"""Evaluation: Dice + HD95 + Jacobian statistics, regtune vs MONAI metrics vs surface-distance.

Inputs: real label maps (``labelsTr``, labels 1 and 2) when the data is present, each
moving label map warped (nearest) by a random smooth displacement (the kind of field a
registration produces), and that field for the Jacobian statistics. One 64^3 pair, then
a list of 60 pairs.

- regtune: :func:`regtune.metrics.score_pair` (Dice, HD95 in the Learn2Reg definition,
  SDlogJ and % folding).
- MONAI: ``DiceMetric`` + ``HausdorffDistanceMetric(percentile=95)`` on one-hot tensors
  (MONAI's HD95 is the plain 95th percentile of edge-voxel distances, not the
  surfel-area-weighted one: its values legitimately differ), plus the Jacobian from
  ``numpy.gradient`` (MONAI has no Jacobian metric).
- surface-distance: ``compute_surface_distances`` + ``compute_robust_hausdorff(.., 95)``
  + ``compute_dice_coefficient`` per label (the Learn2Reg evaluation code), plus the
  same ``numpy.gradient`` Jacobian.

Agreement rows give the max |difference| over all pairs and labels between each pair of
implementations.
"""

from __future__ import annotations

import math

import numpy as np

from .common import REGTUNE, Context, Row, missing_row, time_it
from .sections import section

LABELS = (1, 2)


def make_cases(ctx: Context, n_pairs: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(fixed labels, warped moving labels, displacement (3, X, Y, Z)) per pair."""
    import torch

    from regtune.data.pairs import sample_pairs
    from regtune.data.synth import random_field
    from regtune.model import warp
    vols = ctx.volumes()
    idx = [i for i in range(len(vols)) if bool(vols.labelled[i])]
    pairs = sample_pairs(idx, n_pairs, ctx.seed + 7)
    rng = np.random.default_rng(ctx.seed)
    size = vols.shape[0]
    cases = []
    for f, m in pairs:
        disp = random_field(size, 1.5, rng).astype(np.float32)  # the volumes are cubic (64^3 / 16^3)
        d = torch.from_numpy(disp)[None]
        wl = warp(vols.labels[m][None, None].float(), d, mode="nearest")[0, 0].round().to(torch.uint8).numpy()
        cases.append((vols.labels[f].numpy(), wl, disp))
    return cases


def numpy_jacobian_stats(disp: np.ndarray) -> tuple[float, float]:
    """Reference Jacobian statistics with numpy.gradient (central differences inside),
    2-voxel border cropped: (SDlogJ, % folding)."""
    d = disp.astype(np.float64)
    grads = [np.gradient(d[i]) for i in range(3)]  # grads[i][j] = d u_i / d x_j
    J = [[grads[i][j][2:-2, 2:-2, 2:-2] + (1.0 if i == j else 0.0) for j in range(3)] for i in range(3)]
    det = (J[0][0] * (J[1][1] * J[2][2] - J[1][2] * J[2][1]) - J[0][1] * (J[1][0] * J[2][2] - J[1][2] * J[2][0])
           + J[0][2] * (J[1][0] * J[2][1] - J[1][1] * J[2][0]))
    return float(np.log(np.clip(det, 1e-9, 1e9)).std()), 100.0 * float((det <= 0).mean())


def score_regtune(case) -> dict:
    from regtune.metrics import score_pair
    f, w, d = case
    s = score_pair(f, w, d, LABELS)
    return {"dice": s.dice_per_label, "hd95": s.hd95_per_label, "sdlogj": s.sdlogj, "folding": s.folding_pct}


def score_surface_distance(case) -> dict:
    import surface_distance as sd
    f, w, d = case
    dice, hd = {}, {}
    for lab in LABELS:
        a, b = f == lab, w == lab
        dice[lab] = float(sd.compute_dice_coefficient(a, b))
        hd[lab] = float(sd.compute_robust_hausdorff(sd.compute_surface_distances(a, b, (1.0, 1.0, 1.0)), 95.0))
    sdlogj, fold = numpy_jacobian_stats(d)
    return {"dice": dice, "hd95": hd, "sdlogj": sdlogj, "folding": fold}


class MonaiScorer:
    def __init__(self):
        from monai.metrics import DiceMetric, HausdorffDistanceMetric
        self.dice = DiceMetric(include_background=False, reduction="none")
        self.hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")

    def __call__(self, case) -> dict:
        import torch
        f, w, d = case
        k = len(LABELS) + 1
        oh = lambda x: torch.nn.functional.one_hot(torch.from_numpy(x).long(), k).permute(3, 0, 1, 2)[None].float()  # noqa: E731
        pred, gt = oh(w), oh(f)
        dv = self.dice(pred, gt)[0].tolist()
        hv = self.hd(pred, gt)[0].tolist()
        self.dice.reset()
        self.hd.reset()
        sdlogj, fold = numpy_jacobian_stats(d)
        return {"dice": dict(zip(LABELS, dv)), "hd95": dict(zip(LABELS, hv)), "sdlogj": sdlogj, "folding": fold}


def _max_diff(a: list[dict], b: list[dict], key: str) -> float:
    if key in ("sdlogj", "folding"):
        return max(abs(x[key] - y[key]) for x, y in zip(a, b))
    return max(abs(x[key][lab] - y[key][lab]) for x, y in zip(a, b) for lab in LABELS
               if not (math.isnan(x[key][lab]) and math.isnan(y[key][lab])))


@section("eval", "Evaluation: Dice + HD95 + Jacobian stats per pair (regtune vs MONAI metrics vs surface-distance)")
def run(ctx: Context) -> list[Row]:
    n_list = 6 if ctx.quick else 60
    cases = make_cases(ctx, n_list)
    size = "x".join(str(s) for s in cases[0][0].shape)
    impls = {REGTUNE: score_regtune}
    if ctx.peer_available("monai"):
        impls["monai"] = MonaiScorer()
    if ctx.peer_available("surface-distance"):
        impls["surface-distance"] = score_surface_distance
    rows: list[Row] = []
    scores: dict[str, list[dict]] = {}
    reps = (2, 1) if ctx.quick else (ctx.repeats, ctx.warmup)
    g1, gl = f"one pair {size}", f"{n_list}-pair list {size}"
    for name in (REGTUNE, "monai", "surface-distance"):
        if name not in impls:
            rows += [missing_row("eval", g, name, m, "not installed", unit="s") for g, m in ((g1, "s/pair"), (gl, "s/list"))]
            continue
        fn = impls[name]
        ctx.log(f"[eval] {name}")
        t1 = time_it(lambda: fn(cases[0]), reps[0] * 4, reps[1])
        tl = time_it(lambda: [fn(c) for c in cases], max(1, reps[0] - 2), 1)
        scores[name] = [fn(c) for c in cases]
        mean = lambda k: float(np.mean([np.nanmean(list(s[k].values())) for s in scores[name]]))  # noqa: E731
        extra = {"mean_dice": mean("dice"), "mean_hd95": mean("hd95"),
                 "mean_sdlogj": float(np.mean([s["sdlogj"] for s in scores[name]]))}
        rows.append(Row("eval", g1, name, "s/pair", t1["median_s"], unit="s", extra={**t1, **{k: v for k, v in scores[name][0].items()}}))
        rows.append(Row("eval", gl, name, "s/list", tl["median_s"], unit="s", extra={**tl, **extra, "pairs": n_list}))
    names = list(scores)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            grp = f"agreement {a} vs {b} ({n_list} pairs x {len(LABELS)} labels)"
            for key, unit in (("dice", ""), ("hd95", "vox"), ("sdlogj", ""), ("folding", "%")):
                note = ""
                if key == "hd95" and "monai" in (a, b):
                    note = "MONAI's HD95 is the unweighted edge-voxel percentile, not Learn2Reg's surfel-area-weighted one"
                rows.append(Row("eval", grp, a, f"max |d {key}|", _max_diff(scores[a], scores[b], key), unit=unit,
                                better="", note=note))
    return rows
