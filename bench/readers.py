"""Patch read rate of MONAI's WSIReader backends on the same tissue grid of one slide.

    python bench/readers.py SLIDE [--repeats 3]

The grid is the one inference uses (``slide_tiling`` at inference.json's target µm/px); each backend reads every
patch of it ``repeats`` times through the dataset inference streams from (``block_dataset``: MONAI's
``PatchWSIDataset``, which reopens OpenSlide files for every read), once patch by patch (``read_block`` 1) and once
in blocks of inference.json's ``read_block``.
"""

from __future__ import annotations

import argparse
import time

from common import BUNDLE, machine
from monai.bundle import ConfigParser

from scripts.patch_stream import block_dataset
from scripts.tiling import slide_tiling
from scripts.wsi import READERS, make_reader


def read_rate(slide: str, backend: str, patches, geometry, read_block: int, repeats: int) -> float:
    dataset = block_dataset(make_reader(backend), slide, patches, geometry, read_block)
    start = time.perf_counter()
    for _ in range(repeats):
        n = sum(len(block) for block in dataset)
    return repeats * n / (time.perf_counter() - start)


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("slide")
    cli.add_argument("--repeats", type=int, default=3)
    cli.add_argument("--readers", nargs="+", default=list(READERS), help="tifffile: minutes on big slides")
    cli.add_argument("--assume_mpp", type=float, default=None, help="for slides that record no pixel size")
    args = cli.parse_args()
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "inference.json")
    grid = {k: parser.get_parsed_content(k) for k in ("target_mpp", "patch_size", "stride", "min_tissue")}
    tiling = slide_tiling(args.slide, make_reader("cuCIM"), assume_mpp=args.assume_mpp, **grid)
    patches, geometry = tiling.patches, tiling.geometry
    blocks = parser.get_parsed_content("read_block")
    rates = {
        backend: [read_rate(args.slide, backend, patches, geometry, n, args.repeats) for n in (1, blocks)]
        for backend in args.readers
    }
    print(f"machine: {machine()}")
    print(f"slide {args.slide}: {len(patches)} patches of {geometry.read_size} px at level {geometry.level}")
    print(f"{'reader':<14}{'per patch, /s':>16}{f'{blocks}x{blocks} blocks, /s':>20}")
    for backend, (single, block) in sorted(rates.items(), key=lambda item: -item[1][1]):
        print(f"{backend:<14}{single:>16.1f}{block:>20.1f}")


if __name__ == "__main__":
    main()
