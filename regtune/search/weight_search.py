"""Inference-time search over the loss weights of an amortised (conditional) network.

One training gave a network for every loss weight in its ranges; choosing the weight is
then inference: :func:`search_weights` asks Optuna (TPE, batched ask/tell) for hundreds
of weight settings, registers a fixed subset of the *validation* pairs at each (one
batched forward pass per setting) and scores them with the Learn2Reg metrics and the
project's one objective (:class:`regtune.objective.Objective`), under optional hard
regularity constraints (folding %, SDlogJ). The best few feasible settings are then
re-scored on all validation pairs and the best of those is chosen. Held-out scores (the
test pairs) are computed for the chosen setting only, never used to choose.

Its settings and result types live in :mod:`regtune.search.weight_results`; its outputs (figures,
tables, the chosen config, the MLflow run) are written by
:mod:`regtune.search.weight_outputs`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Callable

import torch

from ..amortise import describe, ranges_of
from ..data.dataset import Volumes
from ..data.pairs import Pair
from ..errors import ConfigError
from ..evaluate import evaluate_pairs
from ..objective import Objective
from .weight_results import Point, SearchResult, SearchSettings, mean_scores

if TYPE_CHECKING:
    from .weight_match import Reference

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
        return mean_scores(self.rows(values, pairs, with_hd95))

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
                out.append(mean_scores(rows))
        return out


def _point(values: dict[str, float], m: dict[str, float], objective: Objective, st: SearchSettings,
           trial: int, n_pairs: int) -> Point:
    score = objective.score({f"val_{k}": v for k, v in m.items()})
    return Point(dict(values), m, score, all(c <= 0 for c in st.constraints(m).values()), trial, n_pairs)


def _best(points: list[Point], st: SearchSettings) -> Point:
    """The best feasible point by score; with none feasible, the one that breaks the
    constraints least (:meth:`SearchSettings.violation`), then by score."""
    feas = [p for p in points if p.feasible]
    if feas:
        return max(feas, key=lambda p: p.score)
    return min(points, key=lambda p: (st.violation(p.metrics), -p.score))


def search_weights(model, cfg, vols: Volumes, val_pairs: list[Pair], settings: SearchSettings | None = None,
                   objective: Objective | None = None, device: torch.device | str = "cpu",
                   test_pairs: list[Pair] | None = None, log: Callable[[str], None] | None = None,
                   reference: Reference | None = None) -> SearchResult:
    """Search the amortised weights of ``model`` (trained with config ``cfg``) on
    ``val_pairs``; score the choice on ``test_pairs`` when given (held out). With a
    ``reference`` (:func:`regtune.search.weight_match.load_reference`; its caps already in
    ``settings``), the reference is scored on the test pairs too and the result holds the
    paired test Dice difference."""
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
    noreg = mean_scores(evaluate_pairs(None, vols, search_pairs, with_hd95=False))
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
        b = _best(points, st)
        say(f"{len(points):4d}/{st.n} settings, {time.perf_counter() - t0:5.1f} s; best so far {describe(b.values)}: "
            f"Dice {b.metrics['dice']:.4f}, SDlogJ {b.metrics['sdlogj']:.4f}, folding {b.metrics['folding_pct']:.4f}%"
            f"{'' if b.feasible else ' (no setting meets the constraints yet)'}")
    seconds = time.perf_counter() - t0

    # re-score the best few feasible settings (distinct values) on all validation pairs; choose among them
    t1 = time.perf_counter()
    ranked = sorted(points, key=lambda p: (st.violation(p.metrics), -p.score))  # feasible first (0), by score
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
    chosen = _best(refined, st)
    if objective.metric != "val_hd95":  # the chosen setting's full scores (HD95 too)
        chosen = _point(chosen.values, scorer(chosen.values, val_pairs, with_hd95=True), objective, st, chosen.trial,
                        len(val_pairs))
        refined = [chosen if p.trial == chosen.trial else p for p in refined]
    noreg_val = mean_scores(evaluate_pairs(None, vols, val_pairs))
    refine_seconds = time.perf_counter() - t1
    res = SearchResult(rs, st, objective, points, refined, chosen, noreg, noreg_val, seconds, refine_seconds,
                       search_pairs, val_pairs, any_feasible=any(p.feasible for p in points))
    test_rows: list[dict] = []
    if test_pairs:
        test_rows = scorer.rows(chosen.values, list(test_pairs), with_hd95=True)
        res.test = mean_scores(test_rows)
        res.test_noreg = mean_scores(evaluate_pairs(None, vols, list(test_pairs)))
        res.test_pairs = len(test_pairs)
    if reference is not None:
        from .weight_match import paired_test_dice

        # beside the curve, on its pairs and with its metrics (no HD95, as the curve's points)
        reference.search = mean_scores(reference.rows(vols, search_pairs, device, with_hd95=False))
        if test_pairs:
            reference.score_test(vols, list(test_pairs), device)
        diff = paired_test_dice(test_rows, reference)
        res.reference = {**reference.summary(), "test_dice_diff": asdict(diff) if diff else None}
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
