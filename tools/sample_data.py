"""Build the demo slide in ``bundle/sample_data/`` from the 8 held-out CAMELYON16 tiles (run once; output committed).

    python -m tools.sample_data ../shared/data/camelyon16_tiles
    python -m tools.sample_data ../shared/data/camelyon16_tiles --calibration_dir CAL

The tiles (512 px, about 1 µm/px) are stitched 2 x 4 in name order into a pyramidal tiled TIFF recorded at the
model's resolution (``TARGET_MPP``), and their tumour masks are traced into ASAP XML polygons in level-0 pixels.
``--calibration_dir`` also stitches the 24 training tiles the same way into three slides, ``camelyon16_train_{0,1,2}``:
slides with annotations that share no tile with the demo slide, for calibrating thresholds (``run calibrate``) without
the demo labels (not committed).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from skimage import io

from scripts import BUNDLE_ROOT
from scripts.atomic import atomic_path
from scripts.datasets import DEMO_TILES, read_tumour_mask, tile_names
from scripts.pyramid import write_pyramid
from scripts.regions import to_asap_xml, trace_regions
from scripts.tiling import TARGET_MPP

DEMO_MPP = TARGET_MPP
COLUMNS = 4
SAMPLE_DIR = Path(BUNDLE_ROOT) / "sample_data"
logger = logging.getLogger(__name__)


def stitch(folder: Path, names: list[str], columns: int, as_mask: bool) -> np.ndarray:
    paths = [folder / name for name in names]
    tiles = [read_tumour_mask(p) for p in paths] if as_mask else [io.imread(p)[..., :3] for p in paths]
    rows = [np.concatenate(tiles[r * columns : (r + 1) * columns], axis=1) for r in range(len(tiles) // columns)]
    return np.concatenate(rows, axis=0)


def write_slide(tiles_dir: Path, names: list[str], out_dir: Path, slide_id: str) -> None:
    """``out_dir/<slide_id>.tif`` stitched from the tiles ``names`` (file names in ``images/`` and ``masks/``) and its
    tumour annotation ``out_dir/<slide_id>.xml``."""
    image = stitch(tiles_dir / "images", names, COLUMNS, as_mask=False)
    mask = stitch(tiles_dir / "masks", names, COLUMNS, as_mask=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_pyramid(out_dir / f"{slide_id}.tif", image, DEMO_MPP, levels=3, compression="jpeg")
    with atomic_path(out_dir / f"{slide_id}.xml") as tmp:
        tmp.write_text(to_asap_xml(trace_regions(mask, None, pitch=1.0, tolerance=1.0)))
    height, width = mask.shape
    logger.info("wrote %s: %dx%d px, tumour %.1f%% of the area", out_dir / slide_id, width, height, 100 * mask.mean())


def write_calibration_slides(tiles_dir: Path, out_dir: Path) -> list[str]:
    """Every 8 non-demo tiles in name order as one slide ``camelyon16_train_<k>`` (a remainder under 8 is left out)."""
    training = tile_names(tiles_dir, DEMO_TILES)
    per_slide = 2 * COLUMNS
    slide_ids = []
    for k in range(len(training) // per_slide):
        slide_ids.append(f"camelyon16_train_{k}")
        write_slide(tiles_dir, training[k * per_slide : (k + 1) * per_slide], out_dir, slide_ids[-1])
    return slide_ids


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("tiles_dir", type=Path, help="folder with images/ and masks/ (../shared/data/camelyon16_tiles)")
    cli.add_argument("--calibration_dir", type=Path, help="also write the training tiles here as calibration slides")
    args = cli.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    write_slide(args.tiles_dir, [f"{name}.jpg" for name in DEMO_TILES], SAMPLE_DIR, "camelyon16_demo")
    if args.calibration_dir:
        write_calibration_slides(args.tiles_dir, args.calibration_dir)


if __name__ == "__main__":
    main()
