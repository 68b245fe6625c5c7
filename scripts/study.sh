#!/usr/bin/env bash
# The seeded mini-VTAB study: 3 seeds x 4 mini tasks x {linear probe, SSF, LoRA, GLoRA inherited,
# GLoRA retrained from the supernet, GLoRA retrained fresh, full fine-tuning} under `val` and
# `retrain` (the shipped plan `study`, glora/configs/study.yaml), plus GLoRA under `paper` (selected on the test set) to show how much
# that inflates the number. Finished jobs are skipped, so an interrupted study continues where it
# stopped. Extra arguments go to both sweeps (e.g. --jobs 2, --runs DIR).
#
#   bash scripts/study.sh --jobs 2          # about 2.5 h on two cores (README)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread per job: --jobs sets the parallelism
"$PYTHON" -m vtab.mini build --tasks mini_design
"$PYTHON" -m glora.sweep study --no-report "$@"
"$PYTHON" -m glora.sweep study --methods glora --protocols paper "$@"
