"""Command-line pieces of amortised loss weights (argument parsing; heavy imports inside):

- ``regtune train --amortise KEY=LOW:HIGH[:log]`` (repeatable) -> ``amortise.ranges``;
- ``regtune evaluate|register --set KEY=VALUE``: the loss weight an amortised checkpoint
  registers with (refused, one line, outside the trained range, and for an ordinary
  checkpoint whose weights are baked in);
- ``regtune search-weights --checkpoint PT``: the inference-time search
  (:mod:`regtune.search.weight_search`).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

RUNS = Path("regtune-runs")

AMORTISE_HELP = ("train ONE network conditioned on this loss weight over [LOW, HIGH] (log-uniform with :log), "
                 "e.g. --amortise loss.reg_weight=0.01:10:log (repeatable; also config key amortise.ranges); "
                 "afterwards choose any weight in the range with --set at evaluate/register, or search it with "
                 "'regtune search-weights'")


def add_amortise_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--amortise", action="append", default=[], metavar="KEY=LOW:HIGH[:log]", help=AMORTISE_HELP)


def amortise_override(args: argparse.Namespace) -> list[str]:
    """``--amortise`` as a config override (``amortise.ranges=[...]``); empty when not given."""
    specs = getattr(args, "amortise", None) or []
    if specs:
        from .amortise import parse_ranges

        parse_ranges(specs, where="--amortise")  # a bad range is named as the flag the user typed, not as a --set
    return [f"amortise.ranges={json.dumps(list(specs))}"] if specs else []


def add_set_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="for an amortised checkpoint: the loss weight to register with, inside its trained range, "
                        "e.g. --set loss.reg_weight=0.3 (repeatable; default: the weight the checkpoint records as chosen, "
                        "as an amortised study's model does, else the middle of the range)")


def model_for(ck, device, overrides: list[str], checkpoint: str = "checkpoint", quiet: bool = False):
    """The checkpoint's network, set to the ``--set`` loss weights when it is amortised.

    Refuses (ConfigError, one line) a weight outside the trained range, a key that is not
    amortised, and any ``--set`` on an ordinary checkpoint (its weights are baked in)."""
    from .amortise import choose, chosen_in, describe
    from .config import parse_overrides

    recorded = chosen_in(ck.metrics)
    values = choose(ck.config, parse_overrides(overrides), checkpoint=checkpoint, defaults=recorded)
    model = ck.model(device)
    if values:
        model.conditioner.set_values(values)
        if not quiet:
            given = {k.split("=", 1)[0].strip() for k in overrides}
            how = "" if given >= set(values) else (" (unset: the weight the checkpoint records as chosen)" if recorded
                                                   else " (unset: the middle of the trained range)")
            print(f"amortised checkpoint: registering at {describe(values)}{how}", file=sys.stderr)
    return model, values


SEARCH_EPILOG = textwrap.dedent("""\
    what happens:
      an amortised checkpoint (trained with --amortise) holds a network for every loss
      weight of its range. This tries --n weight settings (Optuna TPE, asked in rounds,
      the first quarter a grid over the range), each registered on the same --pairs
      validation pairs at full resolution and scored with the checkpoint's objective
      (train.best_*) under the constraints; the best --refine feasible settings are
      re-scored on all validation pairs and the best of those is chosen. The chosen
      setting is then scored once on the test pairs (held out; never used to choose).

    against your own network (--match PT):
      a weight means different things in a conditional and an ordinary network (below the
      strong end of its range the conditional one is smoother at the same number), so
      compare them at equal roughness: --match scores PT (any checkpoint of the same
      split) on all validation pairs and caps SDlogJ and folding at its own there; the
      chosen weight is then no rougher than PT on those pairs. SDlogJ has two common
      definitions, std(log det J) and the organisers' std(log(det J + 3)); they weigh
      compression and expansion differently and can disagree about which field is
      smoother, so both are capped unless --match-roughness logdet|l2r says otherwise.
      PT is scored on the test pairs too, beside the chosen weight, with the paired
      test Dice difference (held out: reported, never used to choose).

    writes (--out, default next to the checkpoint: weight-search/):
      curve.png     Dice and SDlogJ against the weight (log axis), no-registration level,
                    settings that break the constraints shaded, the choice marked
      tradeoff.png  Dice against SDlogJ of every setting (coloured by the weight), the choice
                    starred; with --match the reference network on the same pairs
      overlays.png  one validation pair at the low end, the chosen weight, the high end
      points.csv    every setting tried with its scores; result.json the summary
      chosen.yaml   the training config at the chosen weights (an ordinary run at them)
      chosen.pt     the checkpoint again, with the chosen weights recorded: evaluate and
                    register use them unless --set picks others
    and one MLflow run (experiment weight-search): per-setting metrics curve_* (step =
    rank along the weight), the choice and its scores, the files above but chosen.pt.

    examples:
      regtune search-weights --checkpoint RUN/best.pt --data ../shared/data/learn2reg-hippocampus
      regtune search-weights --checkpoint RUN/best.pt --max-sdlogj 0.08 --no-folding-limit --n 400
      regtune search-weights --checkpoint RUN/best.pt --match ORDINARY/best.pt   # better than it, no rougher?
    """)


def add_commands(sub) -> None:
    s = sub.add_parser("search-weights", help="choose the loss weight of an amortised checkpoint (inference-time search)",
                       description="Search the loss weights an amortised checkpoint was trained over, on its "
                                   "validation pairs, in a minute or two on a CPU: no retraining.",
                       epilog=SEARCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--checkpoint", required=True, metavar="PT", help="a checkpoint trained with --amortise")
    s.add_argument("--data", metavar="DIR", help="Learn2Reg-layout folder (default: the checkpoint's data.root)")
    s.add_argument("--n", type=int, default=256, help="weight settings to try (default 256)")
    s.add_argument("--pairs", type=int, default=8, help="validation pairs each setting is scored on (default 8; 0 = all)")
    s.add_argument("--max-folding-pct", type=float, metavar="PCT",
                   help="constraint: %% of folding voxels at most this (default 0.05; with --match, the reference's)")
    s.add_argument("--no-folding-limit", action="store_true", help="no folding constraint")
    s.add_argument("--max-sdlogj", type=float, metavar="S", help="constraint: SDlogJ = std(log det J) at most this (default: none)")
    s.add_argument("--max-sdlogj-l2r", type=float, metavar="S",
                   help="constraint: the organisers' SDlogJ, std(log(det J + 3)), at most this (default: none)")
    s.add_argument("--match", metavar="PT",
                   help="a reference checkpoint of the same split (e.g. an ordinary network): cap SDlogJ (both definitions) "
                        "and folding at its own on the validation pairs, and report its test scores and the paired test "
                        "Dice difference")
    s.add_argument("--match-roughness", choices=("both", "logdet", "l2r"),
                   help="with --match: which SDlogJ to cap, std(log det J) ('logdet'), the organisers' std(log(det J + 3)) "
                        "('l2r') or both (default)")
    s.add_argument("--refine", type=int, default=5, help="best feasible settings re-scored on all validation pairs (default 5)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", metavar="DIR", help="default: <checkpoint folder>/weight-search")
    s.add_argument("--no-test", action="store_true", help="do not score the chosen setting on the test pairs")
    s.add_argument("--tracking-uri", metavar="URI", help="MLflow store (default: sqlite:///regtune-runs/mlflow.db)")
    s.add_argument("--experiment", default="weight-search", help="MLflow experiment (default weight-search)")
    s.add_argument("--no-mlflow", action="store_true", help="do not record an MLflow run")
    s.add_argument("--runs-dir", default=str(RUNS), metavar="DIR")
    s.add_argument("--device", default="auto")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_search_weights)


def cmd_search_weights(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint, save_at_weights
    from .data.dataset import load_folder
    from .data.source import data_root
    from .errors import ConfigError, DataError
    from .train import pick_device
    from .search.weight_outputs import track, write_outputs
    from .search.weight_results import SearchSettings
    from .search.weight_search import search_weights

    ck = load_checkpoint(args.checkpoint)
    cfg = ck.config
    if args.match and (args.max_sdlogj is not None or args.max_sdlogj_l2r is not None):
        raise ConfigError(f"--match caps SDlogJ at {args.match}'s own on the validation pairs; give --match or "
                          f"--max-sdlogj/--max-sdlogj-l2r, not both (--match-roughness picks the definitions it caps)")
    if args.match_roughness and not args.match:
        raise ConfigError("--match-roughness chooses what --match caps; give --match PT too")
    if args.no_folding_limit and args.max_folding_pct is not None:
        raise ConfigError("--no-folding-limit and --max-folding-pct contradict each other; give one")
    folding = None if args.no_folding_limit else (0.05 if args.max_folding_pct is None else args.max_folding_pct)
    settings = SearchSettings(n=args.n, pairs=args.pairs, refine=args.refine, seed=args.seed,
                              max_folding_pct=folding, max_sdlogj=args.max_sdlogj, max_sdlogj_l2r=args.max_sdlogj_l2r)
    if not ck.extra.get("amortised"):
        raise ConfigError(f"{args.checkpoint}: an ordinary network, its loss weights are baked in; train with "
                          f"--amortise loss.reg_weight=LOW:HIGH[:log] to search them at inference")
    root = Path(args.data) if args.data else data_root(cfg.data, Path(args.runs_dir) / "synthetic")
    vols = load_folder(root, cfg.data, progress=not args.quiet)
    names = ck.extra.get("val_pairs") or []
    if not names:
        raise DataError(f"{args.checkpoint}: holds no validation pair list to search on")
    val = [(vols.index(f), vols.index(m)) for f, m in names]
    test = [] if args.no_test else [(vols.index(f), vols.index(m)) for f, m in ck.extra.get("test_pairs") or []]
    device = pick_device(args.device)
    model = ck.model(device)
    if cfg.train.channels_last:  # as it trained: the fast CPU layout
        import torch

        model = model.to(memory_format=torch.channels_last_3d)
    log = None if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    reference = None
    if args.match:
        from .search.weight_match import load_reference, matched_settings

        reference = load_reference(args.match, ck, vols, val, device)
        # the reference's roughness on the same pairs caps the search; an explicit folding flag still rules
        settings = matched_settings(settings, reference, folding=args.max_folding_pct is None and not args.no_folding_limit,
                                    roughness=args.match_roughness or "both")
        r = reference.val
        print(f"--match {args.match}: on all {len(val)} validation pairs Dice {r['dice']:.4f}, SDlogJ {r['sdlogj']:.4f}, "
              f"SDlogJ (L2R) {r['sdlogj_l2r']:.4f}, folding {r['folding_pct']:.4f}%; caps: {settings.describe()}",
              file=sys.stderr)
    print(f"regtune search-weights: {settings.n} settings of {', '.join(ck.extra['amortised']['specs'])} on "
          f"{min(settings.pairs or len(val), len(val))} of {len(val)} validation pairs; constraints {settings.describe()}",
          file=sys.stderr)
    res = search_weights(model, cfg, vols, val, settings, device=device, test_pairs=test, log=log, reference=reference)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "weight-search"
    paths = write_outputs(out, res, model, cfg, vols, checkpoint=str(args.checkpoint), device=device)
    chosen_pt = save_at_weights(out / "chosen.pt", ck, res.chosen.values)  # not an MLflow artifact: it is the checkpoint again
    rid = ""
    if not args.no_mlflow:
        from .search.store import sqlite_uri

        uri = args.tracking_uri or sqlite_uri(Path(args.runs_dir) / "mlflow.db")
        rid = track(res, uri, args.experiment, checkpoint=str(args.checkpoint), artifacts=paths)
    print(format_result(res))
    print(f"\nfiles: {out}/ (curve.png, tradeoff.png, overlays.png, points.csv, result.json, chosen.yaml, chosen.pt)")
    if rid:
        print(f"MLflow: run {rid} in experiment '{args.experiment}' ({uri})")
    print(f"next: regtune evaluate --checkpoint {chosen_pt}" + (f" --data {args.data}" if args.data else "")
          + "   (the network at the chosen weights; register takes it too)")
    return 0


def format_result(res) -> str:
    from .amortise import describe

    c = res.chosen
    lines = [f"{len(res.points)} settings in {res.seconds:.1f} s ({1000 * res.seconds / max(len(res.points), 1):.0f} ms each, "
             f"{len(res.search_pairs)} pairs); re-scoring the best {len(res.refined)} on {len(res.val_pairs)} validation pairs "
             f"{res.refine_seconds:.1f} s"]
    if not res.any_feasible:
        lines.append(f"warning: no setting met the constraints ({res.settings.describe()}); the one closest to them "
                     f"(least relative excess) is reported")
    lines.append(f"chosen: {describe(c.values)}  (objective {res.objective.describe()}; constraints {res.settings.describe()})")
    hdr = f"{'':29s} {'Dice':>6s} {'HD95':>6s} {'SDlogJ':>6s} {'L2R-SD':>6s} {'fold %':>7s}"
    lines.append(hdr)

    def row(name, m):
        return (f"{name:29s} {m.get('dice', float('nan')):6.3f} {m.get('hd95', float('nan')):6.2f} "
                f"{m.get('sdlogj', float('nan')):6.3f} {m.get('sdlogj_l2r', float('nan')):6.3f} "
                f"{m.get('folding_pct', float('nan')):7.3f}")

    lines.append(row(f"val ({len(res.val_pairs)}) no registration", res.noreg_val))
    lines.append(row(f"val ({len(res.val_pairs)}) chosen", c.metrics))
    ref = res.reference
    if ref:
        lines.append(row(f"val ({len(res.val_pairs)}) --match reference", ref["val"]))
    if res.test:
        lines.append(row(f"test ({res.test_pairs}) no registration", res.test_noreg))
        lines.append(row(f"test ({res.test_pairs}) chosen, held out", res.test))
        if ref.get("test"):
            lines.append(row(f"test ({res.test_pairs}) --match reference", ref["test"]))
    lines.append("SDlogJ = std(log det J); L2R-SD = the organisers' std(log(det J + 3))")
    if ref:
        lines.append(f"reference: {ref['checkpoint']}")
        d = ref.get("test_dice_diff")
        if d:
            lines.append(f"test Dice, chosen - reference: {d['diff']:+.4f} ± {d['se']:.4f} (paired over {d['n']} pairs; "
                         f"chosen better on {d['a_better']}, reference on {d['b_better']})")
    return "\n".join(lines)
