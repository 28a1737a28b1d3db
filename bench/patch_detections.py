"""How large ``patches.geojson`` (``--patch_detections True``) is on a slide, beside the slide's other outputs, and how
long its writer takes.

    python bench/patch_detections.py SLIDE

Runs inference as inference.json configures it, with patch detections on, and times each writer.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from common import BUNDLE, machine
from monai.bundle import ConfigParser


class TimedWriter:
    def __init__(self, writer) -> None:
        self.writer, self.seconds = writer, 0.0

    def __call__(self, result, folder) -> None:
        start = time.perf_counter()
        self.writer(result, folder)
        self.seconds = time.perf_counter() - start


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("slide")
    args = cli.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(tempfile.mkdtemp(prefix="skip96_detections_"))
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "inference.json")
    parser.update({"dataset": [str(Path(args.slide).resolve())], "output_dir": str(out), "patch_detections": True})
    runner = parser.get_parsed_content("runner")
    runner.writers = [TimedWriter(writer) for writer in runner.writers]
    n = int(runner.run().loc[0, "n_patches"])
    folder = out / Path(args.slide).stem
    print(f"machine: {machine()}")
    print(f"slide {args.slide}: {n} patches")
    print(f"{'writer':<20}{'seconds':>10}")
    for writer in runner.writers:
        print(f"{type(writer.writer).__name__:<20}{writer.seconds:>10.2f}")
    print(f"{'file':<20}{'MB':>10}{'bytes a patch':>15}")
    for path in sorted(folder.iterdir()):
        size = path.stat().st_size
        print(f"{path.name:<20}{size / 2**20:>10.2f}{size / n:>15.1f}")


if __name__ == "__main__":
    main()
