#!/usr/bin/env bash
# GPU figures of the GLoRA recipe (benchmarks/bench_gpu.py has the details), for one CUDA GPU:
# ViT-B/16 (random init) at 224 px, bf16 autocast, uint8 data resident on the GPU: supernet
# images/s at batch 64 and at the largest batch that fits, fixed LoRA subnet and full fine-tuning
# images/s, search candidates scored per second on 200 images, peak memory, and the extrapolated
# wall time of the 19-task VTAB-1k run. About 3 minutes; the table goes to stdout and to
# $OUT/gpu_check.md (or runs/gpu_check/gpu_check.md).
#
#   bash benchmarks/gpu_check.sh                     # on the GPU machine
#   GPU_CHECK_TINY=1 bash benchmarks/gpu_check.sh    # the same code on the CPU, tiny (~1 min)
#   GPU_CHECK_DATA=1 bash benchmarks/gpu_check.sh    # also the data-path comparison (bench_supernet.py)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # glora and vtab from this checkout, installed or not
out="${OUT:-runs/gpu_check}"
mode=(); [[ "${GPU_CHECK_TINY:-0}" == 1 ]] && mode=(--tiny)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "(no nvidia-smi)"
PYTHONUNBUFFERED=1 python benchmarks/bench_gpu.py "${mode[@]}" --out "$out/gpu_check.md"
if [[ "${GPU_CHECK_DATA:-0}" == 1 ]]; then
  PYTHONUNBUFFERED=1 python benchmarks/bench_supernet.py --device cuda --model vit_base_patch16_224_in21k \
    --model-kwargs '{}' --input-size 224 --images 1000 --source-size 224 --precision bf16 \
    --cases glora,glora-fp32,pil,full --workers 8 --seconds 24 --rounds 1 --threads 0 | tee "$out/data_path.md"
fi
