"""How the command line turns ``--config``, ``--set``, ``--data``, ``--max-minutes`` and
``--amortise`` into the one validated :class:`~regtune.config.Config`."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="YAML", help="config file with sections data/model/loss/train")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set train.lr=1e-4 (repeatable)")
    p.add_argument("--data", metavar="DIR", help="Learn2Reg-layout folder (default: embedded synthetic phantoms)")


def length_overrides(args: argparse.Namespace, resume: bool = False) -> list[str]:
    """--set, plus what --data and --max-minutes set (--max-minutes M alone: M minutes, not
    "M or 20 epochs"; on resume likewise, the epoch count the run had stops limiting it)."""
    overrides = list(args.overrides)
    if getattr(args, "data", None):
        overrides.append(f"data.root={args.data}")
    if getattr(args, "max_minutes", None) is not None:
        overrides.append(f"train.max_minutes={args.max_minutes}")
        if not sets_epochs(None if resume else args.config, overrides):
            overrides.insert(0, "train.epochs=0")
    return overrides


def config_from_args(args: argparse.Namespace):
    from .config import Config

    overrides = length_overrides(args)
    from .amortise_cli import amortise_override

    overrides += amortise_override(args)  # regtune train --amortise KEY=LOW:HIGH[:log]
    return Config.load(args.config, overrides)


def sets_epochs(path: str | None, overrides: list[str]) -> bool:
    """Whether the user gave train.epochs (a --set, or the config file's train: section)."""
    if any(o.split("=", 1)[0].strip() == "train.epochs" for o in overrides):
        return True
    if not path or not Path(path).is_file():
        return False
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError:
        return False  # Config.load reports it
    train = doc.get("train") if isinstance(doc, dict) else None
    return isinstance(train, dict) and "epochs" in train
