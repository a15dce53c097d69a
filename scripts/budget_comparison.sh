#!/usr/bin/env bash
# The greedy chain against TPE + ASHA at equal budget, at small scale on generated data (README, "Search
# strategies at equal cost"). Usage:
#   scripts/budget_comparison.sh [OUT] [EPOCHS] [SEARCH_SEEDS] [GRACE] [REDUCTION] [SAMPLES]
# A second call with the same OUT and other ASHA settings adds an arm (the chain and data are reused).
# Every run is an ordinary `python -m tune_cifar.run`; the comparison is the report's budget section.
set -euo pipefail
out=${1:-budget-comparison}
epochs=${2:-8}
seeds=${3:-3}
grace=${4:-2}
reduction=${5:-3}
samples=${6:-20}
data="$out/data"
[ -e "$data/cifar-100-python" ] || python -m tune_cifar.data synthetic --out "$data" --train 2000 --test 500 \
  --classes 100 --noise 70 --label-noise 0.1  # hard enough that 8 epochs do not reach the ceiling (~0.9)
# The chain: 9 trials x EPOCHS. TPE + ASHA by default: rungs at 2 and 6 epochs, 1 in 3 trials goes on; 20
# samples are expected to cost about what the chain costs (python -m tune_cifar.run joint --dry-run ... says).
[ -e "$out/results/chain" ] ||
  python -m tune_cifar.run all --data-dir "$data" --no-download --epochs "$epochs" --storage-path "$out/results/chain"
arm=tpe-asha
[ "$grace/$reduction/$samples" = 2/3/20 ] || arm="tpe-asha-g$grace-r$reduction-n$samples"
for seed in $(seq 0 $((seeds - 1))); do
  python -m tune_cifar.run joint --data-dir "$data" --no-download --epochs "$epochs" --num-samples "$samples" \
    --grace-period "$grace" --reduction-factor "$reduction" --search-seed "$seed" --storage-path "$out/results/$arm-$seed"
done
python -m analysis.report "$out/results" --out "$out/report"
