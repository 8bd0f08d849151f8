"""``regtune diagnose``: read a finished study back and explain it.

Sources: MLflow (per-trial status, metric histories, figures), the persisted Optuna study
(for parameter importance) and the space file. Every trial gets one class; parameter
importance is computed for the objective and for divergence with Optuna's importance
API; a decision stump per parameter names the threshold that separates diverged from
converged trials; and a narrowed next space is written next to the report.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..errors import RegtuneError
from .space import Param, SearchSpace, parse_space

DIVERGED = ("diverged (NaN/inf)", "diverged (loss rising)", "collapsed")
CLASSES = ("converged", "stopped early", "no motion (over-regularised or lr too small)", "folding", *DIVERGED, "error", "interrupted",
           "unfinished")
COLOURS = {"converged": "#2ca02c", "stopped early": "#9e9e9e", "no motion (over-regularised or lr too small)": "#1f77b4",
           "folding": "#ff7f0e", "diverged (NaN/inf)": "#d62728", "diverged (loss rising)": "#e377c2",
           "collapsed": "#000000", "error": "#8c564b", "interrupted": "#bcbd22", "unfinished": "#17becf"}
NO_MOTION_MARGIN = 0.02


@dataclass
class TrialInfo:
    trial_id: str
    run_id: str
    params: dict[str, Any]
    status: str
    reason: str
    metrics: dict[str, float]
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    cls: str = ""


@dataclass
class Diagnosis:
    space: SearchSpace
    parent_run_id: str
    trials: list[TrialInfo]
    noreg_dice: float
    importance_objective: dict[str, float]
    importance_divergence: dict[str, float]
    separators: list[dict]
    safe_ranges: dict[str, Any]
    next_space: dict

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.cls] = out.get(t.cls, 0) + 1
        return out


def _typed(space: SearchSpace, key: str, raw: str) -> Any:
    p = next((q for q in space.params if q.key == key), None)
    if p is None:
        return raw
    if p.type == "categorical":
        for c in p.choices:
            if str(c) == raw:
                return c
        return raw
    return int(float(raw)) if p.type == "int" else float(raw)


def classify(t: TrialInfo, noreg_dice: float, folding_limit: float) -> str:
    st = t.status
    if st == "diverged_nan":
        return "diverged (NaN/inf)"
    if st == "diverged_rising":
        return "diverged (loss rising)"
    if st == "collapsed":
        return "collapsed"
    if st == "error":
        return "error"
    if st == "interrupted":
        return "interrupted"
    if st in ("running", "time_limit") and "best_val_dice" not in t.metrics:
        return "unfinished"
    dice = t.metrics.get("best_val_dice", math.nan)
    fold = t.metrics.get("best_val_folding_pct", t.metrics.get("final_val_folding_pct", 0.0))
    if math.isfinite(fold) and fold > folding_limit:
        return "folding"
    if math.isfinite(noreg_dice) and math.isfinite(dice) and dice < noreg_dice + NO_MOTION_MARGIN:
        return "no motion (over-regularised or lr too small)" if st == "completed" else "stopped early"
    if st == "stopped_early":
        return "stopped early"
    return "converged"


def load_trials(client, space: SearchSpace, experiment_id: str) -> tuple[str, list[TrialInfo]]:
    runs = client.search_runs([experiment_id], max_results=5000)
    parents = [r for r in runs if r.data.tags.get("regtune.kind") == "study"]
    if not parents:
        raise RegtuneError(f"experiment {experiment_id} holds no regtune study parent run")
    parent = sorted(parents, key=lambda r: r.info.start_time)[-1]
    out = []
    for r in runs:
        if r.data.tags.get("regtune.kind") != "trial" or r.data.tags.get("mlflow.parentRunId") != parent.info.run_id:
            continue
        if r.data.tags.get("regtune.orphan") == "true":
            continue
        params = {p.key: _typed(space, p.key, r.data.params[p.key]) for p in space.params if p.key in r.data.params}
        t = TrialInfo(r.data.tags.get("regtune.trial_id", r.info.run_id[:8]), r.info.run_id, params,
                      r.data.tags.get("regtune.status", "running"), r.data.tags.get("regtune.reason", ""), dict(r.data.metrics))
        for k in ("val_dice", "train_loss", "val_loss", "val_folding_pct", "val_dice_noreg"):
            t.history[k] = [(m.step, m.value) for m in sorted(client.get_metric_history(r.info.run_id, k), key=lambda m: m.step)]
        out.append(t)
    return parent.info.run_id, sorted(out, key=lambda t: t.trial_id)


def _noreg(trials: list[TrialInfo]) -> float:
    vals = [v for t in trials for _, v in t.history.get("val_dice_noreg", [])[:1] if math.isfinite(v)]
    if vals:
        return float(np.median(vals))
    # older studies: the first-epoch Dice most trials share (a trial that has not moved
    # yet scores exactly the no-registration Dice), else the lowest first-epoch Dice
    firsts = [round(t.history["val_dice"][0][1], 6) for t in trials if t.history.get("val_dice") and t.status not in
              ("diverged_nan", "diverged_rising", "collapsed") and math.isfinite(t.history["val_dice"][0][1])]
    if not firsts:
        return math.nan
    vals, counts = np.unique(firsts, return_counts=True)
    return float(vals[np.argmax(counts)]) if counts.max() >= 2 else float(min(firsts))


def _distributions(space: SearchSpace):
    import optuna.distributions as D

    out = {}
    for p in space.params:
        if p.type == "categorical":
            out[p.key] = D.CategoricalDistribution(list(p.choices))
        elif p.type == "int":
            out[p.key] = D.IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            out[p.key] = D.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    return out


def importances(space: SearchSpace, trials: list[TrialInfo], value: str) -> dict[str, float]:
    """Optuna parameter importance of ``value`` ("score" or "diverged") over the trials."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    dists = _distributions(space)
    study = optuna.create_study(direction="maximize")
    vals = []
    for t in trials:
        if t.cls in ("error", "interrupted", "unfinished"):
            continue
        v = float(t.cls in DIVERGED) if value == "diverged" else t.metrics.get("best_score", t.metrics.get("final_score", math.nan))
        if not math.isfinite(v):
            v = space.objective.diverged_score
        params = {k: v_ for k, v_ in t.params.items() if k in dists}
        study.add_trial(optuna.trial.create_trial(params=params, distributions={k: dists[k] for k in params}, value=v))
        vals.append(v)
    if len(vals) < 3 or len(set(vals)) < 2:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError):
        return {}


def separators(space: SearchSpace, trials: list[TrialInfo]) -> list[dict]:
    """Per parameter, the single threshold (or category set) that best separates diverged
    from non-diverged trials, best first."""
    rows = []
    ts = [t for t in trials if t.cls not in ("error", "interrupted", "unfinished")]
    y = np.array([t.cls in DIVERGED for t in ts])
    if y.all() or not y.any():
        return []
    for p in space.params:
        have = [(t.params[p.key], yi) for t, yi in zip(ts, y) if p.key in t.params]
        if len(have) < 2:
            continue
        vals = [h[0] for h in have]
        lab = np.array([h[1] for h in have])
        if p.type == "categorical":
            cats = sorted({repr(v) for v in vals})
            rate = {c: float(np.mean([lab[i] for i, v in enumerate(vals) if repr(v) == c])) for c in cats}
            bad = [c for c in cats if rate[c] > 0.5]
            pred = np.array([repr(v) in bad for v in vals])
            acc = float((pred == lab).mean())
            rows.append({"param": p.key, "accuracy": acc, "rule": f"{p.key} in {{{', '.join(bad)}}}" if bad else "none",
                         "detail": ", ".join(f"{c}: {100 * rate[c]:.0f}% diverged" for c in cats)})
            continue
        x = np.array(vals, dtype=float)
        order = np.unique(x)
        best = (0.0, None, None)
        for i in range(len(order) - 1):
            thr = math.sqrt(order[i] * order[i + 1]) if p.log and order[i] > 0 else (order[i] + order[i + 1]) / 2
            for above in (True, False):
                pred = x >= thr if above else x < thr
                acc = float((pred == lab).mean())
                if acc > best[0]:
                    best = (acc, thr, above)
        if best[1] is not None:
            acc, thr, above = best
            side = lab == (x >= thr if above else x < thr)
            rows.append({"param": p.key, "accuracy": acc, "threshold": thr, "diverges_above": above,
                         "rule": f"{p.key} {'>=' if above else '<'} {thr:.3g}",
                         "detail": f"{int(side.sum())}/{len(x)} trials on the predicted side"})
    return sorted(rows, key=lambda r: -r["accuracy"])


def safe_ranges(space: SearchSpace, trials: list[TrialInfo]) -> dict[str, Any]:
    ok = [t for t in trials if t.cls in ("converged", "stopped early", "folding", "no motion (over-regularised or lr too small)")]
    out: dict[str, Any] = {}
    for p in space.params:
        vals = [t.params[p.key] for t in ok if p.key in t.params]
        if not vals:
            continue
        out[p.key] = sorted({repr(v) for v in vals}) if p.type == "categorical" else [min(vals), max(vals)]
    return out


def next_space(space: SearchSpace, trials: list[TrialInfo]) -> dict:
    """The space narrowed to the region of the better half of the converged trials."""
    doc = yaml.safe_load(space.text) if space.text else {}
    doc = dict(doc or {})
    good = sorted([t for t in trials if t.cls == "converged"], key=lambda t: -t.metrics.get("best_score", -math.inf))
    if len(good) < 2:
        good = sorted([t for t in trials if t.cls not in DIVERGED + ("error", "interrupted", "unfinished")],
                      key=lambda t: -t.metrics.get("best_score", -math.inf))
    top = good[: max(2, (len(good) + 1) // 2)]
    params = dict(doc.get("params", {}))
    for p in space.params:
        vals = [t.params[p.key] for t in top if p.key in t.params]
        if not vals:
            continue
        spec = dict(params.get(p.key, {}))
        if p.type == "categorical":
            keep = [c for c in p.choices if c in vals]
            spec["choices"] = keep or list(p.choices)
        else:
            lo, hi = min(vals), max(vals)
            if p.log:
                lo, hi = max(p.low, lo / 2), min(p.high, hi * 2)
            else:
                pad = 0.1 * (p.high - p.low)
                lo, hi = max(p.low, lo - pad), min(p.high, hi + pad)
            if p.type == "int":
                lo, hi = int(math.floor(lo)), int(math.ceil(hi))
            if lo >= hi:
                lo, hi = p.low, p.high
            spec["low"], spec["high"] = lo, hi
        params[p.key] = spec
    doc["params"] = params
    doc["name"] = f"{space.name}-next"
    doc["description"] = f"narrowed by regtune diagnose from study '{space.name}' to its safe, promising region"
    doc.pop("start", None)
    if good:
        doc["start"] = [{k: v for k, v in good[0].params.items()}]
    return doc


# ---- figures -------------------------------------------------------------------------
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


def diagnose(tracking_uri: str, name: str, space_text: str | None = None) -> tuple[Diagnosis, Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise RegtuneError(f"no study '{name}' in {tracking_uri} (studies there: {', '.join(n for n in names if n != 'Default') or 'none'})")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`regtune.kind` = 'study'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise RegtuneError(f"experiment '{name}' holds no regtune study")
    if space_text is None:
        local = client.download_artifacts(runs[0].info.run_id, "space.yaml")
        space_text = Path(local).read_text()
    space = parse_space(yaml.safe_load(space_text), f"study '{name}' space.yaml", space_text)
    import dataclasses

    space = dataclasses.replace(space, name=name)  # a study started with --name keeps its own name
    parent, trials = load_trials(client, space, exp.experiment_id)
    noreg = _noreg(trials)
    for t in trials:
        t.cls = classify(t, noreg, space.objective.folding_limit_pct)
    d = Diagnosis(space, parent, trials, noreg, {}, {}, [], {}, {})
    d.importance_objective = importances(space, trials, "score")
    d.importance_divergence = importances(space, trials, "diverged")
    d.separators = separators(space, trials)
    d.safe_ranges = safe_ranges(space, trials)
    d.next_space = next_space(space, trials)
    return d, client


def _fmt_params(params: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def explain(d: Diagnosis) -> list[str]:
    """Plain-language findings, most important first."""
    lines = []
    n_div = sum(t.cls in DIVERGED for t in d.trials)
    counts = d.counts()
    lines.append(f"{len(d.trials)} trials: " + ", ".join(f"{n} {c}" for c, n in sorted(counts.items(), key=lambda x: -x[1])) + ".")
    if n_div and d.separators:
        s = d.separators[0]
        lines.append(f"Divergence is best explained by **{s['param']}**: the rule `{s['rule']}` predicts diverged vs not "
                     f"for {100 * s['accuracy']:.0f}% of trials ({s['detail']}).")
        if d.importance_divergence:
            top = next(iter(d.importance_divergence))
            lines.append(f"Optuna's importance for divergence ranks **{top}** first "
                         f"({d.importance_divergence[top]:.2f} of the total).")
        div_tr = [t for t in d.trials if t.cls in DIVERGED]
        reasons = sorted({t.reason.split(' at step')[0] for t in div_tr if t.reason})
        if reasons:
            lines.append("What the diverged trials reported: " + "; ".join(reasons[:4]) + ".")
    elif not n_div:
        lines.append("No trial diverged: the searched region is stable.")
    nm = [t for t in d.trials if t.cls == "no motion (over-regularised or lr too small)"]
    if nm:
        lines.append(f"{len(nm)} trial(s) never moved beyond the no-registration Dice ({d.noreg_dice:.3f}): "
                     + "; ".join(_fmt_params(t.params) for t in nm[:3]) + ".")
    if d.importance_objective:
        top = next(iter(d.importance_objective))
        lines.append(f"For the objective, **{top}** matters most ({d.importance_objective[top]:.2f}).")
    best = max(d.trials, key=lambda t: t.metrics.get("best_score", -math.inf), default=None)
    if best is not None:
        lines.append(f"Best trial {best.trial_id} ({best.cls}): Dice {best.metrics.get('best_val_dice', math.nan):.3f} vs "
                     f"{d.noreg_dice:.3f} without registration, folding {best.metrics.get('best_val_folding_pct', math.nan):.3f}% "
                     f"with {_fmt_params(best.params)}.")
    return lines


def write_report(d: Diagnosis, client, out_dir: Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs = [plot_curves(d, out / "curves_by_class.png"), plot_parallel(d, out / "parallel_coordinates.png"),
            plot_importances(d, out / "importances.png"), plot_scatter(d, out / "dice_vs_params.png")]
    overlays = []
    best = max((t for t in d.trials if t.cls not in DIVERGED), key=lambda t: t.metrics.get("best_score", -math.inf), default=None)
    div = next((t for t in d.trials if t.cls in DIVERGED and t.cls == "collapsed"), None) or \
        next((t for t in d.trials if t.cls in DIVERGED), None)
    for label, t in (("best", best), ("diverged", div)):
        if t is None:
            continue
        for art in ("figures/overlay.png", "figures/diverged_overlay.png", "figures/jacobian.png"):
            try:
                p = Path(client.download_artifacts(t.run_id, art, str(out)))
            except Exception:
                continue
            dest = out / f"{label}_{t.trial_id}_{Path(art).name}"
            p.replace(dest)
            overlays.append((label, t, dest))
    (out / "next_space.yaml").write_text(
        f"# written by regtune diagnose from study '{d.space.name}'\n" + yaml.safe_dump(d.next_space, sort_keys=False))
    findings = explain(d)
    md = [f"# Diagnosis of study `{d.space.name}`", "", *[f"- {x}" for x in findings], "",
          "## Trials", "", "| trial | class | status | best Dice | best fold % | epochs | params | reason |",
          "|---|---|---|---|---|---|---|---|"]
    for t in sorted(d.trials, key=lambda t: -t.metrics.get("best_score", -math.inf)):
        md.append(f"| {t.trial_id} | {t.cls} | {t.status} | {t.metrics.get('best_val_dice', math.nan):.3f} | "
                  f"{t.metrics.get('best_val_folding_pct', math.nan):.3f} | {len(t.history.get('val_dice', []))} | "
                  f"{_fmt_params(t.params)} | {t.reason[:90]} |")
    md += ["", "## Which parameters separate diverged from converged trials", "",
           "| parameter | rule | accuracy | detail |", "|---|---|---|---|"]
    md += [f"| {s['param']} | `{s['rule']}` | {100 * s['accuracy']:.0f}% | {s['detail']} |" for s in d.separators] or ["| — | no trial diverged | | |"]
    md += ["", "Parameter importance (Optuna, PED-ANOVA):", "",
           "| parameter | objective | divergence |", "|---|---|---|"]
    for p in d.space.params:
        md.append(f"| {p.key} | {d.importance_objective.get(p.key, math.nan):.3f} | {d.importance_divergence.get(p.key, math.nan):.3f} |")
    md += ["", "## Safe ranges (trials that did not diverge)", ""]
    md += [f"- `{k}`: {v}" for k, v in d.safe_ranges.items()]
    md += ["", "## Recommended next space", "", "Written to `next_space.yaml`:", "", "```yaml",
           yaml.safe_dump(d.next_space, sort_keys=False).rstrip(), "```", "", "## Figures", ""]
    md += [f"![{f.stem}]({f.name})" for f in figs]
    md += [f"![{label} trial {t.trial_id}]({p.name})" for label, t, p in overlays]
    (out / "report.md").write_text("\n".join(md) + "\n")
    (out / "report.html").write_text(_html(d, findings, md, figs, overlays))
    (out / "diagnosis.json").write_text(json.dumps({
        "study": d.space.name, "noreg_dice": d.noreg_dice, "counts": d.counts(),
        "trials": [{"trial_id": t.trial_id, "class": t.cls, "status": t.status, "params": t.params,
                    "best_val_dice": t.metrics.get("best_val_dice")} for t in d.trials],
        "importance_objective": d.importance_objective, "importance_divergence": d.importance_divergence,
        "separators": d.separators, "safe_ranges": d.safe_ranges}, indent=1, default=str))
    return out / "report.html"


def _html(d: Diagnosis, findings: list[str], md: list[str], figs: list[Path], overlays) -> str:
    def md_inline(s: str) -> str:
        s = html.escape(s)
        import re

        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", s)

    rows = []
    for t in sorted(d.trials, key=lambda t: -t.metrics.get("best_score", -math.inf)):
        rows.append(f"<tr><td>{t.trial_id}</td><td><span style='color:{COLOURS.get(t.cls, '#777')}'>&#9679;</span> {t.cls}</td>"
                    f"<td>{t.metrics.get('best_val_dice', math.nan):.3f}</td><td>{t.metrics.get('best_val_folding_pct', math.nan):.3f}</td>"
                    f"<td>{html.escape(_fmt_params(t.params))}</td><td>{html.escape(t.reason[:80])}</td></tr>")
    seps = "".join(f"<tr><td>{s['param']}</td><td><code>{html.escape(s['rule'])}</code></td><td>{100 * s['accuracy']:.0f}%</td>"
                   f"<td>{html.escape(s['detail'])}</td></tr>" for s in d.separators)
    imgs = "".join(f"<figure><img src='{f.name}'><figcaption>{f.stem.replace('_', ' ')}</figcaption></figure>" for f in figs)
    ovs = "".join(f"<figure><img src='{p.name}' style='max-width:48%'><figcaption>{label} trial {t.trial_id} ({t.cls}): "
                  f"{html.escape(_fmt_params(t.params))}</figcaption></figure>" for label, t, p in overlays)
    nxt = html.escape(yaml.safe_dump(d.next_space, sort_keys=False))
    return f"""<!doctype html><html><head><meta charset='utf-8'><title>regtune diagnosis: {d.space.name}</title>
<style>body{{font-family:sans-serif;max-width:1250px;margin:24px auto;color:#222}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 7px}} img{{max-width:100%}} code{{background:#f3f3f3}} li{{margin:4px 0}}</style></head>
<body><h1>Diagnosis of study <code>{d.space.name}</code></h1><ul>{''.join(f'<li>{md_inline(x)}</li>' for x in findings)}</ul>
<h2>Which parameters separate diverged from converged trials</h2><table><tr><th>parameter</th><th>rule</th><th>accuracy</th><th>detail</th></tr>{seps}</table>
<h2>Figures</h2>{imgs}<h2>Best and diverged trial</h2>{ovs or '<p>no figures available</p>'}
<h2>Trials</h2><table><tr><th>trial</th><th>class</th><th>best Dice</th><th>fold %</th><th>params</th><th>reason</th></tr>{''.join(rows)}</table>
<h2>Recommended next space (next_space.yaml)</h2><pre>{nxt}</pre></body></html>"""


__all__ = ["diagnose", "write_report", "explain", "classify", "Diagnosis", "TrialInfo", "CLASSES", "Param"]
