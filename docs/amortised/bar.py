"""Issue 12, must-show 1: a conditional net against ordinary nets at the same weights, on the same
reserved test pairs. Per weight: test Dice of both, the paired difference (cond - ord) with its
standard error (regtune.compare), the SDlogJ of both and their ratio, and whether both halves of
the bar hold: Dice within 0.015, read as "no more than 0.015 below the ordinary net" (a conditional
net that registers better than the ordinary one has not lost to amortisation; such rows are marked
"Dice above by more than 0.015", as a two-sided reading would miss them), and SDlogJ within 15 %
either way. The last line also counts the one-sided reading of both halves ("no worse than the
ordinary net": Dice no more than 0.015 below, SDlogJ no more than 15 % above), under which a
conditional net that is smoother at the same Dice has not lost to amortisation either.

Usage: python docs/amortised/bar.py EVAL_DIR COND ORD@WEIGHT [ORD@WEIGHT ...]
  EVAL_DIR holds the `regtune evaluate --out` folders NAME-WEIGHT that docs/amortised/runs.sh writes
  (OUT/eval); e.g. bar.py /work/e35/r12/eval c3fh65_ema_s0 f3_001_ema_s0@0.01 f3_0316_ema_s0@0.316228 f3_10_ema_s0@10
"""
import json
import sys
from pathlib import Path

from regtune.compare import compare, read_pairs

DICE_BAR, SDLOGJ_BAR = 0.015, 0.15

root, cond, pairs = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
if not pairs:
    sys.exit(__doc__)
print(f"{'weight':>9s}  {'cond Dice':>9s} {'ord Dice':>9s} {'diff':>8s} {'± SE':>6s}  {'cond SDlogJ':>11s} {'ord SDlogJ':>10s} "
      f"{'ratio':>6s}  {'epochs':>7s}  bar")
met = no_worse = 0
for spec in pairs:
    ordinary, weight = spec.rsplit("@", 1)
    a, b = root / f"{cond}-{weight}", root / f"{ordinary}-{weight}"
    (d,) = compare(read_pairs(a)[1], read_pairs(b)[1], ("dice",), (cond, ordinary))
    sa, sb = (json.loads((p / "summary.json").read_text()) for p in (a, b))
    ja, jb = sa["registered"]["sdlogj"], sb["registered"]["sdlogj"]
    ok_dice, ok_sdlogj = d.diff >= -DICE_BAR, abs(ja / jb - 1) <= SDLOGJ_BAR
    met += ok_dice and ok_sdlogj
    no_worse += ok_dice and ja / jb - 1 <= SDLOGJ_BAR
    why = "met" if ok_dice and ok_sdlogj else "missed: " + ", ".join(
        w for w, ok in (("Dice below", ok_dice), ("SDlogJ " + ("smoother" if ja < jb else "rougher"), ok_sdlogj)) if not ok)
    if d.diff > DICE_BAR:
        why += f" (Dice above by more than {DICE_BAR})"
    print(f"{weight:>9s}  {d.mean_a:9.4f} {d.mean_b:9.4f} {d.diff:+8.4f} {d.se:6.4f}  {ja:11.3f} {jb:10.3f} {ja / jb:6.3f}  "
          f"{sa.get('epoch', '?')!s:>3s}/{sb.get('epoch', '?')!s:<3s}  {why}")
print(f"{cond}: the bar (Dice no more than {DICE_BAR} below, SDlogJ within {SDLOGJ_BAR:.0%}) holds at {met} of {len(pairs)} weights "
      f"({d.n} test pairs); no worse on either half (SDlogJ no more than {SDLOGJ_BAR:.0%} above): {no_worse} of {len(pairs)}")
