"""Diagnose, part 2: the report's figures (matplotlib, Agg), coloured by trial class."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .analysis import Diagnosis
from .trials import COLOURS, DIVERGED, TrialInfo

def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _plotted_dice(t: TrialInfo) -> float:
    """Best val Dice as plotted: diverged or Dice-less trials sit at 0."""
    dice = t.metrics.get("best_val_dice", math.nan)
    return dice if math.isfinite(dice) and t.cls not in DIVERGED else 0.0


def plot_curves(d: Diagnosis, path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    seen = set()
    for t in d.trials:
        c = COLOURS.get(t.cls, "#777")
        lab = t.cls if t.cls not in seen else None
        seen.add(t.cls)
        for ax, k in zip(axes, ("train_loss", "val_dice")):
            h = [(s, v) for s, v in t.history.get(k, []) if math.isfinite(v) and abs(v) < 1e6]
            if h:
                ax.plot(*zip(*h), "o-", color=c, alpha=0.8, ms=3, label=lab if ax is axes[1] else None)
            elif t.cls in DIVERGED and ax is axes[0]:
                ax.plot([1], [np.nan], color=c)
    if math.isfinite(d.noreg_dice):
        axes[1].axhline(d.noreg_dice, color="k", ls="--", lw=1, label="no registration")
    ok = [v for t in d.trials if t.cls not in DIVERGED for _, v in t.history.get("train_loss", []) if math.isfinite(v)]
    if ok:  # scale to the healthy trials; diverged ones run off the top
        lo, hi = min(ok), max(ok)
        pad = 0.15 * (hi - lo or 1.0)
        axes[0].set_ylim(lo - pad, hi + 3 * pad)
    axes[0].set_title("training loss per epoch (diverged runs leave the top)")
    axes[1].set_title("validation Dice per epoch")
    axes[1].legend(fontsize=7, loc="lower right")
    for ax in axes:
        ax.set_xlabel("epoch")
    return _save(plt, fig, path)


def plot_importances(d: Diagnosis, path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.5))
    for ax, (title, imp) in zip(axes, (("importance for the objective (score)", d.importance_objective),
                                       ("importance for divergence", d.importance_divergence))):
        if imp:
            keys = list(imp)[::-1]
            ax.barh(keys, [imp[k] for k in keys], color="#4c72b0")
        else:
            ax.text(0.5, 0.5, "not enough variation to compute", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xlim(0, 1)
    return _save(plt, fig, path)


def plot_scatter(d: Diagnosis, path: Path) -> Path:
    """Best Dice against each numeric parameter, coloured by class (diverged at the bottom)."""
    plt = _plt()
    nums = [p for p in d.space.params if p.type != "categorical"] or list(d.space.params)
    fig, axes = plt.subplots(1, len(nums), figsize=(4.2 * len(nums), 3.6), squeeze=False)
    for ax, p in zip(axes[0], nums):
        for t in d.trials:
            if p.key not in t.params or t.cls in ("unfinished", "interrupted", "error"):
                continue
            y = _plotted_dice(t)
            x = t.params[p.key] if p.type != "categorical" else list(p.choices).index(t.params[p.key])
            ax.scatter([x], [y], color=COLOURS.get(t.cls, "#777"), marker="x" if t.cls in DIVERGED else "o", s=35)
        if p.log:
            ax.set_xscale("log")
        if math.isfinite(d.noreg_dice):
            ax.axhline(d.noreg_dice, color="k", ls="--", lw=1)
        ax.set_xlabel(p.key)
        ax.set_ylabel("best val Dice (x = diverged, plotted at 0)")
    return _save(plt, fig, path)


def plot_parallel(d: Diagnosis, path: Path) -> Path:
    """Parallel coordinates of the parameters (log-scaled where searched so), lines coloured by class."""
    plt = _plt()
    ps = list(d.space.params)
    fig, ax = plt.subplots(figsize=(2.6 * (len(ps) + 1), 4))
    for t in d.trials:
        ys = []
        for p in ps:
            v = t.params.get(p.key)
            if v is None:
                ys.append(np.nan)
            elif p.type == "categorical":
                ys.append(list(p.choices).index(v) / max(1, len(p.choices) - 1))
            elif p.log:
                ys.append((math.log(v) - math.log(p.low)) / (math.log(p.high) - math.log(p.low)))
            else:
                ys.append((v - p.low) / (p.high - p.low))
        ys.append(_plotted_dice(t))
        ax.plot(range(len(ys)), ys, "o-", color=COLOURS.get(t.cls, "#777"), alpha=0.7, lw=1.5 if t.cls in DIVERGED else 1)
    ax.set_xticks(range(len(ps) + 1))
    ax.set_xticklabels([p.key + ("\n(log)" if p.log else "") for p in ps] + ["best Dice"], fontsize=8)
    ax.set_ylabel("position in searched range")
    ax.set_title("parallel coordinates (red/pink/black = diverged or collapsed)")
    return _save(plt, fig, path)


def optuna_plots(d: Diagnosis, out: Path) -> list[Path]:
    """Optuna's matplotlib plots of the persisted study: parameter importances (the same
    seeded fANOVA evaluator as the report's numbers), slice and optimisation history (the
    diverged floor drawn just below the worst finished trial). Empty without optuna.db."""
    study = d.optuna_study
    if study is None or sum(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)) < 2:
        return []
    import warnings

    from optuna.importance import FanovaImportanceEvaluator
    from optuna.visualization import matplotlib as ovm

    from .optuna_study import clipped_value

    plt = _plt()
    target = clipped_value(study)
    name = f"score ({d.space.objective.describe()})"
    made = []
    jobs = [("optuna_history.png", lambda: ovm.plot_optimization_history(study, target=target, target_name=name)),
            ("optuna_slice.png", lambda: ovm.plot_slice(study, target=target, target_name=name))]
    if d.importance_objective:
        jobs.insert(0, ("optuna_importances.png", lambda: ovm.plot_param_importances(
            study, evaluator=FanovaImportanceEvaluator(seed=d.space.seed), target=target, target_name=name)))
    for fname, make in jobs:
        try:
            # Optuna's experimental-API warnings, and tight_layout's about the slice plot's
            # colour-bar axes, say nothing a reader of the report can act on
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = make()
                fig = (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure()
                fig.set_size_inches(max(6.0, fig.get_size_inches()[0]), 4.0)
                made.append(_save(plt, fig, out / fname))
        except Exception:  # noqa: BLE001 - a plot Optuna cannot draw for this study is left out
            plt.close("all")
    return made
