"""The commands over a trained checkpoint: ``regtune evaluate`` (and ``evaluate --top`` over a
study's best trials) and ``regtune register`` (fields in the organisers' naming)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _fmt(v: float, nd: int = 3) -> str:
    return "nan" if v != v else f"{v:.{nd}f}"


def _load_eval_volumes(args: argparse.Namespace, cfg):
    from .data.dataset import load_files, match_labels
    from .data.source import data_root

    if args.images:
        files = match_labels(Path(args.images), Path(args.labels) if args.labels else None)
    else:
        root = Path(args.data) if args.data else data_root(cfg.data)
        files = match_labels(root / "imagesTr", root / "labelsTr")
    return load_files(files, cfg.data, progress=not args.quiet)


def _pairs(args: argparse.Namespace, ck, vols):
    from .evaluate import checkpoint_pairs

    return checkpoint_pairs(ck.extra, vols, args.pairs)


def cmd_evaluate_top(args: argparse.Namespace) -> int:
    from .search.cli import default_uri, latest_study
    from .search.top import evaluate_top, format_top
    from .train import pick_device

    uri = default_uri(args.runs_dir, args.tracking_uri)
    study = args.study or latest_study(uri)
    base, results = evaluate_top(uri, study, args.top, args.data, args.pairs, args.export_fields,
                                 device=str(pick_device(args.device)), progress=not args.quiet,
                                 allow_overlap=args.allow_overlap)
    prefix = results[0].prefix
    print(f"study '{study}': top {len(results)} runs (ranked by their best epoch's score) re-evaluated on "
          f"{len(results[0].rows)} pairs; {prefix}_* metrics and evaluation/{prefix}_pairs_*.csv logged to each run")
    print(format_top(base, results))
    if args.export_fields:
        print(f"fields: {args.export_fields}/<trial>/disp_<fixed>_<moving>.nii.gz (Learn2Reg convention)")
    return 0


def _refinement(args: argparse.Namespace, ck, weights: dict):
    """The ``--refine*`` flags as a :class:`regtune.refine.Refinement` bound to the
    checkpoint's loss (at the amortised ``weights``)."""
    from .refine import Refinement

    lr = {} if args.refine_lr is None else {"lr": args.refine_lr}  # else Refinement's default
    return Refinement(steps=args.refine, reg_weight=args.refine_reg_weight, **lr).bind(ck.config.loss, weights)


def _refuse_unused(args: argparse.Namespace, command: str) -> None:
    """Flags that would do nothing in this mode stop the command with one line."""
    from .errors import ConfigError

    if not args.refine and (args.refine_lr is not None or args.refine_reg_weight is not None):
        raise ConfigError(f"{command}: --refine-lr and --refine-reg-weight set how --refine N refines; give --refine N too")
    if command == "register":
        unused = {"--data": args.data}
        why = "register reads images from --fixed/--moving or --images [--labels] with --pairs"
    elif args.top:
        unused = {"--checkpoint": args.checkpoint, "--images": args.images, "--labels": args.labels, "--out": args.out,
                  "--refine": args.refine}
        why = "--top K evaluates the study's own checkpoints on --data (fields go to --export-fields)"
    else:
        unused = {"--study": args.study, "--tracking-uri": args.tracking_uri, "--export-fields": args.export_fields,
                  "--allow-overlap": args.allow_overlap or None}
        why = "they select and log a study's trials, which only --top K does"
    given = [k for k, v in unused.items() if v]
    if given:
        raise ConfigError(f"{command}: {', '.join(given)} would be ignored here: {why}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    import csv

    from .errors import ConfigError

    _refuse_unused(args, "evaluate")
    if args.top:
        if args.overrides:
            raise ConfigError("--set chooses the loss weight of one amortised --checkpoint; it does not apply to --top")
        return cmd_evaluate_top(args)
    if not args.checkpoint:
        raise ConfigError("give --checkpoint PT, or --top K to re-evaluate a study's best trials")

    from .checkpoint import load_checkpoint
    from .evaluate import evaluate_pairs, summarise
    from .train import pick_device

    ck = load_checkpoint(args.checkpoint)
    cfg = ck.config
    vols = _load_eval_volumes(args, cfg)
    pairs, what = _pairs(args, ck, vols)
    device = pick_device(args.device)
    from .amortise_cli import model_for

    model, weights = model_for(ck, device, args.overrides, args.checkpoint, quiet=args.quiet)  # --set KEY=VALUE
    refine = _refinement(args, ck, weights)
    if refine.steps and not args.quiet:
        print(f"refining: {refine.describe()}", file=sys.stderr)
    t0 = time.perf_counter()
    rows = evaluate_pairs(model, vols, pairs, cfg.data.downsample, device, progress=not args.quiet,
                          channels_last=device.type == "cpu", with_consistency=True, refine=refine)
    seconds = time.perf_counter() - t0
    base_rows = evaluate_pairs(None, vols, pairs)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    with (out / "pairs.csv").open("w", newline="") as fh:
        keys = list(rows[0])
        w = csv.DictWriter(fh, fieldnames=keys + [f"noreg_{k}" for k in ("dice", "hd95")])
        w.writeheader()
        for r, b in zip(rows, base_rows):
            w.writerow({**r, "noreg_dice": b["dice"], "noreg_hd95": b["hd95"]})
    s, b = summarise(rows), summarise(base_rows)
    import json
    (out / "summary.json").write_text(json.dumps({"checkpoint": str(args.checkpoint), "pairs": len(pairs), "pairs_are": what,
                                                  "loss_weights": weights, "epoch": ck.epoch, "steps": ck.extra.get("steps"),
                                                  "refinement": refine.record(), "seconds": round(seconds, 1),
                                                  "registered": s, "no_registration": b}, indent=1))
    print(f"{len(pairs)} pairs: {what}  ({out / 'pairs.csv'})")
    print(f"checkpoint: epoch {ck.epoch}" + (f", {ck.extra['steps']} steps" if ck.extra.get("steps") else "")
          + f"; {refine.describe()}; {seconds:.0f} s for the pairs, both directions and self-registration")
    print(f"{'':16s} {'Dice':>6s} {'±':>6s} {'Dice30':>6s} {'HD95':>6s} {'SDlogJ':>6s} {'L2R-SD':>6s} {'fold %':>7s} "
          f"{'IC err':>6s} {'self':>6s} {'selfD':>6s} {'black':>5s}")
    for name, x in (("no registration", b), ("regtune", s)):
        black = "yes" if x["warped_intensity"] < 0.5 * x["moving_intensity"] else "no"
        print(f"{name:16s} {_fmt(x['dice']):>6s} {_fmt(x['dice_std']):>6s} {_fmt(x['dice30']):>6s} {_fmt(x['hd95'], 2):>6s} "
              f"{_fmt(x['sdlogj']):>6s} {_fmt(x['sdlogj_l2r']):>6s} {_fmt(x['folding_pct'], 3):>7s} "
              f"{_fmt(x.get('ic_error', 0.0), 2):>6s} {_fmt(x.get('self_disp', 0.0), 2):>6s} "
              f"{_fmt(x.get('self_dice', 1.0)):>6s} {black:>5s}")
    print("SDlogJ = std(log det J); L2R-SD = the organisers' std(log(det J + 3)); IC err = mean |u_fm + u_mf o (id + u_fm)| "
          "(voxels, the pair registered both ways); self = mean |u| on the labels when an image is registered to itself, "
          "selfD = the Dice of that self-registration (1 = the labels stay put)")
    for lab in vols.label_values:
        print(f"  label {lab}: Dice {_fmt(b[f'dice_{lab}'])} -> {_fmt(s[f'dice_{lab}'])}, "
              f"HD95 {_fmt(b[f'hd95_{lab}'], 2)} -> {_fmt(s[f'hd95_{lab}'], 2)}")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .data.dataset import load_files
    from .errors import DataError
    from .evaluate import evaluate_pairs
    from .register import FieldWriter
    from .train import pick_device

    _refuse_unused(args, "register")
    ck = load_checkpoint(args.checkpoint)
    cfg = ck.config
    if args.fixed or args.moving:
        if not (args.fixed and args.moving):
            raise DataError("--fixed and --moving go together (or use --pairs with --images)")
        labs = [args.fixed_label, args.moving_label]
        if any(labs) and not all(labs):
            raise DataError("--fixed-label and --moving-label go together")
        vols = load_files([(Path(args.fixed), labs[0] and Path(labs[0])), (Path(args.moving), labs[1] and Path(labs[1]))], cfg.data)
        if vols.names[0] == vols.names[1]:
            raise DataError(f"--fixed and --moving are the same subject '{vols.names[0]}'")
        pairs = [(0, 1)]
    else:
        if not (args.pairs and args.images):
            raise DataError("give --fixed F --moving M, or --pairs CSV --images DIR [--labels DIR]")
        vols = _load_eval_volumes(args, cfg)
        pairs, _ = _pairs(args, ck, vols)
    device = pick_device(args.device)
    writer = FieldWriter(args.out, vols, images=not args.fields_only, naming=args.naming, fmt=args.format)
    from .amortise_cli import model_for

    model, weights = model_for(ck, device, args.overrides, args.checkpoint, quiet=args.quiet)  # --set KEY=VALUE
    refine = _refinement(args, ck, weights)
    if refine.steps and not args.quiet:
        print(f"refining: {refine.describe()}", file=sys.stderr)
    rows = evaluate_pairs(model, vols, pairs, cfg.data.downsample, device, on_field=writer,
                          with_hd95=False, progress=not args.quiet, refine=refine)
    for r in rows:
        extra = f"  Dice {_fmt(r['dice'])}" if r["dice"] == r["dice"] else ""
        print(f"{r['fixed']} <- {r['moving']}:  fold {_fmt(r['folding_pct'], 3)}%  SDlogJ {_fmt(r['sdlogj'])}{extra}")
    print(f"wrote {len(writer.written)} displacement field(s) to {args.out}, e.g. {writer.written[0].name} "
          f"(X x Y x Z x 3, voxel units, warped(x) = moving(x + u(x)){', float16' if args.format == 'npz' else ''})")
    return 0


__all__ = ["cmd_evaluate", "cmd_register"]
