"""Amortised loss weights: which weights a conditional network was trained over, and
choosing one of them at inference (HyperMorph, Hoopes et al. IPMI 2021; conditional
LapIRN, Mok & Chung MICCAI 2021).

A run is *conditional* when ``amortise.ranges`` lists loss weights with their ranges,
``KEY=LOW:HIGH`` or ``KEY=LOW:HIGH:log`` (``regtune train --amortise ...``). Each
training sample then draws its own value of every listed weight (log-uniform with
``:log``, with ``amortise.end_prob`` of the draws put exactly on the ends of the range),
the network gets the drawn values as an input, and the loss of that sample uses them.
Afterwards every value inside the ranges is one forward pass away
(``regtune evaluate/register --set KEY=VALUE``, ``regtune search-weights``).

This module is torch-free (the config imports it to validate ``amortise.ranges``); the
network side is :mod:`regtune.model.conditioning`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .errors import ConfigError

# loss weights a network can be conditioned on -> the loss-term name of regtune.losses.combine
AMORTISABLE = {"loss.reg_weight": "reg", "loss.sim_weight": "sim", "loss.dice_weight": "dice",
               "loss.jacobian_weight": "jac", "loss.ic_weight": "ic"}
METHODS = ("film", "hyper")
SPEC_HELP = "KEY=LOW:HIGH or KEY=LOW:HIGH:log, e.g. loss.reg_weight=0.01:10:log"


@dataclass(frozen=True)
class WeightRange:
    """One amortised loss weight: ``key`` in [low, high], sampled uniformly in log space
    when ``log``. The network's input for a value is its position ``u`` in [0, 1]."""

    key: str
    low: float
    high: float
    log: bool = False

    @classmethod
    def parse(cls, spec: Any, where: str = "config key 'amortise.ranges'") -> "WeightRange":
        if not isinstance(spec, str) or "=" not in spec:
            raise ConfigError(f"{where}: {spec!r} is not {SPEC_HELP}")
        key, _, rng = spec.partition("=")
        key = key.strip()
        if key not in AMORTISABLE:
            raise ConfigError(f"{where}: {key!r} cannot be amortised (only the loss weights "
                              f"{', '.join(AMORTISABLE)})")
        parts = [p.strip() for p in rng.split(":")]
        log = len(parts) == 3 and parts[2].lower() == "log"
        if len(parts) not in (2, 3) or (len(parts) == 3 and not log):
            raise ConfigError(f"{where}: {spec!r} is not {SPEC_HELP}")
        try:
            low, high = float(parts[0]), float(parts[1])
        except ValueError:
            raise ConfigError(f"{where}: {spec!r}: LOW and HIGH must be numbers ({SPEC_HELP})") from None
        if not (math.isfinite(low) and math.isfinite(high) and 0 <= low < high):
            raise ConfigError(f"{where}: {spec!r}: need 0 <= LOW < HIGH, got {low:g}, {high:g}")
        if log and low <= 0:
            raise ConfigError(f"{where}: {spec!r}: a :log range needs LOW > 0")
        return cls(key, low, high, log)

    @property
    def spec(self) -> str:
        return f"{self.key}={self.low:g}:{self.high:g}" + (":log" if self.log else "")

    @property
    def term(self) -> str:
        """The loss-term name whose weight this is (``reg``, ``sim``, ``dice``, ...)."""
        return AMORTISABLE[self.key]

    @property
    def reference(self) -> float:
        """The middle of the range (geometric for ``log``): the value validation during
        training uses, and the default at inference when none is chosen."""
        return self.from_unit(0.5)

    def to_unit(self, value: float) -> float:
        if self.log:
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (value - self.low) / (self.high - self.low)

    def from_unit(self, u: float) -> float:
        if self.log:
            v = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            v = self.low + u * (self.high - self.low)
        return float(min(max(v, self.low), self.high))

    def contains(self, value: float) -> bool:
        tol = 1e-9 * max(abs(self.low), abs(self.high), 1.0)
        return self.low - tol <= value <= self.high + tol

    def grid(self, n: int) -> list[float]:
        """``n`` values evenly spaced (in log space with ``log``) from low to high."""
        return [self.from_unit(i / max(n - 1, 1)) for i in range(n)]


def parse_ranges(specs: Iterable[Any], where: str = "config key 'amortise.ranges'") -> tuple[WeightRange, ...]:
    out: list[WeightRange] = []
    for s in specs:
        r = WeightRange.parse(s, where)
        if any(o.key == r.key for o in out):
            raise ConfigError(f"{where}: {r.key} is listed twice; give one range per weight")
        out.append(r)
    return tuple(out)


def ranges_of(cfg) -> tuple[WeightRange, ...]:
    """The amortised weights of a :class:`~regtune.config.Config` (empty: an ordinary run)."""
    return parse_ranges(cfg.amortise.ranges)


def reference_config(cfg):
    """``cfg`` with every amortised weight at its reference value: the loss the trainer
    validates with (and a term that is amortised is always computed, its weight > 0
    somewhere in the range)."""
    rs = ranges_of(cfg)
    if not rs:
        return cfg
    return cfg.with_values({r.key: r.reference for r in rs}, source="amortise")


def metadata(cfg) -> dict[str, Any]:
    """What a checkpoint records about its conditioning (plain data; empty for an ordinary run)."""
    rs = ranges_of(cfg)
    if not rs:
        return {}
    a = cfg.amortise
    return {"amortised": {"keys": [r.key for r in rs], "ranges": [[r.low, r.high] for r in rs],
                          "log": [r.log for r in rs], "specs": [r.spec for r in rs],
                          "reference": [r.reference for r in rs], "method": a.method}}


LAMBDA_PREFIX = "lambda."  # metrics key of a chosen weight: lambda.loss.reg_weight


def chosen_in(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Weights recorded as chosen in a checkpoint's metrics (an amortised study trial's
    best epoch records the weight its search picked); empty when none."""
    return {k[len(LAMBDA_PREFIX):]: float(v) for k, v in metrics.items() if k.startswith(LAMBDA_PREFIX)}


def choose(cfg, values: Mapping[str, Any], source: str = "--set", checkpoint: str = "checkpoint",
           defaults: Mapping[str, float] | None = None) -> dict[str, float]:
    """The value of every amortised weight for inference: ``values`` where given, else
    ``defaults`` (e.g. the weight a study trial chose), else the reference value. Refuses
    (one line, :class:`ConfigError`) a key that is not amortised -- for an ordinary
    checkpoint, any loss weight: it is baked into the weights -- and a value outside the
    trained range."""
    rs = {r.key: r for r in ranges_of(cfg)}
    out = {k: (float(defaults[k]) if defaults and k in defaults and r.contains(float(defaults[k])) else r.reference)
           for k, r in rs.items()}
    for key, raw in values.items():
        if key not in rs:
            if not rs:
                cur = cfg.flat().get(key, "?")
                what = "the loss weights are" if key in AMORTISABLE else f"'{key}' is"
                raise ConfigError(f"{source} {key}={raw}: {checkpoint} is an ordinary (not amortised) network, {what} "
                                  f"baked into its weights ({key}={cur}); train with --amortise "
                                  f"{key if key in AMORTISABLE else 'loss.reg_weight'}=LOW:HIGH[:log] to choose it at inference")
            raise ConfigError(f"{source} {key}={raw}: {checkpoint} is amortised over {', '.join(rs)} only; "
                              f"other settings are baked into its weights")
        r = rs[key]
        try:
            v = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{source} {key}={raw!r}: must be a number in [{r.low:g}, {r.high:g}]") from None
        if not r.contains(v):
            raise ConfigError(f"{source} {key}={v:g} is outside the range the network was trained over "
                              f"[{r.low:g}, {r.high:g}]{' (log)' if r.log else ''}; pick a value inside it "
                              f"or retrain with --amortise {key}=LOW:HIGH")
        out[key] = min(max(v, r.low), r.high)
    return out


def describe(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in values.items())
