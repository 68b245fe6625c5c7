#!/usr/bin/env bash
# GPU figures of the GLoRA recipe (benchmarks/bench_gpu.py has the details), for one CUDA GPU:
# ViT-B/16 (random init) at 224 px, uint8 data resident on the GPU, twice: under the default
# numerics (--precision auto: fp32 weights, TF32 matmuls, as the original) and under bf16
# autocast (--precision bf16). Each: supernet images/s at batch 64 and at the largest batch that
# fits, fixed LoRA subnet and full fine-tuning images/s, search candidates scored per second on
# 200 images, peak memory, and the extrapolated wall time of the 19-task VTAB-1k run (the
# torch.compile cases in the first pass only). About 6 minutes; the tables go to stdout and to
# $OUT/gpu_check_tf32.md and $OUT/gpu_check_bf16.md (or runs/gpu_check/...).
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
PYTHONUNBUFFERED=1 python benchmarks/bench_gpu.py "${mode[@]}" --precision auto --out "$out/gpu_check_tf32.md"
PYTHONUNBUFFERED=1 python benchmarks/bench_gpu.py "${mode[@]}" --precision bf16 --no-compile \
  --out "$out/gpu_check_bf16.md"
if [[ "${GPU_CHECK_DATA:-0}" == 1 ]]; then
  PYTHONUNBUFFERED=1 python benchmarks/bench_supernet.py --device cuda --model vit_base_patch16_224_in21k \
    --model-kwargs '{}' --input-size 224 --images 1000 --source-size 224 --precision bf16 \
    --cases glora,glora-fp32,pil,full --workers 8 --seconds 24 --rounds 1 --threads 0 | tee "$out/data_path.md"
fi
