"""Build the demo slide in ``bundle/sample_data/`` from the 8 held-out CAMELYON16 tiles (run once; output committed).

    python bundle/scripts/sample_data.py ../shared/data/camelyon16_tiles

The tiles (512 px, about 1 µm/px) are stitched 2 x 4 in name order into a pyramidal tiled TIFF at 0.972 µm/px, and
their tumour masks are traced into ASAP XML polygons in level-0 pixels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from skimage import io

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.atomic import atomic_path  # noqa: E402
from scripts.datasets import DEMO_TILES, read_tumour_mask  # noqa: E402
from scripts.pyramid import write_pyramid  # noqa: E402
from scripts.regions import to_asap_xml, trace_regions  # noqa: E402

DEMO_MPP = 0.972
COLUMNS = 4
SAMPLE_DIR = Path(__file__).resolve().parents[1] / "sample_data"


def stitch(folder: Path, names: list[str], columns: int, as_mask: bool) -> np.ndarray:
    paths = [folder / f"{name}.jpg" for name in names]
    tiles = [read_tumour_mask(p) for p in paths] if as_mask else [io.imread(p)[..., :3] for p in paths]
    rows = [np.concatenate(tiles[r * columns : (r + 1) * columns], axis=1) for r in range(len(tiles) // columns)]
    return np.concatenate(rows, axis=0)


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("tiles_dir", type=Path, help="folder with images/ and masks/ (../shared/data/camelyon16_tiles)")
    args = cli.parse_args()
    names = list(DEMO_TILES)
    image = stitch(args.tiles_dir / "images", names, COLUMNS, as_mask=False)
    mask = stitch(args.tiles_dir / "masks", names, COLUMNS, as_mask=True)
    SAMPLE_DIR.mkdir(exist_ok=True)
    write_pyramid(SAMPLE_DIR / "camelyon16_demo.tif", image, DEMO_MPP, levels=3, compression="jpeg")
    with atomic_path(SAMPLE_DIR / "camelyon16_demo.xml") as tmp:
        tmp.write_text(to_asap_xml(trace_regions(mask, None, pitch=1.0, tolerance=1.0)))
    print(f"wrote {SAMPLE_DIR}: {image.shape[1]}x{image.shape[0]} px, tumour {mask.mean():.1%} of the area")


if __name__ == "__main__":
    main()
