"""Peak memory of whole-slide inference on synthetic CAMELYON16-like slides of several sizes.

    python bench/memory.py [--work_dir DIR] [--sizes 50000x25000 100000x50000 200000x100000] [--tiles_dir DIR]

Each slide is a pyramidal JPEG TIFF at 0.243 µm/px (``synthetic_slide.py``). ``run inference`` then scores it in a
child process, as inference.json configures it, and the resident memory of that process and all its children
together is sampled every 0.2 s (and the main process's alone). Peak memory must not grow with slide size.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import BUNDLE, machine
from synthetic_slide import write_slide


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
    cli.add_argument("--sizes", nargs="+", default=["50000x25000", "100000x50000", "200000x100000"],
                     help="WIDTHxHEIGHT at level 0")  # fmt: skip
    cli.add_argument("--tiles_dir", type=Path, default=None, help="real ~1 µm/px tiles (images/*.jpg) as tissue")
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
            write_slide(slide, height, width, args.tiles_dir)
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
