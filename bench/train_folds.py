"""Tile cross-validation of the shipped recipe: one model per fold, for ``detection_quality.py --folds OUT``.

    python bench/train_folds.py --tiles_dir ../shared/data/camelyon16_tiles --out OUT [--normals_dir DIR]

Fold k leaves out the demo tiles and the k-th run of ``FOLD_SIZE`` training tiles by name (``tile_folds``), and
trains with the shipped model's preset (``configs/shipped_recipe.json``) into ``OUT/fold<k>``; each fold's log goes to
``OUT/fold<k>/train.log``. About 10 minutes a fold on 2 CPU cores. ``--normals_dir`` mixes a folder of normal patches
(``../shared/data/pcam_normals``, less the part training holds out) into every fold.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from common import BUNDLE
from detection_quality import tile_folds

from scripts.datasets import DEMO_TILES, tile_names

RECIPE = "['bundle/configs/train.json','bundle/configs/shipped_recipe.json']"  # the shipped model's preset


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--tiles_dir", type=Path, required=True)
    cli.add_argument("--out", type=Path, required=True)
    cli.add_argument("--seed", type=int, default=42, help="the shipped model's is 42; others give more draws per fold")
    cli.add_argument("--normals_dir", type=Path, help="a folder of normal patches to mix into every fold's training")
    args = cli.parse_args()
    training = [Path(name).stem for name in tile_names(args.tiles_dir, DEMO_TILES)]
    for k, held_out in enumerate(tile_folds(training)):
        fold_dir = args.out / f"fold{k}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        print(f"fold {k}: holds out {' '.join(held_out)}; log in {fold_dir / 'train.log'}", flush=True)
        command = [sys.executable, "-m", "monai.bundle", "run", "training"]
        command += ["--config_file", RECIPE]
        command += ["--dataset_dir", str(args.tiles_dir.resolve())]
        command += ["--exclude", str([*DEMO_TILES, *held_out]), "--ckpt_dir", str(fold_dir.resolve())]
        command += ["--seed", str(args.seed)]
        if args.normals_dir:
            command += ["--normals_dir", str(args.normals_dir.resolve())]
        with open(fold_dir / "train.log", "w") as log:  # as the documented command: from the repository root
            subprocess.run(
                command,
                cwd=BUNDLE.parent,
                env={**os.environ, "PYTHONPATH": "bundle"},
                stdout=log,
                stderr=log,
                check=True,
            )


if __name__ == "__main__":
    main()
