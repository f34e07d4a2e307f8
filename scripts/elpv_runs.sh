#!/usr/bin/env bash
# The README's ELPV strategy table: EfficientNet-Lite0 (ImageNet weights) on ELPV with each
# strategy, same split (seed 0), same reduced resolution and subset (lavapipe is slow), then the
# head-only run from random weights (scripts/elpv_torch.py --random-init writes them).
#   scripts/elpv_runs.sh OUT_DIR [RANDOM_INIT.safetensors]
set -euo pipefail
out=${1:?OUT_DIR}
random=${2:-}
kiln=${KILN:-./target/release/kiln}
mkdir -p "$out"
common=(--task elpv --image-size 64 --train-limit 400 --eval-limit 200 --batch-size 16 --seed 0
        --eval-every 25 --overwrite)
"$kiln" train "${common[@]}" --strategy head --epochs 30 --out "$out/head" > "$out/head.log" 2>&1
"$kiln" train "${common[@]}" --strategy top:1 --epochs 3 --lr 3e-4 --out "$out/top1" > "$out/top1.log" 2>&1
"$kiln" train "${common[@]}" --strategy top:3 --epochs 3 --lr 3e-4 --out "$out/top3" > "$out/top3.log" 2>&1
"$kiln" train "${common[@]}" --strategy full --epochs 3 --lr 3e-4 --out "$out/full" > "$out/full.log" 2>&1
if [ -n "$random" ]; then
  "$kiln" train "${common[@]}" --model "$random" --strategy head --epochs 30 --out "$out/head_random" \
    > "$out/head_random.log" 2>&1
fi
