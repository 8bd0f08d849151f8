"""Step time of the ordinary, FiLM and hypernetwork Trainer.step on the real data, interleaved
(5 steps of each in turn, REPS times; default recipe, reg_weight amortised over [0.01, 10]).
Usage: python docs/amortised/steptime.py DATA [REPS]
``time_steps`` is the interleaved timing, also used by steptime_wide.py."""
import sys, time, json, statistics, torch
from regtune.config import Config
from regtune.data.source import load_data
from regtune.train import split_for
from regtune.trainer import Trainer


def time_steps(cfgs: dict, reps: int) -> dict:
    """{name: {median_s, min_s, params, all_s}}: Trainer.step of each config, 5 steps each in turn, reps times."""
    base = next(iter(cfgs.values()))
    vols = load_data(base.data)
    split, _, _ = split_for(base, vols)
    tr = {k: Trainer(c, vols, split) for k, c in cfgs.items()}
    for k, t in tr.items():
        print(k, "params", sum(p.numel() for p in t.model.parameters()), flush=True)
        for _ in range(3): t.step()
    times = {k: [] for k in tr}
    for r in range(reps):
        for k, t in tr.items():
            t0 = time.perf_counter()
            for _ in range(5): t.step()
            float(t.sums[0])
            times[k].append((time.perf_counter() - t0) / 5)
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "params": sum(p.numel() for p in tr[k].model.parameters()),
                "all_s": v} for k, v in times.items()}


if __name__ == "__main__":
    torch.set_num_threads(2)
    base = Config().with_values({"data.root": sys.argv[1]})
    cfgs = {"ordinary": base,
            "film": base.with_values({"amortise.ranges": ["loss.reg_weight=0.01:10:log"], "amortise.method": "film"}),
            "hyper": base.with_values({"amortise.ranges": ["loss.reg_weight=0.01:10:log"], "amortise.method": "hyper"})}
    print(json.dumps(time_steps(cfgs, int(sys.argv[2]) if len(sys.argv) > 2 else 8), indent=1))
