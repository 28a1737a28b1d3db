"""Annotated slides of realistic tumour burden, assembled from real tissue, for calibrating thresholds.

    python bundle/scripts/sparse_slides.py OUT --tiles_dir ../shared/data/camelyon16_tiles \\
        --normals_dir ../shared/data/pcam_normals --tiles 10692 10693 ... [--slides 6 --seed 0]

CAMELYON16 metastases cover a few per cent of a slide's tissue, often less; calibrating on tumour-heavy tiles (35-70 %
tumour) chooses thresholds that call most of any slide. Each slide here is a grid of 96-px cells at 0.972 µm/px:
normal cells are tumour-free crops of the given tiles and tumour cells are crops lying wholly inside their tumour
masks (so both share the tiles' stains, as on one real slide), the tumour placed as one or two compact (disc-shaped)
clusters covering 1-10 % of the cells. Burdens and cluster counts cycle through ``BURDENS`` x (1, 2 clusters). One
more slide has no tumour: the PatchCamelyon normal patches of ``normals_dir`` that training holds out (hard negatives
from many slides), where given, else the tiles' normal crops.
Each slide is written as ``<id>.tif`` (pyramidal) with its ``<id>.xml`` (ASAP, group Tumor; an empty file for the
tumour-free slide, so evaluation reads it as declared tumour-free). Only the tiles named are used, so a fold's
calibration slides can be built from its training tiles alone.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.atomic import atomic_path  # noqa: E402
from scripts.datasets import (  # noqa: E402
    PatchFolderNormals,
    crop_corners,
    held_out_normals,
    normal_patch_files,
    read_tile,
)
from scripts.pyramid import write_pyramid  # noqa: E402
from scripts.regions import to_asap_xml, trace_regions  # noqa: E402

CELL = 96
SLIDE_MPP = 0.972
BURDENS = (0.02, 0.05, 0.09)  # tumour cells / all cells
CROP_STRIDE = 16
logger = logging.getLogger(__name__)


def tile_crops(tiles_dir: Path, names: Sequence[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """96-px crops of the tiles on a 16-px grid: (tumour-free tissue crops, crops wholly inside tumour)."""
    normal, tumour = [], []
    for name in names:
        image, mask = read_tile(tiles_dir, name, CELL)
        for target, corners in zip((normal, tumour), crop_corners(image, mask, CELL, CROP_STRIDE, 0.5), strict=True):
            target.extend(image[y : y + CELL, x : x + CELL] for y, x in corners)
    return normal, tumour


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


def write_sparse_slide(
    out_dir: Path, slide_id: str, tumour_cells: np.ndarray, normal: list[np.ndarray], tumour: list[np.ndarray],
    rng: np.random.Generator,
) -> float:  # fmt: skip
    """``out_dir/<slide_id>.tif`` and ``.xml``; returns the tumour fraction of the cells."""
    rows, cols = tumour_cells.shape
    image = np.empty((rows * CELL, cols * CELL, 3), np.uint8)
    for i in range(rows):
        for j in range(cols):
            pool = tumour if tumour_cells[i, j] else normal
            image[i * CELL : (i + 1) * CELL, j * CELL : (j + 1) * CELL] = pool[rng.integers(len(pool))]
    write_pyramid(out_dir / f"{slide_id}.tif", image, SLIDE_MPP, levels=2, compression="jpeg")
    with atomic_path(out_dir / f"{slide_id}.xml") as tmp:
        tmp.write_text(to_asap_xml(trace_regions(tumour_cells, None, pitch=CELL)))
    return float(tumour_cells.mean())


def build(
    out_dir: Path, tiles_dir: Path, tiles: Sequence[str], normals_dir: Path | None, slides: int = 6,
    grid: tuple[int, int] = (16, 16), seed: int = 0, normals_holdout: float = 0.2,
) -> list[str]:  # fmt: skip
    """Write ``slides`` tumour-sparse slides and one tumour-free slide; return their ids. The tumour-free slide takes
    only the ``normals_holdout`` part of ``normals_dir`` that training (same fraction) leaves out."""
    names = [t if Path(t).suffix else f"{t}.jpg" for t in tiles]
    normal, tumour = tile_crops(tiles_dir, names)
    if not tumour or not normal:
        raise ValueError(
            f"{tiles_dir}: the tiles {list(tiles)} give {len(tumour)} tumour and {len(normal)} normal crops."
        )
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = []
    for k in range(slides):
        burden, clusters = BURDENS[k % len(BURDENS)], 1 + (k // len(BURDENS)) % 2
        ids.append(f"sparse_{k:02d}")
        fraction = write_sparse_slide(out_dir, ids[-1], cluster_mask(grid, burden, clusters, rng), normal, tumour, rng)
        logger.info(
            "%s: %d cluster(s), tumour %.1f %% of %d cells", ids[-1], clusters, 100 * fraction, grid[0] * grid[1]
        )
    ids.append("normal_00")
    if normals_dir is not None:
        held_out = PatchFolderNormals(held_out_normals(normal_patch_files(normals_dir), normals_holdout)[1], CELL)
        normal = [np.moveaxis(patch, 0, -1) for patch in held_out.patches]
    write_sparse_slide(out_dir, ids[-1], np.zeros(grid, bool), normal, tumour, rng)
    logger.info("%s: tumour-free (%d cells)", ids[-1], grid[0] * grid[1])
    return ids


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("out_dir", type=Path)
    cli.add_argument("--tiles_dir", type=Path, required=True, help="images/ and masks/ (camelyon16_tiles)")
    cli.add_argument("--tiles", nargs="+", required=True, help="tile names (stems) to cut tissue from")
    cli.add_argument("--normals_dir", type=Path, help="normal patch images (pcam_normals) for the tumour-free slide")
    cli.add_argument("--slides", type=int, default=6)
    cli.add_argument("--grid", type=int, nargs=2, default=(16, 16), help="cells per slide: rows cols")
    cli.add_argument("--normals_holdout", type=float, default=0.2, help="as train.json's normals_holdout")
    cli.add_argument("--seed", type=int, default=0)
    args = cli.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build(
        args.out_dir, args.tiles_dir, args.tiles, args.normals_dir, args.slides, tuple(args.grid), args.seed,
        args.normals_holdout,
    )  # fmt: skip


if __name__ == "__main__":
    main()
