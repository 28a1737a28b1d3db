"""False regions of the shipped model and calibration on tumour-free slides of tissue neither has seen.

    python bench/unseen_tumour_free.py --tiles_dir ../shared/data/camelyon16_tiles \\
        --normals_dir ../shared/data/pcam_normals --skin ../shared/data/slides/CMU-1-Small-Region.svs --out OUT

Tumour-free slides (``tools/sparse_slides.py``, ``--seed`` 3) from the normal tissue of the demo slide's 8 tiles (never
trained on) and the PatchCamelyon normals that training holds out (the shipped calibration was made on the others),
and the real skin slide, are scored by ``run inference`` with every setting at its default; each region on them is a
false alarm. Prints the regions and called mm² of each slide and the rate per slide with its exact 95 % interval,
against the calibration's target.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
from common import BUNDLE

from scripts.datasets import DEMO_TILES
from scripts.metrics import rate_interval
from tools.sparse_slides import SOURCES, build


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--tiles_dir", type=Path, required=True)
    cli.add_argument("--normals_dir", type=Path, required=True)
    cli.add_argument("--skin", type=Path, help="a real slide of another organ, tumour-free")
    cli.add_argument("--out", type=Path, required=True)
    cli.add_argument("--slides", type=int, default=12, help="tumour-free slides to build")
    cli.add_argument("--seed", type=int, default=3)
    args = cli.parse_args()
    slides = args.out / "slides"
    if not slides.is_dir():
        build(slides, args.tiles_dir, list(DEMO_TILES), args.normals_dir, slides=0, seed=args.seed,
              normal_slides=args.slides, normals_part="held_out")  # fmt: skip
    if args.skin:
        (slides / args.skin.name).unlink(missing_ok=True)
        (slides / args.skin.name).symlink_to(args.skin.resolve())
    command = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file",
               str(BUNDLE / "configs" / "inference.json"), "--dataset_dir", str(slides), "--output_dir",
               str(args.out / "scored")]  # fmt: skip
    with open(args.out / "inference.log", "w") as log:
        subprocess.run(command, cwd=BUNDLE.parent, env={**os.environ, "PYTHONPATH": "bundle"}, stdout=log, stderr=log,
                       check=True)  # fmt: skip
    summary = pd.read_csv(args.out / "scored" / "summary.csv", dtype={"slide": str})
    tissue = pd.read_csv(slides / SOURCES, dtype=str).set_index("slide")["tissue"]
    summary["tissue"] = [tissue.get(s, "real slide") for s in summary["slide"]]
    summary["regions"] = [
        len(json.loads((args.out / "scored" / s / "regions.geojson").read_text())["features"]) for s in summary["slide"]
    ]
    calibration = json.loads((BUNDLE / "models" / "calibration.json").read_text())
    print(
        f"shipped calibration: z {calibration['z_threshold']:.2f} / {calibration['min_region_tiles']} patches, "
        f"target {calibration['operating_point']['target_false_regions']} false regions per tumour-free slide\n"
    )
    print(summary[["slide", "tissue", "n_patches", "regions", "tumour_mm2", "domain_distance", "out_of_domain"]]
          .to_string(index=False))  # fmt: skip
    for name, group in [("all", summary), *summary.groupby("tissue")]:
        low, high = rate_interval(int(group["regions"].sum()), len(group))
        print(f"{name:12} {len(group):2} slides: {group['regions'].mean():.3f} false regions a slide "
              f"(exact 95 % [{low:.2f}, {high:.2f}]), {group['tumour_mm2'].mean():.4f} mm² a slide")  # fmt: skip


if __name__ == "__main__":
    main()
