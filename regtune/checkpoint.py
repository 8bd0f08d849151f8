"""Checkpoints: the typed config and the weights, loadable with ``weights_only=True``.

A checkpoint is a plain dict of Python scalars, lists, dicts and tensors, never a
pickled object, so ``torch.load(path, weights_only=True)`` reads it safely anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .amortise import LAMBDA_PREFIX, choose, chosen_in, metadata as amortise_metadata
from .config import Config
from .errors import CheckpointError, ConfigError
from .model import RegNet
from .model.conditioning import build_model

FORMAT = "regtune-checkpoint-v1"


@dataclass
class Checkpoint:
    config: Config
    state_dict: dict[str, torch.Tensor]
    epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def model(self, device: torch.device | str = "cpu") -> RegNet:
        net = build_model(self.config)  # with its conditioner when the run amortised loss weights
        net.load_state_dict(self.state_dict)
        if net.conditioner is not None and chosen_in(self.metrics):  # a study trial's chosen weight, else the reference
            net.conditioner.set_values(chosen_in(self.metrics))
        return net.to(device).eval()


def save_checkpoint(path: str | Path, cfg: Config, model: torch.nn.Module, epoch: int,
                    metrics: dict[str, float] | None = None, **extra: Any) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves half a checkpoint."""
    return _write(path, cfg, model.state_dict(), epoch, metrics, **extra)


def _write(path: str | Path, cfg: Config, state_dict: dict[str, torch.Tensor], epoch: int,
           metrics: dict[str, float] | None = None, **extra: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"format": FORMAT, "config": cfg.to_dict(), "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
            "epoch": int(epoch), "metrics": {k: float(v) for k, v in (metrics or {}).items()},
            **amortise_metadata(cfg), **extra}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)
    return path


def save_at_weights(path: str | Path, ck: Checkpoint, values: dict[str, float]) -> Path:
    """``ck`` (an amortised checkpoint) again, recording ``values`` as its chosen loss weights:
    loading it gives the network set to them, and ``evaluate`` / ``register`` use them unless
    ``--set`` says otherwise (as for an amortised study's model)."""
    if not ck.config.amortise.ranges:
        raise ConfigError(f"{path}: cannot record chosen loss weights for an ordinary network (they are baked into its weights)")
    values = choose(ck.config, values, source="chosen weights")  # every amortised key, each inside its trained range
    metrics = {k: v for k, v in ck.metrics.items() if not k.startswith(LAMBDA_PREFIX)}
    metrics.update({f"{LAMBDA_PREFIX}{k}": float(v) for k, v in values.items()})
    return _write(path, ck.config, ck.state_dict, ck.epoch, metrics, **ck.extra)  # the weights as stored: no network built


# Keys a checkpoint's config may lack because they came after it was written, with the value
# that reproduces the run that wrote it (today's default differs): amortise.film_head came
# with default off and is on for FiLM networks now; train.ema came with 0 (off) and is 0.999
# now, so a run from before it resumes without an average, as it trained; amortise.end_high
# came with 0.5 (as many end draws on each end) and is 1.0 now.
ADDED_LATER = {"amortise.film_head": False, "train.ema": 0.0, "amortise.end_high": 0.5}


def _with_keys_added_later(conf: Any) -> Any:
    if not isinstance(conf, dict):
        return conf  # from_dict says what is wrong with it
    conf = {sect: dict(sub) if isinstance(sub, dict) else sub for sect, sub in conf.items()}
    for key, value in ADDED_LATER.items():
        sect, _, name = key.partition(".")
        if isinstance(conf.get(sect), dict):
            conf[sect].setdefault(name, value)
    return conf


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a regtune checkpoint (no '{FORMAT}' marker)")
    try:
        cfg = Config.from_dict(_with_keys_added_later(blob["config"]), source=f"{path} config")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    extra = {k: v for k, v in blob.items() if k not in ("format", "config", "state_dict", "epoch", "metrics")}
    return Checkpoint(cfg, blob["state_dict"], blob.get("epoch", 0), blob.get("metrics", {}), extra)
