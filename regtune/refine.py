"""Instance optimisation: refine a network's field on each pair at registration time.

The network's output (a velocity in the diffeomorphic mode, else a displacement) on the
grid it was trained on is the starting point; a few Adam steps then lower the pair's own
image loss, ``sim_weight * similarity + reg_weight * regulariser + jacobian_weight *
negative-Jacobian penalty`` (the checkpoint's loss without its label term: at
registration time the fixed image has no labels, and the test pairs' labels must never
steer a field that is scored on them). Refinement is a hook in the network's own
prediction (:func:`regtune.model.predict_fields`'s ``adjust``), so a refined field is
integrated, upsampled and laid out exactly as the network's.

Plain torch; every pair of a batch is optimised independently (its loss depends only on
its own field, and Adam's step is per element).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .config import LossConfig
from .losses import total_loss
from .model import RegNet, predict_fields, velocity_fields, warp


@dataclass(frozen=True)
class Refinement:
    """How to refine. ``steps``: Adam steps per pair (0 = none); ``lr``: their step size, in
    voxels of the network's grid; ``reg_weight``: the regulariser's weight during
    refinement (None = the checkpoint's, or the weight an amortised checkpoint is set to).
    ``loss``: the loss refinement lowers, set by :meth:`bind` from the checkpoint's."""

    steps: int = 0
    lr: float = 0.05
    reg_weight: float | None = None
    loss: LossConfig | None = None

    def __post_init__(self):
        from .errors import ConfigError

        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ConfigError(f"--refine: the number of refinement steps per pair, an int >= 0, got {self.steps!r}")
        if not self.lr > 0:
            raise ConfigError(f"--refine-lr: must be > 0, got {self.lr!r}")
        if self.reg_weight is not None and not self.reg_weight >= 0:
            raise ConfigError(f"--refine-reg-weight: must be >= 0, got {self.reg_weight!r}")

    def bind(self, loss: LossConfig, weights: dict[str, float] | None = None) -> "Refinement":
        """This refinement with its loss: the checkpoint's ``loss`` at the amortised
        ``weights`` (``{"loss.reg_weight": ...}``) if any, ``reg_weight`` if given, and no
        label or inverse-consistency term."""
        changes = {k.split(".", 1)[1]: float(v) for k, v in (weights or {}).items() if k.startswith("loss.")}
        if self.reg_weight is not None:
            changes["reg_weight"] = float(self.reg_weight)
        changes.update(dice_weight=0.0, ic_weight=0.0)
        return dataclasses.replace(self, loss=dataclasses.replace(loss, **changes))

    def record(self) -> dict:
        """What a summary records of this refinement (``{"steps": 0}`` for none)."""
        if not self.steps:
            return {"steps": 0}
        return {"steps": self.steps, "lr": self.lr, "similarity": self.loss.similarity, "regulariser": self.loss.regulariser,
                "reg_weight": self.loss.reg_weight, "jacobian_weight": self.loss.jacobian_weight}

    def describe(self) -> str:
        if not self.steps:
            return "no refinement"
        w = f", {self.loss.regulariser} weight {self.loss.reg_weight:g}" if self.loss is not None else ""
        return f"{self.steps} refinement steps per pair (Adam, lr {self.lr:g}{w}; images only)"


def refine_velocity(model: RegNet, v: torch.Tensor, fixed: torch.Tensor, moving: torch.Tensor,
                    refinement: Refinement) -> torch.Tensor:
    """The network's head output ``v`` (B, 3, X, Y, Z) for the pairs (``fixed``, ``moving``,
    on the network's grid), refined by ``refinement.steps`` Adam steps on each pair's
    ``refinement.loss``; detached. The model's weights are not touched."""
    if refinement.steps and refinement.loss is None:
        raise ValueError("refine_velocity: the refinement has no loss; use Refinement.bind(checkpoint loss config)")
    v = v.detach().float()
    if not refinement.steps:
        return v
    steps, k = model.cfg.int_steps, model.cfg.int_downsize
    v = v.clone().requires_grad_(True)
    opt = torch.optim.Adam([v], lr=refinement.lr)
    f32, m32 = fixed.detach().float(), moving.detach().float()
    with torch.enable_grad():
        for _ in range(refinement.steps):
            opt.zero_grad(set_to_none=True)
            disp = velocity_fields(v, steps, k, backward=False)[0]
            # summed over the batch: each pair's gradient is its own loss's, whatever the batch size
            total_loss(refinement.loss, f32, warp(m32, disp), disp).total.mul(v.shape[0]).backward()
            opt.step()
    return v.detach()


def refine_fields(model: RegNet, fixed: torch.Tensor, moving: torch.Tensor, downsample: int, refinement: Refinement,
                  channels_last: bool = False, backward: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Full-resolution (forward, backward) displacements of the pairs (``fixed``, ``moving``:
    (B, 1, X, Y, Z) full-resolution images): the network's own prediction
    (:func:`regtune.model.predict_fields`) with its head output refined on the network's
    grid by :func:`refine_velocity`. ``backward`` is None for a plain-displacement model
    or when not asked for."""
    if fixed.ndim != 5 or fixed.shape[1] != 1 or fixed.shape != moving.shape:
        raise ValueError(f"refine_fields expects fixed and moving of shape (B, 1, X, Y, Z), got {tuple(fixed.shape)} "
                         f"and {tuple(moving.shape)}")
    with torch.no_grad():
        return predict_fields(model, fixed, moving, downsample, channels_last, backward,
                              adjust=lambda v, f, m: refine_velocity(model, v, f, m, refinement))


__all__ = ["Refinement", "refine_fields", "refine_velocity"]
