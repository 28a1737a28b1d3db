#!/usr/bin/env bash
# The CPU measurements the README and the model card quote, each into bench/results/cpu/<name>.txt with the version,
# commit, machine and command that produced it on its first lines (the docs' tables are checked against these files):
#   bash bench/cpu_results.sh FOLDS        (FOLDS: the --out of bench/train_folds.py, about 13 min a fold)
# Run it from the repository root with .venv built; about 20 minutes on 2 cores, alone on the machine.
# STEPS="domain_check sparse_folds" runs only the steps named; VERSUS=DIR (bash bench/rule_0_14_0.sh FOLDS DIR) pairs
# sparse_folds with 0.14.0's calibration rule on the same slides.
set -uo pipefail
cd "$(dirname "$0")/.."
folds=$(cd "${1:?usage: bash bench/cpu_results.sh FOLDS}" && pwd)
python=$(pwd)/.venv/bin/python
results=$(pwd)/bench/results/cpu
work=$(mktemp -d /tmp/skip96_cpu_results.XXXX)
tiles=$(cd .. && pwd)/shared/data/camelyon16_tiles
normals=$(cd .. && pwd)/shared/data/pcam_normals
skin=$(cd .. && pwd)/shared/data/slides/CMU-1-Small-Region.svs
version=$($python -c "import json; print(json.load(open('bundle/configs/metadata.json'))['version'])")
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- bundle bench || echo "+changes")
mkdir -p "$results"
cd bench
wanted() { [[ -z "${STEPS:-}" || " $STEPS " == *" $1 "* ]]; }  # STEPS="a b": only those steps
run() {
  local name=$1; shift
  wanted "$name" || return 0
  echo "== $name: $*"
  {
    echo "version $version, commit $commit, $(date -u +%F), $(nproc) cores, $(uname -m)"
    echo "command (from bench/): $*"
    [ "$1" = summary ] && echo "(the logs of: python train_folds.py --tiles_dir TILES --out $folds)"
    echo
    "$@" 2>&1 | tr '\r' '\n' | grep -v -E "patches\[|patches: |train\[|train: |Warning|warnings.warn|^\s*$"
  } > "$results/$name.txt.tmp" && mv "$results/$name.txt.tmp" "$results/$name.txt"
  tail -n 30 "$results/$name.txt"
}
summary() {  # the lines of each fold's training log that say what it trained on, how long, and how well
  for log in "$folds"/fold*/train.log; do
    echo "$log"
    grep -h -E "training patches:|validation patches:|Epoch\[[0-9]+\] Metrics -- val|Engine run finished" "$log"
  done
}
run train_folds summary
wanted infer_throughput_mosaic &&
  $python -c "from pathlib import Path; from common import demo_mosaic; demo_mosaic(Path('$work/demo_mosaic.tif'))"
run detection_quality $python detection_quality.py --tiles_dir "$tiles" --folds "$folds"
run sparse_folds $python sparse_folds.py --tiles_dir "$tiles" --normals_dir "$normals" --folds "$folds" \
  --out "$work/sparse" ${VERSUS:+--versus "$VERSUS"}
run head_folds $python head_folds.py --tiles_dir "$tiles" --folds "$folds" --out "$work/heads"
run sparse_folds_head $python sparse_folds.py --tiles_dir "$tiles" --normals_dir "$normals" --folds "$folds" \
  --out "$work/sparse_head" --heads "$work/heads" --versus "$work/sparse"
run unseen_tumour_free $python unseen_tumour_free.py --tiles_dir "$tiles" --normals_dir "$normals" --skin "$skin" \
  --out "$work/unseen"
run tissue_mask $python tissue_mask.py --tiles_dir "$tiles"
run domain_check $python domain_check.py --tiles_dir "$tiles" --normals_dir "$normals" --skin "$skin" \
  --out "$work/domain"
run infer_throughput_demo $python infer_throughput.py ../bundle/sample_data/camelyon16_demo.tif --copies 6
run infer_throughput_mosaic $python infer_throughput.py "$work/demo_mosaic.tif" --copies 6
run train_throughput $python train_throughput.py --pcam_from "$normals" --pcam_patches 8192
{ wanted infer_throughput_camelyon16_sized || wanted patch_detections; } &&
  $python synthetic_slide.py "$work/camelyon16_sized.tif" --tiles_dir "$tiles" > /dev/null
run infer_throughput_camelyon16_sized $python infer_throughput.py "$work/camelyon16_sized.tif" --copies 0
run patch_detections $python patch_detections.py "$work/camelyon16_sized.tif"
run report_page $python report_page.py --slides 130
rm -rf "$work"
