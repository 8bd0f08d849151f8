"""``regtune doctor``: seconds-long preflight checks of data + config before a long run.

Each check returns a :class:`Check` (ok / warn / FAIL with a one-line finding and, when
not ok, what to do). They test exactly what made the seed run fail: the transformer's
conventions, intensity scales, labels, whether the loss falls on one pair, whether the
network starts at identity, and whether one loss term's gradient dwarfs the others.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .config import Config
from .data.dataset import Volumes
from .losses import label_loss, regulariser, similarity
from .model import RegNet, downsample_image, outside_fraction, warp

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass(frozen=True)
class Check:
    name: str
    verdict: str
    finding: str
    fix: str = ""
    seconds: float = 0.0


def check_transformer(vols: Volumes, warp_fn: Callable = warp) -> Check:
    """Identity reproduces a real image; a +2 voxel displacement along axis c moves the
    label centroid by -2 along axis c and nothing else; the image does not go black."""
    img = vols.images[:1].float()
    lab = vols.labels[:1].unsqueeze(1).float()
    zero = torch.zeros(1, 3, *vols.shape)
    err = float((warp_fn(img, zero) - img).abs().max()) / max(float(img.abs().max()), 1e-12)
    if err > 1e-4:
        return Check("transformer", FAIL, f"a zero displacement changes the image (max |diff| {err:.3g}): the sampling "
                     f"grid's axis order or its align_corners normalisation is wrong",
                     "build the grid in (x, y, z) = (last, middle, first) axis order with 2 i / (n - 1) - 1; "
                     "use regtune.model.warp")
    c0 = np.argwhere(lab[0, 0].numpy() > 0).mean(0)
    for axis in range(3):
        d = zero.clone()
        d[:, axis] = 2.0
        w = warp_fn(lab, d, mode="nearest")
        pts = np.argwhere(w[0, 0].numpy() > 0)
        if len(pts) == 0:
            return Check("transformer", FAIL, f"a 2-voxel shift along axis {axis} erased the labels (black warp)",
                         "voxel displacements are being treated as normalised [-1, 1] units")
        moved = pts.mean(0) - c0
        expect = np.zeros(3)
        expect[axis] = -2.0
        if np.abs(moved - expect).max() > 0.6:
            return Check("transformer", FAIL, f"a +2 voxel displacement along axis {axis} moved the labels by "
                         f"{np.round(moved, 2).tolist()} instead of {expect.tolist()}",
                         "grid_sample's (x, y, z) = (last, middle, first) axis order is not respected: reverse the grid channels")
    wi = warp_fn(img, torch.full_like(zero, 3.0))
    if float(wi.mean()) < 0.5 * float(img.mean()):
        return Check("transformer", FAIL, "a 3-voxel shift darkens the image by half (zero padding at the edges)",
                     "use border padding for images")
    return Check("transformer", OK, f"identity exact ({err:.1e}); +2 voxel shifts move labels by -2 on the right axis")


def check_intensities(vols: Volumes, raw_p99: dict[str, float] | None, normalised: bool) -> Check:
    """Intensity scale per subject after loading (and on disk when known)."""
    imgs = vols.images.flatten(1)
    lo, hi = float(imgs.min()), float(imgs.max())
    p99 = torch.quantile(imgs[:, :: max(1, imgs.shape[1] // 20000)], 0.99, dim=1).numpy()
    spread = float(np.log10(max(p99.max(), 1e-12) / max(np.median(p99), 1e-12)))
    raw_note = ""
    if raw_p99:
        v = np.array(list(raw_p99.values()))
        raw_note = f"; on disk p99 spans {v.min():.3g}..{v.max():.3g} ({np.log10(v.max() / max(v.min(), 1e-12)):.1f} decades)"
    if not normalised or hi > 1.0 + 1e-6 or lo < -1e-6 or spread > 1.0:
        worst = vols.names[int(np.argmax(p99))]
        return Check("intensities", FAIL, f"loaded intensities span [{lo:.3g}, {hi:.3g}], p99 varies {spread:.1f} decades "
                     f"between subjects (largest: {worst}){raw_note}",
                     "normalise every image on its own (data.normalise: true, clip to [p1, p99], rescale to [0, 1])")
    flat = [vols.names[i] for i in range(len(vols)) if float(vols.images[i].std()) < 0.02]
    if flat:
        return Check("intensities", WARN, f"{len(flat)} subject(s) nearly flat after normalisation (e.g. {flat[0]}){raw_note}",
                     "inspect those files; a flat image gives the similarity nothing to align")
    return Check("intensities", OK, f"every image normalised to [0, 1] (p99 spread {spread:.2f} decades){raw_note}")


def check_labels(vols: Volumes) -> Check:
    lab = vols.labels[vols.labelled]
    if len(lab) == 0:
        return Check("labels", WARN, "no labelled subjects: Dice cannot be measured", "add labelsTr/")
    counts = np.stack([(lab == v).flatten(1).sum(1).numpy() for v in vols.label_values], 1)  # (N, K)
    missing = [(vols.names[i], vols.label_values[k]) for i, k in zip(*np.nonzero(counts == 0))]
    med = np.median(counts, 0)
    odd = [vols.names[i] for i in range(len(counts)) if np.any((counts[i] < 0.25 * med) | (counts[i] > 4 * med))]
    notes = f"; loader: {len(vols.notes)} note(s), e.g. {vols.notes[0].split(': ', 1)[-1]}" if vols.notes else ""
    if missing:
        n, v = missing[0]
        return Check("labels", WARN, f"{len(missing)} subject/label pair(s) without voxels (e.g. {n} lacks label {v}){notes}",
                     "Dice skips absent labels; check those label maps")
    if odd:
        return Check("labels", WARN, f"{len(odd)} subject(s) with label volumes far from the median {med.astype(int).tolist()} "
                     f"(e.g. {odd[0]}){notes}", "check those label maps")
    return Check("labels", OK, f"labels {list(vols.label_values)} present in all {len(lab)} labelled subjects, "
                 f"median voxels {med.astype(int).tolist()}{notes}")


def _pair_tensors(cfg: Config, vols: Volumes, pair: tuple[int, int]):
    ds = cfg.data.downsample
    f = downsample_image(vols.images[[pair[0]]], ds)
    m = downsample_image(vols.images[[pair[1]]], ds)
    fo = downsample_image(vols.onehot([pair[0]]), ds)
    mo = downsample_image(vols.onehot([pair[1]]), ds)
    return f, m, fo, mo


def check_initial_field(cfg: Config, vols: Volumes, pair: tuple[int, int]) -> Check:
    torch.manual_seed(cfg.train.seed)
    net = RegNet(cfg.model)
    f, m, _, _ = _pair_tensors(cfg, vols, pair)
    with torch.no_grad():
        d = net(m, f)
    mx = float(d.abs().max())
    if not math.isfinite(mx) or mx > 0.5:
        return Check("initial field", FAIL, f"the untrained network already displaces by up to {mx:.3g} voxels",
                     "initialise the flow head near zero (N(0, 1e-5)) so training starts at identity")
    return Check("initial field", OK, f"starts at identity (max |u| = {mx:.1e} voxels)")


def check_gradients(cfg: Config, vols: Volumes, pair: tuple[int, int]) -> Check:
    """Gradient norm of each weighted loss term w.r.t. the network at a slightly
    perturbed start (at exact identity the regulariser's gradient is 0 by design)."""
    torch.manual_seed(cfg.train.seed)
    net = RegNet(cfg.model)
    with torch.no_grad():
        net.flow.weight.normal_(0, 1e-3)
    f, m, fo, mo = _pair_tensors(cfg, vols, pair)
    norms = {}
    terms = {"similarity": lambda d: cfg.loss.sim_weight * similarity(cfg.loss, f, warp(m, d)),
             "regulariser": lambda d: cfg.loss.reg_weight * regulariser(cfg.loss, d)}
    if cfg.loss.dice_weight > 0:
        terms["dice"] = lambda d: cfg.loss.dice_weight * label_loss(cfg.loss, fo, warp(mo, d))
    for name, fn in terms.items():
        net.zero_grad()
        loss = fn(net(m, f))
        loss.backward()
        g = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in net.parameters() if p.grad is not None))
        norms[name] = g
    desc = ", ".join(f"{k} {v:.2e}" for k, v in norms.items())
    if not all(math.isfinite(v) for v in norms.values()):
        return Check("gradients", FAIL, f"non-finite gradient at initialisation ({desc})",
                     "check the intensities and the NCC variance clamping")
    if norms["similarity"] == 0:
        return Check("gradients", FAIL, f"the similarity term has no gradient ({desc})", "check the loss sign and inputs")
    if norms["similarity"] > 1e3:
        return Check("gradients", WARN, f"the similarity gradient is huge at initialisation ({desc})",
                     "normalise intensities (data.normalise: true); enable train.grad_clip")
    # the regulariser's gradient is ~0 near identity by design, so only a term that
    # dwarfs the similarity is a problem: training would ignore the images
    sim = norms["similarity"]
    for name in ("regulariser", "dice"):
        if norms.get(name, 0.0) > 100 * sim:
            key = "reg_weight" if name == "regulariser" else "dice_weight"
            return Check("gradients", WARN, f"{name} dwarfs the similarity at initialisation ({desc}); "
                         f"training will mostly follow {name}", f"lower loss.{key} or raise loss.sim_weight")
    return Check("gradients", OK, f"term gradient norms at start: {desc}")


def check_overfit(cfg: Config, vols: Volumes, pair: tuple[int, int], steps: int = 40) -> Check:
    """Train on one pair for ``steps`` steps with the configured settings: the loss must
    fall, stay finite, and the warp must keep its intensity."""
    from .losses import total_loss

    torch.manual_seed(cfg.train.seed)
    net = RegNet(cfg.model)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.train.lr)
    f, m, fo, mo = _pair_tensors(cfg, vols, pair)
    losses = []
    for i in range(steps):
        d = net(m, f)
        t = total_loss(cfg.loss, f, warp(m, d), d, fo, warp(mo, d))
        if not torch.isfinite(t.total):
            return Check("overfit one pair", FAIL, f"loss became {float(t.total)} at step {i + 1} with lr {cfg.train.lr:g}",
                         "lower train.lr, enable train.grad_clip, check intensities")
        opt.zero_grad()
        t.total.backward()
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.train.grad_clip)
        opt.step()
        losses.append(float(t.total.detach()))
    with torch.no_grad():
        d = net(m, f)
        wmean, mmean = float(warp(m, d).mean()), float(m.mean())
        outside = float(outside_fraction(d).max())
    k = max(3, steps // 8)
    first, last = losses[0], float(np.mean(losses[-k:]))  # losses[0]: before any update
    rel = (first - last) / max(abs(first), 1e-8)
    peak = max(losses)
    if outside > cfg.train.collapse_outside:
        return Check("overfit one pair", FAIL, f"after {steps} steps {100 * outside:.0f}% of sample points left the volume "
                     f"(lr {cfg.train.lr:g}, loss peaked at {peak:.3g})",
                     "the field explodes: lower train.lr, enable train.grad_clip, raise loss.reg_weight, use model.int_steps")
    if peak > 10 * abs(first) + 1e-6 and peak > first:
        return Check("overfit one pair", FAIL, f"loss jumped from {first:.4g} to {peak:.4g} during {steps} steps "
                     f"(lr {cfg.train.lr:g})", "lower train.lr and enable train.grad_clip")
    if wmean < cfg.train.collapse_intensity * mmean:
        return Check("overfit one pair", FAIL, f"the warped image went dark (mean {wmean:.3f} vs {mmean:.3f})",
                     "the field is leaving the volume: lower train.lr or raise loss.reg_weight")
    if last > first:
        return Check("overfit one pair", FAIL, f"loss rose from {first:.4g} to {last:.4g} over {steps} steps "
                     f"(lr {cfg.train.lr:g})", "lower train.lr; check the loss sign")
    if rel < 0.01:
        return Check("overfit one pair", WARN, f"loss barely moved ({first:.4g} -> {last:.4g}) in {steps} steps",
                     "raise train.lr or lower loss.reg_weight")
    return Check("overfit one pair", OK, f"loss {first:.4g} -> {last:.4g} in {steps} steps ({100 * rel:.0f} % lower)")


def run_doctor(cfg: Config, vols: Volumes, raw_p99: dict[str, float] | None = None, steps: int = 40,
               warp_fn: Callable = warp) -> list[Check]:
    pair = (0, 1) if len(vols) > 1 else (0, 0)
    labelled = [i for i in range(len(vols)) if bool(vols.labelled[i])]
    if len(labelled) >= 2:
        pair = (labelled[0], labelled[1])
    checks = []
    for fn in (lambda: check_transformer(vols, warp_fn), lambda: check_intensities(vols, raw_p99, cfg.data.normalise),
               lambda: check_labels(vols), lambda: check_initial_field(cfg, vols, pair),
               lambda: check_gradients(cfg, vols, pair), lambda: check_overfit(cfg, vols, pair, steps)):
        t = time.monotonic()
        c = fn()
        checks.append(Check(c.name, c.verdict, c.finding, c.fix, time.monotonic() - t))
    return checks


def format_checks(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        lines.append(f"[{c.verdict:^4s}] {c.name:17s} {c.finding}  ({c.seconds:.1f}s)")
        if c.fix and c.verdict != OK:
            lines.append(f"       {'':17s} -> {c.fix}")
    fails = sum(c.verdict == FAIL for c in checks)
    warns = sum(c.verdict == WARN for c in checks)
    lines.append(f"verdict: {'FAIL' if fails else 'ok'} ({fails} failed, {warns} warning(s), {len(checks)} checks)")
    return "\n".join(lines)
