"""``regtune``: a thin command line over the library.

Heavy imports (torch, ray, mlflow) happen inside the command that needs them, so
``regtune --help`` answers at once. Any :class:`~regtune.errors.RegtuneError` ends the
command with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time
from pathlib import Path

from .cli_checkpoint import _fmt, cmd_evaluate, cmd_register
from .cli_config import add_config_args, config_from_args, length_overrides
from .errors import RegtuneError

RUNS = Path("regtune-runs")

EPILOG = textwrap.dedent("""\
    typical session:
      regtune data synth --out synth/             # a small phantom dataset with known deformations
      regtune train --data DATA --max-minutes 15  # train; writes best.pt, history, split
      regtune evaluate --checkpoint RUN/best.pt --data DATA
      regtune register --checkpoint RUN/best.pt --fixed F.nii.gz --moving M.nii.gz --out fields/
      regtune search --space search_spaces/smooth.yaml   # a hyperparameter study

    DATA is a Learn2Reg-layout folder (imagesTr/, labelsTr/); without --data the embedded
    synthetic dataset is used. Config keys are dotted (train.lr, loss.reg_weight, ...);
    'regtune config' prints them all with their defaults.
    """)


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    cfg = config_from_args(args)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .data.source import load_data
    from .train import no_registration_baseline, pick_device, train

    resume = None
    if args.resume:  # regtune train --resume RUN: the run's own config, its length (and data path) may change
        from .resume import resume_config

        clash = [f for f, v in (("--config", args.config), ("--from-study", args.from_study), ("--trial", args.trial),
                                ("--amortise", args.amortise), ("--out", args.out)) if v]
        if clash:
            raise RegtuneError(f"--resume continues RUN with its own recipe and folder; drop {', '.join(clash)}")
        cfg, resume = resume_config(args.resume, length_overrides(args, resume=True))
        out = resume.parent
    else:
        if args.from_study or args.trial:  # regtune train --from-study NAME [--trial ID]: the study's (or a trial's) config
            from .search.cli import config_from_study

            args.config = config_from_study(args)
        cfg = config_from_args(args)
        out = Path(args.out) if args.out else RUNS / time.strftime("train-%Y%m%d-%H%M%S")
    vols = load_data(cfg.data, progress=not args.quiet)
    for note in vols.notes:
        print(f"note: {note}", file=sys.stderr)
    device = pick_device(args.device)
    print(f"regtune train: {len(vols)} subjects {vols.shape} from {cfg.data.root or 'synthetic phantoms'}, "
          f"training at 1/{cfg.data.downsample} resolution on {device}; output {out}", file=sys.stderr)

    def show(e) -> None:
        m = e.metrics
        print(f"epoch {e.epoch:3d}  {e.seconds:6.1f}s  loss {m['train_loss']:+.4f}  val Dice {_fmt(m['val_dice'])}  "
              f"HD95 {_fmt(m['val_hd95'], 2)}  SDlogJ {_fmt(m['val_sdlogj'])}  fold {_fmt(m['val_folding_pct'], 2)}%"
              f"{'  *best' if e.is_best else ''}", file=sys.stderr)

    again = f"regtune train --resume {out}" + (f" --data {cfg.data.root}" if cfg.data.root else "")
    try:
        res = train(cfg, vols, out, device=device, on_epoch=show, progress=not args.quiet, resume=resume)
    except KeyboardInterrupt:
        done = (out / "last.pt").is_file()
        print("\ninterrupted; " + (f"the finished epochs are in {out / 'last.pt'}; continue with: {again}" if done
                                    else "no epoch had finished, nothing to resume"), file=sys.stderr)
        return 130
    import json
    split = json.loads((out / "split.json").read_text())
    pairs = [(vols.index(f), vols.index(m)) for f, m in split["val_pairs"]]
    base = no_registration_baseline(vols, pairs)
    print(f"\nstatus: {res.status} ({res.reason})")
    print(f"best val Dice {_fmt(res.best_val_dice)} at epoch {res.best_epoch}; no registration {_fmt(base['dice'])}")
    if res.best_checkpoint:
        print(f"checkpoint: {res.best_checkpoint}\nnext: regtune evaluate --checkpoint {res.best_checkpoint}"
              + (f" --data {cfg.data.root}" if cfg.data.root else ""))
        if res.status == "completed":
            print(f"to train on: {again} --set train.epochs=N (or --max-minutes M)")
        if cfg.amortise.ranges:
            print(f"amortised over {' '.join(cfg.amortise.ranges)}: choose the weight with regtune search-weights "
                  f"--checkpoint {res.best_checkpoint}, or pass --set KEY=VALUE to evaluate/register")
    return 0 if res.status == "completed" else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    from .data.source import load_data
    from .doctor import FAIL, format_checks, run_doctor

    cfg = config_from_args(args)
    vols = load_data(cfg.data, progress=not args.quiet)
    checks = run_doctor(cfg, vols, raw_p99=vols.raw_p99, steps=args.steps)
    print(f"regtune doctor: {len(vols)} subjects from {cfg.data.root or 'synthetic phantoms'}, "
          f"config lr={cfg.train.lr:g} {cfg.loss.similarity}+{cfg.loss.regulariser}x{cfg.loss.reg_weight:g}"
          f"{f'+dice x{cfg.loss.dice_weight:g}' if cfg.loss.dice_weight else ''}, int_steps={cfg.model.int_steps}")
    print(format_checks(checks))
    return 1 if any(c.verdict == FAIL for c in checks) else 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .data.synth import SynthSpec, write_dataset

    out = write_dataset(args.out, SynthSpec(n_subjects=args.subjects, size=args.size, amplitude=args.amplitude, seed=args.seed),
                        progress=True)
    print(f"wrote {args.subjects} synthetic subjects ({args.size}^3) to {out} "
          f"(imagesTr/, labelsTr/, fields/ = ground-truth displacement from the template)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="regtune", description="Trainable-on-purpose 3D deformable registration "
                                "(VoxelMorph-style) with hyperparameter studies that explain divergence.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("config", help="print the full config (defaults + file + overrides) as YAML")
    add_config_args(c)
    c.set_defaults(func=cmd_config)

    t = sub.add_parser("train", help="train a registration network", formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train on a Learn2Reg-layout folder (or synthetic phantoms), validating each epoch "
                                   "at full resolution on held-out subjects.",
                       epilog="example: regtune train --data ../shared/data/learn2reg-hippocampus --max-minutes 15 "
                              "--set loss.reg_weight=1.0")
    add_config_args(t)
    from .amortise_cli import add_amortise_arg, add_commands as add_weight_commands, add_set_arg

    add_amortise_arg(t)
    t.add_argument("--out", metavar="DIR", help="run folder (default regtune-runs/train-<time>)")
    t.add_argument("--max-minutes", type=float, metavar="M", help="train for M minutes (sets train.max_minutes; the epoch count stops limiting the "
                        "run unless train.epochs is given too, by --set or the config file: then whichever comes first)")
    t.add_argument("--device", default="auto", help="auto (cuda if present, else cpu), cpu, cuda, cuda:1, ...")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--from-study", metavar="NAME", help="train the model of study NAME again: its best_config.yaml (--set still applies)")
    t.add_argument("--trial", metavar="ID", help="with --from-study: that trial's complete config instead of the study's model")
    t.add_argument("--runs-dir", default=str(RUNS), metavar="DIR", help="with --from-study: where the studies are")
    t.add_argument("--resume", metavar="RUN", help="continue run folder RUN from its last.pt (after Ctrl-C, or to train a "
                        "finished run longer with --set train.epochs=N / --max-minutes M): the step after it is the one an "
                        "uninterrupted run takes; the recipe stays the run's own")
    t.set_defaults(func=cmd_train)

    def data_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--data", metavar="DIR", help="Learn2Reg-layout folder (imagesTr/, labelsTr/)")
        q.add_argument("--images", metavar="DIR", help="folder of images (instead of --data)")
        q.add_argument("--labels", metavar="DIR", help="folder of label maps matching --images by file name")
        q.add_argument("--pairs", metavar="CSV", help="pair list with header 'fixed,moving' (default: the checkpoint's reserved "
                       "test pairs, else its validation pairs, labelled as not held out)")
        q.add_argument("--device", default="auto")
        q.add_argument("--quiet", action="store_true")

    def refine_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--refine", type=int, default=0, metavar="N",
                       help="instance optimisation: refine each pair's field with N Adam steps on its own images "
                            "(the checkpoint's similarity + regulariser, no labels), starting from the network's "
                            "(default 0: the network's field as it is). On the hippocampus data it paid for a network "
                            "trained without labels (test Dice +0.046 with 100 steps) and cost the label-trained default "
                            "(-0.007 with 25): see benchmarks/README.md, 'Instance optimisation'")
        q.add_argument("--refine-lr", type=float, metavar="LR", help="with --refine: Adam's step, in voxels of the "
                       "network's grid (default 0.05)")
        q.add_argument("--refine-reg-weight", type=float, metavar="W", help="with --refine: the regulariser's weight "
                       "while refining (default: the checkpoint's loss.reg_weight, or the amortised weight it is set to)")

    e = sub.add_parser("evaluate", help="score a checkpoint (or a study's top K) on pairs against no registration",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  regtune evaluate --checkpoint RUN/best.pt --data DATA\n"
                              "  regtune evaluate --top 3 --study real-cpu --data DATA --pairs heldout.csv --export-fields fields/")
    e.add_argument("--checkpoint", metavar="PT")
    data_args(e)
    add_set_arg(e)
    refine_args(e)
    e.add_argument("--out", metavar="DIR", help="where pairs.csv and summary.json go (default: next to the checkpoint)")
    e.add_argument("--top", type=int, metavar="K", help="re-evaluate the K best trials of a study (from MLflow)")
    e.add_argument("--study", metavar="NAME", help="with --top: the study (default: the most recent)")
    e.add_argument("--tracking-uri", metavar="URI", help="with --top: MLflow store (default: sqlite:///regtune-runs/mlflow.db)")
    e.add_argument("--runs-dir", default=str(RUNS), metavar="DIR")
    e.add_argument("--export-fields", metavar="DIR", help="with --top: write each trial's Learn2Reg displacement fields")
    e.add_argument("--allow-overlap", action="store_true", help="with --top --pairs: score a list that shares subjects with "
                                                               "the trials' train/val split, logged as overlap_* (not test_*)")
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("register", help="write displacement fields and warped images for pairs",
                       description="Fields follow the Learn2Reg convention: X x Y x Z x 3, voxel units, on the fixed "
                                   "grid, warped(x) = moving(x + u(x)).")
    r.add_argument("--checkpoint", required=True, metavar="PT")
    data_args(r)
    add_set_arg(r)
    refine_args(r)
    r.add_argument("--fixed", metavar="NII")
    r.add_argument("--moving", metavar="NII")
    r.add_argument("--fixed-label", metavar="NII")
    r.add_argument("--moving-label", metavar="NII")
    r.add_argument("--out", required=True, metavar="DIR")
    r.add_argument("--fields-only", action="store_true", help="write only the displacement fields")
    r.add_argument("--naming", choices=("regtune", "l2r"), default="regtune",
                   help="regtune: disp_<fixed name>_<moving name>; l2r: the organisers' disp_<fixed id>_<moving id> "
                        "(4-digit case ids, e.g. disp_0201_0260) for their evaluation script")
    r.add_argument("--format", choices=("nii.gz", "npz"), default="nii.gz",
                   help="nii.gz (float32) or npz (float16, key arr_0, the Learn2Reg submission format)")
    r.set_defaults(func=cmd_register)

    dr = sub.add_parser("doctor", help="seconds-long preflight checks of data + config (exit 1 on a failed check)",
                        description="Check what makes registration training fail before spending hours: the "
                                    "transformer's conventions, intensity scales, labels, the initial field, the "
                                    "gradient of each loss term, and whether the loss falls on one pair.")
    add_config_args(dr)
    dr.add_argument("--steps", type=int, default=40, help="steps of the overfit-one-pair check (default 40)")
    dr.add_argument("--quiet", action="store_true")
    dr.set_defaults(func=cmd_doctor)

    d = sub.add_parser("data", help="dataset utilities")
    dsub = d.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    s = dsub.add_parser("synth", help="write a synthetic Learn2Reg-layout dataset with known deformations")
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("--subjects", type=int, default=24)
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--amplitude", type=float, default=3.0, help="peak displacement in voxels")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_synth)

    c = sub.add_parser("compare", help="paired comparison of two evaluations on the same pairs (is A better than B, or noise?)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Per metric: the mean over pairs of A - B, its standard error, and on how many pairs each "
                                   "is better. Both must have scored the same pairs (e.g. two checkpoints' reserved test "
                                   "pairs from one split, or one --pairs CSV).",
                       epilog="example:\n  regtune evaluate --checkpoint runA/best.pt --data DATA --out evalA\n"
                              "  regtune evaluate --checkpoint runB/best.pt --data DATA --out evalB\n"
                              "  regtune compare evalA evalB          # z = (A - B) / SE; |z| >= 2 is rarely the pairs' noise")
    c.add_argument("a", metavar="A", help="evaluation folder (regtune evaluate --out) or its pairs.csv")
    c.add_argument("b", metavar="B", help="the other one")
    c.add_argument("--metric", action="append", metavar="NAME",
                   help="a per-pair column (repeatable; default: dice, hd95, sdlogj, sdlogj_l2r, folding_pct, ic_error, self_dice)")
    c.set_defaults(func=cmd_compare)

    add_weight_commands(sub)  # regtune search-weights

    try:
        from .search.cli import add_commands
    except ImportError:  # pragma: no cover - the study layer is optional
        add_commands = None
    if add_commands is not None:
        add_commands(sub)
    return p


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import DEFAULT_METRICS, compare, format_table, read_pairs

    (pa, a), (pb, b) = read_pairs(args.a), read_pairs(args.b)
    names = (str(pa.parent if pa.name == "pairs.csv" else pa), str(pb.parent if pb.name == "pairs.csv" else pb))
    print(format_table(compare(a, b, tuple(args.metric or DEFAULT_METRICS), names), names))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe surfaces here, not in the interpreter's exit flush
        return rc
    except BrokenPipeError:
        # the reader left early (``regtune compare A B | head``): stop quietly, as ``git log | head`` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except RegtuneError as e:
        print(f"regtune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
