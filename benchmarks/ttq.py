"""Time to quality: held-out Dice after the same wall-clock budget on this machine.

- regtune: the default CPU recipe, i.e. ``regtune train --data DATA --max-minutes M`` then
  ``regtune evaluate`` of ``best.pt`` (library calls: :func:`regtune.train.train` with the
  default :class:`~regtune.config.Config`, whatever it is when run: today 32^3 training,
  LNCC + diffusion 1.0 + Dice loss (weight 3) on the training labels, on-the-fly
  augmentation, a weight average, batch 4, channels_last_3d, Adam 1e-3, 7 integration steps).
  Its per-epoch validation runs inside the budget.
- voxelmorph: the package's documented default recipe. ``VxmPairwise(ndim=3, 1, 1)`` with
  its defaults (features 16 x 5, 5 integration steps, ReLU, linear upsampling) at full
  64^3, MSE + 0.01 x ``SpatialGradient('l2')`` of the predicted velocity (the README's
  "for the MSE loss function we found 0.01 to work best"; the gradient on the
  pre-integration field as in VoxelMorph's training scripts), Adam lr 1e-4, batch 1,
  random scan-to-scan pairs, unsupervised (the recipe uses no labels). Its checkpoint
  evaluations are not counted in its budget.

Same data (the same per-image normalisation), same training subjects (regtune's
subject split), model selection on the same 40 validation pairs, final score on 60
*other* pairs of the held-out subjects with the same metric code
(:func:`regtune.metrics.score_pair`, full resolution, labels warped nearest).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .common import REGTUNE, Context, Row, missing_row
from .sections import section


def test_pairs(split, val_pairs, n: int, seed: int = 1):
    from regtune.data.pairs import sample_pairs
    taken = set(val_pairs)
    cand = [p for p in sample_pairs(split.val, n + len(val_pairs), seed) if p not in taken]
    rng = np.random.default_rng(seed)
    rng.shuffle(cand)
    return sorted(cand[:n])


@torch.no_grad()
def score_fields(field_fn, vols, pairs, batch: int = 4) -> dict[str, float]:
    """Mean Dice / HD95 / SDlogJ / % folding of ``field_fn(fixed, moving) -> (B, 3, X, Y, Z)``
    voxel displacements (Learn2Reg convention) over ``pairs``; labels warped nearest."""
    from regtune.metrics import score_pair
    from regtune.model import warp
    rows = []
    for i in range(0, len(pairs), batch):
        chunk = pairs[i: i + batch]
        f = torch.tensor([p[0] for p in chunk])
        m = torch.tensor([p[1] for p in chunk])
        disp = field_fn(vols.images[f], vols.images[m]).float()
        wl = warp(vols.labels[m].unsqueeze(1).float(), disp, mode="nearest")[:, 0].round().to(torch.uint8)
        for b, (fi, _) in enumerate(chunk):
            s = score_pair(vols.labels[fi].numpy(), wl[b].numpy(), disp[b].numpy(), vols.label_values, vols.spacing)
            rows.append((s.dice, s.hd95, s.sdlogj, s.folding_pct))
    a = np.array(rows)
    return {"dice": float(np.nanmean(a[:, 0])), "hd95": float(np.nanmean(a[:, 1])), "sdlogj": float(a[:, 2].mean()),
            "folding_pct": float(a[:, 3].mean())}


def run_regtune(ctx: Context, vols, split, tpairs, out_dir) -> Row:
    from regtune.checkpoint import load_checkpoint
    from regtune.config import Config
    from regtune.model import RegNet, predict_field
    from regtune.train import train
    over = {"train.max_minutes": ctx.minutes, "train.epochs": 0}  # what `regtune train --max-minutes M` sets
    if ctx.quick:
        over.update({"data.val_subjects": 3, "data.val_pairs": 2, "data.test_subjects": 2, "train.epochs": 2, "train.steps_per_epoch": 3,
                     "train.batch_size": 2})
    cfg = Config().with_values(over)
    if ctx.data_root is not None and not ctx.quick:
        cfg = cfg.with_values({"data.root": str(ctx.data_root)})
    t0 = time.monotonic()
    res = train(cfg, vols, out_dir, device=ctx.device, progress=False, split=split)
    wall = time.monotonic() - t0
    curve, t = [], 0.0
    for h in res.history:
        t += h["seconds"]
        curve.append((t / 60.0, h["val_dice"]))
    ck = load_checkpoint(out_dir / "best.pt")
    model = RegNet(ck.config.model).to(ctx.device)
    model.load_state_dict(ck.state_dict)
    model.eval()
    ds = ck.config.data.downsample
    s = score_fields(lambda f, m: predict_field(model, f.to(ctx.device), m.to(ctx.device), ds).cpu(), vols, tpairs)
    steps = res.history[-1]["step"] if res.history else 0
    return Row("ttq", "", REGTUNE, "dice", s["dice"], better="higher",
               variant=f"default CPU recipe ({cfg.data.downsample}x downsampled, {cfg.loss.similarity} + Dice loss, batch {cfg.train.batch_size})",
               extra={**s, "curve": curve, "steps": steps, "pairs_seen": steps * cfg.train.batch_size, "wall_s": wall,
                      "status": res.status, "best_epoch": res.best_epoch},
               note="regtune: per-epoch validation (40 pairs, full resolution) counts inside its budget; "
                    "its default recipe uses the training subjects' labels (Dice loss)")


def run_voxelmorph(ctx: Context, vols, split, val_pairs, tpairs) -> Row:
    import neurite as ne
    import voxelmorph as vxm
    torch.manual_seed(ctx.seed)
    kw = {}
    if min(vols.shape) < 32:  # its default 5 pooling levels need >= 32^3 (quick mode's 16^3 phantoms)
        kw = {"nb_features": (16, 16, 16, 16)}
    model = vxm.nn.models.VxmPairwise(ndim=3, source_channels=1, target_channels=1, **kw).to(ctx.device)
    _check_convention(model)
    mse, grad = ne.nn.modules.MSE(), ne.nn.modules.SpatialGradient("l2")
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    images = vols.images.to(ctx.device)
    train_idx = torch.tensor(split.train)
    g = torch.Generator().manual_seed(ctx.seed)
    budget = ctx.minutes * 60.0
    n_checks = 2 if ctx.quick else 6
    next_check = budget / n_checks
    trained, steps, curve = 0.0, 0, []
    best = (-1.0, None)

    def field(f, m):
        return model(m.to(ctx.device), f.to(ctx.device)).cpu()  # displacement (default return)

    def check():
        nonlocal best
        model.eval()
        d = score_fields(field, vols, val_pairs)["dice"]
        model.train()
        curve.append((trained / 60.0, d))
        if d > best[0]:
            best = (d, {k: v.detach().clone() for k, v in model.state_dict().items()})

    model.train()
    while trained < budget:
        t0 = time.monotonic()
        i = torch.randint(len(train_idx), (2,), generator=g)
        if i[0] == i[1]:
            continue
        fixed, moving = images[train_idx[i[0]]][None], images[train_idx[i[1]]][None]
        disp, warped = model(moving, fixed, return_warped_source=True)
        loss = mse(warped, fixed) + 0.01 * grad(model.velocity)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
        trained += time.monotonic() - t0
        if trained >= next_check or trained >= budget:
            check()
            next_check += budget / n_checks
    if best[1] is not None:
        model.load_state_dict(best[1])
    model.eval()
    s = score_fields(field, vols, tpairs)
    return Row("ttq", "", "voxelmorph", "dice", s["dice"], better="higher",
               variant="documented default (VxmPairwise defaults, 64^3, MSE + 0.01 grad, Adam 1e-4, batch 1)",
               extra={**s, "curve": curve, "steps": steps, "pairs_seen": steps, "wall_s": trained},
               note="voxelmorph: checkpoint evaluations (val Dice, 40 pairs) paused its clock; unsupervised (no labels)")


def _check_convention(model) -> None:
    """The voxelmorph package's displacement must mean what regtune's warp means
    (voxel units, channel c along axis c, warped(x) = moving(x + u(x))) for the shared
    metric code to be fair: compare both transformers on one smooth field."""
    from regtune.data.synth import random_field
    from regtune.model import warp
    rng = np.random.default_rng(0)
    img = torch.rand(1, 1, 20, 20, 20)
    d = torch.from_numpy(random_field(20, 2.0, rng))[None]
    a = model.spatial_transformer(img, d)[..., 3:-3, 3:-3, 3:-3]
    b = warp(img, d)[..., 3:-3, 3:-3, 3:-3]
    err = float((a - b).abs().max())
    if err > 1e-4:
        raise RuntimeError(f"voxelmorph's displacement convention differs from regtune's (max |diff| {err:.3g})")


@section("ttq", "Time to quality: held-out Dice after the same wall-clock budget on this machine")
def run(ctx: Context) -> list[Row]:
    from regtune.data.pairs import sample_pairs, split_subjects
    from regtune.train import no_registration_baseline
    vols = ctx.volumes()
    if ctx.quick:
        ctx.minutes = min(ctx.minutes, 0.03)
    n_val, n_val_pairs, n_test = (3, 2, 2) if ctx.quick else (20, 40, 60)
    split = split_subjects(vols, n_val, 0)
    val_pairs = sample_pairs(split.val, n_val_pairs, 0)
    tpairs = test_pairs(split, val_pairs, n_test)
    base = no_registration_baseline(vols, tpairs)["dice"]
    group = f"held-out Dice after {ctx.minutes:g} min ({len(tpairs)} pairs, {ctx.data_label})"
    rows = []
    out = ctx.out_dir / f"ttq-regtune-{time.strftime('%Y%m%d-%H%M%S')}"
    ctx.log(f"[ttq] regtune default recipe, {ctx.minutes:g} min -> {out}")
    r = run_regtune(ctx, vols, split, tpairs, out)
    r.group = group
    rows.append(r)
    if ctx.peer_available("voxelmorph"):
        ctx.log(f"[ttq] voxelmorph default recipe, {ctx.minutes:g} min")
        try:
            r = run_voxelmorph(ctx, vols, split, val_pairs, tpairs)
            r.group = group
        except Exception as e:
            r = Row("ttq", group, "voxelmorph", "dice", None, better="higher", status="error", note=f"{type(e).__name__}: {e}"[:200])
        rows.append(r)
    else:
        rows.append(missing_row("ttq", group, "voxelmorph", "dice", "not installed", better="higher"))
    for r in rows:
        r.extra["no_registration_dice"] = base
    return rows
