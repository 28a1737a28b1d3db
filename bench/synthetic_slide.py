"""A CAMELYON16-sized pyramidal JPEG TIFF written in seconds: every distinct tile is encoded once.

    python bench/synthetic_slide.py OUT.tif [--size 200000x100000] [--tiles_dir ../shared/data/camelyon16_tiles]

Level 0 is at 0.243 µm/px (CAMELYON16's scanners), 512-px JPEG tiles (YCbCr 4:2:0, as Aperio and CAMELYON16 store
them), levels halving down to under 2,048 px. Tissue is laid out in cells of 2,048 level-0 px (one 512-px tile at
level 2, ~1 µm/px, where inference reads), a third of the slide in three elliptical sections. A tissue cell
shows one of a few tissue images at every level, so each level's tiles repeat a handful of distinct byte strings,
which are encoded once and written as they are: a 200,000 x 100,000 slide in ~10 s instead of the minutes that
encoding its 76,000 level-0 tiles one by one took. The tissue images are real CAMELYON16 tiles when ``tiles_dir``
is given (~1 µm/px, so they are level 2's tiles, and finer levels show them enlarged), otherwise H&E-like noise.
Every level shows the same tissue, so the pyramid is consistent.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

TILE = 512
MPP = 0.243
CELL_LEVEL = 2  # tissue cells are one tile at this level (2,048 level-0 px)
GLASS = 245
# tissue sections as (centre row, centre column, half height, half width), in fractions of the slide's height/width
SECTIONS = ((0.45, 0.2, 0.3, 0.12), (0.5, 0.52, 0.34, 0.135), (0.55, 0.8, 0.25, 0.1))


def tissue_images(tiles_dir: Path | None, count: int = 8) -> list[np.ndarray]:
    """``count`` 512-px RGB tissue images at ~1 µm/px: real tiles from ``tiles_dir``, else H&E-like absorbance noise
    (two stains with random concentrations, so a Macenko fit sees two stains as on a real slide)."""
    if tiles_dir is not None:
        paths = sorted((tiles_dir / "images").glob("*.jpg"))[:count]
        return [np.asarray(Image.open(p).convert("RGB").resize((TILE, TILE))) for p in paths]
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        concentrations = rng.gamma(2.0, 0.4, size=(2, TILE * TILE))
        rgb = 240 * np.exp(-np.array([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]]) @ concentrations)
        images.append(rgb.T.reshape(TILE, TILE, 3).clip(0, 255).astype(np.uint8))
    return images


def cell_map(height: int, width: int, variants: int) -> np.ndarray:
    """Which tissue image each 2,048-px cell shows (-1: glass), inside the elliptical ``SECTIONS``."""
    cell = TILE << CELL_LEVEL
    rows, cols = -(-height // cell), -(-width // cell)
    y, x = (np.arange(rows)[:, None] + 0.5) / rows, (np.arange(cols)[None, :] + 0.5) / cols
    inside = np.any([((y - cy) / hy) ** 2 + ((x - cx) / hx) ** 2 < 1 for cy, cx, hy, hx in SECTIONS], axis=0)
    variant = (np.arange(rows)[:, None] * 7 + np.arange(cols)[None, :] * 3) % variants
    return np.where(inside, variant, -1)


def encode(tile: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(tile).save(buffer, "JPEG", quality=90, subsampling="4:2:0")
    return buffer.getvalue()


def level_tiles(level: int, shape: tuple[int, int], cells: np.ndarray, images: list[np.ndarray]) -> Iterator[bytes]:
    """The encoded tiles of one level in row-major order; each distinct tile is encoded once."""
    per_cell = 1 << CELL_LEVEL >> level if level <= CELL_LEVEL else 0  # tiles per cell side at finer levels
    cache: dict[object, bytes] = {}
    glass = np.full((TILE, TILE, 3), GLASS, np.uint8)
    for y in range(0, shape[0], TILE):
        for x in range(0, shape[1], TILE):
            if per_cell:  # a tile inside one cell: a part of its image, enlarged
                row, col = y // TILE // per_cell, x // TILE // per_cell
                variant = int(cells[row, col]) if row < cells.shape[0] and col < cells.shape[1] else -1
                part = (y // TILE % per_cell, x // TILE % per_cell)
                key = (variant, part)
                if key not in cache:
                    if variant < 0:
                        cache[key] = encode(glass)
                    else:
                        side = TILE // per_cell
                        top, left = part[0] * side, part[1] * side
                        crop = images[variant][top : top + side, left : left + side]
                        cache[key] = encode(np.asarray(Image.fromarray(crop).resize((TILE, TILE), Image.BILINEAR)))
                yield cache[key]
            else:  # a tile spanning several cells: their images, reduced (few tiles: encoded one by one)
                per_tile = 1 << (level - CELL_LEVEL)
                side = TILE // per_tile
                small = [np.asarray(Image.fromarray(im).resize((side, side), Image.BOX)) for im in images]
                tile = np.full((TILE, TILE, 3), GLASS, np.uint8)
                for r in range(per_tile):
                    for c in range(per_tile):
                        row, col = y // TILE * per_tile + r, x // TILE * per_tile + c
                        if row < cells.shape[0] and col < cells.shape[1] and cells[row, col] >= 0:
                            tile[r * side : (r + 1) * side, c * side : (c + 1) * side] = small[cells[row, col]]
                yield encode(tile)


def write_slide(path: Path, height: int, width: int, tiles_dir: Path | None = None) -> Path:
    """Write the slide to ``path`` (atomically: a killed run leaves no truncated file that a bench would read)."""
    images = tissue_images(tiles_dir)
    cells = cell_map(height, width, len(images))
    temp = path.with_name(f".{path.name}.partial")
    with tifffile.TiffWriter(temp, bigtiff=True) as tif:
        level = 0
        while max(height, width) >> level >= 2048:
            shape = (height >> level, width >> level)
            px_per_cm = 1e4 / (MPP * 2**level)
            tif.write(
                level_tiles(level, shape, cells, images), shape=(*shape, 3), dtype=np.uint8, tile=(TILE, TILE),
                photometric="ycbcr", subsampling=(2, 2), compression="jpeg", subfiletype=0 if level == 0 else 1,
                resolution=(px_per_cm, px_per_cm), resolutionunit="CENTIMETER",
            )  # fmt: skip
            level += 1
    temp.replace(path)
    return path


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("out", type=Path)
    cli.add_argument("--size", default="200000x100000", help="WIDTHxHEIGHT at level 0")
    cli.add_argument("--tiles_dir", type=Path, default=None, help="real ~1 µm/px tiles (images/*.jpg) as tissue")
    args = cli.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    start = time.perf_counter()
    write_slide(args.out, height, width, args.tiles_dir)
    seconds = time.perf_counter() - start
    print(f"{args.out}: {width} x {height} px, {args.out.stat().st_size / 2**20:.0f} MB in {seconds:.1f} s")


if __name__ == "__main__":
    main()
