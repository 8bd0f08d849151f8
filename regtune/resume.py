"""Continuing an interrupted or finished training run (``regtune train --resume RUN``).

A run folder's ``last.pt`` holds the config, the weights, the optimiser and every
generator state after the last finished epoch, so :func:`regtune.train.train` with
``resume=`` takes the step an uninterrupted run would have taken. What may change on
resume is the run's length only (``train.epochs``, ``train.max_minutes``), its threads,
and where the data lives; anything else would make the run a different recipe mid-way.
"""

from __future__ import annotations

from pathlib import Path

from .checkpoint import load_checkpoint
from .config import Config, parse_overrides
from .errors import CheckpointError, ConfigError

#: keys ``--set`` may change on resume: the length of the run, its threads, the data's place
RESUMABLE = ("train.epochs", "train.max_minutes", "train.threads", "data.root")


def last_checkpoint(run: str | Path) -> Path:
    """``RUN/last.pt`` (or ``run`` itself when it names the file)."""
    p = Path(run)
    last = p if p.suffix == ".pt" else p / "last.pt"
    if not last.is_file():
        raise CheckpointError(f"{last}: no last.pt to resume from (a run folder of 'regtune train' has one after "
                              f"its first epoch)")
    return last


def resume_config(run: str | Path, overrides: list[str]) -> tuple[Config, Path]:
    """The config to continue ``run`` with (its own, plus ``overrides`` of :data:`RESUMABLE`
    keys) and the ``last.pt`` to continue from. Refuses a run that ended diverged or
    collapsed, and one with nothing left to train."""
    last = last_checkpoint(run)
    ck = load_checkpoint(last)
    values = parse_overrides(overrides)
    for key in values:
        if key not in RESUMABLE:
            raise ConfigError(f"--set {key}: --resume continues the run's own recipe; only {', '.join(RESUMABLE)} may "
                              f"change (another recipe is a new run)")
    cfg = ck.config.with_values(values, source="--set")
    status = ck.extra.get("status", "running")
    if status not in ("running", "completed", "stopped"):
        raise CheckpointError(f"{last}: the run ended {status} at epoch {ck.epoch}; training on from there repeats the "
                              f"failure (start a new run with other settings)")
    t = cfg.train
    spent = float(ck.extra.get("trainer", {}).get("seconds", 0.0))
    if t.epochs and ck.epoch >= t.epochs:
        raise ConfigError(f"{last}: the run already has {ck.epoch} of train.epochs={t.epochs} epochs; raise it to go on, "
                          f"e.g. --set train.epochs={ck.epoch + 10}")
    if t.max_minutes and spent >= 60 * t.max_minutes:
        raise ConfigError(f"{last}: the run already spent {spent / 60:.1f} of train.max_minutes={t.max_minutes:g} minutes; "
                          f"raise it to go on, e.g. --max-minutes {spent / 60 + 15:.0f}")
    return cfg, last
