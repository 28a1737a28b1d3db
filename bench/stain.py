"""Stain normalisation: one Macenko fit per slide applied to every patch, against torchstain's fit per patch.

    python bench/stain.py --tiles_dir ../shared/data/camelyon16_tiles

Each 512-px CAMELYON16 tile stands for a slide: it is cut into 96-px patches, and
(a) ``slide`` mode fits Macenko once on the tile's patches (the fit is timed) and maps patches in batches of 64 with it;
(b) torchstain's Macenko is fitted on every patch, with each of its backends (``per_patch`` mode uses the numpy one).
Agreement: on each patch both can fit, this bundle's Macenko (MONAI ``ExtractHEStains`` + the linear OD map) fitted
on that patch alone is compared with torchstain's output for the same patch, from both of torchstain's backends: the
same algorithm should give the same pixels, so the table gives the share of pixels within 1 grey level.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchstain
from common import as_batch, machine
from skimage import io
from threadpoolctl import threadpool_limits

from scripts.stain import MacenkoFit, StainNormalizer, degenerate_patches, optical_density

PATCH, BATCH = 96, 64


def tile_patches(path: Path) -> list[np.ndarray]:
    image = io.imread(path)[..., :3]
    rows, cols = image.shape[0] // PATCH, image.shape[1] // PATCH
    return [image[i * PATCH : (i + 1) * PATCH, j * PATCH : (j + 1) * PATCH] for i in range(rows) for j in range(cols)]


def slide_seconds(tiles: list[list[np.ndarray]]) -> tuple[float, float]:
    """Seconds spent fitting every tile as a slide, and normalising all patches in inference-sized batches of
    ``BATCH`` (after one fit: the cost of applying a fit does not depend on which slide it came from)."""
    stain = StainNormalizer(mode="slide")
    start = time.perf_counter()
    for patches in tiles:
        stain.slide_fit(patches)
    fit = time.perf_counter() - start
    stain = stain.for_slide(stain.slide_fit(tiles[0]))
    batch = as_batch([p for t in tiles for p in t])
    start = time.perf_counter()
    for first in range(0, len(batch), BATCH):
        stain(batch[first : first + BATCH])
    return fit, time.perf_counter() - start


def per_patch_seconds(tiles: list[list[np.ndarray]], reference: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """Seconds for ``reference`` to fit and normalise every patch on its own, with one BLAS thread as ``per_patch``
    mode runs it (patches it cannot fit count with the time they took to fail)."""
    images = [as_batch([p])[0].float() for t in tiles for p in t]
    start = time.perf_counter()
    with threadpool_limits(limits=1, user_api="blas"):
        for image in images:
            try:
                reference(image)
            except Exception:  # a failed fit is part of what per-patch fitting costs
                continue
    return time.perf_counter() - start


def torchstain_torch_backend() -> Callable[[torch.Tensor], torch.Tensor]:
    """torchstain's Macenko with its torch backend (float32, nearest-rank percentiles), CHW float 0-255 out."""
    normalizer = torchstain.normalizers.MacenkoNormalizer(backend="torch")

    def normalize(chw: torch.Tensor) -> torch.Tensor:
        normalized, _, _ = normalizer.normalize(I=chw.round().to(torch.uint8), stains=False)
        return normalized.permute(2, 0, 1).clamp(0, 255).floor()

    return normalize


def agreement(tiles: list[list[np.ndarray]], reference: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
    """Patches both this bundle's fit and ``reference`` (CHW float 0-255 in and out) fit, and how close they are."""
    within, total, worst, compared, candidates, whole = 0, 0, 0, 0, 0, 0
    for patch in (p for t in tiles for p in t):
        image = as_batch([patch])
        od = optical_density(image)
        if degenerate_patches(od)[0]:
            continue
        candidates += 1
        try:
            ours = MacenkoFit.from_patches([patch]).apply(od)[0]
            theirs = reference(image[0].float())
        except Exception:  # either fit failing leaves nothing to compare
            continue
        difference = (ours - theirs).abs().numpy()
        within += int((difference <= 1).sum())
        total += difference.size
        worst = max(worst, int(difference.max()))
        whole += int(difference.max() <= 1)
        compared += 1
    return {"candidates": candidates, "compared": compared, "pixels": within / max(total, 1), "worst": worst,
            "patches": whole / max(compared, 1)}  # fmt: skip


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--tiles_dir", type=Path, required=True)
    args = cli.parse_args()
    warnings.filterwarnings("ignore")  # skimage's CIELAB clipping notes in the Reinhard fallback
    tiles = [tile_patches(p) for p in sorted((args.tiles_dir / "images").glob("*.jpg"))]
    n = sum(len(t) for t in tiles)
    (fit, apply) = slide_seconds(tiles)
    fit_per_slide = fit / len(tiles)
    # a CAMELYON16 slide has thousands of tissue patches; the fit (on 64 of them in inference) is paid once
    slide_10k = 10_000 / (fit_per_slide + 10_000 * apply / n)
    references = {"torchstain, numpy backend (per_patch mode)": StainNormalizer(mode="per_patch")._per_patch,
                  "torchstain, torch backend": torchstain_torch_backend()}  # fmt: skip
    print(f"machine: {machine()}")
    print(f"{len(tiles)} tiles as slides, {n} patches of {PATCH} px")
    print(f"{'measure':<58}{'value':>12}")
    print(f"{'slide mode: apply, patches/s':<58}{n / apply:>12.1f}")
    print(f"{'slide mode: one fit, seconds':<58}{fit_per_slide:>12.3f}")
    print(f"{'slide mode on a 10,000-patch slide (fit once + apply)':<58}{slide_10k:>12.1f}")
    for name, reference in references.items():
        per_patch = per_patch_seconds(tiles, reference)
        agree = agreement(tiles, reference)
        fitted = f"{agree['compared']}/{agree['candidates']}"
        print(f"per-patch Macenko, {name}:")
        print(f"{'  patches/s':<58}{n / per_patch:>12.1f}")
        print(f"{'  slide mode speed-up on a 10,000-patch slide':<58}{slide_10k / (n / per_patch):>11.1f}x")
        print(f"{'  slide mode speed-up on these 25-patch tiles':<58}{per_patch / (fit + apply):>11.1f}x")
        print(f"{'  patches both fit / non-degenerate patches':<58}{fitted:>12}")
        print(f"{'  patches with every pixel within 1 grey level':<58}{agree['patches']:>12.2%}")
        print(f"{'  pixels within 1 grey level':<58}{agree['pixels']:>12.2%}")
        print(f"{'  largest difference (grey levels)':<58}{agree['worst']:>12}")


if __name__ == "__main__":
    main()
