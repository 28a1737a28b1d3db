#!/usr/bin/env bash
# Every throughput measurement of bench/ in one command, for a lent GPU machine (or this 2-core CPU machine):
#   here:  bash bench/gpu_prepare.sh
#   there: bash bench/gpu_check.sh "$OUT"        (device tool: carry [".gpu"], timeout_s 600)
#   then:  copy OUT to bench/results/<GPU name>/ and commit it.
#   CPU:   PYTHON=.venv/bin/python bash bench/gpu_check.sh OUT   (the same tables; the configs pick the device)
# Each step's table goes to OUT/<step>.txt and to stdout. Steps run in order of importance, and one is skipped when
# less than its time limit is left of BUDGET seconds (default 540), so the whole check ends inside one call.
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(mkdir -p "${1:-gpu_check_out}" && cd "${1:-gpu_check_out}" && pwd)
slide_size=${SLIDE:-200000x100000}  # width x height: CAMELYON16-sized, 0.243 µm/px, JPEG tiles
budget=${BUDGET:-540}
python=${PYTHON:-python3}
tiles=$(pwd)/.gpu/tiles pcam=$(pwd)/.gpu/pcam_normals
[ -d "$tiles" ] || tiles=$(cd .. && pwd)/shared/data/camelyon16_tiles
[ -d "$pcam" ] || pcam=$(cd .. && pwd)/shared/data/pcam_normals
demo=$(pwd)/bundle/sample_data/camelyon16_demo.tif
export PYTHONPATH=/tmp/site:$(pwd)/bundle PYTHONUNBUFFERED=1
if ! $python -c "import monai, ignite, cucim, torchstain, fire, shapely" 2>/dev/null; then
  $python -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .gpu/wheels/*.whl 2>&1 | tail -3
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt" 2>&1
cd bench
step() {
  local name=$1 limit=$2; shift 2
  if (( SECONDS + limit > budget )); then
    echo "== $name: skipped, $((budget - SECONDS)) s of the budget left" | tee "$out/$name.txt"
    return
  fi
  echo "== $name ($((budget - SECONDS)) s left): $*"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tr '\r' '\n' | grep -v -E "patches\[|patches: |train\[|train: |^\s*$" > "$out/$name.txt"
  echo "   rc ${PIPESTATUS[0]} in $((SECONDS - start)) s"
  grep -v -E "Warning|warnings.warn| - INFO - |^Traceback" "$out/$name.txt" | tail -24
}
slide=/tmp/skip96_gpu_check/synthetic_${slide_size}.tif
mkdir -p /tmp/skip96_gpu_check
# the slide is written whole or not at all (a temp file renamed), so a timed-out write leaves nothing to misread
[ -f "$slide" ] || step write_slide 90 $python synthetic_slide.py "$slide" --size "$slide_size" --tiles_dir "$tiles"
if [ -f "$slide" ]; then
  # end to end against the bare model + score, the pipeline's ceiling (model a no-op), each stage and reading path
  step big_slide 200 $python infer_throughput.py "$slide" --copies 0
fi
# the fixed cost a slide adds to a cohort: six links to the demo slide against one
step demo_cohort 60 $python infer_throughput.py "$demo" --copies 6
# training on PCam's HDF5 layout: patches held in memory, flips and turns on the device; fp32 (the default) and fp16
step train 75 $python train_throughput.py --pcam_from "$pcam" --batch_size 128 --iterations 100
step train_amp 75 $python train_throughput.py --pcam_from "$pcam" --batch_size 128 --iterations 100 --amp 1
step inference_options 60 $python inference_options.py --device "$($python -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')" --tiles_dir "$tiles"
if [ -f "$slide" ]; then  # more DataLoader workers than the default
  step big_slide_12_workers 150 $python infer_throughput.py "$slide" --copies 0 --num_workers 12
fi
echo "total $SECONDS s"
