#!/usr/bin/env bash
# Every GPU measurement of bench/ in one command, for a lent GPU machine:
#   here:  bash bench/gpu_prepare.sh
#   there: bash bench/gpu_check.sh "$OUT"        (device tool: carry [".gpu"], timeout_s 600)
#   then:  copy OUT to bench/results/<GPU name>/ and commit it.
# Each step's table goes to OUT/<step>.txt and its tail to stdout. Steps run in order of importance and one is skipped
# when less than its time limit is left of BUDGET seconds (default 540), so the whole check ends inside one call.
# DEVICE=cpu SLIDE=WxH BUDGET=s try it out on a CPU machine (the GPU-decoding steps then report their refusal).
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(mkdir -p "${1:-gpu_check_out}" && cd "${1:-gpu_check_out}" && pwd)
device=${DEVICE:-cuda}
slide_size=${SLIDE:-200000x100000}  # width x height: CAMELYON16-sized, 0.243 µm/px, JPEG tiles
budget=${BUDGET:-540}
python=${PYTHON:-python3}
tiles=$(pwd)/.gpu/tiles
demo=$(pwd)/bundle/sample_data/camelyon16_demo.tif
export PYTHONPATH=/tmp/site:$(pwd)/bundle
if ! $python -c "import monai, ignite, cucim, torchstain, fire, shapely" 2>/dev/null; then
  $python -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .gpu/wheels/*.whl 2>&1 | tail -3
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt" 2>&1
gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l)
cd bench
step() {
  local name=$1 limit=$2; shift 2
  if (( SECONDS + limit > budget )); then
    echo "== $name: skipped, $((budget - SECONDS)) s of the budget left" | tee "$out/$name.txt"
    return
  fi
  echo "== $name: $*"
  local start=$SECONDS
  timeout "$limit" "$@" > "$out/$name.txt" 2>&1
  echo "   rc $? in $((SECONDS - start)) s"
  grep -v -i -E "nvjpeg|nvtiff|note:|warn|patches\[|^$" "$out/$name.txt" | tail -25
}
width=${slide_size%x*} height=${slide_size#*x}
slide=/tmp/skip96_gpu_check/synthetic_${slide_size}.tif
mkdir -p /tmp/skip96_gpu_check
[ -f "$slide" ] || step write_slide 150 $python -c "from pathlib import Path; from memory import write_slide
write_slide(Path('$slide'), $height, $width)"
# end to end, CPU decoding (8 DataLoader workers) against GPU decoding (main process), large slide then demo slide;
# each prints the bare model + score on as many patches, the stages alone and peak host / GPU memory
step infer_gpu_decode 120 $python infer_throughput.py "$slide" --read_device cuda
step infer_cpu_decode 120 $python infer_throughput.py "$slide" --read_device cpu --num_workers 8
step demo_gpu_decode 45 $python infer_throughput.py "$demo" --read_device cuda --repeats 2
step demo_cpu_decode 45 $python infer_throughput.py "$demo" --read_device cpu --num_workers 8 --repeats 2
step train_amp 60 $python train_throughput.py --dataset_dir "$tiles" --batch_size 128 --num_workers 8 --iterations 40
step train_no_amp 60 $python train_throughput.py --dataset_dir "$tiles" --batch_size 128 --num_workers 8 \
  --iterations 40 --amp 0
if (( gpus > 1 )); then
  step train_ddp 120 torchrun --standalone --nproc_per_node="$gpus" -m monai.bundle run training \
    --config_file "['../bundle/configs/train.json','../bundle/configs/multi_gpu_train.json']" --data_source tiles \
    --dataset_dir "$tiles" --max_epochs 2 --batch_size 128 --num_workers 4 --ckpt_dir /tmp/skip96_gpu_check/ddp \
    --output_dir /tmp/skip96_gpu_check/ddp_runs --overwrite True
else
  echo "== train_ddp: skipped, $gpus GPU" | tee "$out/train_ddp.txt"
fi
step inference_options 90 $python inference_options.py --device "$device" --tiles_dir "$tiles"
step infer_tta 90 $python infer_throughput.py "$slide" --read_device cuda --tta 1
echo "total $SECONDS s"
