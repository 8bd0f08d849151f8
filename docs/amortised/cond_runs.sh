#!/bin/bash
# usage: OUT=DIR cond_runs.sh WORKTREE NAME [--set K=V ...] -> OUT/NAME (a conditional net, 10x100 steps, 1 thread) + test scores at 3 weights (issue 12, docs/amortised/measured-2026-12-01.md)
wt=$1; name=$2; shift 2
D=${DATA:-$(cd "$(dirname "$0")/../../.." && pwd)/shared/data/learn2reg-hippocampus}; O=${OUT:?set OUT (holding recipe.yaml = regtune config output)}
export PYTHONPATH=$wt
py=${PY:-python}
cd $wt
{ echo "commit $(git -C $wt rev-parse HEAD) + $(git -C $wt status --short | tr '\n' ' ')"; date
nice -n 5 $py -m regtune train --data $D --config $O/recipe.yaml --out $O/$name --quiet \
  --set 'amortise.ranges=[loss.reg_weight=0.01:10:log]' --set train.epochs=10 --set train.threads=1 "$@"
for lam in 0.01 0.316228 10; do
  nice -n 5 $py -m regtune evaluate --checkpoint $O/$name/best.pt --data $D --out $O/eval/$name-$lam --quiet --set loss.reg_weight=$lam
done
date; echo DONE; } > $O/$name.log 2>&1
