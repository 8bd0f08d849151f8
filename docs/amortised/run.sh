#!/usr/bin/env bash
# Issue 12 must-show runs on the real data (CPU), in order, each holding the project's CPU
# lock for its whole length. Usage (from the repository root):
#   flock /tmp/regtune-cpu.lock bash docs/amortised/run.sh OUT_DIR [T_MINUTES]
# Logs: OUT_DIR/*.log; the summary: python docs/amortised/summarise.py OUT_DIR
set -euo pipefail
OUT=${1:?out dir}; T=${2:-10}; N=${N:-256}; TRIALS=${TRIALS:-6}; REPS=${REPS:-8}
REPO=$PWD
D=$(cd "${DATA:-../shared/data/learn2reg-hippocampus}" && pwd)
OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)
# every run uses the code as it was when this script started (a snapshot of regtune/), so a
# commit landing meanwhile cannot change the recipe between the runs being compared
SNAP="$OUT/snapshot"; rm -rf "$SNAP"; mkdir -p "$SNAP"; cp -r regtune "$SNAP/"
{ git log -1 --format='%H %s'; git status --short regtune; } > "$OUT/commit.txt"
cd "$SNAP"   # python puts the working folder first on sys.path: the snapshot's regtune is imported
export PYTHONPATH="$SNAP"
RT="$REPO/.venv/bin/python -m regtune"
$RT config > "$OUT/recipe.yaml"   # the default recipe these runs used
stamp() { date +%s > "$OUT/$1.t0"; }
done_() { date +%s > "$OUT/$1.t1"; }
LOW=0.01; MID=0.316228; HIGH=10
# step time of the ordinary, FiLM and hypernetwork training step (interleaved, same data)
$REPO/.venv/bin/python "$REPO/docs/amortised/steptime.py" "$D" "$REPS" > "$OUT/steptime.log" 2>&1
# (1) one conditional network, T minutes; three ordinary ones at low/mid/high, T minutes each
stamp cond
$RT train --data "$D" --amortise loss.reg_weight=$LOW:$HIGH:log --max-minutes "$T" --set train.epochs=100 \
  --out "$OUT/cond" --quiet > "$OUT/cond.log" 2>&1 || true
done_ cond
for L in $LOW $MID $HIGH; do
  stamp "fixed-$L"
  $RT train --data "$D" --set loss.reg_weight=$L --max-minutes "$T" --set train.epochs=100 \
    --out "$OUT/fixed-$L" --quiet > "$OUT/fixed-$L.log" 2>&1 || true
  done_ "fixed-$L"
done
# held out: the test pairs (evaluate's default), the conditional network at each weight
for L in $LOW $MID $HIGH; do
  $RT evaluate --checkpoint "$OUT/cond/best.pt" --data "$D" --set loss.reg_weight=$L --out "$OUT/eval/cond-$L" --quiet \
    > "$OUT/eval-cond-$L.log" 2>&1
  $RT evaluate --checkpoint "$OUT/fixed-$L/best.pt" --data "$D" --out "$OUT/eval/fixed-$L" --quiet \
    > "$OUT/eval-fixed-$L.log" 2>&1
done
# (2) the inference-time search: 256 weights on the validation pairs
stamp search
/usr/bin/time -v $RT search-weights --checkpoint "$OUT/cond/best.pt" --data "$D" --n "$N" --out "$OUT/search" \
  --tracking-uri "sqlite:///$OUT/mlflow.db" > "$OUT/search.log" 2> "$OUT/search.err"
done_ search
# (3) the conventional route: a study of ordinary T-minute trainings over the same range
sed -e "s/train.max_minutes: 10/train.max_minutes: $T/" -e "s/num_samples: 6/num_samples: $TRIALS/" \
  "$REPO/docs/amortised/conventional.yaml" > "$OUT/conventional.yaml"
stamp study
$RT search --space "$OUT/conventional.yaml" --data "$D" --runs-dir "$OUT/runs" --quiet > "$OUT/study.log" 2>&1 || true
done_ study
$RT evaluate --top "$TRIALS" --study conventional-reg --runs-dir "$OUT/runs" --data "$D" --quiet > "$OUT/study-top.log" 2>&1 || true
echo done > "$OUT/DONE"
