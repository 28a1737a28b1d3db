"""The tissue mask against MONAI's ``ForegroundMask`` with the same rule (HSV saturation above its Otsu threshold):
what the bundle's own steps (the threshold capped for all-tissue fields, specks removed, holes filled) change, and
what each costs.

    python bench/tissue_mask.py --tiles_dir ../shared/data/camelyon16_tiles

Each 512-px CAMELYON16 tile is masked whole, and as its central 256-px crop (a field of tissue: where Otsu has no
background mode to find); the demo slide's thumbnail, as inference reads it, is masked too. For each: the share of
pixels each calls tissue, their agreement (IoU), and the time per megapixel.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import DEMO_SLIDE, machine
from monai.transforms import ForegroundMask
from skimage import io

from scripts.tiling import MASK_PX_PER_PATCH, PATCH_SIZE
from scripts.tissue import tissue_mask
from scripts.wsi import make_reader, read_thumbnail, thumbnail_level

MONAI_MASK = ForegroundMask(threshold=None, hsv_threshold={"S": "otsu"})


def monai_mask(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(MONAI_MASK(np.moveaxis(rgb[..., :3], -1, 0)))[0] > 0


def timed_mask(function, rgb: np.ndarray, repeats: int = 3) -> tuple[np.ndarray, float]:
    """The mask and the fastest of ``repeats`` runs, in seconds per megapixel."""
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        mask = function(rgb)
        best = min(best, time.perf_counter() - start)
    return mask, best / (rgb.shape[0] * rgb.shape[1] / 1e6)


def demo_thumbnail() -> np.ndarray:
    reader = make_reader("tifffile")
    wsi = reader.read(str(DEMO_SLIDE))
    level = thumbnail_level(reader, wsi, PATCH_SIZE / MASK_PX_PER_PATCH)
    return read_thumbnail(reader, wsi, DEMO_SLIDE, level)[0]


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--tiles_dir", type=Path, required=True)
    args = cli.parse_args()
    tiles = [io.imread(p)[..., :3] for p in sorted((args.tiles_dir / "images").glob("*.jpg"))]
    sets = {
        f"{len(tiles)} tiles, whole (512 px)": tiles,
        f"{len(tiles)} tiles, central 256 px": [t[128:384, 128:384] for t in tiles],
        "demo slide thumbnail": [demo_thumbnail()],
    }
    print(f"machine: {machine()}")
    print(f"{'images':<32}{'tissue, ours':>14}{'tissue, MONAI':>15}{'IoU':>7}{'ours s/MP':>11}{'MONAI s/MP':>12}")
    for name, images in sets.items():
        ours, theirs, seconds = [], [], np.zeros(2)
        for rgb in images:
            a, ta = timed_mask(tissue_mask, rgb)
            b, tb = timed_mask(monai_mask, rgb)
            ours.append(a)
            theirs.append(b)
            seconds += (ta, tb)
        a, b = np.concatenate([m.ravel() for m in ours]), np.concatenate([m.ravel() for m in theirs])
        iou = (a & b).sum() / max((a | b).sum(), 1)
        print(f"{name:<32}{a.mean():>14.3f}{b.mean():>15.3f}{iou:>7.3f}{seconds[0] / len(images):>11.3f}"
              f"{seconds[1] / len(images):>12.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
