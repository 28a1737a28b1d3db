#!/usr/bin/env bash
# Tile cross-validation of the shipped recipe: three models, each trained without the 8 demo tiles and one fold of
# 8 training tiles (consecutive by name), for `bench/detection_quality.py --folds OUT` to score on the tiles each
# never saw. ~15 min a fold on 2 CPU cores; run from the repository root with the project's Python first on PATH.
#   bash bench/train_folds.sh ../shared/data/camelyon16_tiles OUT
set -euo pipefail
tiles_dir=$1
out=$2
demo=(10692 10693 10694 10695 10696 10697 10698 10699)
mapfile -t training < <(ls "$tiles_dir/images" | sed 's/\.jpg$//' | grep -v -x -F "${demo[@]/#/-e}" | sort)
quoted() { printf "'%s'," "$@" | sed 's/,$//'; }
for fold in 0 1 2; do
  held_out=("${training[@]:$((fold * 8)):8}")
  mkdir -p "$out/fold$fold"
  echo "fold $fold: held out ${held_out[*]}"
  PYTHONPATH=bundle python -m scripts run training --config_file bundle/configs/train.json --data_source tiles \
    --dataset_dir "$tiles_dir" --exclude "[$(quoted "${demo[@]}" "${held_out[@]}")]" \
    --max_epochs 10 --channels "[16,32,64,64,128,128]" --latent_channels 32 --batch_size 64 --num_workers 1 \
    --ckpt_dir "$out/fold$fold" --skip_dropout 0.5 --beta 0.5 --capacity_max 200 --capacity_epochs 10 \
    --beta_warmup_epochs 2 --patience 10 > "$out/fold$fold/train.log" 2>&1
done
