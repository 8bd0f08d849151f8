"""The benchmark entry point: ``python -m benchmarks [--only train,eval,ttq] [--quick] [--device cpu|cuda] [--json PATH]``.

Runs the selected sections (see :mod:`benchmarks.sections`), computes every row's
ratio against the best peer of its group measured in the same run, prints one table
and writes ``{"machine": ..., "settings": ..., "rows": [...]}`` as JSON (default:
``benchmarks/results/bench-<device>-<time>.json``, git-ignored).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from .common import REAL_DATA, REGTUNE, ROOT, Context, Row, machine_info
from .sections import registry


def compute_ratios(rows: list[Row]) -> None:
    """ratio = value / best peer (lower is better) or best peer / value (higher is
    better), per (section, group); < 1.0 means better than every peer measured."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.section, r.group), []).append(r)
    for grp in groups.values():
        peers = [r for r in grp if r.impl != REGTUNE and r.ok and r.better in ("lower", "higher")]
        if not peers:
            continue
        if peers[0].better == "lower":
            best = min(r.value for r in peers)
            for r in grp:
                if r.ok and best > 0:
                    r.ratio = r.value / best
        else:
            best = max(r.value for r in peers)
            for r in grp:
                if r.ok and r.value > 0:
                    r.ratio = best / r.value


def _fmt(v: float | None, unit: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    a = abs(v)
    s = f"{v:.3g}" if a and (a < 1e-3 or a >= 1e4) else (f"{v:.4f}" if a < 1 else f"{v:.3f}" if a < 100 else f"{v:.1f}")
    if a and a < 1e-3:
        s = f"{v:.2e}"
    return f"{s} {unit}".strip()


def format_table(rows: list[Row], titles: dict[str, str]) -> str:
    """One plain-text table (markdown-compatible), grouped by section and group."""
    head = ["group", "impl", "variant", "figure", "value", "vs best peer", "other"]
    lines = []
    notes: list[str] = []
    for sec in dict.fromkeys(r.section for r in rows):
        lines.append(f"\n### {sec}: {titles.get(sec, '')}\n")
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for r in (x for x in rows if x.section == sec):
            if r.status != "ok":
                val = r.status
            else:
                val = _fmt(r.value, r.unit)
            ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
            other = _other(r)
            note = ""
            if r.note:
                if r.note not in notes:
                    notes.append(r.note)
                note = f" [{notes.index(r.note) + 1}]"
            lines.append(f"| {r.group} | {r.impl}{note} | {r.variant} | {r.metric} | {val} | {ratio} | {other} |")
    if notes:
        lines.append("\nNotes:")
        lines += [f"[{i + 1}] {n}" for i, n in enumerate(notes)]
    return "\n".join(lines)


def _other(r: Row) -> str:
    e = r.extra
    if r.section == "train" and "pairs_per_s" in e:
        return f"{e['s_per_step']:.3f} s/step, {e['pairs_per_s']:.2f} pairs/s"
    if "mean_dice" in e:
        return f"Dice {e['mean_dice']:.4f}, HD95 {e['mean_hd95']:.3f}, SDlogJ {e['mean_sdlogj']:.4f}"
    if "curve" in e and e["curve"]:
        pts = ", ".join(f"{m:.1f}:{d:.3f}" for m, d in e["curve"])
        return f"Dice at min: {pts}"
    return ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help="comma-separated sections (default: all default sections)")
    p.add_argument("--quick", action="store_true", help="smoke mode: tiny synthetic volumes, few repeats (what CI runs)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda if available")
    p.add_argument("--json", default=None, help="where to write the results (default benchmarks/results/)")
    p.add_argument("--data", default=None, help=f"Learn2Reg-layout folder (default {REAL_DATA} when present, else synthetic)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per figure (medians)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up calls per figure")
    p.add_argument("--minutes", type=float, default=10.0, help="time-to-quality budget per recipe")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile row of regtune (off in --quick)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--list", action="store_true", help="list the sections and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    sections = registry()
    if args.list:
        for s in sections.values():
            print(f"{s.name:8s} {s.title}{'' if s.default else ' (only with --only)'}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device visible to torch", file=sys.stderr)
        return 2
    wanted = [s.strip() for s in args.only.split(",") if s.strip()] or [n for n, s in sections.items() if s.default]
    unknown = [w for w in wanted if w not in sections]
    if unknown:
        print(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(sections)}", file=sys.stderr)
        return 2
    data = Path(args.data) if args.data else (REAL_DATA if (REAL_DATA / "imagesTr").is_dir() else None)
    ctx = Context(device=device, quick=args.quick, repeats=args.repeats, warmup=args.warmup, data_root=data,
                  minutes=args.minutes, compile=not (args.no_compile or args.quick))
    out = Path(args.json) if args.json else ROOT / "benchmarks" / "results" / f"bench-{device}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    ctx.out_dir = out.parent
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    timings = {}
    for name in wanted:
        t0 = time.perf_counter()
        rows += sections[name].run(ctx)
        timings[name] = time.perf_counter() - t0
    compute_ratios(rows)
    titles = {n: s.title for n, s in sections.items()}
    table = format_table(rows, titles)
    header = (f"regtune benchmarks: device {device}, data {ctx.data_label}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads{', QUICK (smoke) mode' if args.quick else ''}")
    print(header)
    print(table)
    doc = {"machine": machine_info(device), "settings": {**{k: v for k, v in vars(args).items()}, "device": device,
                                                         "data": str(data) if data else "synthetic"},
           "section_seconds": timings, "titles": {n: titles[n] for n in wanted}, "rows": [r.to_dict() for r in rows],
           "table": table}
    out.write_text(json.dumps(doc, indent=1, default=str))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
