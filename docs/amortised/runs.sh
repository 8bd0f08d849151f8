#!/bin/bash
# Issue 12 follow-up runs (docs/amortised/measured-2026-12-01.md, fourth session); OUT holds recipe.yaml
# (`regtune config` output) and receives the runs; step counts are fixed, so load does not change results.
#   then: python docs/amortised/bar.py OUT/eval COND ORD@W ... prints the must-show-1 rows (Dice diff and SE, SDlogJ ratio, the bar)
#   OUT=DIR runs.sh cond  WORKTREE NAME   [--set K=V ...]  a conditional net over reg_weight [LO, HI] (log; default
#                                                           LO=0.01 HI=10), 10 x 100 steps, 1 thread; test scores at
#                                                           LO, sqrt(LO*HI) (the log-middle, 0.316228 by default), HI
#   OUT=DIR runs.sh fixed WORKTREE NAME W [--set K=V ...]  an ordinary net at reg_weight W, 11 x 100 steps, 1 thread
#   X=K multiplies both budgets (K x T: 10K and 11K epochs of 100 steps; default 1)
kind=$1; wt=$2; name=$3; shift 3
x=${X:-1}
D=${DATA:-$(cd "$(dirname "$0")/../../.." && pwd)/shared/data/learn2reg-hippocampus}; O=${OUT:?set OUT}
py=${PY:-python}
export PYTHONPATH=$wt
cd "$wt" || exit 2
train() { nice -n 5 $py -m regtune train --data "$D" --config "$O/recipe.yaml" --out "$O/$name" --quiet --set train.threads=1 "$@"; }
score() { nice -n 5 $py -m regtune evaluate --checkpoint "$O/$name/best.pt" --data "$D" --out "$O/eval/$name-$1" --quiet "${@:2}"; }
{ echo "commit $(git rev-parse HEAD) + $(git status --short | tr '\n' ' ')"; date
if [ "$kind" = cond ]; then
  lo=${LO:-0.01}; hi=${HI:-10}; mid=$($py -c "print(f'{($lo * $hi) ** 0.5:.6g}')")
  train --set "amortise.ranges=[loss.reg_weight=$lo:$hi:log]" --set train.epochs=$((10 * x)) "$@"
  for lam in $lo $mid $hi; do score $lam --set loss.reg_weight=$lam; done
else
  lam=$1; shift
  train --set loss.reg_weight=$lam --set train.epochs=$((11 * x)) "$@"
  score $lam
fi
date; echo DONE; } > "$O/$name.log" 2>&1
