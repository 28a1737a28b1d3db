"""Peak memory of whole-slide inference on synthetic CAMELYON16-sized slides of two sizes.

    python bench/memory.py [--work_dir DIR] [--sizes 50000x25000 100000x50000]

Each slide is a pyramidal JPEG TIFF at 0.243 µm/px with tissue in a few discs, written tile by tile from a generator
(the full image never exists in memory). ``run inference`` then scores it in a child process (2 DataLoader workers,
as inference.json sets), and the resident memory of that process and all its workers together is sampled every
0.2 s (and the main process's alone: the workers only read). Peak memory must not grow with slide size.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
from common import BUNDLE, machine
from PIL import Image

TILE = 512
MPP = 0.243
# tissue discs as (centre y, centre x, radius), in fractions of the slide height
DISCS = ((0.3, 0.4, 0.15), (0.6, 1.1, 0.2), (0.5, 1.6, 0.1))


def tissue_tiles(height: int, width: int, tissue: np.ndarray, glass: np.ndarray) -> Iterator[np.ndarray]:
    """Tiles of one level in row-major order, tissue inside the discs and glass outside, decided per pixel in
    coordinates relative to the slide height, so that every pyramid level shows the same discs (a tile on a disc's
    edge is cut along it)."""
    offsets = np.arange(TILE) + 0.5
    for y in range(0, height, TILE):
        for x in range(0, width, TILE):
            top, left, bottom, right = y / height, x / height, (y + TILE) / height, (x + TILE) / height
            nearest = [np.hypot(np.clip(dy, top, bottom) - dy, np.clip(dx, left, right) - dx) for dy, dx, _ in DISCS]
            farthest = [np.hypot(max(dy - top, bottom - dy), max(dx - left, right - dx)) for dy, dx, _ in DISCS]
            if all(d >= r for d, (_, _, r) in zip(nearest, DISCS, strict=True)):
                yield glass
            elif any(d < r for d, (_, _, r) in zip(farthest, DISCS, strict=True)):
                yield tissue
            else:  # on a disc's edge
                cy, cx = (y + offsets[:, None]) / height, (x + offsets[None, :]) / height
                inside = np.any([(cy - dy) ** 2 + (cx - dx) ** 2 < r**2 for dy, dx, r in DISCS], axis=0)
                yield np.where(inside[..., None], tissue, glass)


def pillow_jpeg(data: np.ndarray, level: int | None = None, **_: object) -> bytes:
    """A baseline JPEG of one tile (YCbCr 4:2:0, as Aperio and CAMELYON16 scanners store them) from Pillow."""
    buffer = io.BytesIO()
    Image.fromarray(data).save(buffer, "JPEG", quality=level or 90, subsampling="4:2:0")
    return buffer.getvalue()


def encode_jpeg_without_imagecodecs() -> None:
    """tifffile encodes JPEG tiles with imagecodecs; where that is missing (the GPU machine's image lacks it, and its
    wheel would not fit the carried tree), Pillow encodes them, through tifffile's table of encoders."""
    try:
        import imagecodecs  # noqa: F401
    except ImportError:
        tifffile.TIFF.COMPRESSORS._codecs[tifffile.COMPRESSION.JPEG] = pillow_jpeg


def write_slide(path: Path, height: int, width: int) -> Path:
    """H&E-like tissue: each pixel mixes a haematoxylin and an eosin absorbance with random concentrations, so the
    slide's Macenko fit sees two stains, as on a real slide."""
    rng = np.random.default_rng(0)
    concentrations = rng.gamma(2.0, 0.4, size=(2, TILE * TILE))
    rgb = 240 * np.exp(-np.array([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]]) @ concentrations)
    tissue = rgb.T.reshape(TILE, TILE, 3).clip(0, 255).astype(np.uint8)
    glass = np.full((TILE, TILE, 3), 245, np.uint8)
    encode_jpeg_without_imagecodecs()
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        level = 0
        while max(height, width) >> level >= 2048:
            h, w = height >> level, width >> level
            px_per_cm = 1e4 / (MPP * 2**level)
            tif.write(
                tissue_tiles(h, w, tissue, glass), shape=(h, w, 3), dtype=np.uint8, tile=(TILE, TILE),
                photometric="ycbcr", subsampling=(2, 2), compression="jpeg", subfiletype=0 if level == 0 else 1,
                resolution=(px_per_cm, px_per_cm), resolutionunit="CENTIMETER",
            )  # fmt: skip
            level += 1
    return path


def tree_rss(pid: int) -> tuple[int, int]:
    """Resident bytes of a process alone and with its descendants, from /proc."""
    main, total, pending = 0, 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            rss = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) * 1024
            total += rss
            if current == pid:
                main = rss
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return main, total


def peak_inference_rss(slide_dir: Path, output_dir: Path) -> tuple[int, int, float, str]:
    """Peak resident bytes of the inference process alone and with its workers, seconds, and its patch count."""
    command = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file",
               str(BUNDLE / "configs" / "inference.json"), "--dataset_dir", str(slide_dir),
               "--output_dir", str(output_dir), "--overwrite", "True"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(BUNDLE)}
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak_main, peak = 0, 0
    while process.poll() is None:
        main, total = tree_rss(process.pid)
        peak_main, peak = max(peak_main, main), max(peak, total)
        time.sleep(0.2)
    seconds = time.perf_counter() - start
    rows = list(csv.DictReader((output_dir / "summary.csv").open())) if process.returncode == 0 else []
    n_patches = rows[0]["n_patches"] if rows else f"rc {process.returncode}"
    return peak_main, peak, seconds, n_patches


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--work_dir", type=Path, default=None)
    cli.add_argument("--sizes", nargs="+", default=["50000x25000", "100000x50000"], help="WIDTHxHEIGHT at level 0")
    args = cli.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="skip96_memory_"))
    rows = []
    for size in args.sizes:
        width, height = (int(v) for v in size.split("x"))
        slide_dir = work / size
        slide_dir.mkdir(parents=True, exist_ok=True)
        slide = slide_dir / "synthetic.tif"
        start = time.perf_counter()
        if not slide.is_file():
            write_slide(slide, height, width)
        written = time.perf_counter() - start
        peak_main, peak, seconds, n_patches = peak_inference_rss(slide_dir, work / f"out_{size}")
        rows.append((size, slide.stat().st_size, written, n_patches, seconds, peak_main, peak))
    print(f"machine: {machine()}")
    header = f"{'level-0 size':<16}{'file MB':>9}{'write s':>9}{'patches':>9}{'infer s':>9}"
    print(f"{header}{'peak RSS MB':>13}{'main alone':>12}")
    for size, file_bytes, written, n_patches, seconds, peak_main, peak in rows:
        print(
            f"{size:<16}{file_bytes / 2**20:>9.0f}{written:>9.0f}{n_patches:>9}{seconds:>9.0f}"
            f"{peak / 2**20:>13.0f}{peak_main / 2**20:>12.0f}"
        )


if __name__ == "__main__":
    main()
