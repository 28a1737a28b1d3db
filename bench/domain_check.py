"""How far each slide's tissue colour is from the training normals (``scripts/domain.py``), on lymph node and not.

    python bench/domain_check.py --tiles_dir ../shared/data/camelyon16_tiles \\
        --normals_dir ../shared/data/pcam_normals --skin ../shared/data/slides/CMU-1-Small-Region.svs --out OUT

Lymph node: the 32 CAMELYON16 tiles one slide each (35-70 % tumour), the demo slide, and tumour-sparse slides of the
demo tiles with a tumour-free slide of the held-out PCam normals (``tools/sparse_slides.py``). Not lymph node, or
not as the model learned it: the real skin slide, and the demo slide grey, pen-marked, at half and double magnification
and restained with four other dyes (DAB, an IHC-like DAB with light haematoxylin, a trichrome green and a toluidine
blue in place of the eosin). Every group is scored by ``run inference`` with the shipped model and every other
setting at its default; the table gives each group's distances against the shipped ``domain_limit``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from common import BUNDLE
from skimage import color, draw, io, transform

from scripts.datasets import DEMO_TILES
from scripts.domain import DOMAIN_LIMIT
from scripts.pyramid import write_pyramid
from tools.sparse_slides import SLIDE_MPP, build

# Optical-density directions (R, G, B absorbance, unit length) of dyes a lymph-node H&E model never saw
FAST_GREEN = np.array([0.87, 0.18, 0.46])
TOLUIDINE_BLUE = np.array([0.80, 0.55, 0.24])


def restained(h: np.ndarray, e: np.ndarray, dye: np.ndarray) -> np.ndarray:
    """RGB (0-1) of a section whose eosin density is carried by ``dye`` instead, haematoxylin unchanged."""
    stains = np.stack([color.rgb_from_hed[0], dye / np.linalg.norm(dye), color.rgb_from_hed[2]])
    return color.combine_stains(np.stack([h, e, np.zeros_like(h)], -1), stains)


def foreign_variants(demo: np.ndarray, out: Path) -> None:
    """The demo slide as tissue the model did not learn: grey, pen marks, other magnifications, another stain."""
    grey = (color.rgb2gray(demo) * 255).round().astype(np.uint8)
    pen, rng = demo.copy(), np.random.default_rng(0)
    for _ in range(40):  # 25-px strokes of green ink across the section
        r0, c0, r1, c1 = rng.integers(0, min(demo.shape[:2]), 4)
        for offset in range(-12, 13):
            rows, cols = draw.line(r0 + offset, c0, r1 + offset, c1)
            inside = (rows >= 0) & (rows < demo.shape[0]) & (cols >= 0) & (cols < demo.shape[1])
            pen[rows[inside], cols[inside]] = (30, 90, 40)
    hed = color.rgb2hed(demo)
    h, e = hed[..., 0], hed[..., 1]
    variants = {
        "demo_grey": np.repeat(grey[..., None], 3, -1), "demo_pen": pen,
        "demo_half_magnification": transform.rescale(demo, 0.5, channel_axis=-1, anti_aliasing=True) * 255,
        "demo_double_magnification": transform.rescale(demo, 2.0, channel_axis=-1) * 255,
        # other stains: the eosin's optical density given to another dye, the haematoxylin kept
        "demo_dab": color.hed2rgb(np.stack([h, np.zeros_like(h), 1.5 * e], -1)) * 255,  # eosin as DAB brown
        "demo_ihc": color.hed2rgb(np.stack([0.6 * h, np.zeros_like(h), 0.7 * e], -1)) * 255,  # IHC: DAB, light H
        "demo_trichrome": restained(h, e, FAST_GREEN) * 255,  # collagen counterstain green, as Masson's trichrome
        "demo_toluidine": restained(h, e, TOLUIDINE_BLUE) * 255,  # a blue metachromatic dye for the eosin
    }  # fmt: skip
    for name, image in variants.items():
        write_pyramid(out / f"{name}.tif", np.clip(image, 0, 255).round().astype(np.uint8), SLIDE_MPP, levels=2)


def infer(slides: Path, out: Path) -> pd.DataFrame:
    config = str(BUNDLE / "configs" / "inference.json")
    command = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", config,
               "--dataset_dir", str(slides), "--output_dir", str(out)]  # fmt: skip
    with open(out.with_suffix(".log"), "w") as log:
        subprocess.run(command, cwd=BUNDLE.parent, env={**os.environ, "PYTHONPATH": "bundle"}, stdout=log, stderr=log,
                       check=True)  # fmt: skip
    return pd.read_csv(out / "summary.csv", dtype={"slide": str})


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--tiles_dir", type=Path, required=True)
    cli.add_argument("--normals_dir", type=Path, required=True)
    cli.add_argument("--skin", type=Path, required=True, help="CMU-1-Small-Region.svs")
    cli.add_argument("--out", type=Path, required=True)
    args = cli.parse_args()
    groups = {name: args.out / "slides" / name for name in ("tiles", "demo", "sparse", "foreign")}
    if not groups["tiles"].is_dir():
        for folder in groups.values():
            folder.mkdir(parents=True)
        for tile in sorted((args.tiles_dir / "images").glob("*.jpg")):
            write_pyramid(groups["tiles"] / f"tile_{tile.stem}.tif", io.imread(tile), SLIDE_MPP, levels=1)
        demo = tifffile.imread(BUNDLE / "sample_data" / "camelyon16_demo.tif", level=0)
        write_pyramid(groups["demo"] / "camelyon16_demo.tif", demo, SLIDE_MPP, levels=2)
        build(groups["sparse"], args.tiles_dir, DEMO_TILES, args.normals_dir, slides=6, seed=2)
        (groups["foreign"] / "skin.svs").symlink_to(args.skin.resolve())
        foreign_variants(demo, groups["foreign"])
    table = pd.concat([infer(folder, args.out / f"out_{name}").assign(group=name) for name, folder in groups.items()])
    print(f"domain_limit {DOMAIN_LIMIT}: median colour distance of a slide's tissue from the training normals")
    print(table.groupby("group")["domain_distance"].agg(["count", "min", "median", "max"]).round(2).to_string())
    shown = table[(table["group"] == "foreign") | table["out_of_domain"].fillna(False).astype(bool)]
    print(shown[["group", "slide", "status", "domain_distance", "out_of_domain", "error"]].to_string(index=False))


if __name__ == "__main__":
    main()
