#!/usr/bin/env bash
# The GPU figures the README lists as "not measured", in one run on one H100/H200 (issue 27's targets):
#   1. dds_cost.py: ADM-256 + BEiT-L/512 samples/s in fp32, bf16, bf16 + compile, bf16 + channels_last, fused
#      attention; the end-to-end sequential row on recorded vote rates (seconds per image);
#   2. sequential_packing.py: the ImageNet example (20 photos, n = 10,000) and 100 MNIST digits, one image per
#      call vs packed vs packed + look-ahead: passes per image, batch fill, images/s;
#   3. certify_throughput.py: the engine against the bare forward pass (resnet50, 224 px).
# Each step has its own time limit and writes its JSON into $OUT as soon as it exists.
#
#   OUT=/tmp/out bash benchmarks/gpu_check.sh            # on the GPU machine (PYTHONPATH=repo root)
#   TINY=1 OUT=/tmp/out bash benchmarks/gpu_check.sh     # a smoke run on a CPU: tiny settings, seconds
set -u
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
PY=${PY:-python}
if [ "${TINY:-0}" = 1 ]; then
  DEV=cpu; LIMIT=300
  DDS=(--tiny --samples 8 --batch 8 --configs fp32 --sequential-configs fp32 --photos 2 --sequential-n 200)
  PACK=(--images 4 --sigmas 0.25 --n 2000 --batch 200 --cohen-images 1)
  THRU=(--model resnet18 --size 32 --batch 10 --n 20 --repeats 1)
else
  DEV=cuda; LIMIT=240
  DDS=(--batch auto --max-batch 1024 --samples 2048 --configs fp32 bf16 bf16+compile bf16+channels_last
       --sequential-configs bf16)
  PACK=(--images 100 --imagenet --batch 8192 --cohen-images 20)
  THRU=(--model resnet50 --size 224 --batch 400 --n 8000 --autocast fp32 bf16 --compile off on --channels-last)
fi

step() {  # step NAME COMMAND...: run it under its own limit, keep its log, note its exit code
  local name=$1; shift
  local start=$SECONDS
  timeout "$LIMIT" "$@" > "$OUT/$name.log" 2>&1
  echo "$name: exit $? after $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
}

nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1 || echo "no nvidia-smi" > "$OUT/gpu.txt"
step dds_cost "$PY" benchmarks/dds_cost.py --device "$DEV" "${DDS[@]}" --out "$OUT/dds_cost.json"
step sequential_packing "$PY" benchmarks/sequential_packing.py --device "$DEV" "${PACK[@]}" \
    --out "$OUT/sequential_packing.json"
step certify_throughput "$PY" benchmarks/certify_throughput.py --device "$DEV" "${THRU[@]}" \
    --out "$OUT/certify_throughput_gpu.json"
