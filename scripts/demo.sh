#!/usr/bin/env bash
# The main job on the embedded default: GLoRA end to end on the mini-VTAB, offline, on a CPU.
#
#   bash scripts/demo.sh [sweep options, e.g. --jobs 2, --tasks mini_digits, --runs DIR]
#
# Builds the mini-VTAB and pretrains its tiny backbone if absent (python -m vtab.mini build), then
# runs the shipped plan demo (glora/configs/demo.yaml) with python -m glora.sweep: per task a GLoRA supernet and search,
# and the baselines on the same backbone, data and code; every model is merged, exported as a plain
# timm folder and tested; the by-method table is printed (and kept in RUNS/table.md). What is
# finished is skipped, so an interrupted demo continues where it stopped.
# Runs one single-threaded job per CPU core (a later --jobs N overrides it).
# Environment: DATA and BACKBONE (default data/vtab-1k, data/tiny_vit), BUILD_ARGS (for the build),
# PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
DATA=${DATA:-data/vtab-1k}
BACKBONE=${BACKBONE:-data/tiny_vit}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread per job: the tiny model gains more from parallel jobs
# shellcheck disable=SC2086
"$PYTHON" -m vtab.mini build --data-path "$DATA" --backbone "$BACKBONE" --tasks mini_design ${BUILD_ARGS:-}
exec "$PYTHON" -m glora.sweep demo --jobs "$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)" \
  --args "--data-path $(printf %q "$DATA") --pretrained $(printf %q "$BACKBONE/backbone.safetensors")" "$@"
