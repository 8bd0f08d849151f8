"""Inference-time search over the loss weights of an amortised (conditional) network.

One training gave a network for every loss weight in its ranges; choosing the weight is
then inference: :func:`search_weights` asks Optuna (TPE, batched ask/tell) for hundreds
of weight settings, registers a fixed subset of the *validation* pairs at each (one
batched forward pass per setting) and scores them with the Learn2Reg metrics and the
project's one objective (:class:`regtune.objective.Objective`), under optional hard
regularity constraints (folding %, SDlogJ). The best few feasible settings are then
re-scored on all validation pairs and the best of those is chosen. Held-out scores (the
test pairs) are computed for the chosen setting only, never used to choose.

Outputs (``write_outputs``): ``curve.png`` (Dice and SDlogJ against the weight, log axis,
no-registration level, infeasible region shaded, the chosen point), ``overlays.png``
(one validation pair at the low end, the chosen weight and the high end), ``points.csv``
(every setting tried), ``result.json`` and ``chosen.yaml`` (the training config with the
chosen weights: an ordinary run at them, or the values to pass to ``--set``).
:func:`track` records one MLflow run with per-setting metrics, the curve and the choice.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..amortise import WeightRange, describe, ranges_of
from ..data.dataset import Volumes
from ..data.pairs import Pair
from ..errors import ConfigError
from ..evaluate import evaluate_pairs, summarise
from ..objective import Objective

CURVE_KEYS = ("dice", "hd95", "sdlogj", "sdlogj_l2r", "folding_pct")


@dataclass(frozen=True)
class SearchSettings:
    """n: weight settings tried; pairs: validation pairs each is scored on (0 = all; the
    same pairs for every setting, so the curve is smooth); grid: of the n, how many are a
    log/linear grid over the range first (-1 = n // 4; one amortised weight only: with
    several the first settings are TPE's random start-up); per_round: settings asked
    from Optuna before telling it their scores; refine: best feasible settings re-scored
    on all validation pairs; max_folding_pct / max_sdlogj: hard constraints (None = off);
    batch: network batch size."""

    n: int = 256
    pairs: int = 8
    grid: int = -1
    per_round: int = 16
    refine: int = 5
    max_folding_pct: float | None = 0.05
    max_sdlogj: float | None = None
    batch: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ConfigError(f"--n {self.n}: try at least 2 weight settings")
        if self.pairs < 0:
            raise ConfigError(f"--pairs {self.pairs}: must be >= 0 (0 = all validation pairs)")
        if self.per_round < 1 or self.batch < 1 or self.refine < 1:
            raise ConfigError("--per-round, --batch and --refine must be >= 1")
        for k in ("max_folding_pct", "max_sdlogj"):
            v = getattr(self, k)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"--{k.replace('_', '-')} {v}: must be a number >= 0")

    def constraints(self, m: dict[str, float]) -> dict[str, float]:
        """Optuna's convention: each value <= 0 means satisfied."""
        out = {}
        if self.max_folding_pct is not None:
            out["folding_pct"] = m["folding_pct"] - self.max_folding_pct
        if self.max_sdlogj is not None:
            out["sdlogj"] = m["sdlogj"] - self.max_sdlogj
        return {k: v if math.isfinite(v) else 1e9 for k, v in out.items()}

    def describe(self) -> str:
        c = []
        if self.max_folding_pct is not None:
            c.append(f"folding <= {self.max_folding_pct:g}%")
        if self.max_sdlogj is not None:
            c.append(f"SDlogJ <= {self.max_sdlogj:g}")
        return " and ".join(c) or "none"


@dataclass
class Point:
    """One weight setting and its mean scores on the pairs it was scored on."""

    values: dict[str, float]
    metrics: dict[str, float]
    score: float
    feasible: bool
    trial: int = -1
    pairs: int = 0

    def row(self) -> dict[str, Any]:
        return {"trial": self.trial, **self.values, **{k: self.metrics.get(k, math.nan) for k in CURVE_KEYS},
                "score": self.score, "feasible": int(self.feasible), "pairs": self.pairs}


@dataclass
class SearchResult:
    ranges: tuple[WeightRange, ...]
    settings: SearchSettings
    objective: Objective
    points: list[Point]  # every setting tried, on the search pairs, in the order tried
    refined: list[Point]  # the best few, re-scored on all validation pairs
    chosen: Point  # the chosen setting, on all validation pairs
    noreg: dict[str, float]  # no-registration scores on the search pairs
    noreg_val: dict[str, float]  # ... on all validation pairs
    seconds: float  # the search itself (settings tried on the search pairs)
    refine_seconds: float
    search_pairs: list[Pair] = field(default_factory=list)
    val_pairs: list[Pair] = field(default_factory=list)
    test: dict[str, float] = field(default_factory=dict)  # chosen setting on the test pairs (held out)
    test_noreg: dict[str, float] = field(default_factory=dict)
    test_pairs: int = 0
    any_feasible: bool = True

    def summary(self) -> dict[str, Any]:
        return {"keys": [r.key for r in self.ranges], "ranges": [r.spec for r in self.ranges],
                "settings": asdict(self.settings), "objective": self.objective.describe(),
                "constraints": self.settings.describe(), "n_tried": len(self.points),
                "search_pairs": len(self.search_pairs), "val_pairs": len(self.val_pairs),
                "seconds": self.seconds, "refine_seconds": self.refine_seconds,
                "per_setting_ms": 1000 * self.seconds / max(len(self.points), 1),
                "chosen": self.chosen.values, "chosen_val": self.chosen.metrics, "chosen_score": self.chosen.score,
                "chosen_feasible": self.chosen.feasible, "any_feasible": self.any_feasible,
                "noreg_val": self.noreg_val, "test": self.test, "test_noreg": self.test_noreg,
                "test_pairs": self.test_pairs}


def _metrics(rows: list[dict]) -> dict[str, float]:
    s = summarise(rows)
    return {k: s.get(k, math.nan) for k in (*CURVE_KEYS, "dice_std", "dice30")}


class WeightScorer:
    """Scores one conditional network at given loss weights on a pair list (the
    ordinary evaluation path, :func:`regtune.evaluate.evaluate_pairs`, with the
    network's conditioner set to the weights)."""

    def __init__(self, model, cfg, vols: Volumes, device: torch.device | str = "cpu", batch: int = 8):
        if getattr(model, "conditioner", None) is None:
            raise ConfigError("this checkpoint is an ordinary network: its loss weights are baked in; "
                              "train with --amortise KEY=LOW:HIGH[:log] to search them at inference")
        self.model, self.cfg, self.vols = model.eval(), cfg, vols
        self.device = torch.device(device)
        self.batch = batch
        # inputs in the layout the network's weights are in (channels-last: the fast CPU path)
        self.channels_last = model.flow.weight.is_contiguous(memory_format=torch.channels_last_3d) \
            and not model.flow.weight.is_contiguous()

    def rows(self, values: dict[str, float], pairs: list[Pair], with_hd95: bool = False) -> list[dict]:
        self.model.conditioner.set_values(values)
        with torch.inference_mode():
            return evaluate_pairs(self.model, self.vols, pairs, self.cfg.data.downsample, self.device,
                                  batch_size=min(self.batch, len(pairs)), with_hd95=with_hd95,
                                  channels_last=self.channels_last)

    def __call__(self, values: dict[str, float], pairs: list[Pair], with_hd95: bool = False) -> dict[str, float]:
        return _metrics(self.rows(values, pairs, with_hd95))

    @torch.inference_mode()
    def many(self, settings: list[dict[str, float]], pairs: list[Pair]) -> list[dict[str, float]]:
        """Mean Dice, SDlogJ and folding (no HD95) of each setting on ``pairs``: the search's
        fast path. One network batch holds several settings x the pairs (the pairs'
        training-resolution images are made once); fields are upsampled to full resolution,
        only the labels are warped (nearest) and each pair is scored by
        :func:`regtune.metrics.score_pair`, as :func:`regtune.evaluate.evaluate_pairs` does."""
        from ..metrics import score_pair
        from ..model import downsample_image, upsample_field, warp

        ds, vols, dev = self.cfg.data.downsample, self.vols, self.device
        fi = torch.tensor([p[0] for p in pairs])
        mi = torch.tensor([p[1] for p in pairs])
        fixed = downsample_image(vols.images[fi].to(dev), ds)
        moving = downsample_image(vols.images[mi].to(dev), ds)
        mlab = vols.labels[mi].to(dev).unsqueeze(1).float()
        flab = [vols.labels[f].numpy() for f in fi.tolist()]
        mlab_np = [vols.labels[m].numpy() for m in mi.tolist()]
        if self.channels_last:
            fixed = fixed.contiguous(memory_format=torch.channels_last_3d)
            moving = moving.contiguous(memory_format=torch.channels_last_3d)
        n_p = len(pairs)
        per = max(1, self.batch // n_p)  # settings per network batch
        cond = self.model.conditioner
        out: list[dict[str, float]] = []
        for i in range(0, len(settings), per):
            chunk = settings[i: i + per]
            u = torch.cat([cond.unit(v, n_p, dev) for v in chunk])
            k = len(chunk)
            disp = self.model.fields(moving.repeat(k, 1, 1, 1, 1), fixed.repeat(k, 1, 1, 1, 1), backward=False, cond=u)[0]
            disp = upsample_field(disp.float(), ds, tuple(vols.shape))
            wlab = warp(mlab.repeat(k, 1, 1, 1, 1), disp, mode="nearest")[:, 0].round().to(torch.uint8).cpu().numpy()
            d_np = disp.cpu().numpy()
            for j in range(k):
                rows = [score_pair(flab[b], wlab[j * n_p + b], d_np[j * n_p + b], vols.label_values, vols.spacing,
                                   with_hd95=False, moving_lab=mlab_np[b]).row() for b in range(n_p)]
                out.append(_metrics(rows))
        return out


def _point(values: dict[str, float], m: dict[str, float], objective: Objective, st: SearchSettings,
           trial: int, n_pairs: int) -> Point:
    score = objective.score({f"val_{k}": v for k, v in m.items()})
    return Point(dict(values), m, score, all(c <= 0 for c in st.constraints(m).values()), trial, n_pairs)


def _best(points: list[Point]) -> Point:
    """The best feasible point by score; with none feasible, the least infeasible."""
    feas = [p for p in points if p.feasible]
    if feas:
        return max(feas, key=lambda p: p.score)
    return min(points, key=lambda p: (p.metrics.get("folding_pct", math.inf), -p.score))


def search_weights(model, cfg, vols: Volumes, val_pairs: list[Pair], settings: SearchSettings | None = None,
                   objective: Objective | None = None, device: torch.device | str = "cpu",
                   test_pairs: list[Pair] | None = None, log: Callable[[str], None] | None = None) -> SearchResult:
    """Search the amortised weights of ``model`` (trained with config ``cfg``) on
    ``val_pairs``; score the choice on ``test_pairs`` when given (held out)."""
    import optuna

    st = settings or SearchSettings()
    rs = ranges_of(cfg)
    if not rs:
        raise ConfigError("this checkpoint is an ordinary network: its loss weights are baked in; "
                          "train with --amortise KEY=LOW:HIGH[:log] to search them at inference")
    if not val_pairs:
        raise ConfigError("no validation pairs to search on")
    objective = objective or Objective.from_train(cfg.train)
    scorer = WeightScorer(model, cfg, vols, device, st.batch)
    search_pairs = list(val_pairs) if st.pairs == 0 else list(val_pairs)[: st.pairs]
    say = log or (lambda s: None)

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    n_grid = (st.n // 4 if st.grid < 0 else st.grid) if len(rs) == 1 else 0
    n_grid = min(n_grid, st.n)
    sampler = optuna.samplers.TPESampler(seed=st.seed, n_startup_trials=max(n_grid, 10), constant_liar=True,
                                         multivariate=len(rs) > 1)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    if n_grid:
        for v in rs[0].grid(n_grid):
            study.enqueue_trial({rs[0].key: v})
    dists = {r.key: optuna.distributions.FloatDistribution(r.low, r.high, log=r.log) for r in rs}
    noreg = _metrics(evaluate_pairs(None, vols, search_pairs, with_hd95=False))
    points: list[Point] = []
    t0 = time.perf_counter()
    while len(points) < st.n:
        trials = [study.ask(dists) for _ in range(min(st.per_round, st.n - len(points)))]
        batch_values = [{r.key: float(tr.params[r.key]) for r in rs} for tr in trials]
        for tr, values, m in zip(trials, batch_values, scorer.many(batch_values, search_pairs)):
            p = _point(values, m, objective, st, tr.number, len(search_pairs))
            for name, c in st.constraints(p.metrics).items():
                tr.set_constraint(name, c)  # TPE then prefers settings that meet them
            for k, v in p.metrics.items():
                tr.set_user_attr(k, v)
            study.tell(tr, p.score if math.isfinite(p.score) else objective.score({}))
            points.append(p)
        b = _best(points)
        say(f"{len(points):4d}/{st.n} settings, {time.perf_counter() - t0:5.1f} s; best so far {describe(b.values)}: "
            f"Dice {b.metrics['dice']:.4f}, SDlogJ {b.metrics['sdlogj']:.4f}, folding {b.metrics['folding_pct']:.4f}%"
            f"{'' if b.feasible else ' (no setting meets the constraints yet)'}")
    seconds = time.perf_counter() - t0

    # re-score the best few feasible settings (distinct values) on all validation pairs; choose among them
    t1 = time.perf_counter()
    ranked = sorted(points, key=lambda p: (not p.feasible, -p.score))
    top: list[Point] = []
    for p in ranked:
        if all(any(abs(r.to_unit(p.values[r.key]) - r.to_unit(q.values[r.key])) > 1e-3 for r in rs) for q in top):
            top.append(p)
        if len(top) >= st.refine:
            break
    val_pairs = list(val_pairs)
    if objective.metric == "val_hd95":  # the choice needs HD95: the slow path
        scored = [scorer(p.values, val_pairs, with_hd95=True) for p in top]
    else:
        scored = scorer.many([p.values for p in top], val_pairs)
    refined = [_point(p.values, m, objective, st, p.trial, len(val_pairs)) for p, m in zip(top, scored)]
    chosen = _best(refined)
    if objective.metric != "val_hd95":  # the chosen setting's full scores (HD95 too)
        chosen = _point(chosen.values, scorer(chosen.values, val_pairs, with_hd95=True), objective, st, chosen.trial,
                        len(val_pairs))
        refined = [chosen if p.trial == chosen.trial else p for p in refined]
    noreg_val = _metrics(evaluate_pairs(None, vols, val_pairs))
    refine_seconds = time.perf_counter() - t1
    res = SearchResult(rs, st, objective, points, refined, chosen, noreg, noreg_val, seconds, refine_seconds,
                       search_pairs, val_pairs, any_feasible=any(p.feasible for p in points))
    if test_pairs:
        res.test = scorer(chosen.values, list(test_pairs), with_hd95=True)
        res.test_noreg = _metrics(evaluate_pairs(None, vols, list(test_pairs)))
        res.test_pairs = len(test_pairs)
    scorer.model.conditioner.set_values(chosen.values)
    return res


def profile(model, cfg, vols: Volumes, pairs: list[Pair], n: int = 9, device: torch.device | str = "cpu",
            with_hd95: bool = True, batch: int = 8) -> list[Point]:
    """Scores (with HD95) on a grid of ``n`` values of the first amortised weight (the
    others at their reference): the curves a study report draws per trial."""
    rs = ranges_of(cfg)
    scorer = WeightScorer(model, cfg, vols, device, batch)
    objective = Objective.from_train(cfg.train)
    out = []
    for i, v in enumerate(rs[0].grid(n)):
        values = {r.key: (v if r is rs[0] else r.reference) for r in rs}
        m = scorer(values, pairs, with_hd95=with_hd95)
        out.append(Point(values, m, objective.score({f"val_{k}": x for k, x in m.items()}), True, i, len(pairs)))
    return out


# ---- outputs ------------------------------------------------------------------------
def _plt():
    from ..figures import _plt as plt

    return plt()


def curve_png(path: str | Path, res: SearchResult, title: str = "") -> Path:
    """Dice and SDlogJ against each amortised weight (log axis for a :log range): every
    setting tried (search pairs), the no-registration Dice, the settings that break the
    constraints shaded, the chosen setting (its all-validation-pairs scores) marked."""
    plt = _plt()
    path = Path(path)
    rs = res.ranges
    fig, axes = plt.subplots(1, len(rs), figsize=(7.5 * len(rs), 5.4), squeeze=False)
    for ax, r in zip(axes[0], rs):
        pts = sorted(res.points, key=lambda p: p.values[r.key])
        x = np.array([p.values[r.key] for p in pts])
        dice = np.array([p.metrics["dice"] for p in pts])
        sd = np.array([p.metrics["sdlogj"] for p in pts])
        fold = np.array([p.metrics["folding_pct"] for p in pts])
        bad = np.array([not p.feasible for p in pts])
        style = "-" if len(rs) == 1 else ""
        ax.plot(x, dice, "o" + style, ms=2.5, lw=1.2, color="C0", label=f"Dice ({len(res.search_pairs)} val pairs)")
        ax.axhline(res.noreg["dice"], color="C0", ls=":", lw=1.2, label=f"no registration ({res.noreg['dice']:.3f})")
        ax.set_ylabel("Dice", color="C0")
        ax.set_xlabel(r.key + (" (log scale)" if r.log else ""))
        if r.log:
            ax.set_xscale("log")
        ax2 = ax.twinx()
        ax2.plot(x, sd, "s" + style, ms=2.0, lw=1.2, color="C3", label="SDlogJ")
        ax2.set_ylabel("SDlogJ = std(log det J)", color="C3")
        ax2.set_ylim(bottom=0)
        if len(rs) == 1 and bad.any():  # shade the infeasible stretches of the range
            edges = np.sqrt(x[1:] * x[:-1]) if r.log else 0.5 * (x[1:] + x[:-1])
            lo_e = np.concatenate([[x[0]], edges])
            hi_e = np.concatenate([edges, [x[-1]]])
            first = True
            for a, b_, is_bad in zip(lo_e, hi_e, bad):
                if is_bad:
                    ax.axvspan(a, b_, color="#f4a6a6", alpha=0.35, lw=0,
                               label=f"breaks {res.settings.describe()}" if first else None)
                    first = False
        elif bad.any():
            ax.plot(x[bad], dice[bad], "x", color="#d62728", ms=4, label=f"breaks {res.settings.describe()}")
        if fold.max() > 0:
            ax3 = ax.twinx()
            ax3.spines["right"].set_position(("axes", 1.13))
            ax3.fill_between(x, 0, fold, color="#999", alpha=0.25, step="mid", label="% folding")
            ax3.set_ylabel("% folding voxels (grey)", color="#666")
            ax3.set_ylim(0, max(fold.max() * 3, 1e-3))
        c = res.chosen
        on_curve = next((p for p in res.points if p.trial == c.trial), None)  # the chosen setting on the search pairs
        ax.axvline(c.values[r.key], color="k", lw=1, ls="--")
        if on_curve is not None:
            ax.plot([c.values[r.key]], [on_curve.metrics["dice"]], "*", ms=14, color="gold", mec="k",
                    label=f"chosen {c.values[r.key]:.3g}; on all {len(res.val_pairs)} val pairs: Dice {c.metrics['dice']:.3f}, "
                          f"SDlogJ {c.metrics['sdlogj']:.3f}, folding {c.metrics['folding_pct']:.3f}%")
        ax.set_zorder(max(a.get_zorder() for a in fig.axes) + 1)  # Dice and the chosen star above the twin axes
        ax.patch.set_visible(False)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        # below the axes, clear of the data
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.suptitle(title or f"{len(res.points)} settings in {res.seconds:.0f} s; objective {res.objective.describe()}, "
                 f"constraints {res.settings.describe()}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def overlays_png(path: str | Path, model, cfg, vols: Volumes, pair: Pair, settings: list[dict[str, float]],
                 device: torch.device | str = "cpu", title: str = "") -> Path:
    """One pair registered at each weight setting: a row per setting with the fixed
    image, the warped moving image (fixed labels green, warped labels red) and the
    Jacobian determinant (folding black), mid-structure slice."""
    from ..evaluate import register_pairs
    from ..metrics import jacobian_determinant

    plt = _plt()
    path = Path(path)
    f, m = pair
    fl = vols.labels[f].numpy()
    centre = [int(round(c)) for c in np.argwhere(fl > 0).mean(0)] if (fl > 0).any() else [s // 2 for s in fl.shape]
    z = centre[2]
    fig, axes = plt.subplots(len(settings), 3, figsize=(9, 3 * len(settings)), squeeze=False)
    for row, values in enumerate(settings):
        model.conditioner.set_values(values)
        with torch.inference_mode():
            (_, disp, warped, wlab), = list(register_pairs(model, vols, [pair], cfg.data.downsample, device, batch_size=1))
        det = np.pad(jacobian_determinant(disp[0].numpy()), 2, constant_values=1.0)
        sd = float(np.log(np.clip(det[2:-2, 2:-2, 2:-2], 1e-9, 1e9)).std())
        ax = axes[row]
        ax[0].imshow(np.rot90(vols.images[f, 0, :, :, z].numpy()), cmap="gray", vmin=0, vmax=1)
        ax[0].contour(np.rot90(fl[:, :, z]), levels=[0.5, 1.5], colors="#00ff88", linewidths=0.8)
        ax[0].set_title("fixed" if row == 0 else "", fontsize=9)
        ax[1].imshow(np.rot90(warped[0, 0, :, :, z].numpy()), cmap="gray", vmin=0, vmax=1)
        ax[1].contour(np.rot90(fl[:, :, z]), levels=[0.5, 1.5], colors="#00ff88", linewidths=0.8)
        ax[1].contour(np.rot90(wlab[0, :, :, z].numpy()), levels=[0.5, 1.5], colors="#ff3366", linewidths=0.8)
        ax[1].set_title(f"warped at {describe(values)}", fontsize=9)
        from matplotlib.colors import ListedColormap, TwoSlopeNorm

        d = np.rot90(det[:, :, z])
        ax[2].imshow(d, cmap="coolwarm", norm=TwoSlopeNorm(vmin=min(0.0, float(d.min())) - 1e-3, vcenter=1.0,
                                                           vmax=max(2.0, float(d.max()))))
        ax[2].imshow(np.ma.masked_where(d > 0, np.ones_like(d)), cmap=ListedColormap(["black"]), vmin=0, vmax=1)
        ax[2].set_title(f"det J (SDlogJ {sd:.3f}, folding {100 * float((det <= 0).mean()):.3f}%)", fontsize=9)
        for a in ax:
            a.set_xticks([])
            a.set_yticks([])
    fig.suptitle(title or f"{vols.names[f]} <- {vols.names[m]}; green: fixed labels, red: warped labels", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def chosen_config(cfg, values: dict[str, float]):
    """The training config with the chosen weights and no amortisation: an ordinary run
    at them (``regtune train --config chosen.yaml``)."""
    return cfg.with_values({**values, "amortise.ranges": []}, source="weight search")


def write_outputs(out: str | Path, res: SearchResult, model, cfg, vols: Volumes, checkpoint: str = "",
                  device: torch.device | str = "cpu") -> dict[str, Path]:
    import yaml

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"curve": curve_png(out / "curve.png", res), "points": out / "points.csv", "result": out / "result.json",
             "config": out / "chosen.yaml"}
    r0 = res.ranges[0]
    ends = [{r.key: (r.low if r is r0 else res.chosen.values[r.key]) for r in res.ranges}, res.chosen.values,
            {r.key: (r.high if r is r0 else res.chosen.values[r.key]) for r in res.ranges}]
    paths["overlays"] = overlays_png(out / "overlays.png", model, cfg, vols, res.val_pairs[0], ends, device)
    model.conditioner.set_values(res.chosen.values)
    with paths["points"].open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(res.points[0].row()))
        w.writeheader()
        for p in res.points:
            w.writerow(p.row())
    paths["result"].write_text(json.dumps({"checkpoint": checkpoint, **res.summary(),
                                           "refined": [p.row() for p in res.refined]}, indent=1, default=float))
    sets = " ".join(f"--set {k}={v:.6g}" for k, v in res.chosen.values.items())
    head = (f"# chosen by regtune search-weights from {checkpoint or 'a conditional checkpoint'}\n"
            f"# ({len(res.points)} settings on {len(res.search_pairs)} validation pairs; objective {res.objective.describe()}; "
            f"constraints {res.settings.describe()})\n"
            f"# the conditional network at these weights: regtune evaluate|register --checkpoint CK {sets}\n"
            f"# an ordinary network trained at them:    regtune train --config {paths['config'].name}\n")
    paths["config"].write_text(head + yaml.safe_dump(chosen_config(cfg, res.chosen.values).to_dict(), sort_keys=False))
    return paths


def track(res: SearchResult, uri: str, experiment: str = "weight-search", checkpoint: str = "",
          artifacts: dict[str, Path] | None = None, run_name: str | None = None, tags: dict[str, str] | None = None) -> str:
    """One MLflow run: the search settings as params, every tried setting as a step of
    the metrics (its weights, Dice, SDlogJ, folding, score, feasible), the choice and
    its validation/test scores as summary metrics, the figures and tables as artifacts."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(
        experiment, tags={"mlflow.experimentKind": "custom_model_development"})
    run = client.create_run(exp_id, run_name=run_name or f"weights {describe(res.chosen.values)}",
                            tags={"regtune.kind": "weight_search", **(tags or {})})
    rid = run.info.run_id
    s = res.summary()
    params = {"checkpoint": checkpoint, "ranges": " ".join(s["ranges"]), "objective": s["objective"],
              "constraints": s["constraints"], "n": res.settings.n, "search_pairs": len(res.search_pairs),
              "val_pairs": len(res.val_pairs), "seed": res.settings.seed,
              **{f"chosen.{k}": f"{v:.6g}" for k, v in res.chosen.values.items()}}
    client.log_batch(rid, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    ts = int(time.time() * 1000)
    metrics = []
    for i, p in enumerate(sorted(res.points, key=lambda p: tuple(p.values.values()))):  # step = rank along the weight
        for k, v in {**{f"lambda.{k}": x for k, x in p.values.items()}, **p.metrics, "score": p.score,
                     "feasible": float(p.feasible)}.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                metrics.append(Metric(f"curve_{k}", float(v), ts, i))
    summary = {"seconds": res.seconds, "refine_seconds": res.refine_seconds, "n_tried": float(len(res.points)),
               **{f"chosen_{k}": v for k, v in res.chosen.values.items()},
               **{f"chosen_val_{k}": v for k, v in res.chosen.metrics.items()}, "chosen_score": res.chosen.score,
               **{f"chosen_test_{k}": v for k, v in res.test.items()},
               **{f"noreg_val_{k}": v for k, v in res.noreg_val.items()}}
    metrics += [Metric(k, float(v), ts, 0) for k, v in summary.items() if isinstance(v, (int, float)) and math.isfinite(v)]
    for i in range(0, len(metrics), 900):
        client.log_batch(rid, metrics=metrics[i: i + 900])
    client.log_batch(rid, tags=[RunTag("regtune.chosen", describe(res.chosen.values))])
    for name, p in (artifacts or {}).items():
        if Path(p).is_file():
            client.log_artifact(rid, str(p))
    client.set_terminated(rid, status="FINISHED")
    return rid
