#!/bin/bash
# usage: OUT=DIR fixed_runs.sh WORKTREE NAME W [--set K=V ...] -> OUT/NAME (an ordinary net at reg_weight W, 11x100 steps, 1 thread) + test scores
wt=$1; name=$2; lam=$3; shift 3
D=${DATA:-$(cd "$(dirname "$0")/../../.." && pwd)/shared/data/learn2reg-hippocampus}; O=${OUT:?set OUT (holding recipe.yaml = regtune config output)}
export PYTHONPATH=$wt
py=${PY:-python}
cd $wt
{ echo "commit $(git -C $wt rev-parse HEAD) + $(git -C $wt status --short | tr '\n' ' ')"; date
nice -n 5 $py -m regtune train --data $D --config $O/recipe.yaml --out $O/$name --quiet \
  --set loss.reg_weight=$lam --set train.epochs=11 --set train.threads=1 "$@"
nice -n 5 $py -m regtune evaluate --checkpoint $O/$name/best.pt --data $D --out $O/eval/$name-$lam --quiet
date; echo DONE; } > $O/$name.log 2>&1
