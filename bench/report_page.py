"""How large ``report.html`` is for a cohort of 130 slides, how long it takes to write and rewrite, and how long a
browser takes to open it (goal: under 20 MB and 2 s).

    python bench/report_page.py [--slides 130]

Each slide folder gets an overlay drawn by the bundle's own ``save_heatmap`` (1000 px wide, as inference draws it) on
a tissue-like thumbnail of a CAMELYON16 slide's shape; one slide failed; the evaluation part holds its four figures.
The page is opened from its file in headless Chromium; the time is the navigation's ``loadEventEnd``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import machine

from scripts.heatmap import Outlined, save_heatmap
from scripts.lesions import FROC_FP_RATES, FrocCurve
from scripts.operating_point import operating_point
from scripts.report import CohortReport, EvaluatedCohort
from scripts.slide_outputs import SUMMARY_COLUMNS

LOAD_TIME = "<script>addEventListener('load', () => setTimeout(() => console.log('LOADED ' + "
LOAD_TIME += "performance.getEntriesByType('navigation')[0].loadEventEnd)))</script>"


def cohort(folder: Path, n: int, rng: np.random.Generator) -> tuple[pd.DataFrame, EvaluatedCohort]:
    """``n`` slide folders with their overlays, the summary inference would write, and what evaluation would add."""
    rows, measured = [], []
    for k in range(n):
        slide = f"slide_{k:03d}"
        (folder / slide).mkdir()
        grid = (int(rng.integers(60, 120)), int(rng.integers(120, 240)))  # 96-px cells at 0.97 µm/px, CAMELYON16-like
        thumbnail = (rng.normal(190, 25, (grid[0] * 4, grid[1] * 4, 3)).clip(0, 255)).astype(np.uint8)
        z_map = rng.normal(0, 1, grid)
        z_map[rng.random(grid) < 0.3] = np.nan  # glass
        called = np.nan_to_num(z_map) > 2.5
        save_heatmap(folder / slide / "overlay.png", thumbnail, 96, z_map, 384, 0.243, 2.5,
                     [Outlined(called, 384, (0.835, 0.369, 0.0, 1.0), "called")], slide)  # fmt: skip
        failed = k == n // 2
        rows.append({"slide": slide, "path": f"/data/{slide}.tif", "status": "error" if failed else "ok",
                     "error": f"/data/{slide}.tif: not a slide: a .tif file must be a TIFF." if failed else "",
                     **({} if failed else {"n_patches": int(np.isfinite(z_map).sum()), "tissue_mm2": 40.0,
                        "tumour_mm2": float(called.sum()) * 0.0087, "n_regions": int(called.any()),
                        "slide_score": float(rng.normal(1, 0.5)), "domain_distance": float(rng.uniform(1, 6)),
                        "out_of_domain": False, "seconds": 200.0})})  # fmt: skip
        if not failed:
            measured.append({"slide": slide, "slide_label": k % 3 == 0, "tumour_fraction": 0.01 * (k % 3 == 0),
                             "iou": float(rng.uniform(0, 0.5)), "slide_score": rows[-1]["slide_score"]})  # fmt: skip
    slides = pd.DataFrame(measured)
    lesions = pd.DataFrame({"diameter_um": rng.uniform(200, 8000, 90), "found": rng.random(90) < 0.4})
    point = operating_point(36, 90, np.zeros(80), np.ones(len(slides)), np.ones(len(slides)), np.ones(len(slides)))
    metrics = {
        "froc": {"score": 0.3, "sensitivity_at_thresholds": [0.3] * len(FROC_FP_RATES)},
        "called_area": {"pixel_recall": 0.1, "pixel_precision": 0.2},
        "slide_level": {"auc": 0.7, "n_tumour": 43, "n_normal": 86},
        "operating_point": point,
        "pooled": {"auc": 0.7, "pr_auc": 0.05},
        "mean_iou": 0.1,
        "oracle": {"mean_iou": 0.2},
        "threshold": {"z_threshold": 2.5, "min_region_tiles": 2, "score_floor": None, "calibrated": True},
        "slides_failed_inference": [rows[n // 2]["slide"]],
    }
    fps = np.sort(rng.uniform(0, 20, 400))[::-1]
    froc = FrocCurve(fps, np.linspace(1, 0, 400) ** 2, 90)
    return pd.DataFrame(rows).reindex(columns=SUMMARY_COLUMNS), EvaluatedCohort(metrics, slides, lesions, froc)


def load_seconds(page: Path, chromium: str) -> float:
    """Navigation start to the load event, opening ``page`` from its file."""
    timed = page.with_name("timed.html")
    timed.write_text(page.read_text().replace("</body>", LOAD_TIME + "</body>"))
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
         "--window-size=1280,1000", "--dump-dom", timed.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return float(re.search(r"LOADED ([\d.]+)", result.stderr).group(1)) / 1000


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--slides", type=int, default=130)
    args = cli.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    folder = Path(tempfile.mkdtemp(prefix="skip96_report_"))
    table, evaluated = cohort(folder, args.slides, np.random.default_rng(0))
    report = CohortReport(folder)
    timings = {}
    start = time.perf_counter()
    report.write(table, {"score": "latent", "z_threshold": 2.5})
    timings["first write (thumbnails made)"] = time.perf_counter() - start
    rewrites = []
    for _ in range(5):
        start = time.perf_counter()
        report.write(table, {"score": "latent", "z_threshold": 2.5})
        rewrites.append(time.perf_counter() - start)
    timings["rewrite after a slide (median of 5)"] = statistics.median(rewrites)
    start = time.perf_counter()
    report.write_evaluation(evaluated)
    timings["write with evaluation"] = time.perf_counter() - start
    page = folder / "report.html"
    print(f"machine: {machine()}")
    overlays_mb = sum(p.stat().st_size for p in folder.glob("*/overlay.png")) / 2**20
    print(f"cohort: {args.slides} slides (one failed); their overlays {overlays_mb:.1f} MB in all, not in the page")
    print(f"{'measure':<42}{'value':>12}")
    for name, seconds in timings.items():
        print(f"{name:<42}{seconds:>11.3f}s")
    print(f"{'page size':<42}{page.stat().st_size / 2**20:>10.2f}MB")
    if chromium is None:
        print("open in a browser: not measured (no Chromium on this machine)")
    else:
        opened = [load_seconds(page, chromium) for _ in range(3)]
        print(f"{'open in headless Chromium (median of 3)':<42}{statistics.median(opened):>11.3f}s")
    print("goal: under 20 MB, open in under 2 s")
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
