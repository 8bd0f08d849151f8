"""FiLM vs hypernetwork: each trained T minutes on the real data (same recipe), then scored on
the validation pairs at four reg weights; step times from the training history.
Usage: flock /tmp/regtune-cpu.lock .venv/bin/python docs/amortised/compare.py T_MINUTES OUT_DIR film,hyper [DATA]"""
import sys, json, time, torch
from pathlib import Path
from regtune.config import Config
from regtune.data.source import load_data
from regtune.train import train
from regtune.checkpoint import load_checkpoint
from regtune.evaluate import evaluate_pairs, summarise
T = float(sys.argv[1]); out = Path(sys.argv[2]); methods = sys.argv[3].split(",")
root = sys.argv[4] if len(sys.argv) > 4 else "../shared/data/learn2reg-hippocampus"
base = Config().with_values({"data.root": root, "train.max_minutes": T, "train.epochs": 1000,
                             "amortise.ranges": ["loss.reg_weight=0.01:10:log"]})
vols = load_data(base.data)
res = {}
for meth in methods:
    cfg = base.with_values({"amortise.method": meth})
    d = out / meth
    t0 = time.time()
    r = train(cfg, vols, d, progress=False)
    res[meth] = {"status": r.status, "steps": r.steps, "train_s": time.time() - t0}
    hist = [json.loads(l) for l in (d / "history.jsonl").read_text().splitlines()]
    res[meth]["epochs"] = len(hist)
    print(meth, res[meth], flush=True)
for meth in methods:
    ck = load_checkpoint(out / meth / "last.pt")
    net = ck.model()
    val = [(vols.index(f), vols.index(m)) for f, m in ck.extra["val_pairs"]]
    for lam in (0.01, 0.1, 1.0, 10.0):
        net.conditioner.set_values({"loss.reg_weight": lam})
        with torch.inference_mode():
            s = summarise(evaluate_pairs(net, vols, val, ck.config.data.downsample, with_hd95=False))
        res[meth][f"lam{lam:g}"] = {k: s[k] for k in ("dice", "sdlogj", "folding_pct")}
        print(meth, lam, res[meth][f"lam{lam:g}"], flush=True)
res["noreg"] = summarise(evaluate_pairs(None, vols, val, with_hd95=False))["dice"]
(out / "compare.json").write_text(json.dumps(res, indent=1))
print(json.dumps(res, indent=1))
