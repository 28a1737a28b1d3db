"""Annotated slides of realistic tumour burden, assembled from real tissue, for calibrating thresholds.

    python -m tools.sparse_slides OUT --tiles_dir ../shared/data/camelyon16_tiles \\
        --normals_dir ../shared/data/pcam_normals [--tiles 10700 10701 ...] [--slides 6 --normal_slides 12 --seed 0]

CAMELYON16 metastases cover a few per cent of a slide's tissue, often less; calibrating on tumour-heavy tiles (35-70 %
tumour) chooses thresholds that call most of any slide. Each slide here is a grid of model patches (``CELL`` px at
``SLIDE_MPP``):
normal cells are tumour-free crops of the given tiles and tumour cells are crops lying wholly inside their tumour
masks (so both share the tiles' stains, as on one real slide), the tumour placed as one or two compact (disc-shaped)
clusters covering 1-10 % of the cells. Burdens and cluster counts cycle through ``BURDENS`` x (1, 2 clusters).
``--normal_slides`` more slides have no tumour (a false-region rate is measured on them): they alternate between the
PatchCamelyon normal patches of ``normals_dir`` that training holds out (hard negatives from many slides, none
repeated before all are used), where given, and the tiles' normal tissue.

The tiles hold far less distinct normal tissue than a slide needs, so normal cells must repeat tissue; they do so only
nearby, as tissue continues on a real section: the normal tissue is laid out in ``BLOCK`` x ``BLOCK`` squares of cells,
each filled with (overlapping) crops of one ``REGION``-px square of one tile, and no two squares of a slide come from
the same region, so cells more than ``BLOCK`` - 1 cells apart never share pixels; no two tumour cells of a slide share
pixels. A score that compares a patch with the rest of its slide beyond a neighbourhood of that size then never meets
a copy of it.
Each slide is written as ``<id>.tif`` (pyramidal) with its ``<id>.xml`` (ASAP, group Tumor; an empty file for a
tumour-free slide, so evaluation reads it as declared tumour-free), and ``sources.csv`` says whose normal tissue each
slide shows (``tiles`` or ``patches``). Only the tiles named are used, so a fold's
calibration slides can be built from its training tiles alone.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from scripts.atomic import atomic_path
from scripts.datasets import (
    DEMO_TILES,
    PatchFolderNormals,
    crop_corners,
    held_out_normals,
    normal_patch_files,
    read_tile,
    tile_names,
)
from scripts.pyramid import write_pyramid
from scripts.regions import to_asap_xml, trace_regions
from scripts.tiling import PATCH_SIZE, TARGET_MPP

CELL = PATCH_SIZE
SLIDE_MPP = TARGET_MPP
BURDENS = (0.02, 0.05, 0.09)  # tumour cells / all cells
CROP_STRIDE = 16
BLOCK = 4  # normal tissue comes in BLOCK x BLOCK squares of cells, each from one tile region
REGION = CELL + 4 * CROP_STRIDE  # a region's side: 5 x 5 crop positions
MIN_REGION_CROPS = 4  # fewer, and a block would be a few crops repeated
NORMALS_PARTS = ("held_out", "rest")
SOURCES = "sources.csv"  # beside the slides: each one's normal tissue, from the tiles or the normal patches
logger = logging.getLogger(__name__)


@dataclass
class TileTissue:
    """What the given tiles offer a slide: normal crops grouped by the tile region they lie in (regions never overlap,
    so crops of different regions share no pixels), and tumour crops with their tile and top-left corner."""

    regions: list[list[np.ndarray]]
    tumour: list[np.ndarray]
    tumour_corners: np.ndarray  # (tile index, y, x) per tumour crop


def tile_tissue(tiles_dir: Path, names: Sequence[str]) -> TileTissue:
    """96-px crops of the tiles on a 16-px grid: tumour-free ones by ``REGION``-px region (regions with at least
    ``MIN_REGION_CROPS``), and those wholly inside the tumour."""
    regions, tumour, corners = [], [], []
    for k, name in enumerate(names):
        image, mask = read_tile(tiles_dir, name, CELL)
        normal, inside = crop_corners(image, mask, CELL, CROP_STRIDE, 0.5)
        by_region: dict[tuple[int, int], list[np.ndarray]] = {}
        for y, x in normal:
            if y % REGION + CELL <= REGION and x % REGION + CELL <= REGION:  # wholly inside one region
                by_region.setdefault((y // REGION, x // REGION), []).append(image[y : y + CELL, x : x + CELL])
        regions.extend(crops for crops in by_region.values() if len(crops) >= MIN_REGION_CROPS)
        tumour.extend(image[y : y + CELL, x : x + CELL] for y, x in inside)
        corners.extend((k, y, x) for y, x in inside)
    return TileTissue(regions, tumour, np.array(corners).reshape(-1, 3))


def cluster_mask(shape: tuple[int, int], burden: float, clusters: int, rng: np.random.Generator) -> np.ndarray:
    """``clusters`` discs of cells, inside the grid and apart from each other, covering ``burden`` of the grid."""
    per_cluster = max(1, round(burden * shape[0] * shape[1] / clusters))
    radius = np.sqrt(per_cluster / np.pi)
    centres: list[np.ndarray] = []
    while len(centres) < clusters:
        centre = rng.uniform(radius + 1, np.array(shape) - radius - 1)
        if all(np.hypot(*(centre - c)) > 2 * radius + 2 for c in centres):
            centres.append(centre)
    rows, cols = np.indices(shape)
    mask = np.zeros(shape, bool)
    for centre in centres:
        distance = np.hypot(rows + 0.5 - centre[0], cols + 0.5 - centre[1])
        mask.flat[np.argsort(distance, axis=None)[:per_cluster]] = True  # the per_cluster cells nearest the centre
    return mask


def each_once(items: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random indices into ``items`` things, none used twice before every one has been used."""
    return np.concatenate([rng.permutation(items) for _ in range(-(-count // items))])[:count]


def normal_blocks(shape: tuple[int, int], regions: list[list[np.ndarray]], rng: np.random.Generator) -> np.ndarray:
    """Normal tissue for a grid of ``shape`` cells: each ``BLOCK`` x ``BLOCK`` square from its own region."""
    blocks = (-(-shape[0] // BLOCK), -(-shape[1] // BLOCK))
    if len(regions) < blocks[0] * blocks[1]:
        raise ValueError(
            f"the tiles give {len(regions)} tissue regions of {REGION} px, a {shape[0]} x {shape[1]} slide needs "
            f"{blocks[0] * blocks[1]} (one per {BLOCK} x {BLOCK} cells): give more tiles or a smaller --grid."
        )
    image = np.empty((blocks[0] * BLOCK * CELL, blocks[1] * BLOCK * CELL, 3), np.uint8)
    side = BLOCK * CELL
    for block, region in enumerate(rng.choice(len(regions), blocks[0] * blocks[1], replace=False)):
        top, left = divmod(block, blocks[1])
        crops = regions[region]
        cells = np.stack([crops[k] for k in each_once(len(crops), BLOCK * BLOCK, rng)])
        image[top * side : (top + 1) * side, left * side : (left + 1) * side] = cells_image(cells, BLOCK, BLOCK)
    return image[: shape[0] * CELL, : shape[1] * CELL]


def disjoint_crops(corners: np.ndarray, rng: np.random.Generator, count: int | None = None) -> list[int]:
    """Indices of up to ``count`` ``CELL``-px crops (rows of (tile, y, x) top-left corners) of which no two share
    pixels, taken greedily in a random order."""
    chosen: list[int] = []
    for k in rng.permutation(len(corners)):
        others = corners[chosen]
        same_tile = others[:, 0] == corners[k, 0]
        if not (same_tile & (np.abs(others[:, 1:] - corners[k, 1:]) < CELL).all(1)).any():
            chosen.append(k)
            if len(chosen) == count:
                break
    return chosen


def disjoint_tumour(tissue: TileTissue, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` tumour crops of which no two share pixels, picked in a random order."""
    chosen = disjoint_crops(tissue.tumour_corners, rng, count)
    if len(chosen) < count:
        raise ValueError(
            f"the tiles give {len(chosen)} tumour crops that share no pixels, a slide needs {count}: give more tiles."
        )
    return [tissue.tumour[k] for k in chosen]


def cells_image(cells: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """``rows`` x ``cols`` cells (given row by row, each ``CELL`` x ``CELL`` x 3) as one image."""
    return cells.reshape(rows, cols, CELL, CELL, 3).transpose(0, 2, 1, 3, 4).reshape(rows * CELL, cols * CELL, 3)


def write_sparse_slide(out_dir: Path, slide_id: str, tumour_cells: np.ndarray, normal: np.ndarray,
                       tumour: list[np.ndarray]) -> float:  # fmt: skip
    """``out_dir/<slide_id>.tif`` (the ``normal`` tissue image with ``tumour`` crops in the tumour cells, row by
    row) and its ``.xml``; returns the tumour fraction of the cells."""
    image = normal.copy()
    for (i, j), crop in zip(np.argwhere(tumour_cells), tumour, strict=True):
        image[i * CELL : (i + 1) * CELL, j * CELL : (j + 1) * CELL] = crop
    write_pyramid(out_dir / f"{slide_id}.tif", image, SLIDE_MPP, levels=2, compression="jpeg")
    with atomic_path(out_dir / f"{slide_id}.xml") as tmp:
        tmp.write_text(to_asap_xml(trace_regions(tumour_cells, None, pitch=CELL)))
    return float(tumour_cells.mean())


def build(
    out_dir: Path, tiles_dir: Path, tiles: Sequence[str], normals_dir: Path | None, slides: int = 6,
    grid: tuple[int, int] = (16, 16), seed: int = 0, normals_holdout: float = 0.2, normal_slides: int = 1,
    normals_part: str = "held_out",
) -> list[str]:  # fmt: skip
    """Write ``slides`` tumour-sparse slides and ``normal_slides`` tumour-free ones; return their ids. Tumour-free
    slides alternate between patches of ``normals_dir`` (each used once before any repeats) and the tiles' normal
    tissue; without ``normals_dir``, all are the tiles'. ``normals_part`` is the part of ``normals_dir`` they take:
    ``held_out``, the ``normals_holdout`` that training (same fraction) leaves out, or the ``rest``: calibration
    slides take one, test slides the other, so that the two never share tissue."""
    if normals_part not in NORMALS_PARTS:
        raise ValueError(f"normals_part must be one of {list(NORMALS_PARTS)}, got {normals_part!r}.")
    names = [t if Path(t).suffix else f"{t}.jpg" for t in tiles]
    tissue = tile_tissue(tiles_dir, names)
    if not tissue.tumour or not tissue.regions:
        raise ValueError(
            f"{tiles_dir}: the tiles {list(tiles)} give {len(tissue.tumour)} tumour crops and {len(tissue.regions)} "
            "normal tissue regions."
        )
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids, tissue_of = [], []
    for k in range(slides):
        burden, clusters = BURDENS[k % len(BURDENS)], 1 + (k // len(BURDENS)) % 2
        ids.append(f"sparse_{k:02d}")
        cells = cluster_mask(grid, burden, clusters, rng)
        normal = normal_blocks(grid, tissue.regions, rng)
        fraction = write_sparse_slide(out_dir, ids[-1], cells, normal, disjoint_tumour(tissue, int(cells.sum()), rng))
        tissue_of.append("tiles")
        logger.info(
            "%s: %d cluster(s), tumour %.1f %% of %d cells", ids[-1], clusters, 100 * fraction, grid[0] * grid[1]
        )
    cells = grid[0] * grid[1]
    if normals_dir is not None:
        rest, held_out = held_out_normals(normal_patch_files(normals_dir), normals_holdout)
        part = PatchFolderNormals(held_out if normals_part == "held_out" else rest, CELL)
        patches = [np.moveaxis(patch, 0, -1) for patch in part.patches]
        order = each_once(len(patches), cells * -(-normal_slides // 2), rng)
    for k in range(normal_slides):
        ids.append(f"normal_{k:02d}")
        if normals_dir is not None and k % 2 == 0:
            pcam = order[k // 2 * cells : (k // 2 + 1) * cells]
            normal, source = cells_image(np.stack([patches[i] for i in pcam]), *grid), "patches"
        else:
            normal, source = normal_blocks(grid, tissue.regions, rng), "tiles"
        write_sparse_slide(out_dir, ids[-1], np.zeros(grid, bool), normal, [])
        tissue_of.append(source)
        logger.info("%s: tumour-free, from the %s (%d cells)", ids[-1], source, cells)
    with atomic_path(out_dir / SOURCES) as tmp:  # which results come from which tissue
        pd.DataFrame({"slide": ids, "tissue": tissue_of}).to_csv(tmp, index=False)
    return ids


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("out_dir", type=Path)
    cli.add_argument("--tiles_dir", type=Path, required=True, help="images/ and masks/ (camelyon16_tiles)")
    cli.add_argument(
        "--tiles",
        nargs="+",
        help="tile names (stems) to cut tissue from; default: all but the demo "
        "slide's, the tiles the shipped model was trained on",
    )
    cli.add_argument("--normals_dir", type=Path, help="normal patch images (pcam_normals) for the tumour-free slide")
    cli.add_argument("--slides", type=int, default=6)
    cli.add_argument("--grid", type=int, nargs=2, default=(16, 16), help="cells per slide: rows cols")
    cli.add_argument("--normals_holdout", type=float, default=0.2, help="as train.json's normals_holdout")
    cli.add_argument("--normal_slides", type=int, default=1, help="tumour-free slides (a rate needs several)")
    cli.add_argument(
        "--normals_part",
        choices=NORMALS_PARTS,
        default="held_out",
        help="the part of --normals_dir to take: held_out (never trained on) or the rest",
    )
    cli.add_argument("--seed", type=int, default=0)
    args = cli.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tiles = args.tiles or tile_names(args.tiles_dir, DEMO_TILES)
    build(
        args.out_dir, args.tiles_dir, tiles, args.normals_dir, args.slides, tuple(args.grid), args.seed,
        args.normals_holdout, args.normal_slides, args.normals_part,
    )  # fmt: skip


if __name__ == "__main__":
    main()
