"""The study's model: what every study hands over, and ``regtune train --from-study``.

- :func:`write_study_model`: every study ends with **the study's model** in its folder:
  ``best_config.yaml`` (the complete config the model was trained with; ``regtune train
  --config best_config.yaml`` reproduces it), ``best.pt`` and ``test_scores.json`` (its
  scores on the reserved test subjects, never used to pick an epoch or a trial, beside
  no registration). It is the best promoted trial when promotion ran
  (:mod:`regtune.search.promote`), else the best trial.
- :func:`study_config`: the config behind ``regtune train --from-study NAME [--trial ID]``.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from ..errors import RegtuneError
from .promote import candidates

MODEL_FILES = ("best_config.yaml", "best.pt", "test_scores.json")


def config_yaml(cfg, header: list[str]) -> str:
    return "".join(f"# {h}\n" for h in header) + yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def write_study_model(opts, space, res, vols) -> dict[str, Any]:
    """Write best_config.yaml, best.pt and test_scores.json for the study's model (see module doc)."""
    from mlflow.entities import Metric

    from ..amortise import chosen_in
    from ..checkpoint import load_checkpoint
    from ..evaluate import evaluate_pairs, summarise
    from .store import open_client

    study_dir = Path(opts.study_dir)
    promoted = bool(res.promoted)
    pool = res.promoted if promoted else res.trials
    best = next(iter(candidates(pool, 1)), None)
    if best is None:
        res.notes.append("no study model: no trial finished with a score (all diverged, errored or were cancelled)")
        return {}
    trials = getattr(res, "_promoted_trials", {}) if promoted else {}
    if not promoted:
        trials = {t.trial_id: t for t in getattr(res, "_search_trials", [])}
    trial = trials.get(best["trial_id"])
    if trial is None or trial.checkpoint is None:
        res.notes.append(f"no study model: trial {best['trial_id']} has no checkpoint")
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(trial.checkpoint.to_directory(tmp))
        if not (d / "best.pt").is_file():
            res.notes.append(f"no study model: trial {best['trial_id']} saved no best.pt")
            return {}
        shutil.copy2(d / "best.pt", study_dir / "best.pt.tmp")
        (study_dir / "best.pt.tmp").replace(study_dir / "best.pt")
    ck = load_checkpoint(study_dir / "best.pt")
    cfg = ck.config
    src = best["params"].get("regtune.promote_from")
    what = (f"promoted trial {best['trial_id']} (from search trial {src}, {best.get('mode')}, {cfg.train.epochs} epochs)"
            if promoted else f"best trial {best['trial_id']} of the search")
    header = [f"study '{space.name}': the config of its model, {what}; score {best['score']:.4f} "
              f"({space.objective.describe()}) at epoch {ck.epoch}",
              "complete: `regtune train --config best_config.yaml` trains this model again (same data, split, seed, steps);",
              f"train.threads={cfg.train.threads} as in the trial (CPU results are bit-for-bit only with the same threads);",
              "override anything with --set, e.g. --set train.threads=0 to use every core"]
    lam = chosen_in(ck.metrics)  # an amortised study: the weights its search chose for this model
    if lam:
        at = " ".join(f"{k}={v:.6g}" for k, v in lam.items())
        header.append(f"amortised: best.pt registers at the chosen {at} (its own `loss.*` value above is not used); "
                      f"another weight of the range: regtune evaluate|register --checkpoint best.pt --set KEY=VALUE")
    (study_dir / "best_config.yaml").write_text(config_yaml(cfg, header))
    model: dict[str, Any] = {"trial_id": best["trial_id"], "run_id": best.get("run_id", ""), "promoted": promoted,
                             "promoted_from": src, "score": best["score"], "epoch": ck.epoch,
                             "config": str(study_dir / "best_config.yaml"), "checkpoint": str(study_dir / "best.pt"),
                             "val": {k: best.get(k) for k in ("val_dice", "val_hd95", "val_sdlogj", "val_folding_pct")},
                             "chosen_weights": lam}
    names = ck.extra.get("test_pairs") or []
    if names:
        t0 = time.monotonic()
        pairs = [(vols.index(f), vols.index(m)) for f, m in names]
        rows = evaluate_pairs(ck.model("cpu"), vols, pairs, cfg.data.downsample, "cpu")
        base = summarise(evaluate_pairs(None, vols, pairs))
        s = summarise(rows)
        keys = ("dice", "dice30", "dice_std", "hd95", "sdlogj", "sdlogj_l2r", "folding_pct")
        model["test"] = {k: s.get(k, math.nan) for k in keys}
        model["no_registration"] = {k: base.get(k, math.nan) for k in ("dice", "dice30", "hd95")}
        model["test_pairs"] = len(pairs)
        model["test_subjects"] = len({n for p in names for n in p})
        model["test_seconds"] = time.monotonic() - t0
        with (study_dir / "test_pairs.csv").open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        res.notes.append(f"no held-out scores: the model's config has data.test_subjects={cfg.data.test_subjects} "
                         f"(no reserved test split)")
    (study_dir / "test_scores.json").write_text(json.dumps(model, indent=1, default=str))
    try:
        client = open_client(opts.mlflow_uri)
        state = json.loads((study_dir / "mlflow.json").read_text())
        parent = state["parent_run_id"]
        ts = int(time.time() * 1000)
        if "test" in model:
            metrics = [Metric(f"test_{k}", float(v), ts, 0) for k, v in model["test"].items() if math.isfinite(v)]
            metrics.append(Metric("test_pairs", float(model["test_pairs"]), ts, 0))
            for rid in {parent, model["run_id"]} - {""}:
                client.log_batch(rid, metrics=metrics)
        for f in ("best_config.yaml", "test_scores.json"):
            client.log_artifact(parent, str(study_dir / f), artifact_path="model")
        client.set_tag(parent, "regtune.model_trial", model["trial_id"])
        client.set_tag(parent, "regtune.model_run_id", model["run_id"])
        client.set_terminated(parent, status="FINISHED")
    except Exception as e:  # noqa: BLE001 - the files are written; MLflow is a convenience here
        res.notes.append(f"MLflow: could not log the study's model ({type(e).__name__}: {e})")
    return model


def study_dir_of(runs_dir: str | Path, name: str) -> Path:
    d = Path(runs_dir) / "studies" / name
    if not d.is_dir():
        have = sorted(p.name for p in (Path(runs_dir) / "studies").glob("*") if p.is_dir()) \
            if (Path(runs_dir) / "studies").is_dir() else []
        raise RegtuneError(f"{d}: no study '{name}' (studies in {Path(runs_dir) / 'studies'}: {', '.join(have) or 'none'})")
    return d


def study_config(runs_dir: str | Path, name: str, trial: str | None = None) -> Path:
    """The config file behind ``regtune train --from-study NAME [--trial ID]``: the study's
    ``best_config.yaml``, or (with a trial id) that trial's complete config, written to
    ``studies/NAME/configs/ID.yaml`` from the checkpoint MLflow holds for it."""
    d = study_dir_of(runs_dir, name)
    if trial is None:
        p = d / "best_config.yaml"
        if not p.is_file():
            raise RegtuneError(f"{p}: the study has no model yet (it was interrupted, or every trial diverged); "
                               f"finish it with 'regtune search ... --resume', or pick a trial with --trial ID")
        return p
    state = json.loads((d / "mlflow.json").read_text()) if (d / "mlflow.json").is_file() else {}
    runs = {**state.get("trials", {}), **state.get("promoted", {})}
    if trial not in runs:
        raise RegtuneError(f"study '{name}' has no trial '{trial}' (trials: {', '.join(sorted(runs)[:8]) or 'none'}"
                           f"{', ...' if len(runs) > 8 else ''})")
    info = json.loads((d / "study.json").read_text()) if (d / "study.json").is_file() else {}
    from ..checkpoint import load_checkpoint
    from .store import open_client

    client = open_client(info.get("tracking_uri") or f"sqlite:///{(Path(runs_dir) / 'mlflow.db').resolve()}")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(runs[trial], "checkpoint/best.pt", tmp)
        except Exception:  # noqa: BLE001
            raise RegtuneError(f"trial {trial} of study '{name}' saved no checkpoint (it errored or diverged before "
                               f"its first finished epoch)") from None
        ck = load_checkpoint(local)
    out = d / "configs" / f"{trial}.yaml"
    out.parent.mkdir(exist_ok=True)
    out.write_text(config_yaml(ck.config, [f"study '{name}', trial {trial}: its complete config (from its best.pt)"]))
    return out


__all__ = ["write_study_model", "study_config", "config_yaml", "MODEL_FILES"]
