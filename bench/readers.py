"""Patch read rate of MONAI's WSIReader backends on the same tissue grid of one slide.

    python bench/readers.py SLIDE [--repeats 3]

The grid is the one inference uses (``slide_patches`` at inference.json's target µm/px); each backend opens the slide
and reads every patch of it ``repeats`` times with ``WSIReader.get_data``, the call MONAI's ``PatchWSIDataset``
makes. The fastest reader on real slides is the default ``wsi_reader``.
"""

from __future__ import annotations

import argparse
import time

from common import BUNDLE, machine
from monai.bundle import ConfigParser

from scripts.wsi import READERS, make_reader, slide_patches


def read_rate(slide: str, backend: str, samples: list[dict], repeats: int) -> float:
    reader = make_reader(backend)
    wsi = reader.read(slide)
    start = time.perf_counter()
    for _ in range(repeats):
        for s in samples:
            reader.get_data(wsi, location=s["location"], size=s["size"], level=s["level"])
    return repeats * len(samples) / (time.perf_counter() - start)


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("slide")
    cli.add_argument("--repeats", type=int, default=3)
    cli.add_argument("--assume_mpp", type=float, default=None, help="for slides that record no pixel size")
    args = cli.parse_args()
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "inference.json")
    grid = {k: parser.get_parsed_content(k) for k in ("target_mpp", "patch_size", "stride", "min_tissue")}
    samples, geometry, _ = slide_patches(args.slide, make_reader("cuCIM"), assume_mpp=args.assume_mpp, **grid)
    rates = {backend: read_rate(args.slide, backend, samples, args.repeats) for backend in READERS}
    print(f"machine: {machine()}")
    print(f"slide {args.slide}: {len(samples)} patches of {geometry.read_size} px at level {geometry.level}")
    print(f"{'reader':<14}{'patches/s':>12}{'vs fastest':>12}")
    best = max(rates.values())
    for backend, rate in sorted(rates.items(), key=lambda item: -item[1]):
        print(f"{backend:<14}{rate:>12.1f}{rate / best:>12.2f}")


if __name__ == "__main__":
    main()
