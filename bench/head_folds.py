"""The supervised head against the unsupervised ``latent`` score, cross-validated over the tile folds.

    python bench/head_folds.py --tiles_dir ../shared/data/camelyon16_tiles --folds FOLDS --out OUT

For each fold of ``bench/train_folds.py`` (and the demo tiles with the shipped model) a head is trained with the
documented command (``run train_head --data_source tiles``) on that fold's training tiles only, on that fold's frozen
encoder, into ``OUT/<fold>/head.pt``. The held-out tiles of every fold (32 in all, each scored by a model and a head
that never saw it) are then scored both ways, as ``detection_quality.py`` scores tiles (5 x 5 patches of 96 px, a
Macenko fit per tile, PCam centre-rule labels, per-tile z-scores): patch AUC, PR-AUC and IoU at a threshold chosen
leave-one-tile-out, each with the tile-resampled 95 % interval of the head's difference from ``latent``. The
fold sparse slides are compared by ``sparse_folds.py --heads OUT`` (paired with a ``latent`` run by ``--versus``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from common import BUNDLE
from detection_quality import THRESHOLDS, collect, iou_at, pooled_auc, tile_bootstrap, zscore
from monai.bundle import ConfigParser
from sparse_folds import fold_tiles

from scripts.datasets import DEMO_TILES
from scripts.metrics import pr_auc
from scripts.model_files import load_network
from scripts.scores import AnomalyScoreInferer
from scripts.stain import StainNormalizer
from scripts.transforms import ChannelStats, PrepareSlideBatch

TRAIN_HEAD = "['bundle/configs/train.json','bundle/configs/train_head.json']"
SCORES = ("latent", "head")


def train_head(out: Path, tiles_dir: Path, model: Path, held_out: list[str]) -> Path:
    """``run train_head`` as the docs write it, on the fold's training tiles (``--exclude`` the rest); once."""
    if not (out / "head.pt").is_file():
        out.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "monai.bundle", "run", "train_head", "--config_file", TRAIN_HEAD,
                   "--data_source", "tiles", "--dataset_dir", str(tiles_dir.resolve()), "--ckpt_path", str(model),
                   "--exclude", str(sorted({*DEMO_TILES, *held_out})), "--ckpt_dir", str(out.resolve())]  # fmt: skip
        with open(out / "train_head.log", "w") as log:
            subprocess.run(command, cwd=BUNDLE.parent, env={**os.environ, "PYTHONPATH": "bundle"}, stdout=log,
                           stderr=log, check=True)  # fmt: skip
    return out / "head.pt"


def loto_ious(tiles: list[dict], key: str) -> np.ndarray:
    """Each tile's IoU at the threshold that is best on the other tiles (leave one tile out)."""
    ious = []
    for k, tile in enumerate(tiles):
        others = tiles[:k] + tiles[k + 1 :]
        best = max(THRESHOLDS, key=lambda th, others=others: iou_at(others, key, th))
        ious.append(iou_at([tile], key, best))
    return np.array(ious)


def pooled_pr_auc(tiles: list[dict], key: str) -> float:
    labels = np.concatenate([t["labels"] for t in tiles])
    return pr_auc(np.concatenate([zscore(t[key]) for t in tiles]), labels)


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--tiles_dir", type=Path, required=True)
    cli.add_argument("--folds", type=Path, required=True, help="the OUT of bench/train_folds.py")
    cli.add_argument("--ckpt", type=Path, default=BUNDLE / "models" / "model.pt", help="the demo tiles' model")
    cli.add_argument("--out", type=Path, required=True)
    args = cli.parse_args()
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "inference.json")
    tiles = []
    for fold, _, held_out in fold_tiles(args.tiles_dir):
        model = args.ckpt if fold == "demo" else args.folds / fold / "model.pt"
        head = train_head(args.out / fold, args.tiles_dir, model.resolve(), held_out)
        network = load_network(parser.get_parsed_content("network_def", lazy=False), model, "cpu")
        inferers = {score: AnomalyScoreInferer.from_checkpoint(score, model, head_path=head) for score in SCORES}
        prepare = PrepareSlideBatch(StainNormalizer("slide"), ChannelStats.from_checkpoint(model))
        fold_tiles_scored = collect(args.tiles_dir, held_out, [(network, inferers, prepare)])
        print(
            f"{fold}: head {head}, {len(held_out)} held-out tiles; patch AUC latent "
            f"{pooled_auc(fold_tiles_scored, 'latent'):.3f}, head {pooled_auc(fold_tiles_scored, 'head'):.3f}"
        )
        tiles += fold_tiles_scored
    labels = np.concatenate([t["labels"] for t in tiles])
    print(f"\nheld-out tiles of all folds: {len(tiles)} tiles, {len(labels)} patches, {labels.mean():.1%} tumour")
    print(f"{'measure':<34}{'latent':>8}{'head':>8}{'head - latent [95 % CI, tiles resampled]':>44}")
    ious = {score: loto_ious(tiles, score) for score in SCORES}
    for name, statistic in (("patch AUC (per-tile z)", pooled_auc), ("patch PR-AUC (per-tile z)", pooled_pr_auc)):
        values = {score: statistic(tiles, score) for score in SCORES}
        low, high = tile_bootstrap(tiles, lambda sample, f=statistic: f(sample, "head") - f(sample, "latent"))
        print(f"{name:<34}{values['latent']:>8.3f}{values['head']:>8.3f}"
              f"{values['head'] - values['latent']:>+20.3f} [{low:+.3f}, {high:+.3f}]")  # fmt: skip
    difference = ious["head"] - ious["latent"]
    rng = np.random.default_rng(0)
    draws = [difference[rng.integers(0, len(difference), len(difference))].mean() for _ in range(1000)]
    low, high = np.percentile(draws, [2.5, 97.5])
    print(f"{'IoU, leave-one-tile-out threshold':<34}{ious['latent'].mean():>8.3f}{ious['head'].mean():>8.3f}"
          f"{difference.mean():>+20.3f} [{low:+.3f}, {high:+.3f}]")  # fmt: skip


if __name__ == "__main__":
    main()
