"""The one typed, frozen configuration of a registration training run.

A :class:`Config` is built once (from defaults, a YAML file, ``key=value`` overrides
or a flat dict such as a search trial's), validated in ``__post_init__`` and then
passed around read-only. Every key a user can write is a dotted field path, e.g.
``train.lr`` or ``loss.similarity``; an unknown key or a bad value raises
:class:`~regtune.errors.ConfigError` naming it. The sections' fields and checks live in
:mod:`regtune.config_sections` (and the ``train`` section in :mod:`regtune.config_train`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

# the sections and their value sets, re-exported: ``from regtune.config import TrainConfig`` stays the import
from .config_sections import (PAIR_MODES, REGULARISERS, SIMILARITIES, AmortiseConfig, AugConfig,  # noqa: F401
                              DataConfig, LossConfig, ModelConfig)
from .config_train import BEST_METRICS, SCHEDULES, TrainConfig  # noqa: F401
from .errors import ConfigError


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    amortise: AmortiseConfig = field(default_factory=AmortiseConfig)

    # ---- conversion -------------------------------------------------------------
    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested dict of plain Python values (safe for ``torch.load(weights_only=True)``)."""
        out: dict[str, dict[str, Any]] = {}
        for sect in fields(self):
            sub = getattr(self, sect.name)
            out[sect.name] = {f.name: (list(v) if isinstance(v := getattr(sub, f.name), tuple) else v)
                              for f in fields(sub)}
        return out

    def flat(self) -> dict[str, Any]:
        """``{"train.lr": 1e-3, ...}``: one entry per leaf field."""
        return {f"{s}.{k}": v for s, sub in self.to_dict().items() for k, v in sub.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> "Config":
        """Build from a nested dict (``{"train": {"lr": ...}}``); unknown keys raise."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"{source}: expected a mapping of sections, got {type(d).__name__}")
        flat: dict[str, Any] = {}
        for sect, sub in d.items():
            if sect not in SECTIONS:
                raise ConfigError(f"{source}: unknown section '{sect}' (known: {', '.join(SECTIONS)})")
            if sub is None:
                continue
            if not isinstance(sub, Mapping):
                raise ConfigError(f"{source}: section '{sect}' must be a mapping, got {type(sub).__name__}")
            for k, v in sub.items():
                flat[f"{sect}.{k}"] = v
        return cls().with_values(flat, source=source)

    def with_values(self, values: Mapping[str, Any], source: str = "config") -> "Config":
        """A copy with dotted keys replaced; values are coerced to the field's type."""
        per_sect: dict[str, dict[str, Any]] = {}
        for key, raw in values.items():
            sect, _, name = key.partition(".")
            if sect not in SECTIONS or not name:
                raise ConfigError(f"{source}: unknown key '{key}' (keys look like train.lr; sections: {', '.join(SECTIONS)})")
            ftypes = {f.name: f for f in fields(SECTIONS[sect])}
            if name not in ftypes:
                raise ConfigError(f"{source}: unknown key '{key}' (known in '{sect}': {', '.join(ftypes)})")
            per_sect.setdefault(sect, {})[name] = _coerce(raw, getattr(getattr(self, sect), name), key, source)
        try:
            return dataclasses.replace(self, **{s: dataclasses.replace(getattr(self, s), **kv) for s, kv in per_sect.items()})
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | None = None) -> "Config":
        """Defaults, then a YAML file, then ``key=value`` overrides."""
        cfg = cls()
        if path is not None:
            p = Path(path)
            if not p.is_file():
                raise ConfigError(f"{p}: config file not found")
            try:
                doc = yaml.safe_load(p.read_text()) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
            cfg = cls.from_dict(doc, source=str(p))
        if overrides:
            cfg = cfg.with_values(parse_overrides(overrides), source="--set")
        return cfg


def parse_overrides(items: Iterable[str], source: str = "--set") -> dict[str, Any]:
    """``["train.lr=1e-4", ...]`` -> ``{"train.lr": 0.0001}`` (values read as YAML)."""
    vals = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{source} {item!r}: expected key=value, e.g. {source} train.lr=1e-4")
        k, v = item.split("=", 1)
        vals[k.strip()] = yaml.safe_load(v)
    return vals


SECTIONS = {"data": DataConfig, "model": ModelConfig, "loss": LossConfig, "train": TrainConfig, "aug": AugConfig,
            "amortise": AmortiseConfig}


def _coerce(raw: Any, current: Any, key: str, source: str) -> Any:
    """Coerce ``raw`` to the type of the field's current value, or raise ConfigError."""
    def bad(expect: str) -> ConfigError:
        return ConfigError(f"{source}: key '{key}' must be {expect}, got {raw!r}")

    if key == "amortise.ranges":  # strings KEY=LOW:HIGH[:log], a list or one comma/space-separated string
        items = raw.replace(",", " ").split() if isinstance(raw, str) else raw
        if not isinstance(items, (list, tuple)) or not all(isinstance(x, str) for x in items):
            raise bad("a list of KEY=LOW:HIGH[:log] strings")
        return tuple(x.strip() for x in items)
    if key == "train.amp":  # true, false or auto
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false", "yes", "no", "1", "0", "auto"):
            return "auto" if raw.lower() == "auto" else raw.lower() in ("true", "yes", "1")
        raise bad("true, false or auto")
    if key == "amortise.film_head":  # true, false or null (on for film, off for hyper)
        if raw is None or isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false", "yes", "no", "1", "0", "null", "none", "auto"):
            return None if raw.lower() in ("null", "none", "auto") else raw.lower() in ("true", "yes", "1")
        raise bad("true, false or null")
    if key == "data.root":
        if raw is None or raw == "" or str(raw).lower() in ("none", "synthetic"):
            return None
        return str(raw)
    if isinstance(current, bool):
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false", "yes", "no", "1", "0"):
            return raw.lower() in ("true", "yes", "1")
        raise bad("true or false")
    if isinstance(current, int):
        if isinstance(raw, bool):
            raise bad("an integer")
        if isinstance(raw, int):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        if isinstance(raw, str):
            try:
                return int(raw)
            except ValueError:
                pass
        raise bad("an integer")
    if isinstance(current, float):
        if isinstance(raw, bool):
            raise bad("a number")
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise bad("a number") from None
    if isinstance(current, tuple):
        if isinstance(raw, str):
            raw = [x for x in raw.replace(",", " ").split()]
        if not isinstance(raw, (list, tuple)):
            raise bad("a list of integers")
        try:
            return tuple(int(x) for x in raw)
        except (TypeError, ValueError):
            raise bad("a list of integers") from None
    if isinstance(current, str):
        if not isinstance(raw, str):
            raise bad("a string")
        return raw
    raise bad(type(current).__name__)  # pragma: no cover
