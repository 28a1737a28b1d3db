#!/usr/bin/env bash
# 0.14.0's calibration rule (the z threshold and region size of the best mean IoU, on 6 tumour-sparse slides and one
# tumour-free slide of the fold's training tiles), on the test slides that bench/sparse_folds.py builds today, for its
# --versus:
#   bash bench/rule_0_14_0.sh FOLDS OUT      (then: python sparse_folds.py ... --versus OUT)
# 0.14.0's own sparse_folds.py calibrates and scores (in a worktree of its commit); this version's evaluate then
# scores its test outputs again, so that both rules are measured by the same lesion matching. About 10 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
folds=$(cd "${1:?usage: bash bench/rule_0_14_0.sh FOLDS OUT}" && pwd)
mkdir -p "${2:?usage: bash bench/rule_0_14_0.sh FOLDS OUT}"
out=$(cd "$2" && pwd)
repo=$(pwd)
python=$repo/.venv/bin/python
tiles=$(cd .. && pwd)/shared/data/camelyon16_tiles
normals=$(cd .. && pwd)/shared/data/pcam_normals
old=$(mktemp -d /tmp/skip96_0.14.0.XXXX)
git worktree add --detach "$old" fe0a3a6 > /dev/null
trap 'git worktree remove --force "$old"' EXIT
# today's test slides, and 0.14.0's calibration slides, per fold
(cd bench && PYTHONPATH=$repo/bundle:$repo $python - "$tiles" "$normals" "$out" <<'EOF'
import sys
from pathlib import Path

from sparse_folds import fold_tiles

from tools.sparse_slides import build

tiles, normals, out = (Path(a) for a in sys.argv[1:])
for fold, train_tiles, test_tiles in fold_tiles(tiles):
    if not (out / fold / "cal").is_dir():
        build(out / fold / "test", tiles, test_tiles, normals, slides=6, seed=2, normal_slides=6)
        build(out / fold / "cal", tiles, train_tiles, None, slides=6, seed=1)
EOF
)
(cd "$old/bench" && PYTHONPATH=$old/bundle:$old $python sparse_folds.py --tiles_dir "$tiles" --normals_dir "$normals" \
  --folds "$folds" --out "$out" > "$out/sparse_folds_0.14.0.txt")
for fold in fold0 fold1 fold2 demo; do
  ckpt=$folds/$fold/model.pt
  [ "$fold" = demo ] && ckpt=$repo/bundle/models/model.pt
  PYTHONPATH=bundle $python -m monai.bundle run evaluate --config_file \
    "['bundle/configs/inference.json','bundle/configs/evaluate.json']" --dataset_dir "$out/$fold/test" \
    --annotation_dir "$out/$fold/test" --output_dir "$out/$fold/test_mean_std" \
    --calibration_file "$out/$fold/cal_mean_std/calibration.json" --ckpt_path "$ckpt" > "$out/$fold/evaluate.log" 2>&1
done
