"""Interleaved Trainer.step times (2 threads) on the real data: the ordinary net and the FiLM net of
RECIPE (fp32), and the FiLM net twice as wide in bf16 (train.amp=auto). Usage: python docs/amortised/steptime_wide.py RECIPE DATA [REPS]"""
import sys, time, json, statistics, torch
from regtune.config import Config
from regtune.data.source import load_data
from regtune.train import split_for
from regtune.trainer import Trainer
torch.set_num_threads(2)
base = Config.load(sys.argv[1]).with_values({"data.root": sys.argv[2]})
vols = load_data(base.data)
split, _, _ = split_for(base, vols)
cond = {"amortise.ranges": ["loss.reg_weight=0.01:10:log"], "amortise.film_head": True, "amortise.end_prob": 0.5, "amortise.end_high": 0.65}
wide = {"model.enc": [32, 64, 64, 64], "model.dec": [64, 64, 64, 64, 64, 32, 32], "train.amp": "auto"}
cfgs = {"ordinary": base, "film": base.with_values(cond), "film_wide_bf16": base.with_values({**cond, **wide}),
        "ordinary_wide_bf16": base.with_values(wide)}
tr = {k: Trainer(c, vols, split) for k, c in cfgs.items()}
for k, t in tr.items():
    for _ in range(3): t.step()
times = {k: [] for k in tr}
reps = int(sys.argv[3]) if len(sys.argv) > 3 else 8
for r in range(reps):
    for k, t in tr.items():
        t0 = time.perf_counter()
        for _ in range(5): t.step()
        float(t.sums[0])
        times[k].append((time.perf_counter() - t0) / 5)
print(json.dumps({k: {"median_s": round(statistics.median(v), 4), "params": sum(p.numel() for p in tr[k].model.parameters())}
                  for k, v in times.items()}, indent=1))
