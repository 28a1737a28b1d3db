#!/usr/bin/env bash
# Every GPU measurement of bench/ in one command, for a lent GPU machine (bundle/docs/README.md, "GPU check"):
#   here:  bash bench/gpu_prepare.sh
#   there: bash bench/gpu_check.sh "$OUT"        (device tool: carry [".gpu"], timeout_s 600)
# Each step's table goes to OUT/<step>.txt and its tail to stdout. DEVICE=cpu SLIDE=WxH try it out on a CPU machine.
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(mkdir -p "${1:-gpu_check_out}" && cd "${1:-gpu_check_out}" && pwd)
device=${DEVICE:-cuda}
slide_size=${SLIDE:-100000x50000}
python=${PYTHON:-python3}
tiles=$(pwd)/.gpu/tiles
if ! $python -c "import monai, ignite, cucim, torchstain, fire" 2>/dev/null; then
  $python -m pip install --quiet --no-index --no-deps .gpu/wheels/*.whl 2>&1 | tail -3
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt" 2>&1
export PYTHONPATH=$(pwd)/bundle
cd bench
step() {
  local name=$1 limit=$2; shift 2
  echo "== $name: $*"
  local start=$SECONDS
  timeout "$limit" "$python" "$@" > "$out/$name.txt" 2>&1
  echo "   rc $? in $((SECONDS - start)) s"
  grep -v -i -E "nvjpeg|nvtiff|note:|warn|patches\[|^$" "$out/$name.txt" | tail -25
}
step inference_options 150 inference_options.py --device "$device" --tiles_dir "$tiles"
width=${slide_size%x*} height=${slide_size#*x}
slide=/tmp/skip96_gpu_check/synthetic.tif
mkdir -p /tmp/skip96_gpu_check
[ -f $slide ] || $python -c "from pathlib import Path; from memory import write_slide
write_slide(Path('$slide'), $height, $width)"
step infer_default 120 infer_throughput.py $slide --repeats 2
step infer_workers8 90 infer_throughput.py $slide --repeats 2 --num_workers 8
step infer_no_amp 90 infer_throughput.py $slide --repeats 2 --amp 0
step infer_no_cudnn_benchmark 90 infer_throughput.py $slide --repeats 2 --cudnn_benchmark 0
step infer_one_orientation 90 infer_throughput.py $slide --repeats 2 --tta 0
step train_default 90 train_throughput.py --dataset_dir "$tiles" --batch_size 128 --num_workers 8 --iterations 40
step train_no_amp 90 train_throughput.py --dataset_dir "$tiles" --batch_size 128 --num_workers 8 --iterations 40 --amp 0
