"""Scores, per-slide statistics and z-map smoothing that the bundle does not ship, tried on ``bench/sparse_folds.py``'s
slides and calibrated exactly as the bundle calibrates its own.

    python bench/sparse_rescore.py --out OUT --folds FOLDS [--ckpt bundle/models/model.pt] \
        [--tiles_dir ../shared/data/camelyon16_tiles]

``OUT`` is a finished ``sparse_folds.py`` run (``mean_std``), ``FOLDS`` the fold models it used. Every variant gives
each fold slide a new z-map: from the saved raw patch scores (``patches.csv``) under another per-slide statistic or
smoothed, or from a slide-relative score: the mean distance of a patch's descriptor (its whitened latent mean, or
the slide-standardised channel statistics of the encoder's 48-px feature map) to its ``k`` nearest other patches of
the same slide, ignoring those within ``radius`` cells and, in a second row, those that share pixels with it (the
patches are re-encoded with the fold's model; the slides are flat 96-px grids at level 0). The second row matters
on slides built before 0.9.0, which drew every cell from the overlapping crops of all the tiles, so most normal cells
had an overlapping copy somewhere on their slide and tumour cells seldom did, which a within-slide density score
rewards; since 0.9.0 copies lie within the same 4 x 4 block of cells (the script prints how many cells share). With
``--tiles_dir`` the same 48-px descriptor is also scored against the tumour-free crops of the fold's training tiles
(k nearest), which no within-slide density can touch, and the script counts the tumour-free crops the tiles hold
without overlap (what a slide without repeated tissue could be built from). One model-free row, the reversed std of
optical density, shows what a one-number stain statistic does on the same slides.
Threshold and minimum region size are then chosen on the fold's calibration slides with the bundle's own sweep and
applied to its test slides, as ``run calibrate`` / ``run evaluate`` do. Prints per variant the mean IoU over the
tumour-sparse test slides, its paired difference from the shipped score with the 95 % interval of resampled slides,
the oracle IoU (threshold chosen on each slide's own labels: the ceiling of a score), the false regions per
tumour-free slide and the pooled patch AUC (mean over folds). A second table gives the patch AUC on the tumour-sparse
test slides reduced to cells that share no pixels. A variant that wins here is then implemented and measured through
the CLI.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tifffile
import torch
from common import BUNDLE
from detection_quality import tile_folds
from scipy import ndimage, stats
from sparse_folds import DRAWS

from scripts.datasets import DEMO_TILES, crop_corners, read_tile, tile_names
from scripts.evaluation import SWEEP_THRESHOLDS, Evaluation, SlideResult, best_of, sweep
from scripts.metrics import overlap, roc_auc
from scripts.model_files import load_network, read_normal_stats
from scripts.network import Skip96VAE
from scripts.regions import clean_mask
from scripts.sparse_slides import disjoint_crops
from scripts.stain import StainNormalizer
from scripts.transforms import ChannelStats, PrepareSlideBatch

MIN_REGION_TILES = (1, 2, 3, 5, 8)
Corners = tuple[tuple[int, int], ...]  # a slide's cells as (x, y) level-0 corners, hashable for the caches
Scorer = Callable[[SlideResult, str, Path], np.ndarray]  # (slide, part, model) -> raw score per patch


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


def saved_scores(slide: SlideResult, part: str, model: Path) -> np.ndarray:
    return slide.patches["score"].to_numpy()


def standardised(features: np.ndarray) -> np.ndarray:
    """Each feature minus its median over the rows, over 1.4826 x its MAD: a slide's (or tile's) own scale."""
    median = np.median(features, 0)
    return (features - median) / (1.4826 * np.median(np.abs(features - median), 0) + 1e-6)


@functools.cache
def model_parts(model: Path) -> tuple[torch.nn.Module, ChannelStats, np.ndarray]:
    """The network, its channel statistics and the whitening matrix of its latent Gaussian, read once per model."""
    precision = read_normal_stats(model)["latent_stats"]["precision"].double().numpy()
    return load_network(Skip96VAE(), model, "cpu"), ChannelStats.from_checkpoint(model), np.linalg.cholesky(precision)


def descriptors(patches: np.ndarray, model: Path) -> dict[str, np.ndarray]:
    """Two descriptors of each patch of one slide (or tile) from the model, as inference prepares patches (Macenko
    fitted on up to 64 of them, channel normalisation): ``latent``, the latent mean whitened by the training
    Gaussian's precision (distances are Mahalanobis), and ``skip48``, the channel means and stds of the encoder's
    48-px feature map, standardised over the patches given."""
    network, norm_stats, whitening = model_parts(model)
    stain = StainNormalizer("slide")
    chosen = np.random.default_rng(0).choice(len(patches), min(64, len(patches)), replace=False)
    stain.fit_slide(list(patches[chosen]))
    with torch.inference_mode():
        batch = torch.from_numpy(patches).permute(0, 3, 1, 2).contiguous()
        mu, _, skips = network.encode(PrepareSlideBatch(stain, norm_stats)({"image": batch}, "cpu")[0])
    skip48 = torch.cat([skips[1].mean((2, 3)), skips[1].std((2, 3))], 1).double().numpy()
    return {"latent": mu.flatten(1).double().numpy() @ whitening, "skip48": standardised(skip48)}


def slide_file(out: Path, fold: str, part: str, slide: SlideResult) -> tuple[Path, Corners]:
    """A sparse slide's file and its scored cells as hashable (x, y) level-0 corners: the key of the caches below."""
    return out / fold / part / f"{slide.slide_id}.tif", tuple(map(tuple, slide.patches[["x", "y"]].to_numpy().tolist()))


@functools.cache
def cell_patches(path: Path, corners: Corners) -> np.ndarray:
    """The 96-px cells at ``corners`` of a flat sparse slide (level 0), read once per slide."""
    image = tifffile.imread(path, level=0)
    return np.stack([image[y : y + 96, x : x + 96, :3] for x, y in corners])


@functools.cache
def slide_descriptors(path: Path, corners: Corners, model: Path) -> dict[str, np.ndarray]:
    """``descriptors`` of a slide's cells, computed once per slide and model whichever variants ask."""
    return descriptors(cell_patches(path, corners), model)


@functools.cache
def shared_pixels(path: Path, corners: Corners, block: int = 16, tolerance: float = 4.0) -> np.ndarray:
    """Which cells of a slide share pixels: ``sparse_slides.py`` cuts its cells from the tiles on a 16-px grid, so two
    overlapping crops of one tile hold the same 16-px blocks. Cell i's central block is looked up among every cell's
    blocks at the offsets it can have in an overlapping crop (mean absolute difference below ``tolerance`` grey levels,
    which the slide's JPEG leaves)."""
    patches = cell_patches(path, corners).astype(np.float32)
    size = patches.shape[1]
    centre = (size - block) // 2
    offsets = range(centre % block, size - block + 1, block)
    blocks = np.stack([p[y : y + block, x : x + block].reshape(-1) for p in patches for y in offsets for x in offsets])
    owner = np.repeat(np.arange(len(patches)), len(offsets) ** 2)
    shared = np.zeros((len(patches), len(patches)), bool)
    for n, patch in enumerate(patches):
        difference = np.abs(blocks - patch[centre : centre + block, centre : centre + block].reshape(-1)).mean(1)
        shared[n, owner[difference < tolerance]] = True
    return shared | shared.T


def normal_bank(tiles_dir: Path, tiles: list[str], model: Path) -> np.ndarray:
    """``skip48`` of the tumour-free crops (32-px grid) of the model's training tiles, each tile standardised over
    its own normal crops, as a slide is over its mostly normal tissue."""
    bank = []
    for name in tiles:
        image, mask = read_tile(tiles_dir, f"{name}.jpg", 96)
        normal, _ = crop_corners(image, mask, 96, 32, 0.5)
        if len(normal) >= 8:
            bank.append(descriptors(np.stack([image[y : y + 96, x : x + 96] for y, x in normal]), model)["skip48"])
    return np.concatenate(bank)


def disjoint_normal_crops(tiles_dir: Path, tiles: list[str], seed: int = 0) -> int:
    """How many tumour-free 96-px crops of ``tiles`` (16-px grid, as ``sparse_slides.py`` cuts them) fit without
    sharing pixels, packed greedily in a random order: the normal cells a slide could hold without repeating tissue."""
    rng, count = np.random.default_rng(seed), 0
    for name in tiles:
        normal = crop_corners(*read_tile(tiles_dir, f"{name}.jpg", 96), 96, 16, 0.5)[0]
        count += len(disjoint_crops(np.column_stack([np.zeros(len(normal), int), normal]), rng))
    return count


def bank_knn(k: int, bank: np.ndarray, out: Path, fold: str) -> Scorer:
    """Mean distance of a patch's ``skip48`` to its ``k`` nearest training normals: the same descriptor as the
    slide-relative kNN without any within-slide density."""

    def scores(slide: SlideResult, part: str, model: Path) -> np.ndarray:
        x = slide_descriptors(*slide_file(out, fold, part, slide), model)["skip48"]
        return np.sort(np.sqrt(((x[:, None] - bank[None]) ** 2).sum(-1)), axis=1)[:, :k].mean(1)

    return scores


def pixel_sharing_report(folds: dict, out: Path) -> None:
    """How many tumour and normal cells of the test slides share pixels with another cell of their slide, and with one
    more than 3 cells away (what a within-slide score with a 4-cell exclusion would meet)."""
    counts = {(label, far): [] for label in (True, False) for far in (False, True)}
    for fold, (_, _, test) in folds.items():
        for slide in test:
            shared = shared_pixels(*slide_file(out, fold, "test", slide)) & ~np.eye(len(slide.patches), dtype=bool)
            grid = np.stack(slide.cells, axis=1)
            far = np.abs(grid[:, None] - grid[None]).max(-1) > 3
            for label, near_count, far_count in zip(
                slide.patches["label"].to_numpy().astype(bool), shared.sum(1), (shared & far).sum(1), strict=True
            ):
                counts[label, False].append(near_count)
                counts[label, True].append(far_count)
    for label, name in ((False, "normal"), (True, "tumour")):
        for far, where in ((False, "another cell of their slide"), (True, "a cell more than 3 cells away")):
            values = np.array(counts[label, far])
            print(f"test-slide {name} cells sharing pixels with {where}: {(values > 0).mean():.0%} "
                  f"({values.mean():.1f} partners on average, {len(values)} cells)")  # fmt: skip


def slide_knn(feature: str, k: int, radius: int, exclude_shared: bool, out: Path, fold: str) -> Scorer:
    """Mean distance of a patch's ``feature`` to its ``k`` nearest patches of the same slide, ignoring those within
    ``radius`` cells and, with ``exclude_shared``, those sharing pixels with it."""

    def scores(slide: SlideResult, part: str, model: Path) -> np.ndarray:
        key = slide_file(out, fold, part, slide)
        ignored = shared_pixels(*key) if exclude_shared else None
        return knn_distance(slide_descriptors(*key, model)[feature], np.stack(slide.cells, axis=1), k, radius, ignored)

    return scores


def knn_distance(x: np.ndarray, grid: np.ndarray, k: int, radius: int, ignored: np.ndarray | None) -> np.ndarray:
    """Mean distance of each row of ``x`` to its ``k`` nearest other rows, ignoring those within ``radius`` cells
    (``grid``: each row's (row, col) cell) and the pairs marked in ``ignored``."""
    distances = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    distances[np.abs(grid[:, None] - grid[None]).max(-1) <= radius] = np.inf  # itself, and its neighbours
    if ignored is not None:
        distances[ignored] = np.inf
    return np.sort(distances, axis=1)[:, :k].mean(1)


def pixel_disjoint(shared: np.ndarray, seed: int = 0) -> np.ndarray:
    """A maximal set of a slide's cells of which no two share pixels, taken greedily in a random order that does not
    look at labels: the slide as it would be had its builder never repeated tissue."""
    kept, blocked = np.zeros(len(shared), bool), np.zeros(len(shared), bool)
    for cell in np.random.default_rng(seed).permutation(len(shared)):
        if not blocked[cell]:
            kept[cell] = True
            blocked |= shared[cell]
    return kept


def disjoint_auc_table(folds: dict, out: Path, radii: list[int]) -> None:
    """Patch AUC on the tumour-sparse test slides reduced to ``pixel_disjoint`` cells, where within-slide density
    can no longer reward repeated crops: the shipped score, the reversed std of OD and the slide-relative kNN
    (k 5 among the kept cells). Per fold (slides pooled, each z-scored over its kept cells), the mean over folds, and
    the mean per-slide AUC difference from the shipped score with its 95 % interval of resampled slides."""
    per_fold: dict[str, dict[str, list]] = {}
    per_slide: dict[str, list[float]] = {}
    kept_counts = []
    for fold, (model, _, test) in folds.items():
        for slide in test:
            labels = slide.patches["label"].to_numpy().astype(bool)
            if not labels.any():
                continue
            key = slide_file(out, fold, "test", slide)
            kept = pixel_disjoint(shared_pixels(*key))
            kept_counts.append(((kept & ~labels).sum(), (kept & labels).sum()))
            grid = np.stack(slide.cells, axis=1)[kept]
            scores = {
                "shipped: training-referenced latent": saved_scores(slide, "test", model)[kept],
                "reversed std of optical density (no model)": reversed_od_std(out, fold)(slide, "test", model)[kept],
            }
            for feature in ("latent", "skip48"):
                x = slide_descriptors(*key, model)[feature][kept]
                scores |= {f"{feature} kNN, k 5, radius {r}": knn_distance(x, grid, 5, r, None) for r in radii}
            for name, score in scores.items():
                z = stats.zscore(score)
                pooled = per_fold.setdefault(name, {}).setdefault(fold, [[], []])
                pooled[0].append(z)
                pooled[1].append(labels[kept])
                per_slide.setdefault(name, []).append(roc_auc(z, labels[kept]))
    normal, tumour = np.mean(kept_counts, axis=0)
    print(f"\ntumour-sparse test slides reduced to cells sharing no pixels: {normal:.0f} normal and {tumour:.1f} "
          "tumour cells kept per slide on average; patch AUC:")  # fmt: skip
    print(f"{'variant':<50}" + "".join(f"{fold:>8}" for fold in folds) + f"{'mean':>8}{'minus shipped [95% CI]':>30}")
    baseline = np.array(next(iter(per_slide.values())))
    for name, pooled in per_fold.items():
        aucs = [roc_auc(np.concatenate(z), np.concatenate(labels)) for z, labels in pooled.values()]
        difference = np.array(per_slide[name]) - baseline
        low, high = paired_interval(difference)
        print(f"{name:<50}" + "".join(f"{auc:>8.3f}" for auc in aucs) + f"{np.mean(aucs):>8.3f}"
              f"{f'{difference.mean():+.3f} [{low:+.3f}, {high:+.3f}]':>30}")  # fmt: skip


def reversed_od_std(out: Path, fold: str) -> Scorer:
    """Minus the std over a patch of its pixels' optical density (mean over RGB): no model, the label-free baseline of
    ``bench/detection_quality.py`` in the direction the tiles favour (tumour is less varied than lymphocyte-dense
    normal tissue)."""

    def scores(slide: SlideResult, part: str, model: Path) -> np.ndarray:
        patches = cell_patches(*slide_file(out, fold, part, slide)).astype(np.float64)
        density = -np.log(np.clip(patches, 1, 255) / 255)
        return -density.mean(-1).reshape(len(patches), -1).std(1)

    return scores


def z_sum(*scorers: Scorer) -> Scorer:
    """The sum of the scorers' per-slide z-scores (mean and std): scores that fail on different tissue, joined with
    equal weights fixed beforehand."""

    def scores(slide: SlideResult, part: str, model: Path) -> np.ndarray:
        return sum(stats.zscore(scorer(slide, part, model)) for scorer in scorers)

    return scores


def rescored(slide: SlideResult, scores: np.ndarray, statistic: str, sigma: float) -> SlideResult:
    """``slide`` with the z-map of ``scores`` under ``statistic``, then Gaussian-smoothed over tissue cells (``sigma``
    in cells; off-tissue cells neither contribute nor receive a value)."""
    rows, cols = slide.cells
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


def test_results(folds: dict, scorers: dict[str, Scorer], statistic: str, sigma: float) -> dict[str, np.ndarray]:
    """Per tumour slide: IoU at the fold's calibrated setting and oracle IoU; per tumour-free slide: false regions;
    per fold: the pooled patch AUC."""
    results = {"iou": [], "oracle": [], "false_regions": [], "auc": []}
    for fold, (model, calibration, test) in folds.items():

        def variant(slides: list[SlideResult], part: str, fold: str = fold, model: Path = model) -> list[SlideResult]:
            return [rescored(s, scorers[fold](s, part, model), statistic, sigma) for s in slides]

        best = best_of(sweep(variant(calibration, "cal"), SWEEP_THRESHOLDS, MIN_REGION_TILES))
        threshold, tiles = float(best["z_threshold"]), int(best["min_region_tiles"])
        scored = variant(test, "test")
        for slide in scored:
            labels = slide.patches["label"].to_numpy()
            if labels.any():
                results["iou"].append(overlap(slide.predict(threshold, tiles), labels)["iou"])
                results["oracle"].append(sweep([slide], SWEEP_THRESHOLDS, MIN_REGION_TILES)["mean_iou"].max())
            else:
                results["false_regions"].append(ndimage.label(clean_mask(slide.z_map, threshold, tiles))[1])
        z = np.concatenate([s.z_map[s.cells] for s in scored])
        results["auc"].append(roc_auc(z, np.concatenate([s.patches["label"].to_numpy() for s in scored])))
    return {key: np.array(values) for key, values in results.items()}


def paired_interval(difference: np.ndarray) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    draws = [difference[rng.integers(0, len(difference), len(difference))].mean() for _ in range(DRAWS)]
    return tuple(np.percentile(draws, [2.5, 97.5]))


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--out", type=Path, required=True, help="the OUT of bench/sparse_folds.py")
    cli.add_argument("--folds", type=Path, required=True, help="the fold models (bench/train_folds.py's OUT)")
    cli.add_argument("--ckpt", type=Path, default=BUNDLE / "models" / "model.pt", help="the demo tiles' model")
    cli.add_argument("--sigmas", type=float, nargs="+", default=[0.7, 1.0, 1.5], help="smoothing, in cells")
    cli.add_argument("--knn", type=int, nargs="+", default=[5], help="k of the slide-relative scores")
    cli.add_argument("--radii", type=int, nargs="+", default=[0], help="cells ignored around a patch")
    cli.add_argument("--tiles_dir", type=Path, help="the tiles: adds skip48 kNN to each fold's training normals")
    args = cli.parse_args()
    models = {f"fold{k}": args.folds / f"fold{k}" / "model.pt" for k in range(3)} | {"demo": args.ckpt}
    folds = {
        fold: (model, *(Evaluation(args.out / fold / f"{part}_mean_std", args.out / fold / part).slides()
                        for part in ("cal", "test")))
        for fold, model in models.items()
    }  # fmt: skip
    saved = dict.fromkeys(models, saved_scores)
    variants = {("shipped: training-referenced latent, mean_std", "mean_std", 0.0): saved}
    variants |= {(f"  {statistic}", statistic, 0.0): saved for statistic in STATISTICS if statistic != "mean_std"}
    variants |= {(f"  mean_std, smoothed sigma {s}", "mean_std", s): saved for s in args.sigmas}
    variants |= {
        (f"{feature} kNN, k {k}, radius {r}{', shared pixels out' if shared else ''}", "mean_std", 0.0): {
            f: slide_knn(feature, k, r, shared, args.out, f) for f in models
        }
        for feature in ("latent", "skip48") for k in args.knn for r in args.radii for shared in (False, True)
    }  # fmt: skip
    variants[("reversed std of optical density (no model)", "mean_std", 0.0)] = {
        f: reversed_od_std(args.out, f) for f in models
    }
    parts = {
        "latent": saved,
        "rarity": {f: slide_knn("skip48", 5, 4, False, args.out, f) for f in models},  # the bundle's `rarity` score
        "reversed std of OD": {f: reversed_od_std(args.out, f) for f in models},
    }
    for first, second in (("latent", "rarity"), ("latent", "reversed std of OD"), ("rarity", "reversed std of OD")):
        variants[(f"{first} + {second} (sum of per-slide z)", "mean_std", 0.0)] = {
            f: z_sum(parts[first][f], parts[second][f]) for f in models
        }
    if args.tiles_dir:
        training = [Path(name).stem for name in tile_names(args.tiles_dir, DEMO_TILES)]
        fold_tiles = {f"fold{k}": [t for t in training if t not in held_out]
                      for k, held_out in enumerate(tile_folds(training))} | {"demo": training}  # fmt: skip
        banks = {fold: normal_bank(args.tiles_dir, fold_tiles[fold], model) for fold, model in models.items()}
        test_tiles = {f"fold{k}": held_out for k, held_out in enumerate(tile_folds(training))}
        test_tiles["demo"] = list(DEMO_TILES)
        for fold in models:
            print(f"{fold}: pixel-disjoint tumour-free crops, training tiles "
                  f"{disjoint_normal_crops(args.tiles_dir, fold_tiles[fold])}, "
                  f"test tiles {disjoint_normal_crops(args.tiles_dir, test_tiles[fold])}")  # fmt: skip
        variants |= {
            (f"skip48 kNN to the training normals, k {k}", "mean_std", 0.0): {
                f: bank_knn(k, banks[f], args.out, f) for f in models
            }
            for k in args.knn
        }  # fmt: skip
    pixel_sharing_report(folds, args.out)
    baseline = None
    print(f"{'variant':<50}{'mean IoU':>9}{'minus shipped [95% CI]':>30}{'oracle':>8}{'false reg.':>11}{'AUC':>7}")
    for (name, statistic, sigma), scorers in variants.items():
        result = test_results(folds, scorers, statistic, sigma)
        baseline = result["iou"] if baseline is None else baseline
        low, high = paired_interval(result["iou"] - baseline)
        difference = f"{result['iou'].mean() - baseline.mean():+.3f} [{low:+.3f}, {high:+.3f}]"
        print(f"{name:<50}{result['iou'].mean():>9.3f}{difference:>30}{result['oracle'].mean():>8.3f}"
              f"{result['false_regions'].mean():>11.2f}{result['auc'].mean():>7.3f}")  # fmt: skip
    disjoint_auc_table(folds, args.out, args.radii)


if __name__ == "__main__":
    main()
