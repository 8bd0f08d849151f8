"""Interleaved Trainer.step times (2 threads) on the real data: the ordinary net and the FiLM net of
RECIPE (fp32), and both twice as wide in bf16 (train.amp=auto). Usage: python docs/amortised/steptime_wide.py RECIPE DATA [REPS]"""
import sys, json, torch
from regtune.config import Config
from steptime import time_steps

torch.set_num_threads(2)
base = Config.load(sys.argv[1]).with_values({"data.root": sys.argv[2]})
cond = {"amortise.ranges": ["loss.reg_weight=0.01:10:log"], "amortise.film_head": True, "amortise.end_prob": 0.5, "amortise.end_high": 0.65}
wide = {"model.enc": [32, 64, 64, 64], "model.dec": [64, 64, 64, 64, 64, 32, 32], "train.amp": "auto"}
cfgs = {"ordinary": base, "film": base.with_values(cond), "film_wide_bf16": base.with_values({**cond, **wide}),
        "ordinary_wide_bf16": base.with_values(wide)}
out = time_steps(cfgs, int(sys.argv[3]) if len(sys.argv) > 3 else 8)
print(json.dumps({k: {"median_s": round(v["median_s"], 4), "params": v["params"]} for k, v in out.items()}, indent=1))
