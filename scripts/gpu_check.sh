#!/usr/bin/env bash
# The first run on a GPU (issue 20): at most 4 minutes, torch and numpy only, no Ray, no install.
#   scripts/gpu_check.sh                       # CUDA; writes gpu_check.json after every step
#   scripts/gpu_check.sh --device cpu          # the same steps on a CPU, CUDA-only ones skipped (CI)
# Options after the script name go to python -m tune_cifar.bench.check (--json PATH, --steps a,b).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m tune_cifar.bench.check --device cuda --json gpu_check.json "$@"
