"""Search-space YAML files: one schema, validated once against the typed config.

Schema (see ``search_spaces/README.md``)::

    name: smooth                      # default study name
    description: free text
    base:                             # fixed training settings (dotted config keys)
      train.epochs: 6
    params:                           # searched parameters
      loss.reg_weight: {type: float, low: 0.01, high: 10, log: true}
      train.batch_size: {type: int, low: 2, high: 8, step: 2}
      loss.similarity: {type: categorical, choices: [ncc, mse, mi]}
      loss.ncc_window: {type: int, low: 5, high: 11, step: 2, when: {loss.similarity: ncc}}
    start:                            # optional: trials to run first (e.g. the seed's settings)
      - {train.lr: 0.05, loss.reg_weight: 0.01}
    objective:
      metric: val_dice                # a reported metric
      mode: max                       # max or min
      folding_limit_pct: 0.5          # penalty above this % of folding voxels
      folding_penalty: 0.1            # score -= penalty * (folding % - limit) when above
    budget: {num_samples: 12, max_concurrent: 2, grace_period: 2, reduction_factor: 2, time_limit_minutes: 0}
    resources: {cpu: 1, gpu: 0}       # per trial; fractional GPU allowed
    seed: 0

This module imports neither Ray nor Optuna: a space can be validated anywhere.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..config import BEST_METRICS, Config
from ..errors import ConfigError
from ..objective import Objective
from .amortised import check_amortised_param, fold_amortised
from .space_parts import (PROMOTE_MODES, Budget, Promote, Resources, SpaceError, _check_budget,  # noqa: F401
                          _check_resources, _err, _mapping, _num, parse_promote)

METRICS = BEST_METRICS
TOP_KEYS = ("name", "description", "base", "params", "start", "objective", "budget", "resources", "promote",
            "weight_search", "seed")


@dataclass(frozen=True)
class Param:
    key: str
    type: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()
    when: tuple[tuple[str, Any], ...] = ()
    amortised: bool = False  # not sampled: every trial trains over its range (regtune.search.amortised)


@dataclass(frozen=True)
class SearchSpace:
    name: str
    description: str
    base: Config
    params: tuple[Param, ...]
    start: tuple[dict, ...] = ()
    objective: Objective = field(default_factory=Objective)
    budget: Budget = field(default_factory=Budget)
    resources: Resources = field(default_factory=Resources)
    promote: Promote | None = None
    seed: int = 0
    source: str = ""
    weight_search: Any = None  # TrialSearch of amortised trials (regtune.search.amortised); None = not amortised
    text: str = ""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def trial_config(self, values: Mapping[str, Any]) -> Config:
        """The typed config of one trial: ``base`` with the sampled values (``base`` already
        carries the objective as ``train.best_*``, so best.pt follows the study's objective)."""
        return self.base.with_values({k: v for k, v in values.items() if not k.startswith("regtune.")},
                                     source=f"{self.source} trial")

    def with_overrides(self, cpu: float | None = None, gpu: float | None = None, **budget: Any) -> "SearchSpace":
        """Command-line overrides of the budget (num_samples, max_concurrent) and per-trial resources."""
        import dataclasses

        b = dataclasses.replace(self.budget, **{k: v for k, v in budget.items() if v is not None})
        _check_budget(b, self.source)
        r = dataclasses.replace(self.resources, **{k: v for k, v in (("cpu", cpu), ("gpu", gpu)) if v is not None})
        _check_resources(r, "--cpus-per-trial" if cpu is not None else self.source,
                         "--gpus-per-trial" if gpu is not None else self.source)
        return dataclasses.replace(self, budget=b, resources=r)


def _param(src: str, key: str, spec: Any, base: Config, known: dict[str, Param]) -> Param:
    where = f"params.{key}"
    valid_keys = set(base.flat())
    if key not in valid_keys:
        import difflib

        close = difflib.get_close_matches(key, sorted(valid_keys), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "keys look like loss.reg_weight (see 'regtune config')"
        raise _err(src, where, f"unknown training parameter; {hint}")
    spec = _mapping(src, where, spec)
    allowed = {"type", "low", "high", "log", "step", "choices", "when", "amortised"}
    extra = set(spec) - allowed
    if extra:
        raise _err(src, f"{where}.{sorted(extra)[0]}", f"unknown field (allowed: {', '.join(sorted(allowed))})")
    if "type" not in spec:
        raise _err(src, f"{where}.type", "missing; use float, int or categorical")
    typ = spec["type"]
    when = tuple(_mapping(src, f"{where}.when", spec.get("when")).items())
    for wk, wv in when:
        if wk not in known:
            raise _err(src, f"{where}.when.{wk}", "must name a parameter declared above this one")
        p = known[wk]
        if p.type == "categorical" and wv not in p.choices:
            raise _err(src, f"{where}.when.{wk}", f"{wv!r} is not one of its choices {list(p.choices)}")

    def probe(v: Any, k: str) -> None:
        try:
            base.with_values({key: v}, source=src)
        except ConfigError as e:
            raise _err(src, k, f"value {v!r} is not valid for this parameter ({str(e).split(': ', 2)[-1]})") from None

    if typ == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise _err(src, f"{where}.choices", "must be a non-empty list")
        if len(set(map(repr, choices))) != len(choices):
            raise _err(src, f"{where}.choices", "has duplicates")
        for c in choices:
            probe(c, f"{where}.choices")
        for k in ("low", "high", "log", "step"):
            if k in spec:
                raise _err(src, f"{where}.{k}", "only float and int parameters take low/high/log/step")
        check_amortised_param(src, key, spec)  # refuses amortised: true here
        return Param(key, "categorical", choices=tuple(choices), when=when)
    if typ not in ("float", "int"):
        raise _err(src, f"{where}.type", f"must be float, int or categorical, got {typ!r}")
    for k in ("low", "high"):
        if k not in spec:
            raise _err(src, f"{where}.{k}", f"missing; a {typ} parameter needs low and high")
    integer = typ == "int"
    low = _num(src, f"{where}.low", spec["low"], integer)
    high = _num(src, f"{where}.high", spec["high"], integer)
    if not low < high:
        raise _err(src, where, f"low must be < high, got low={low}, high={high}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise _err(src, f"{where}.log", f"must be true or false, got {log!r}")
    if log and low <= 0:
        raise _err(src, f"{where}.low", f"must be > 0 with log: true, got {low}")
    step = spec.get("step")
    if step is not None:
        step = _num(src, f"{where}.step", step, integer)
        if step <= 0:
            raise _err(src, f"{where}.step", f"must be > 0, got {step}")
        if log:
            raise _err(src, f"{where}.step", "cannot be combined with log: true")
    probe(low, f"{where}.low")
    probe(high, f"{where}.high")
    return Param(key, typ, low=low, high=high, log=log, step=step, when=when,
                 amortised=check_amortised_param(src, key, spec))


def parse_space(doc: Any, source: str = "space", text: str = "") -> SearchSpace:
    src = source
    doc = _mapping(src, "(top level)", doc)
    extra = [k for k in doc if k not in TOP_KEYS]
    if extra:
        raise _err(src, str(extra[0]), f"unknown top-level key (allowed: {', '.join(TOP_KEYS)})")
    if "params" not in doc or not doc["params"]:
        raise _err(src, "params", "missing; list at least one parameter to search")
    name = doc.get("name") or Path(source).stem
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise _err(src, "name", f"must be letters, digits, - or _, got {name!r}")
    base_items = _mapping(src, "base", doc.get("base"))
    try:
        base = Config().with_values(dict(base_items), source=f"{src} base")
    except ConfigError as e:
        raise SpaceError(str(e)) from None
    known: dict[str, Param] = {}
    for key, spec in _mapping(src, "params", doc["params"]).items():
        if key in base_items:
            raise _err(src, f"params.{key}", "is also fixed in base; keep it in one place")
        known[key] = _param(src, key, spec, base, known)
    # amortised parameters are not sampled: they become every trial's amortise.ranges
    base, known, weight_search = fold_amortised(src, base, known, doc.get("weight_search"))
    obj_doc = dict(_mapping(src, "objective", doc.get("objective")))
    allowed = {"metric", "mode", "folding_limit_pct", "folding_penalty"}
    for k in obj_doc:
        if k == "diverged_score":
            raise _err(src, "objective.diverged_score", "is gone: a diverged trial always scores below every finished "
                                                       "trial (regtune.objective.DIVERGED_SCORE); delete the line")
        if k not in allowed:
            raise _err(src, f"objective.{k}", f"unknown field (allowed: {', '.join(sorted(allowed))})")
    metric = obj_doc.get("metric", "val_dice")
    if metric not in METRICS:
        raise _err(src, "objective.metric", f"must be one of {', '.join(METRICS)}, got {metric!r}")
    mode = obj_doc.get("mode", "max" if metric == "val_dice" else "min")
    if mode not in ("max", "min"):
        raise _err(src, "objective.mode", f"must be max or min, got {mode!r}")
    objective = Objective(metric, mode, *(_num(src, f"objective.{k}", obj_doc.get(k, d)) for k, d in
                                          (("folding_limit_pct", 0.5), ("folding_penalty", 0.1))))
    for k in objective.config_values():
        if k in base_items:
            raise _err(src, f"base.{k}", "is set by the objective: block (one definition of best); delete it from base")
    try:
        base = base.with_values(objective.config_values(), source=f"{src} objective")
    except ConfigError as e:
        raise SpaceError(str(e)) from None
    if base.train.epochs < 1:  # ASHA's rungs and the trial budget are epochs
        raise _err(src, "base.train.epochs", "a study's trials need a number of epochs (>= 1); "
                   "use budget.time_limit_minutes for the study's wall-clock limit")
    b_doc = _mapping(src, "budget", doc.get("budget"))
    fields_b = {"num_samples": True, "max_concurrent": True, "grace_period": True, "reduction_factor": True, "time_limit_minutes": False}
    for k in b_doc:
        if k not in fields_b:
            raise _err(src, f"budget.{k}", f"unknown field (allowed: {', '.join(fields_b)})")
    budget = Budget(**{k: _num(src, f"budget.{k}", v, fields_b[k]) for k, v in b_doc.items()})
    _check_budget(budget, src)
    r_doc = _mapping(src, "resources", doc.get("resources"))
    for k in r_doc:
        if k not in ("cpu", "gpu"):
            raise _err(src, f"resources.{k}", "unknown field (allowed: cpu, gpu)")
    res = Resources(**{k: _num(src, f"resources.{k}", v) for k, v in r_doc.items()})
    _check_resources(res, src, src)
    start = []
    for i, point in enumerate(doc.get("start") or []):
        point = _mapping(src, f"start[{i}]", point)
        for k, v in point.items():
            if k not in known:
                raise _err(src, f"start[{i}].{k}", "is not a searched parameter")
        try:
            base.with_values(dict(point), source=f"{src} start[{i}]")
        except ConfigError as e:
            raise SpaceError(str(e)) from None
        start.append(dict(point))
    promote = parse_promote(src, doc.get("promote"), base, tuple(start))
    seed = _num(src, "seed", doc.get("seed", 0), integer=True)
    return SearchSpace(name=name, description=str(doc.get("description", "")), base=base, params=tuple(known.values()),
                       start=tuple(start), objective=objective, budget=budget, resources=res, promote=promote, seed=seed,
                       source=src, text=text, weight_search=weight_search)


def load_space(path: str | Path) -> SearchSpace:
    p = Path(path)
    if not p.is_file():
        raise SpaceError(f"{p}: search-space file not found (see search_spaces/ for examples)")
    text = p.read_text()
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpaceError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    return parse_space(doc, str(p), text)


def __getattr__(name: str):
    # studies checkpointed before DefineByRun moved to .searcher unpickle it from here
    if name == "DefineByRun":
        from .searcher import DefineByRun

        return DefineByRun
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
