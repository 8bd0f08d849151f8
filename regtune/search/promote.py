"""From study to model: promotion of the top trials.

- :func:`promote_top` (``regtune search ... --promote``): the ``top_k`` best trials (the one
  ranking of :mod:`regtune.search.outcome`; diverged trials never) are trained to the
  space's ``promote:`` budget as Ray trials (with ``promote.incumbent`` / ``min_gain``, the
  recipe in hand stays unless a trial beats it by more than that margin:
  :func:`promotion_order`), tracked as MLflow child runs of the study
  (``regtune.kind=promoted``). ``mode: continue`` resumes each from its last checkpoint
  (identical steps to a fresh run of the full budget when the learning-rate schedule is
  constant, so ``best_config.yaml`` reproduces it; a trial with another schedule is
  retrained, because its annealing depended on the shorter search budget); ``retrain``
  starts from scratch. A budget in minutes becomes epochs from the trial's own measured
  seconds per epoch, so every promoted config is a fixed number of steps.

The study's model that a study hands over (``best_config.yaml``, ``best.pt``,
``test_scores.json``) is written by :mod:`regtune.search.study_model`.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from .outcome import DIVERGED_STATUSES, ranked

CK_FILES = ("last.pt", "best.pt", "history.jsonl", "split.json")


def epochs_for_minutes(minutes: float, search_epoch_s: float, search_steps: int, steps: int,
                       at_least: int) -> tuple[int, str]:
    """A promotion budget in minutes as whole epochs, and the sentence that says how.

    The pace is the search trial's own (``search_epoch_s`` seconds per epoch of
    ``search_steps`` steps), per step, so a ``promote.set`` that changes
    ``train.steps_per_epoch`` changes the epoch length it is divided by. Not modelled: a
    change of threads (``promote.cpu``) or of ``data.val_pairs``; the number of epochs is
    fixed here so that ``best_config.yaml`` is a fixed number of steps.
    """
    if minutes <= 0 or search_epoch_s <= 0 or search_steps < 1 or steps < 1:
        raise ValueError(f"epochs_for_minutes: minutes, seconds per epoch and steps must be > 0, got "
                         f"{minutes}, {search_epoch_s}, {search_steps}, {steps}")
    per = search_epoch_s / search_steps * steps
    n = max(at_least, int(60.0 * minutes // per))
    said = (f"{minutes:g} min at {search_epoch_s / search_steps:.3f} s/step (measured in the search) x {steps} "
            f"steps/epoch -> {n} epochs")
    return n, said


def candidates(rows: list[dict], k: int) -> list[dict]:
    """The k best trials that may be promoted (a score, not diverged, not errored)."""
    ok = [r for r in rows if r.get("score") is not None and r["status"] not in DIVERGED_STATUSES + ("error", "cancelled")]
    return ranked(ok)[:k]


def promotion_order(rows: list[dict], space) -> tuple[list[dict], str]:
    """The trials to promote, best first, and a note on the incumbent rule ('' when unused).

    The one ranking of :func:`candidates`, except that with ``promote.incumbent`` the trial
    of that ``start:`` point keeps its place above every trial that does not beat its score
    by more than ``promote.min_gain``: a short trial's win within its noise does not displace
    the recipe in hand."""
    p = space.promote
    order = candidates(rows, len(rows))
    if p.incumbent < 0:
        return order[:p.top_k], ""
    point = space.start[p.incumbent]
    inc = next((r for r in order if all(r["params"].get(k) == v for k, v in point.items())), None)
    if inc is None:
        return order[:p.top_k], (f"the incumbent start[{p.incumbent}] has no score (diverged, errored or not run), "
                                 "so the ranking alone chose")
    rivals = [r for r in order if r is not inc]
    above = [r for r in rivals if r["score"] > inc["score"] + p.min_gain]
    order = above + [inc] + rivals[len(above):]  # rivals are ranked: those above the bar come first
    said = f"the incumbent start[{p.incumbent}] is trial {inc['trial_id']} (score {inc['score']:.4f}); "
    if not above:
        lead = rivals[0] if rivals else None
        said += (f"no trial beat it by more than promote.min_gain {p.min_gain:g}"
                 + (f" (the best, trial {lead['trial_id']}, by {lead['score'] - inc['score']:+.4f})" if lead else ""))
    else:
        said += f"{len(above)} trial(s) beat it by more than promote.min_gain {p.min_gain:g}"
    return order[:p.top_k], said


def _checkpoint_files(trial) -> dict[str, bytes]:
    ck = getattr(trial, "checkpoint", None)
    if ck is None:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(ck.to_directory(tmp))
        return {n: (d / n).read_bytes() for n in CK_FILES if (d / n).is_file()}


def promote_top(opts, space, res, tracker, trainable_args: dict[str, Any]) -> list[dict]:
    """Train the top trials of ``res`` to the full budget; returns one row per promoted trial."""
    from ray import tune

    from .outcome import SCORE_KEY
    from .ray_env import catch_interrupt
    from .study import result_loggers
    from .table import trial_rows
    from .tracking import StudyTracker

    p = space.promote
    top, said = promotion_order(res.trials, space)
    if said:
        res.notes.append(f"promotion: {said}")
        if opts.verbose:
            print(f"promotion: {said}", flush=True)
    if not top:
        res.notes.append("promotion: no trial with a score to promote (all diverged or errored)")
        return []
    trials = {t.trial_id: t for t in tracker.trials_seen}
    params, epochs, mode, sources, notes = {}, {}, {}, {}, []
    for r in top:
        tid = r["trial_id"]
        sampled = {k: v for k, v in r["params"].items() if not k.startswith("regtune.")}
        params[tid] = {**sampled, **dict(p.set)}
        cfg = space.trial_config(params[tid])
        if p.epochs:
            epochs[tid] = int(p.epochs)
        else:
            per = tracker.epoch_seconds.get(tid, 0.0) / max(1, r["epochs"]) if r["epochs"] else 0.0
            if per <= 0:
                per = res.fit_seconds / max(1, sum(t["epochs"] for t in res.trials))
            epochs[tid], said = epochs_for_minutes(p.minutes, per, space.trial_config(sampled).train.steps_per_epoch,
                                                   cfg.train.steps_per_epoch, cfg.train.epochs)
            notes.append(f"trial {tid}: {said}")
        m = p.mode
        if m == "continue" and p.set:
            m = "retrain"
            notes.append(f"trial {tid}: retrained, not continued: promote.set changes "
                         f"{', '.join(k for k, _ in p.set)}, which the search's run did not train with")
        elif m == "continue" and cfg.train.schedule != "constant":
            m = "retrain"
            notes.append(f"trial {tid}: retrained, not continued: train.schedule={cfg.train.schedule} anneals over the "
                         f"whole budget, so the search's shorter run is not the start of the full one")
        if m == "continue":
            sources[tid] = _checkpoint_files(trials[tid]) if tid in trials else {}
            if "last.pt" not in sources[tid]:
                m = "retrain"
                notes.append(f"trial {tid}: retrained (its last checkpoint is not available)")
        mode[tid] = m
    res.notes.extend(f"promotion: {n}" for n in notes)
    promo = {"epochs": epochs, "mode": mode, "params": params, "sources": sources}
    import ray

    from .ray_env import check_resources

    # the promoted trials' own resources (promote.cpu / gpu): their threads and device follow them
    pspace = dataclasses.replace(space, resources=p.resources(space.resources))
    check_resources(pspace, ray, "promote")
    resources = {"cpu": pspace.resources.cpu, "gpu": pspace.resources.gpu}
    trainable = tune.with_resources(tune.with_parameters(_promoted_trial, space=pspace, promote=promo, **trainable_args),
                                    resources)
    name = f"{space.name}-promote"
    exp = str(Path(opts.ray_storage) / name) if "://" not in opts.ray_storage else f"{opts.ray_storage.rstrip('/')}/{name}"
    ptracker = StudyTracker(space, opts.mlflow_uri, opts.study_dir, data_desc=opts.data or "synthetic",
                            verbose=opts.verbose > 0, kind="promoted")
    ptracker.extra_params = params
    ptracker.start()
    if tune.Tuner.can_restore(exp):
        tuner = tune.Tuner.restore(exp, trainable=trainable, resume_errored=False)
        from .study import _use_callbacks

        _use_callbacks(tuner, [ptracker, *result_loggers()])
    else:
        tuner = tune.Tuner(trainable, param_space={"regtune.promote_from": tune.grid_search([r["trial_id"] for r in top])},
                           tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=min(len(top), space.budget.max_concurrent),
                                                       reuse_actors=opts.reuse_actors, metric=SCORE_KEY, mode="max"),
                           run_config=tune.RunConfig(name=name, storage_path=opts.ray_storage,
                                                     callbacks=[ptracker, *result_loggers()],
                                                     checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                                                     failure_config=tune.FailureConfig(max_failures=2), verbose=0))
    if opts.verbose:
        print(f"promotion: training {len(top)} trial(s) to the full budget ({resources['cpu']:g} CPU, "
              f"{resources['gpu']:g} GPU each): "
              + "; ".join(f"{tid} ({mode[tid]}, {epochs[tid]} epochs)" for tid in params), flush=True)
    with catch_interrupt([ptracker]):
        tuner.fit()
    rows = trial_rows(ptracker, "promoted")
    for r in rows:
        src = r["params"].get("regtune.promote_from")
        r["params"] = {"regtune.promote_from": src, **params.get(src, {})}
        r["mode"], r["full_epochs"] = mode.get(src), epochs.get(src)
    res.interrupted = res.interrupted or ptracker.interrupted
    res._promoted_trials = {t.trial_id: t for t in ptracker.trials_seen}
    return rows


def _promoted_trial(config: dict, data=None, space=None, work_root=None, promote=None) -> None:
    from .trainable import run_trial

    src = config["regtune.promote_from"]
    p = dict(promote)
    p["epochs"] = promote["epochs"][src]
    p["mode"] = promote["mode"][src]
    run_trial({**promote["params"][src], **config}, data=data, space=space, work_root=work_root, promote=p)


__all__ = ["promote_top", "epochs_for_minutes", "candidates", "promotion_order"]
