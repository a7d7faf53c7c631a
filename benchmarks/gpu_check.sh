#!/usr/bin/env bash
# The GPU figures the README lists as "not measured", on one H100/H200, in two parts that each fit one
# 10-minute command (issue 27's targets first):
#   PART=1  1. dds_bf16: Carlini et al.'s pipeline (ADM-256 + BEiT-L/512, random weights) in bf16 with the
#              fused attention: samples/s, seconds per image in Cohen's mode (target >= 100 samples/s);
#           2. packing_imagenet: sequential_packing.py on the ImageNet example (20 photos, n = 10,000): one image
#              per call vs packed vs packed + look-ahead, and Cohen mode's samples/s (target: sequential >= 60%);
#           3. dds_sequential: the end-to-end sequential row, 8 photos whose votes follow the recorded rates
#              (seconds per image, target <= 15 s).
#   PART=2  4. dds_more: bf16 + compile, fp32, bf16 + channels_last;
#           5. certify_throughput: the engine against the bare forward pass (resnet50, 224 px);
#           6. packing_mnist: sequential_packing.py on 100 MNIST digits.
# Each step has its own time limit (their sum stays under 570 s per part) and writes its JSON into $OUT as soon
# as it exists (dds_cost.py after every measurement, sequential_packing.py after every pipeline), so a cut
# keeps what was measured.
#
#   PART=1 OUT=/tmp/out bash benchmarks/gpu_check.sh      # on the GPU machine (PYTHONPATH=repo root), then PART=2
#   TINY=1 OUT=/tmp/out bash benchmarks/gpu_check.sh      # both parts on a CPU: tiny settings, a few minutes
# Each part writes 8 files into $OUT (gpu.txt, summary.txt, a log and a JSON per step).
set -u
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
PY=${PY:-python}
if [ "${TINY:-0}" = 1 ]; then
  DEV=cpu; PARTS=${PART:-"1 2"}
  DDS=(--tiny --samples 8 --batch 8 --photos 2 --sequential-n 200)
  IMAGENET=(--images 0 --imagenet --imagenet-photos 2 --imagenet-n 100 --batch 200 --cohen-images 1)
  MNIST=(--images 4 --sigmas 0.25 --n 2000 --batch 200 --cohen-images 1)
  THRU=(--model resnet18 --size 32 --batch 10 --n 20 --repeats 1)
  L1=120; L2=120; L3=120; L4=120; L5=120; L6=120
else
  DEV=cuda; PARTS=${PART:-1}
  DDS=(--batch auto --max-batch 1024 --samples 2048 --photos 8)
  IMAGENET=(--images 0 --imagenet --batch 8192 --cohen-images 20)
  MNIST=(--images 100 --batch 8192 --cohen-images 2)
  THRU=(--model resnet50 --size 224 --batch 400 --n 8000 --autocast fp32 bf16 --compile off on --channels-last)
  L1=150; L2=150; L3=270; L4=300; L5=150; L6=110
fi

step() {  # step NAME LIMIT COMMAND...: run it under its own limit, keep its log, note its exit code
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "$name: exit $? after $((SECONDS - start)) s (limit $limit s)" | tee -a "$OUT/summary.txt"
}

nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1 || echo "no nvidia-smi" > "$OUT/gpu.txt"
for part in $PARTS; do
  if [ "$part" = 1 ]; then
    step dds_bf16 "$L1" "$PY" benchmarks/dds_cost.py --device "$DEV" "${DDS[@]}" --configs bf16 --rates none \
        --out "$OUT/dds_bf16.json"
    step packing_imagenet "$L2" "$PY" benchmarks/sequential_packing.py --device "$DEV" "${IMAGENET[@]}" \
        --out "$OUT/packing_imagenet.json"
    step dds_sequential "$L3" "$PY" benchmarks/dds_cost.py --device "$DEV" "${DDS[@]}" --configs \
        --sequential-configs bf16 --out "$OUT/dds_sequential.json"
  else
    step dds_more "$L4" "$PY" benchmarks/dds_cost.py --device "$DEV" "${DDS[@]}" --rates none \
        --configs bf16+compile fp32 bf16+channels_last --out "$OUT/dds_more.json"
    step certify_throughput "$L5" "$PY" benchmarks/certify_throughput.py --device "$DEV" "${THRU[@]}" \
        --out "$OUT/certify_throughput_gpu.json"
    step packing_mnist "$L6" "$PY" benchmarks/sequential_packing.py --device "$DEV" "${MNIST[@]}" \
        --out "$OUT/packing_mnist.json"
  fi
done
