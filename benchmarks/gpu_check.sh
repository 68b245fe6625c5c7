#!/usr/bin/env bash
# Supernet-training throughput and peak memory on a GPU (prepared for a session lent an H200).
#
#   bash benchmarks/gpu_check.sh                     # on the GPU machine, from anywhere in the repo
#   GPU_CHECK_TINY=1 bash benchmarks/gpu_check.sh    # the same path on the CPU, tiny (~30 s)
#
# Generates 1,000 synthetic 224x224 JPEGs in NOAH layout and trains ViT-B/16
# (vit_base_patch16_224_in21k, random init: --pretrained none) as a GLoRA supernet at batch 64,
# 24 s per case, about 2 minutes of training in all (3 minutes with set-up). Cases:
#   glora       default path: bf16 autocast, decode once, uint8 split resident on the GPU
#   glora-fp32  the same in fp32 (separates precision from the data path)
#   pil-w8      original-style: --precision fp32, per-epoch PIL decoding, DataLoader 8 workers
#   full        full fine-tuning, default path (bf16, decode once, resident)
# Reports images/s, ratios and torch.cuda.max_memory_allocated per case as a markdown table, on
# stdout and in $OUT/gpu_check.md when $OUT is set. Suggested call from the device tool:
#   run(command="bash benchmarks/gpu_check.sh", timeout_s=420)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # glora and vtab from this checkout, installed or not

if [[ "${GPU_CHECK_TINY:-0}" == 1 ]]; then
  flags=(--device cpu --model vit_tiny_patch16_224
         --model-kwargs '{"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}'
         --input-size 32 --images 128 --source-size 64 --batch-size 32 --precision auto
         --cases glora,glora-fp32,pil,full --workers 2 --seconds 2 --rounds 1 --threads 1)
else
  flags=(--device cuda --model vit_base_patch16_224_in21k --model-kwargs '{}' --pretrained none
         --input-size 224 --images 1000 --source-size 224 --batch-size 64 --precision bf16
         --cases glora,glora-fp32,pil,full --workers 8 --seconds 24 --rounds 1 --threads 0)
fi

report=/dev/null
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
  report="$OUT/gpu_check.md"
fi

{
  echo "## Supernet training throughput (GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    || echo "(no nvidia-smi)"
  df -h /dev/shm | tail -n 1 | awk '{print "/dev/shm: " $2 " (DataLoader workers pass batches through it)"}'
  python3 -c 'import sys, torch, timm; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, timm {timm.__version__}, cuda available {torch.cuda.is_available()}")'
  echo
  echo '```'
  python3 -c 'import shlex, sys; print(shlex.join(sys.argv[1:]))' \
    python benchmarks/bench_supernet.py "${flags[@]}"
  echo '```'
  echo
  PYTHONUNBUFFERED=1 python3 benchmarks/bench_supernet.py "${flags[@]}"
} 2>&1 | tee "$report"
