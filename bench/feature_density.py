"""One-class density and nearest-neighbour scores on the VAE's own encoder features (PatchCore / PaDiM style).

    python bench/feature_density.py --tiles_dir ../shared/data/camelyon16_tiles [--ckpt bundle/models/model.pt]

A label-free alternative to reconstruction scores: describe each patch by the shipped encoder's features (every
level's channel mean and std, or mu), fit a model of *normal* tissue on normal crops of training tiles (the crops
``data_source: tiles`` trains on, 32-px grid, no tumour pixel, >= 50 % tissue), and score a patch by its distance
from that model: the Mahalanobis distance under a Gaussian (covariance shrunk 10 % towards its mean variance: the
features are many and strongly correlated) and the mean distance to the k nearest normal crops. Higher
is always more anomalous; nothing is fitted on labels. Test patches: the 5 x 5 grid of each tile, PCam centre rule,
Macenko per tile (as ``bench/detection_quality.py``). Two evaluations: the 8 held-out demo tiles against the 24
training tiles' normals, and 8 training tiles against the other 16 tiles' normals (the encoder has seen all 24
tiles' normal parts, so that column is optimistic).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from common import BUNDLE, as_batch
from detection_quality import tile_patches
from monai.bundle import ConfigParser
from skimage import io

from scripts.datasets import DEMO_TILES, read_tumour_mask
from scripts.metrics import roc_auc
from scripts.model_files import load_network
from scripts.stain import StainNormalizer
from scripts.tissue import tissue_mask, window_fraction
from scripts.transforms import ChannelStats, PrepareSlideBatch

CROP, STRIDE, SHRINK, NEIGHBOURS = 96, 32, 0.1, 5


def normal_crops(tiles_dir: Path, name: str) -> np.ndarray:
    """HWC uint8 crops of one tile on a ``STRIDE`` grid, wholly outside the tumour mask and >= 50 % tissue."""
    image = io.imread(tiles_dir / "images" / f"{name}.jpg")[..., :3]
    tumour = window_fraction(read_tumour_mask(tiles_dir / "masks" / f"{name}.jpg"), CROP)[::STRIDE, ::STRIDE]
    tissue = window_fraction(tissue_mask(image), CROP)[::STRIDE, ::STRIDE]
    rows, cols = np.nonzero((tumour == 0) & (tissue >= 0.5))
    corners = zip(rows * STRIDE, cols * STRIDE, strict=True)
    return np.stack([image[y : y + CROP, x : x + CROP] for y, x in corners])


def features(patches: np.ndarray, fit_on: np.ndarray, network, prepare_batch: PrepareSlideBatch) -> dict:
    """Per-level channel mean + std of the encoder's activations, every level together, and mu; one tile's patches
    normalised with that tile's Macenko fit (``fit_on``: the tile's grid patches, as for a slide)."""
    prepare_batch.stain.fit_slide(list(fit_on))
    x, _ = prepare_batch({"image": as_batch(patches)})
    activations = []
    with torch.inference_mode():
        for block in network.encoder:
            x = block(x)
            activations.append(x)
        mu = network.to_latent(x).chunk(2, dim=1)[0]
    levels = [torch.cat([a.mean((2, 3)), a.std((2, 3))], 1).numpy() for a in activations]
    out = {f"encoder level {k} ({a.shape[1] // 2} ch)": a for k, a in enumerate(levels)}
    out["encoder, all levels"] = np.concatenate(levels, 1)
    out["mu (3 x 3 latent)"] = mu.flatten(1).numpy()
    return out


def tile_features(tiles_dir: Path, names: list[str], network, prepare_batch) -> tuple[dict, dict]:
    """Normal-crop features and grid features (with labels and tile index) of ``names``."""
    normal, grid = {}, {}
    for k, name in enumerate(names):
        patches, labels = tile_patches(tiles_dir, name)
        crops = normal_crops(tiles_dir, name)
        for key, value in features(crops, patches, network, prepare_batch).items():
            normal.setdefault(key, []).append((k, value))
        for key, value in features(patches, patches, network, prepare_batch).items():
            grid.setdefault(key, []).append((k, value))
        grid.setdefault("labels", []).append((k, labels))
    return normal, grid


def stack(entries: list, tiles: set[int]) -> np.ndarray:
    return np.concatenate([value for k, value in entries if k in tiles])


def gaussian_distance(bank: np.ndarray, test: np.ndarray) -> np.ndarray:
    mean, scale = bank.mean(0), bank.std(0) + 1e-6
    bank, test = (bank - mean) / scale, (test - mean) / scale
    covariance = np.cov(bank.T)
    covariance = (1 - SHRINK) * covariance + SHRINK * np.eye(len(covariance)) * np.trace(covariance) / len(covariance)
    delta = test @ np.linalg.cholesky(np.linalg.inv(covariance))
    return np.sqrt((delta**2).sum(1))


def knn_distance(bank: np.ndarray, test: np.ndarray) -> np.ndarray:
    mean, scale = bank.mean(0), bank.std(0) + 1e-6
    distances = torch.cdist(torch.from_numpy((test - mean) / scale), torch.from_numpy((bank - mean) / scale))
    return distances.topk(NEIGHBOURS, largest=False).values.mean(1).numpy()


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--tiles_dir", type=Path, required=True)
    cli.add_argument("--ckpt", type=Path, default=BUNDLE / "models" / "model.pt")
    args = cli.parse_args()
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "inference.json")
    network = load_network(parser.get_parsed_content("network_def"), args.ckpt, "cpu")
    prepare_batch = PrepareSlideBatch(StainNormalizer(), ChannelStats.from_checkpoint(args.ckpt))
    names = sorted(p.stem for p in (args.tiles_dir / "images").glob("*.jpg"))
    normal, grid = tile_features(args.tiles_dir, names, network, prepare_batch)
    demo = {k for k, n in enumerate(names) if n in DEMO_TILES}
    training = [k for k in range(len(names)) if k not in demo]
    splits = {"demo tiles": (set(training), demo), "8 training tiles": (set(training[8:]), set(training[:8]))}
    banks = ", ".join(f"{s} {len(stack(normal['mu (3 x 3 latent)'], bank))}" for s, (bank, _) in splits.items())
    print(f"checkpoint {args.ckpt}; normal crops fitted on: {banks}")
    print(f"{'':<30}" + "".join(f"{s:>24}" for s in splits))
    print(f"{'features':<30}" + f"{'Gaussian':>12}{f'{NEIGHBOURS}-NN':>12}" * len(splits))
    for key in normal:
        row = f"{key:<30}"
        for bank_tiles, test_tiles in splits.values():
            bank, test = stack(normal[key], bank_tiles), stack(grid[key], test_tiles)
            labels = stack(grid["labels"], test_tiles)
            for distance in (gaussian_distance, knn_distance):
                row += f"{roc_auc(distance(bank, test), labels):>12.3f}"
        print(row)


if __name__ == "__main__":
    main()
