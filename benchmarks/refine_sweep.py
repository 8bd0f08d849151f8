"""Sweep instance-optimisation settings (``regtune evaluate --refine``) on a checkpoint's
validation pairs, never its test pairs (benchmarks/README.md, "Instance optimisation").

    python -m benchmarks.refine_sweep --checkpoint RUN/best.pt --data DATA --out sweep.json \\
        --settings "0;25,0.05;100,0.05,3"

Each setting is ``STEPS[,LR[,REG_WEIGHT]]`` (defaults 0.05 and the checkpoint's weight). One
JSON line per setting: val Dice, Dice30, mean local NCC of fixed and warped image at full
resolution (NCC64), both SDlogJ definitions, % folding, seconds. Choose on these, then score
the test pairs once with ``regtune evaluate --refine ...``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def parse_settings(text: str) -> list[tuple[int, float, float | None]]:
    out = []
    for part in text.split(";"):
        f = part.split(",")
        out.append((int(f[0]), float(f[1]) if len(f) > 1 else 0.05, float(f[2]) if len(f) > 2 else None))
    return out


def main(argv: list[str] | None = None) -> int:
    from regtune.checkpoint import load_checkpoint
    from regtune.data.dataset import load_files, match_labels
    from regtune.evaluate import evaluate_pairs, summarise
    from regtune.losses import local_ncc
    from regtune.refine import Refinement

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="Learn2Reg-layout folder (imagesTr/, labelsTr/)")
    p.add_argument("--settings", required=True, help="STEPS[,LR[,REG_WEIGHT]] separated by ';'")
    p.add_argument("--out", required=True, help="JSON file for the rows")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    ck = load_checkpoint(a.checkpoint)
    cfg = ck.config
    from pathlib import Path

    vols = load_files(match_labels(Path(a.data) / "imagesTr", Path(a.data) / "labelsTr"), cfg.data, progress=False)
    pairs = [(vols.index(f), vols.index(m)) for f, m in ck.extra["val_pairs"]]
    model = ck.model("cpu")
    rows = []
    for steps, lr, w in parse_settings(a.settings):
        r = Refinement(steps=steps, lr=lr, reg_weight=w).bind(cfg.loss)
        nccs: list[float] = []

        def ncc64(pair, disp, warped, wlab):
            fixed = vols.images[pair[0]].unsqueeze(0).float()
            nccs.append(-float(local_ncc(fixed, torch.from_numpy(warped)[None, None].float(), cfg.loss.ncc_window)))

        t = time.perf_counter()
        s = summarise(evaluate_pairs(model, vols, pairs, cfg.data.downsample, "cpu", with_hd95=False, channels_last=True,
                                     refine=r, on_field=ncc64))
        row = {"pairs": len(pairs), "steps": steps, "lr": lr, "reg_weight": r.loss.reg_weight, "dice": round(s["dice"], 4),
               "dice30": round(s["dice30"], 4), "ncc64": round(sum(nccs) / len(nccs), 4), "sdlogj": round(s["sdlogj"], 3),
               "sdlogj_l2r": round(s["sdlogj_l2r"], 4), "folding_pct": round(s["folding_pct"], 4),
               "seconds": round(time.perf_counter() - t, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    Path(a.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
