"""What ``regtune search-weights`` leaves behind: ``curve.png`` (Dice and SDlogJ against the
weight, log axis, no-registration level, infeasible region shaded, the chosen point),
``overlays.png`` (one validation pair at the low end, the chosen weight and the high end),
``points.csv``, ``result.json``, ``chosen.yaml`` (:func:`write_outputs`; the command adds
``chosen.pt``, :func:`regtune.checkpoint.save_at_weights`), and one MLflow run
with per-setting metrics, the curve and the choice (:func:`track`)."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..amortise import describe
from ..data.dataset import Volumes
from ..data.pairs import Pair
from .weight_results import SearchResult


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
        if res.settings.max_sdlogj is not None:  # the cap (with --match: the reference's own on all val pairs)
            ref = f" = {Path(res.reference['checkpoint']).parent.name}'s on all val pairs" if res.reference else ""
            ax2.axhline(res.settings.max_sdlogj, color="C3", ls="--", lw=1, label=f"SDlogJ cap {res.settings.max_sdlogj:.3g}{ref}")
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
        on_curve = res.chosen_on_curve
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
    fig.suptitle(title or f"{len(res.points)} settings in {res.seconds:.0f} s; objective {res.objective.describe()},\n"
                 f"constraints {res.settings.describe()}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")  # long legends and titles stay inside the image
    plt.close(fig)
    return path


def tradeoff_png(path: str | Path, res: SearchResult) -> Path:
    """The trade-off itself: Dice against SDlogJ of every setting tried (search pairs),
    coloured by the first amortised weight, the settings that break the constraints
    hollow, the chosen setting starred; with ``--match`` the reference network on the
    same pairs, so a curve above and left of it is better and smoother."""
    from matplotlib.colors import LogNorm, Normalize

    plt = _plt()
    path = Path(path)
    r = res.ranges[0]
    x = np.array([p.metrics["sdlogj"] for p in res.points])
    y = np.array([p.metrics["dice"] for p in res.points])
    lam = np.array([p.values[r.key] for p in res.points])
    ok = np.array([p.feasible for p in res.points])
    norm = LogNorm(r.low, r.high) if r.log and r.low > 0 else Normalize(r.low, r.high)
    fig, ax = plt.subplots(figsize=(7.2, 5.4))
    sc = ax.scatter(x[ok], y[ok], c=lam[ok], norm=norm, cmap="viridis", s=14, label="meets the constraints")
    ax.scatter(x[~ok], y[~ok], facecolors="none", edgecolors=plt.get_cmap("viridis")(norm(lam[~ok])), s=14,
               label=f"breaks {res.settings.describe()}")
    fig.colorbar(sc, ax=ax, label=r.key + (" (log)" if r.log else ""))
    on_curve = res.chosen_on_curve
    if on_curve is not None:
        ax.plot([on_curve.metrics["sdlogj"]], [on_curve.metrics["dice"]], "*", ms=16, color="gold", mec="k",
                label=f"chosen {describe(res.chosen.values)}")
    ref = res.reference
    if ref and ref.get("search"):
        ax.plot([ref["search"]["sdlogj"]], [ref["search"]["dice"]], "D", ms=9, color="C3", mec="k",
                label=f"--match {Path(ref['checkpoint']).parent.name}")
    if res.settings.max_sdlogj is not None:
        ax.axvline(res.settings.max_sdlogj, color="C3", ls="--", lw=1,
                   label=f"SDlogJ cap {res.settings.max_sdlogj:.3g}" + (" (reference, all val pairs)" if ref else ""))
    ax.set_xlabel("SDlogJ = std(log det J)  (smoother: left)")
    ax.set_ylabel(f"Dice ({len(res.search_pairs)} validation pairs; no registration {res.noreg['dice']:.3f})")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"accuracy against smoothness, {len(res.points)} weight settings of one network", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
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
    paths = {"curve": curve_png(out / "curve.png", res), "tradeoff": tradeoff_png(out / "tradeoff.png", res),
             "points": out / "points.csv", "result": out / "result.json", "config": out / "chosen.yaml"}
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
            f"# the conditional network at these weights: regtune evaluate|register --checkpoint chosen.pt\n"
            f"#   (or --checkpoint {checkpoint or 'CK'} {sets})\n"
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
              **{f"chosen.{k}": f"{v:.6g}" for k, v in res.chosen.values.items()},
              **({"match": res.reference["checkpoint"]} if res.reference else {})}
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
    if res.reference:  # --match: the reference's scores, and chosen - reference on the test pairs
        ref, d = res.reference, res.reference.get("test_dice_diff")
        summary.update({**{f"ref_val_{k}": v for k, v in ref["val"].items()}, **{f"ref_test_{k}": v for k, v in ref["test"].items()},
                        **({"chosen_minus_ref_test_dice": d["diff"], "chosen_minus_ref_test_dice_se": d["se"]} if d else {})})
    metrics += [Metric(k, float(v), ts, 0) for k, v in summary.items() if isinstance(v, (int, float)) and math.isfinite(v)]
    for i in range(0, len(metrics), 900):
        client.log_batch(rid, metrics=metrics[i: i + 900])
    client.log_batch(rid, tags=[RunTag("regtune.chosen", describe(res.chosen.values))])
    for name, p in (artifacts or {}).items():
        if Path(p).is_file():
            client.log_artifact(rid, str(p))
    client.set_terminated(rid, status="FINISHED")
    return rid
