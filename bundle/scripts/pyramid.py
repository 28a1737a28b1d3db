"""Write pyramidal tiled TIFFs (the generic-TIFF layout cuCIM, OpenSlide and tifffile all read) with tifffile."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
from skimage.transform import downscale_local_mean

TILE = 256


def _tiles(image: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    for y in range(0, image.shape[0], tile):
        for x in range(0, image.shape[1], tile):
            block = image[y : y + tile, x : x + tile]
            if block.shape[:2] != (tile, tile):
                padded = np.full((tile, tile, image.shape[2]), 255, dtype=image.dtype)
                padded[: block.shape[0], : block.shape[1]] = block
                block = padded
            yield block


def write_pyramid(
    path: str | Path, image: np.ndarray, mpp: float | None, levels: int = 3, compression: str = "jpeg"
) -> Path:
    """Write an HWC uint8 RGB ``image`` as a tiled TIFF with ``levels`` 2x-downsampled pages.

    ``mpp`` (µm per level-0 pixel) is stored as resolution tags in centimetres, the unit slide readers understand;
    ``None`` writes no resolution at all (a slide "without metadata"). The file appears atomically.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    kwargs = {"tile": (TILE, TILE), "photometric": "rgb", "compression": compression}
    with tifffile.TiffWriter(tmp, bigtiff=image.size > 2**31) as tif:
        level = image
        for i in range(levels):
            res = {}
            if mpp is not None:
                px_per_cm = 1e4 / (mpp * 2**i)
                res = {"resolution": (px_per_cm, px_per_cm), "resolutionunit": "CENTIMETER"}
            tif.write(
                _tiles(level, TILE),
                shape=level.shape,
                dtype=level.dtype,
                subfiletype=0 if i == 0 else 1,
                **res,
                **kwargs,
            )
            h, w = level.shape[0] // 2 * 2, level.shape[1] // 2 * 2
            level = downscale_local_mean(level[:h, :w], (2, 2, 1)).round().astype(np.uint8)
    os.replace(tmp, path)
    return path
