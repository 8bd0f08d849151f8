"""Conditioning the registration network on loss weights (amortised training).

Two ways, chosen by ``amortise.method``; both take the weights' positions ``u`` in their
ranges ((B, K), in [0, 1], log-scaled where the range is ``:log``) and start out as the
plain network (their last layer is zero), so training begins where an ordinary run does:

- ``film``: a small MLP maps ``u`` to a per-channel scale and shift of every conv block
  of the U-Net, ``act((1 + gamma) * conv(x) + beta)`` (FiLM, Perez et al. 2018). Cheap:
  one MLP per batch and one multiply-add per block.
- ``hyper``: a HyperMorph hypernetwork (Hoopes et al. 2021): an MLP maps ``u`` to every
  conv's weights and bias, ``W(u) = W + H_l(MLP(u))``, one set per sample (the batch runs
  as a grouped convolution).

:class:`LambdaSampler` draws the per-sample weights during training (its generator is
part of the trainer's exact-resume state). :func:`build_model` makes the network of a
config; :meth:`Conditioner.set_values` fixes the weights an un-conditioned call uses
(the reference values until set), so evaluation, figures and registration run a
conditional network at one chosen weight through the ordinary code.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..amortise import WeightRange, ranges_of
from ..losses import WEIGHT_KEYS
from .unet import ConvBlock, RegNet, conv


def _mlp(n_in: int, hidden: int, depth: int) -> nn.Sequential:
    # leaky, not ReLU: Adam moves every weight by ~lr per step, soon past a 64-wide layer's
    # init scale (1/8), and a ReLU trunk then dies for the whole range (all units off at every
    # weight: the network ignores its input; seen on the phantoms within 150 steps at lr 3e-3)
    layers: list[nn.Module] = []
    c = n_in
    for _ in range(depth):
        layers += [nn.Linear(c, hidden), nn.LeakyReLU(0.2, inplace=True)]
        c = hidden
    return nn.Sequential(*layers)


def _head(hidden: int, n_out: int) -> nn.Linear:
    """The last layer, zero: the conditional network starts as the plain one."""
    h = nn.Linear(hidden, n_out)
    nn.init.zeros_(h.weight)
    nn.init.zeros_(h.bias)
    return h


def _convs(net: RegNet) -> list[nn.Conv3d]:
    """The network's convolutions in the order ``RegNet._unet`` runs them (head last)."""
    return [b.conv for b in (*net.enc, *net.dec, *net.extra)] + [net.flow]


class Conditioner(nn.Module):
    """Base: holds the ranges and the weights an un-conditioned call uses."""

    out_scale = 1.0

    def __init__(self, ranges: tuple[WeightRange, ...]):
        super().__init__()
        self.ranges = ranges
        # not persistent: a loaded network starts at its reference values
        self.register_buffer("default_u", torch.full((len(ranges),), 0.5), persistent=False)

    def unit(self, values: Mapping[str, float], n: int = 1, device=None) -> torch.Tensor:
        """(n, K) network inputs for ``{key: value}`` (missing keys: the reference value)."""
        u = [r.to_unit(float(values[r.key])) if r.key in values else 0.5 for r in self.ranges]
        return torch.tensor(u, dtype=torch.float32, device=device or self.default_u.device).expand(n, -1)

    def set_values(self, values: Mapping[str, float]) -> None:
        """The loss weights used when the network is called without ``cond``."""
        self.default_u.copy_(self.unit(values, 1)[0])

    def values(self) -> dict[str, float]:
        return {r.key: r.from_unit(float(u)) for r, u in zip(self.ranges, self.default_u.tolist())}

    def _inputs(self, cond: torch.Tensor | None, batch: int) -> torch.Tensor:
        u = self.default_u.expand(batch, -1) if cond is None else cond
        if u.shape[0] != batch:  # a batch holding several passes of the same samples (both orders, both directions)
            if batch % u.shape[0]:
                raise ValueError(f"conditioning for {u.shape[0]} samples cannot cover a batch of {batch}")
            u = u.repeat(batch // u.shape[0], 1)
        return u.float()


class FiLM(Conditioner):
    def __init__(self, net: RegNet, ranges: tuple[WeightRange, ...], hidden: int = 64, depth: int = 2,
                 film_head: bool = False):
        super().__init__(ranges)
        self.widths = [c.out_channels for c in _convs(net)[:-1]]
        self.n_head = net.flow.out_channels if film_head else 0
        self.trunk = _mlp(len(ranges), hidden, depth)
        self.head = _head(hidden, 2 * sum(self.widths) + self.n_head)

    def forward(self, cond: torch.Tensor | None, batch: int) -> "_FiLMApply":
        p = self.head(self.trunk(self._inputs(cond, batch))) * self.out_scale
        return _FiLMApply(p, self.widths, self.n_head)


class _FiLMApply:
    """Called per block in network order: modulates every ConvBlock; the head only by a
    per-channel scale, and only with ``n_head`` (``amortise.film_head``)."""

    def __init__(self, p: torch.Tensor, widths: list[int], n_head: int = 0):
        b = p.shape[0]
        chunks = p.split([w for w in widths for _ in (0, 1)] + ([n_head] if n_head else []), dim=1)
        self.mods = [(chunks[2 * i].view(b, -1, 1, 1, 1), chunks[2 * i + 1].view(b, -1, 1, 1, 1)) for i in range(len(widths))]
        self.head_gamma = chunks[-1].view(b, -1, 1, 1, 1) if n_head else None
        self.i = 0

    def __call__(self, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(blk, ConvBlock):
            y = blk(x)
            return y if self.head_gamma is None else y * (self.head_gamma + 1.0)
        gamma, beta = self.mods[self.i]
        self.i += 1
        # (multiply, then add: ~1.5x faster forward + backward than addcmul on channels-last maps)
        return blk.act(conv(blk.conv, x) * (gamma + 1.0) + beta)


class HyperNet(Conditioner):
    def __init__(self, net: RegNet, ranges: tuple[WeightRange, ...], hidden: int = 64, depth: int = 2):
        super().__init__(ranges)
        # Adam moves each of a head's ``hidden`` input weights by ~lr per step, all the same way
        # for one output (the ReLU features are >= 0): scaled by 1/hidden, a generated conv
        # weight moves at about the pace of the conv's own (unscaled, training collapses at
        # lr 3e-3). A FiLM scale is relative (1 + gamma) and keeps its unscaled pace.
        self.out_scale = 1.0 / hidden
        convs = _convs(net)
        self.sizes = [(c.weight.numel(), c.bias.numel()) for c in convs]
        self.trunk = _mlp(len(ranges), hidden, depth)
        self.heads = nn.ModuleList(_head(hidden, nw + nb) for nw, nb in self.sizes)

    def forward(self, cond: torch.Tensor | None, batch: int) -> "_HyperApply":
        z = self.trunk(self._inputs(cond, batch))
        return _HyperApply([h(z) * self.out_scale for h in self.heads], self.sizes)


class _HyperApply:
    """Called per block in network order: each conv runs with its per-sample weights."""

    def __init__(self, deltas: list[torch.Tensor], sizes: list[tuple[int, int]]):
        self.deltas, self.sizes, self.i = deltas, sizes, 0

    def __call__(self, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        cv = blk.conv if isinstance(blk, ConvBlock) else blk
        d, (nw, _) = self.deltas[self.i], self.sizes[self.i]
        self.i += 1
        b, cin = x.shape[:2]
        w = cv.weight.unsqueeze(0) + d[:, :nw].view(b, *cv.weight.shape)
        bias = cv.bias.unsqueeze(0) + d[:, nw:]
        y = conv(lambda v: F.conv3d(v, w.reshape(-1, *cv.weight.shape[1:]).to(v.dtype), bias.reshape(-1).to(v.dtype),
                                    padding=cv.padding, groups=b), x.reshape(1, b * cin, *x.shape[2:]))
        y = y.view(b, -1, *y.shape[2:])
        return blk.act(y) if isinstance(blk, ConvBlock) else y


def build_model(cfg) -> RegNet:
    """The network of a :class:`~regtune.config.Config`: a plain :class:`RegNet`, or with
    ``amortise.ranges`` one whose ``conditioner`` takes the loss weights."""
    net = RegNet(cfg.model)
    rs = ranges_of(cfg)
    if rs:
        a = cfg.amortise
        net.conditioner = (FiLM(net, rs, a.hidden, a.depth, a.head_scaled) if a.method == "film"
                           else HyperNet(net, rs, a.hidden, a.depth))
    return net


def is_conditional(model) -> bool:
    return getattr(model, "conditioner", None) is not None


class LambdaSampler:
    """Per-sample loss weights for training: ``draw(n)`` -> (u (n, K), {term: (n,) weights}).

    Each value is uniform in its range (log-uniform for ``:log``); ``end_prob`` of the
    draws sit exactly on an end (``end_high`` of them on the high end, by default all), as
    HyperMorph oversamples 0 and 1; ``draw(n, progress)`` before ``amortise.high_first``
    of the run puts half of them on the high end and none on the low one instead. With
    ``amortise.normalise`` the returned weights of every term (the fixed ones too) are
    divided per sample by their sum. With ``amortise.stratify`` a draw of n takes one
    quantile from each n-th of that distribution, per range, in a random order (the same
    distribution per sample, less spread between batches).
    """

    def __init__(self, cfg, device: torch.device | str = "cpu", seed: int = 0):
        self.ranges = ranges_of(cfg)
        self.end_prob = cfg.amortise.end_prob
        self.low_prob = cfg.amortise.end_prob * (1.0 - cfg.amortise.end_high)
        self.high_first = cfg.amortise.high_first
        self.normalise = cfg.amortise.normalise
        self.stratify = cfg.amortise.stratify
        self.fixed = {k: float(getattr(cfg.loss, w)) for k, w in WEIGHT_KEYS.items()}
        self.device = torch.device(device)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(int(seed))
        if not self.ranges:
            raise ValueError("LambdaSampler needs amortise.ranges")
        t = lambda vals: torch.tensor(vals, device=self.device, dtype=torch.float32)  # noqa: E731
        self._log = torch.tensor([r.log for r in self.ranges], device=self.device)
        self._lo, self._hi = t([r.low for r in self.ranges]), t([r.high for r in self.ranges])
        # log ends of the :log ranges (0 for linear ones, whose log value torch.where never picks)
        self._llo = t([math.log(r.low) if r.log else 0.0 for r in self.ranges])
        self._lhi = t([math.log(r.high) if r.log else 0.0 for r in self.ranges])

    def weights(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """{term: (n,) loss weight} for network inputs ``u`` (n, K)."""
        lin = self._lo + u * (self._hi - self._lo)
        log = torch.exp(self._llo + u * (self._lhi - self._llo))
        # float32 exp(log) misses the ends by ~1e-4 relative: clamp, so the ends are exact and never outside
        v = torch.minimum(torch.maximum(torch.where(self._log, log, lin), self._lo), self._hi)
        out = {r.term: v[:, i] for i, r in enumerate(self.ranges)}
        if self.normalise:
            full = {k: out.get(k, torch.full_like(v[:, 0], w)) for k, w in self.fixed.items()}
            total = sum(full.values()).clamp_min(1e-12)
            out = {k: w / total for k, w in full.items()}
        return out

    def draw(self, n: int, progress: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``n`` samples' weights at the run's ``progress`` in [0, 1] (it matters only with
        ``amortise.high_first``)."""
        k = len(self.ranges)
        early = progress < self.high_first
        low_prob, end_prob = (0.0, 0.5) if early else (self.low_prob, self.end_prob)
        if self.stratify:
            u = self._quantile(self._strata(n, k), low_prob, end_prob)
        else:
            u = torch.rand(n, k, generator=self.gen, device=self.device)
            if end_prob > 0:
                r = torch.rand(n, k, generator=self.gen, device=self.device)
                u = torch.where(r < low_prob, torch.zeros_like(u), torch.where(r < end_prob, torch.ones_like(u), u))
        return u, self.weights(u)

    def _strata(self, n: int, k: int) -> torch.Tensor:
        """(n, k) uniforms, one in each of [i/n, (i+1)/n) per column, rows in a random order."""
        order = torch.argsort(torch.rand(n, k, generator=self.gen, device=self.device), dim=0)
        return (order + torch.rand(n, k, generator=self.gen, device=self.device)) / n

    @staticmethod
    def _quantile(s: torch.Tensor, low_prob: float, end_prob: float) -> torch.Tensor:
        """The draw distribution's quantile function at ``s`` in [0, 1): the low end (mass
        ``low_prob``), then uniform (mass ``1 - end_prob``), then the high end."""
        inner = ((s - low_prob) / (1.0 - end_prob)).clamp(0.0, 1.0)
        return torch.where(s < low_prob, torch.zeros_like(s), torch.where(s >= 1.0 - (end_prob - low_prob), torch.ones_like(s), inner))

    def state(self) -> torch.Tensor:
        return self.gen.get_state()

    def set_state(self, st: torch.Tensor) -> None:
        self.gen.set_state(st)
