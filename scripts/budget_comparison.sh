#!/usr/bin/env bash
# The greedy chain against searches of the joint space at equal budget, at small scale on generated data
# (README, "Search strategies at equal cost"). Usage:
#   scripts/budget_comparison.sh [OUT] [EPOCHS] [RUNS] [ARM ...]
# RUNS: chain replicates (training seeds 0..RUNS-1) and runs of each search (search seed k with training
# seed k). Each ARM is NAME=OPTIONS, the options of `python -m tune_cifar.run joint` that make the strategy
# (default: the two arms below). Every run is an ordinary `python -m tune_cifar.run` into OUT/results; a run
# already there is kept (a second call adds arms); the comparison is the report's budget section.
set -euo pipefail
out=${1:-budget-comparison}
epochs=${2:-8}
runs=${3:-3}
shift $(($# < 3 ? $# : 3))
arms=("$@")
if [ ${#arms[@]} -eq 0 ]; then
  # ~56-61 trial-epochs each, what the chain trains at 8 epochs (7 trials: it reuses the 2 that repeat an
  # earlier step's configuration; the dry run prints the expected cost). Both with 3 random startup draws
  # (Optuna's default 10 would leave a search of 7-12 trials random): multivariate TPE + ASHA with
  # Hyperband's 2 brackets (cuts at 2 and 4, or at 4 only), 12 draws; GP over 7 full trials
  arms=("tpe-mv-s3-asha-b2=--sampler tpe-mv --startup-trials 3 --grace-period 2 --reduction-factor 2 --brackets 2 --num-samples 12"
        "gp-s3=--sampler gp --startup-trials 3 --scheduler fifo --num-samples 7")
fi
data="$out/data"
[ -e "$data/cifar-100-python" ] || python -m tune_cifar.data synthetic --out "$data" --train 2000 --test 500 \
  --classes 100 --noise 70 --label-noise 0.1  # hard enough that 8 epochs do not reach the ceiling (~0.9)
start=$(date +%s)
for k in $(seq 0 $((runs - 1))); do
  [ -e "$out/results/chain-$k" ] || python -m tune_cifar.run all --data-dir "$data" --no-download --epochs "$epochs" \
    --set seed="$k" --storage-path "$out/results/chain-$k"
done
for arm in "${arms[@]}"; do
  name=${arm%%=*}
  read -r -a options <<< "${arm#*=}"
  for k in $(seq 0 $((runs - 1))); do
    [ -e "$out/results/$name-$k" ] || python -m tune_cifar.run joint --data-dir "$data" --no-download \
      --epochs "$epochs" "${options[@]}" --search-seed "$k" --set seed="$k" --storage-path "$out/results/$name-$k"
  done
done
python -m analysis.report "$out/results" --out "$out/report"
echo "budget comparison: $(( ($(date +%s) - start) / 60 )) min of runs and report; table in $out/report/report.md"
