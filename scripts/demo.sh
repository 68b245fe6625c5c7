#!/usr/bin/env bash
# The main job on the embedded default: GLoRA end to end on the mini-VTAB, offline, on a CPU.
#
#   bash scripts/demo.sh
#
# 1. builds the mini-VTAB and pretrains its tiny ViT backbone if absent (python -m vtab.mini build);
# 2. per task: trains a GLoRA supernet and searches a subnet under a budget (supernet.py +
#    evolution.py), then trains the baselines on the same backbone, data and code: a linear probe
#    and LoRA (each a fixed subnet, --subnet) and full fine-tuning (--full-finetune);
# 3. every model is merged and exported as a plain timm folder, tested, and a table is printed
#    (and written to $RUNS/demo_table.md).
# Steps whose results.json exists are skipped, so an interrupted demo continues where it stopped.
#
# Knobs (environment variables): RUNS, DATA, BACKBONE, CONFIG, TASKS, SUPERNET_EPOCHS, EPOCHS (the
# baselines'), WARMUP, LR, FULL_LR, BUDGET (M), RANK, SEARCH_ARGS, BUILD_ARGS, PYTHON. As in the paper,
# the supernet trains longer than the baselines (there 500 vs 100 epochs; here 60 vs 40, to fit ~15 min).
# On a machine busy with other work, OMP_NUM_THREADS=1 avoids thread oversubscription.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
RUNS=${RUNS:-runs/demo}
DATA=${DATA:-data/vtab-1k}
BACKBONE=${BACKBONE:-data/tiny_vit}
CONFIG=${CONFIG:-configs/mini_vtab.yaml}
# Default: every mini task of the registry (vtab/tasks.py), the one place that lists them.
TASKS=${TASKS:-$("$PYTHON" -c 'import vtab; print(*vtab.MINI_TASKS)')}
SUPERNET_EPOCHS=${SUPERNET_EPOCHS:-60}
EPOCHS=${EPOCHS:-40}
WARMUP=${WARMUP:-3}
LR=${LR:-3e-3}
FULL_LR=${FULL_LR:-1e-4}
BUDGET=${BUDGET:-0.03}
RANK=${RANK:-4}
SEARCH_ARGS=${SEARCH_ARGS:---population-num 30 --select-num 10 --mutation-num 15 --crossover-num 15 --max-epochs 8}
BUILD_ARGS=${BUILD_ARGS:-}

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
start=$(date +%s)
# shellcheck disable=SC2086
"$PYTHON" -m vtab.mini build --data-path "$DATA" --backbone "$BACKBONE" $BUILD_ARGS

common=(--config "$CONFIG" --data-path "$DATA" --pretrained "$BACKBONE/backbone.safetensors" --rank "$RANK" --no-progress)

train() {  # train TASK FOLDER EPOCHS [extra supernet flags...]
  local task=$1 folder=$2 epochs=$3; shift 3
  if [[ -f "$RUNS/$task/$folder/$task.pt" && -f "$RUNS/$task/$folder/DONE" ]]; then return; fi
  local resume=()
  [[ -f "$RUNS/$task/$folder/$task.pt" ]] && resume=(--resume)
  "$PYTHON" supernet.py "${common[@]}" --dataset "$task" --save_path "$RUNS/$task/$folder" \
    --epochs "$epochs" --warmup-epochs "$WARMUP" --eval-every "$epochs" --lr "$LR" "${resume[@]}" "$@"
  touch "$RUNS/$task/$folder/DONE"
}

export_model() {  # export TASK TRAIN_FOLDER OUT_FOLDER [extra evolution flags...]
  local task=$1 from=$2 out=$3; shift 3
  if [[ -f "$RUNS/$task/$out/results.json" ]]; then return; fi
  local resume=()
  [[ -f "$RUNS/$task/$out/search_state.json" ]] && resume=(--resume)
  "$PYTHON" evolution.py "${common[@]}" --dataset "$task" --load_path "$RUNS/$task/$from" \
    --save_path "$RUNS/$task/$out" "${resume[@]}" "$@"
}

for task in $TASKS; do
  echo "=== $task: GLoRA supernet + search (budget ${BUDGET} M) ==="
  train "$task" train_glora "$SUPERNET_EPOCHS"
  # shellcheck disable=SC2086
  export_model "$task" train_glora glora --param-limits "$BUDGET" $SEARCH_ARGS
  echo "=== $task: baselines (linear probe, LoRA, full fine-tuning) ==="
  train "$task" train_linear_probe "$EPOCHS" --subnet linear_probe
  export_model "$task" train_linear_probe linear_probe
  train "$task" train_lora "$EPOCHS" --subnet lora
  export_model "$task" train_lora lora
  train "$task" train_full "$EPOCHS" --full-finetune --lr "$FULL_LR"
  export_model "$task" train_full full_finetune
done

"$PYTHON" scripts/demo_table.py "$RUNS" --tasks $TASKS | tee "$RUNS/demo_table.md"
echo "demo finished in $(( $(date +%s) - start )) s; results and merged models under $RUNS/"
