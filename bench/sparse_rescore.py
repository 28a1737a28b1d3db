"""Per-slide statistics and z-map smoothing that the bundle does not ship, tried on ``bench/sparse_folds.py``'s output.

    python bench/sparse_rescore.py --out OUT        # the OUT of a finished sparse_folds.py run (mean_std)

Every variant re-derives each slide's z-map from the saved raw patch scores (``patches.csv``), calibrates threshold
and minimum region size on the fold's calibration slides with the bundle's own sweep (``scripts.evaluation``), and
applies them to the fold's test slides, exactly as ``run calibrate`` / ``run evaluate`` do for the shipped statistic.
Prints the mean IoU over the tumour-sparse test slides, its paired difference from ``mean_std`` with the 95 % interval
of resampled slides, the oracle IoU (threshold chosen on each slide's own labels: the ceiling of a score) and the
false regions per tumour-free slide. No inference is rerun: a variant that wins here is then implemented and measured
through the CLI before it becomes a default.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage
from sparse_folds import DRAWS

from scripts.evaluation import SWEEP_THRESHOLDS, Evaluation, SlideResult, best_of, overlap, sweep
from scripts.regions import clean_mask

MIN_REGION_TILES = (1, 2, 3, 5, 8)
FOLDS = ("fold0", "fold1", "fold2", "demo")


def upper_trimmed(quantile: float) -> Callable[[np.ndarray], tuple[float, float]]:
    """Mean and std of the scores at or below ``quantile``: the top of the slide (where tumour is) left out."""

    def statistic(scores: np.ndarray) -> tuple[float, float]:
        kept = scores[scores <= np.quantile(scores, quantile)]
        return float(kept.mean()), float(kept.std())

    return statistic


STATISTICS = {
    "mean_std": lambda s: (float(s.mean()), float(s.std())),
    "median_mad": lambda s: (float(np.median(s)), float(1.4826 * np.median(np.abs(s - np.median(s))))),
    **{f"upper_trimmed_{q:.2f}": upper_trimmed(q) for q in (0.7, 0.8, 0.9, 0.95)},
}


def rescored(slide: SlideResult, statistic: str, sigma: float) -> SlideResult:
    """``slide`` with its z-map recomputed from raw scores, then Gaussian-smoothed over tissue cells (``sigma`` in
    cells; off-tissue cells neither contribute nor receive a value)."""
    rows, cols = slide.cells
    scores = slide.patches["score"].to_numpy()
    centre, spread = STATISTICS[statistic](scores)
    tissue = np.zeros(slide.z_map.shape, dtype=bool)
    tissue[rows, cols] = True
    z_map = np.zeros(slide.z_map.shape)
    z_map[rows, cols] = (scores - centre) / spread
    if sigma > 0:
        weight = ndimage.gaussian_filter(tissue.astype(float), sigma, mode="constant")
        z_map = ndimage.gaussian_filter(z_map, sigma, mode="constant") / np.maximum(weight, 1e-9)
    z_map[~tissue] = np.nan
    return dataclasses.replace(slide, z_map=z_map)


def test_results(folds: dict, statistic: str, sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per tumour slide: IoU at the fold's calibrated setting and oracle IoU; per tumour-free slide: false regions."""
    ious, oracles, false_regions = [], [], []
    for calibration, test in folds.values():
        best = best_of(sweep([rescored(s, statistic, sigma) for s in calibration], SWEEP_THRESHOLDS, MIN_REGION_TILES))
        threshold, tiles = float(best["z_threshold"]), int(best["min_region_tiles"])
        for slide in (rescored(s, statistic, sigma) for s in test):
            labels = slide.patches["label"].to_numpy()
            if labels.any():
                ious.append(overlap(slide.predict(threshold, tiles), labels)["iou"])
                oracles.append(sweep([slide], SWEEP_THRESHOLDS, MIN_REGION_TILES)["mean_iou"].max())
            else:
                false_regions.append(ndimage.label(clean_mask(slide.z_map, threshold, tiles))[1])
    return np.array(ious), np.array(oracles), np.array(false_regions)


def paired_interval(difference: np.ndarray) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    draws = [difference[rng.integers(0, len(difference), len(difference))].mean() for _ in range(DRAWS)]
    return tuple(np.percentile(draws, [2.5, 97.5]))


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--out", type=Path, required=True, help="the OUT of bench/sparse_folds.py")
    cli.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.7, 1.0, 1.5], help="smoothing, in cells")
    args = cli.parse_args()
    folds = {
        fold: tuple(Evaluation(args.out / fold / f"{part}_mean_std", args.out / fold / part).slides()
                    for part in ("cal", "test"))
        for fold in FOLDS
    }  # fmt: skip
    baseline, _, _ = test_results(folds, "mean_std", 0.0)
    header = f"{'statistic':<22}{'sigma':>6}{'mean IoU':>10}{'minus mean_std [95% CI]':>32}"
    print(f"{header}{'oracle':>8}{'false regions':>15}")
    for statistic in STATISTICS:
        for sigma in args.sigmas if statistic == "mean_std" else [0.0]:
            ious, oracles, false_regions = test_results(folds, statistic, sigma)
            low, high = paired_interval(ious - baseline)
            print(f"{statistic:<22}{sigma:>6.1f}{ious.mean():>10.3f}{ious.mean() - baseline.mean():>+14.3f} "
                  f"[{low:+.3f}, {high:+.3f}]{oracles.mean():>8.3f}{false_regions.mean():>15.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
