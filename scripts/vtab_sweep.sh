#!/usr/bin/env bash
# The VTAB-1k benchmark: python -m glora.sweep with the shipped plan vtab (glora/configs/vtab.yaml) (19 tasks, GLoRA and
# the baselines); every option of the sweep can follow, e.g.
#   bash scripts/vtab_sweep.sh --gpus 0,1 --jobs-per-gpu 3 --seeds 1 2 3
#   bash scripts/vtab_sweep.sh --backend slurm --slurm-partition gpu --slurm-gpus 1
# `python -m glora.sweep --help` lists them.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m glora.sweep vtab "$@"
