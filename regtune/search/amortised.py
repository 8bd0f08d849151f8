"""Amortised parameters in a study (``amortised: true`` in a space file).

A loss weight marked ``amortised: true`` is not sampled per Ray trial: it leaves the
sampled parameters and becomes the trials' ``amortise.ranges``, so every trial trains one
conditional network over its range. Every epoch the inference-time search
(:func:`regtune.search.weight_search.search_weights`) picks the weight on the validation pairs
and the epoch is scored there (:class:`TrialRescore`, the core's ``train(rescore=...)``):
the trial's best epoch, its ``best.pt`` and its score are the searched ones, and the
chosen weight is recorded as ``lambda.<key>`` (in the reports, in MLflow and in best.pt,
whose network then registers at it by default). Where a trial can end (ASHA's rungs, its
last epoch) it also writes ``figures/weight_curve.png`` and ``figures/weight_curve.json``
(every weight tried; Dice, HD95, SDlogJ and folding on a grid; the choice), which
``regtune diagnose`` draws per trial.

Search settings per trial come from the space's optional ``weight_search:`` block
(``n``, ``pairs``, ``refine``, ``max_folding_pct``, ``max_sdlogj``, ``max_sdlogj_l2r``, ``profile``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..amortise import AMORTISABLE, LAMBDA_PREFIX
from ..errors import ConfigError

CURVE_FILE = "weight_curve.json"
CURVE_PNG = "weight_curve.png"


@dataclass(frozen=True)
class TrialSearch:
    """The ``weight_search:`` block of a space: the inference-time search each trial runs."""

    n: int = 24
    pairs: int = 4
    refine: int = 3
    max_folding_pct: float | None = 0.05
    max_sdlogj: float | None = None
    max_sdlogj_l2r: float | None = None  # the organisers' std(log(det J + 3))
    profile: int = 7  # grid points of the per-trial curve scored with HD95 (0 = none)

    def settings(self, seed: int = 0):
        from .weight_results import SearchSettings

        return SearchSettings(n=self.n, pairs=self.pairs, refine=self.refine, max_folding_pct=self.max_folding_pct,
                              max_sdlogj=self.max_sdlogj, max_sdlogj_l2r=self.max_sdlogj_l2r, per_round=8, seed=seed)


def parse_trial_search(src: str, doc: Any) -> TrialSearch:
    from .space import SpaceError

    if doc is None:
        return TrialSearch()
    if not isinstance(doc, Mapping):
        raise SpaceError(f"{src}: key 'weight_search': must be a mapping, got {type(doc).__name__}")
    ints = {"n": 2, "pairs": 0, "refine": 1, "profile": 0}
    vals: dict[str, Any] = {}
    for k, v in doc.items():
        if k in ints:
            if isinstance(v, bool) or not isinstance(v, int) or v < ints[k]:
                raise SpaceError(f"{src}: key 'weight_search.{k}': must be a whole number >= {ints[k]}, got {v!r}")
        elif k in ("max_folding_pct", "max_sdlogj", "max_sdlogj_l2r"):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0):
                raise SpaceError(f"{src}: key 'weight_search.{k}': must be a number >= 0 or null (no constraint), got {v!r}")
        else:
            raise SpaceError(f"{src}: key 'weight_search.{k}': unknown field (allowed: n, pairs, refine, profile, "
                             f"max_folding_pct, max_sdlogj, max_sdlogj_l2r)")
        vals[k] = v
    return TrialSearch(**vals)


def check_amortised_param(src: str, key: str, spec: Mapping) -> bool:
    """The ``amortised:`` flag of a parameter spec (validated): only float loss weights."""
    from .space import SpaceError

    flag = spec.get("amortised", False)
    if not isinstance(flag, bool):
        raise SpaceError(f"{src}: key 'params.{key}.amortised': must be true or false, got {flag!r}")
    if flag:
        if key not in AMORTISABLE:
            raise SpaceError(f"{src}: key 'params.{key}.amortised': only loss weights can be amortised "
                             f"({', '.join(AMORTISABLE)}); sample {key} per trial instead")
        if spec.get("type") != "float" or "step" in spec or spec.get("when"):
            raise SpaceError(f"{src}: key 'params.{key}.amortised': needs type: float with low/high (and optionally "
                             f"log: true), no step or when")
    return flag


def fold_amortised(src: str, base, known: dict, doc: Any):
    """Parse-time: the amortised parameters leave the sampled ones and become the trials'
    ``amortise.ranges`` in ``base``; returns (base, sampled params, TrialSearch or None)."""
    from .space import SpaceError

    amortised = [p for p in known.values() if p.amortised]
    sampled = {k: p for k, p in known.items() if not p.amortised}
    if not amortised:
        if doc is not None and not base.amortise.ranges:
            raise SpaceError(f"{src}: key 'weight_search': no parameter is amortised (mark a loss weight "
                             f"'amortised: true') and base sets no amortise.ranges; delete the block")
        return base, sampled, (parse_trial_search(src, doc) if base.amortise.ranges else None)
    if not sampled:
        raise SpaceError(f"{src}: key 'params': every parameter is amortised, so Ray trials would have nothing to "
                         f"sample; train one network with regtune train --amortise "
                         f"{amortised[0].key}=LOW:HIGH[:log] and choose with regtune search-weights instead")
    if base.amortise.ranges:
        raise SpaceError(f"{src}: key 'base.amortise.ranges': give the amortised weights either in base or as "
                         f"params with amortised: true, not both")
    for p in sampled.values():
        for wk, _ in p.when:
            if wk in known and known[wk].amortised:
                raise SpaceError(f"{src}: key 'params.{p.key}.when.{wk}': {wk} is amortised (not sampled per trial)")
    try:
        base = base.with_values(trial_values(amortised), source=f"{src} params (amortised)")
    except ConfigError as e:
        raise SpaceError(str(e)) from None
    return base, sampled, parse_trial_search(src, doc)


def ranges_of_space(params) -> list[str]:
    """``amortise.ranges`` of a trial: one ``KEY=LOW:HIGH[:log]`` per amortised parameter."""
    return [f"{p.key}={p.low!r}:{p.high!r}" + (":log" if p.log else "") for p in params if getattr(p, "amortised", False)]


def trial_values(params) -> dict[str, Any]:
    """The config values every trial of a space with amortised parameters gets."""
    rs = ranges_of_space(params)
    return {"amortise.ranges": rs} if rs else {}


class TrialRescore:
    """``train(rescore=...)`` of an amortised study trial: every epoch, the inference-time
    search picks the weight on the validation pairs and the epoch is scored there (so the
    trial's best epoch, its best.pt and its score are the searched ones, the weight recorded
    as ``lambda.<key>``; the reference-weight validation numbers stay as ``ref_val_*``).
    At ``figure_epochs`` it also writes the curve (``weight_curve.json`` / ``.png``)."""

    def __init__(self, cfg, vols, device, search: "TrialSearch | None", figures: Path, figure_epochs=(), seed: int = 0):
        from ..objective import Objective

        self.cfg, self.vols, self.device = cfg, vols, device
        self.search = search or TrialSearch()
        self.figures, self.figure_epochs, self.seed = Path(figures), set(figure_epochs), seed
        self.objective = Objective.from_train(cfg.train)

    def __call__(self, epoch: int, model, val_pairs, metrics: dict) -> dict:
        from .weight_outputs import curve_png
        from .weight_search import profile, search_weights

        was_training = model.training
        before = model.conditioner.values()
        draw = epoch in self.figure_epochs
        try:
            res = search_weights(model, self.cfg, self.vols, list(val_pairs), self.search.settings(self.seed),
                                 objective=self.objective, device=self.device)
            prof = profile(model, self.cfg, self.vols, res.search_pairs, self.search.profile, self.device) \
                if draw and self.search.profile else []
        finally:
            model.conditioner.set_values(before)
            model.train(was_training)
        c = res.chosen
        out = rename_reference(metrics)
        out.update({f"val_{k}": float(v) for k, v in c.metrics.items() if k in ("dice", "hd95", "sdlogj", "sdlogj_l2r",
                                                                                  "folding_pct", "dice_std")})
        out.update({f"{LAMBDA_PREFIX}{k}": float(v) for k, v in c.values.items()})
        out["weight_search_seconds"] = res.seconds + res.refine_seconds
        out["weight_search_feasible"] = float(c.feasible)
        if draw:
            self.figures.mkdir(parents=True, exist_ok=True)
            curve_png(self.figures / CURVE_PNG, res, title=f"epoch {epoch}: {len(res.points)} weights on "
                      f"{len(res.search_pairs)} val pairs; constraints {res.settings.describe()}")
            (self.figures / CURVE_FILE).write_text(json.dumps({
                "epoch": epoch, "keys": [r.key for r in res.ranges], "log": [r.log for r in res.ranges],
                "ranges": [[r.low, r.high] for r in res.ranges], "constraints": res.settings.describe(),
                "points": [p.row() for p in res.points], "profile": [p.row() for p in prof],
                "chosen": {**c.values, **c.metrics, "score": c.score, "feasible": c.feasible},
                "noreg": res.noreg, "search_pairs": len(res.search_pairs), "val_pairs": len(res.val_pairs)}, default=float))
        return out


def rename_reference(metrics: dict[str, float]) -> dict[str, float]:
    """The reference-weight validation metrics of an amortised trial, as ``ref_val_*``."""
    return {f"ref_{k}": v for k, v in metrics.items() if k in ("val_dice", "val_hd95", "val_sdlogj", "val_folding_pct")}


def curves_png(path: str | Path, curves: dict[str, dict], title: str = "") -> Path | None:
    """Per trial (a row each): Dice, HD95, SDlogJ and % folding against the amortised
    weight (log axis for a log range), the chosen weight marked. ``curves``: trial id ->
    the trial's ``weight_curve.json``."""
    if not curves:
        return None
    from ..figures import _plt

    plt = _plt()
    path = Path(path)
    panels = (("dice", "Dice"), ("hd95", "HD95 (mm)"), ("sdlogj", "SDlogJ"), ("folding_pct", "% folding"))
    fig, axes = plt.subplots(len(curves), 4, figsize=(15, 2.8 * len(curves)), squeeze=False)
    for row, (tid, c) in enumerate(sorted(curves.items())):
        key = c["keys"][0]
        pts = sorted(c["points"], key=lambda p: p[key])
        prof = sorted(c.get("profile") or [], key=lambda p: p[key])
        ch = c["chosen"]
        for ax, (m, label) in zip(axes[row], panels):
            xs = [p[key] for p in pts if _finite(p.get(m))]
            if xs:
                ax.plot(xs, [p[m] for p in pts if _finite(p.get(m))], "o-", ms=2, lw=1, color="C0", label="search")
            xp = [p[key] for p in prof if _finite(p.get(m))]
            if xp:
                ax.plot(xp, [p[m] for p in prof if _finite(p.get(m))], "s--", ms=3, lw=1, color="C1", label="grid")
            if m == "dice" and _finite(c.get("noreg", {}).get("dice")):
                ax.axhline(c["noreg"]["dice"], color="grey", ls=":", lw=1, label="no registration")
            if _finite(ch.get(m)):
                ax.plot([ch[key]], [ch[m]], "*", ms=12, color="gold", mec="k", label=f"chosen {ch[key]:.3g}")
            ax.axvline(ch[key], color="k", lw=0.8, ls="--")
            if c["log"][0]:
                ax.set_xscale("log")
            ax.set_title(f"trial {tid}: {label}" if m == "dice" else label, fontsize=9)
            ax.set_xlabel(key, fontsize=8)
            if row == 0 and m == "dice":
                ax.legend(fontsize=7)
    fig.suptitle(title or "amortised trials: validation metrics against the loss weight (chosen: best feasible, "
                          "all validation pairs)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def load_curves(client, runs: Mapping[str, str]) -> dict[str, dict]:
    """``weight_curve.json`` of each trial run that has one (trial id -> curve)."""
    import tempfile

    out = {}
    for tid, rid in runs.items():
        try:
            with tempfile.TemporaryDirectory() as tmp:
                p = client.download_artifacts(rid, f"figures/{CURVE_FILE}", tmp)
                out[tid] = json.loads(Path(p).read_text())
        except Exception:  # noqa: BLE001 - a trial without the file (not amortised, stopped before a rung)
            continue
    return out


__all__ = ["TrialSearch", "parse_trial_search", "check_amortised_param", "fold_amortised", "ranges_of_space",
           "trial_values", "TrialRescore", "curves_png", "load_curves"]


def report_figures(trials, client, out: str | Path) -> list[Path]:
    """``regtune diagnose``: per amortised trial, its validation curves against the weight
    with the chosen point (``weight_curves.png``); no figure for a study without them."""
    curves = load_curves(client, {t.trial_id: t.run_id for t in trials if getattr(t, "run_id", "")})
    p = curves_png(Path(out) / "weight_curves.png", curves)
    return [p] if p is not None else []
