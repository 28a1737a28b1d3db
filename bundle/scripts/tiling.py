"""Tiling: which patches of a slide the model sees, at what resolution and size, and where they lie.

The resolution and patch size are recorded with the weights at training (``normal_stats.pt`` ``tiling``); inference
takes them from there and refuses others, so a model is never fed patches of another physical size than it learned.
Stride and minimum tissue are choices of each run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from monai.data import WSIReader
from skimage.transform import downscale_local_mean, resize

from .model_files import read_normal_stats, stats_path
from .settings import require_number
from .tissue import box_fractions, tissue_mask
from .wsi import MPP_RANGE, SlideUnusableError, read_thumbnail, slide_mpp, thumbnail_level

# PatchCamelyon's scale (CAMELYON16 level 2) and patch side: what a model trained before its tiling was recorded saw
TARGET_MPP = 0.972
PATCH_SIZE = 96
MPP_TOLERANCE = 0.1
# A read level and level 0 averaged down to it correlate at > 0.9 on tissue (JPEG noise aside); a blank or flipped
# level at ~0. Where level 0 is flat, mean grey levels (0-255) must agree instead.
LEVEL_MIN_CORRELATION = 0.5
LEVEL_FLAT_STD = 2.0
LEVEL_MAX_MEAN_DIFFERENCE = 30.0
# Mask pixels a patch side needs for its tissue fraction: the thumbnail (and mask) level is the coarsest that gives this
MASK_PX_PER_PATCH = 16


def trained_tiling(ckpt_path: str | Path) -> dict[str, float | int]:
    """The ``target_mpp`` and ``patch_size`` the weights in ``ckpt_path`` were trained with (the defaults for a model
    whose statistics record none)."""
    recorded = read_normal_stats(ckpt_path).get("tiling", {})
    return {"target_mpp": recorded.get("target_mpp", TARGET_MPP), "patch_size": recorded.get("patch_size", PATCH_SIZE)}


def require_trained_tiling(ckpt_path: str | Path, target_mpp: float, patch_size: int) -> None:
    """Refuse patches of another resolution or size than the weights learned: their scores would mean nothing."""
    require_number("target_mpp", target_mpp, *MPP_RANGE)
    require_number("patch_size", patch_size, 8, 4096, integer=True)
    trained = trained_tiling(ckpt_path)
    for name, value in (("target_mpp", target_mpp), ("patch_size", patch_size)):
        if not math.isclose(value, trained[name], rel_tol=1e-6):
            raise ValueError(
                f"--{name} {value} is not the {trained[name]} that {ckpt_path} was trained with (recorded in "
                f"{stats_path(ckpt_path)}); drop --{name}, or train a model at {value}."
            )


@dataclass(frozen=True)
class PatchGeometry:
    """Where and how big one model patch is read on a slide."""

    level: int  # pyramid level the patch is read from
    read_size: int  # patch side read at ``level`` (resized to ``patch_size`` when it differs)
    patch_size: int  # patch side the model sees
    size0: int  # patch side in level-0 pixels
    stride0: int  # grid stride in level-0 pixels
    mpp0: float  # level-0 µm per pixel
    level_mpp: float
    downsample: float = 1.0  # level-0 pixels per pixel of ``level``


def select_geometry(
    reader: WSIReader,
    wsi,
    path: str | Path,
    target_mpp: float,
    patch_size: int,
    stride: int,
    assume_mpp: float | None = None,
) -> PatchGeometry:
    """Choose the level by physical size, not index.

    The level whose µm/px is closest to ``target_mpp`` is used if within 10 %; otherwise the next finer level (a slide
    with none is refused: upsampling invents no detail). The read size is scaled so a patch always covers
    ``patch_size * target_mpp`` µm (a 0.5 µm/px scan is read at its 1.0 µm/px level, 93 px, resized to 96).
    """
    mpp0 = slide_mpp(reader, wsi, path, assume_mpp)
    downsamples = np.array([reader.get_downsample_ratio(wsi, lv) for lv in range(reader.get_level_count(wsi))])
    level_mpps = mpp0 * downsamples
    level = int(np.argmin(np.abs(level_mpps - target_mpp)))
    if abs(level_mpps[level] - target_mpp) > MPP_TOLERANCE * target_mpp:
        finer = np.flatnonzero(level_mpps <= target_mpp)
        if not finer.size:
            raise SlideUnusableError(
                f"{path}: its finest level is {level_mpps.min():.3f} µm/px, coarser than the {target_mpp} µm/px the "
                f"model reads (patches would be upsampled {level_mpps.min() / target_mpp:.1f}x, detail it never had); "
                f"score a scan of at most {target_mpp * (1 + MPP_TOLERANCE):.2f} µm/px."
            )
        level = int(finer[np.argmax(level_mpps[finer])])
    scale = target_mpp / level_mpps[level]
    read_size = max(1, round(patch_size * scale))
    size0 = round(read_size * downsamples[level])
    return PatchGeometry(
        level=level,
        read_size=read_size,
        patch_size=patch_size,
        size0=size0,
        stride0=max(1, round(size0 * stride / patch_size)),
        mpp0=mpp0,
        level_mpp=float(level_mpps[level]),
        downsample=float(downsamples[level]),
    )


def grid_shape(size0: tuple[int, int], geometry: PatchGeometry) -> tuple[int, int]:
    """Rows and columns of whole patches on a slide of level-0 ``size0`` (height, width)."""
    return tuple(max(0, (side - geometry.size0) // geometry.stride0 + 1) for side in size0)


def tissue_grid(
    mask: np.ndarray, mask_downsample: float, slide_size0: tuple[int, int], geometry: PatchGeometry, min_tissue: float
) -> np.ndarray:
    """Top-left level-0 (row, col), grid (i, j) and tissue fraction of every grid patch with enough tissue.

    Returns an (N, 5) float array: row0, col0, i, j, tissue_fraction, the fractions read off the low-resolution mask
    over the mask pixels each patch touches.
    """
    n_rows, n_cols = grid_shape(slide_size0, geometry)
    if n_rows == 0 or n_cols == 0:
        return np.zeros((0, 5))
    starts = np.arange(max(n_rows, n_cols)) * geometry.stride0

    def bounds(start0: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
        lo = np.clip(np.floor(start0 / mask_downsample), 0, limit - 1).astype(int)
        hi = np.clip(np.ceil((start0 + geometry.size0) / mask_downsample), lo + 1, limit).astype(int)
        return lo, hi

    fraction = box_fractions(mask, bounds(starts[:n_rows], mask.shape[0]), bounds(starts[:n_cols], mask.shape[1]))
    i, j = np.nonzero(fraction >= min_tissue)
    return np.stack([starts[i], starts[j], i, j, fraction[i, j]], axis=1)


@dataclass(frozen=True)
class TissuePatches:
    """A slide's tissue patches on its regular grid, as arrays: a CAMELYON16 slide has ~45,000, and a dict for each
    is slow to build and to pass from the process that reads the slide's header."""

    corners: np.ndarray  # (N, 2) int: level-0 (row, col) of each patch's top-left corner
    cells: np.ndarray  # (N, 2) int: (i, j) on the grid
    tissue_fraction: np.ndarray  # (N,) float

    def __len__(self) -> int:
        return len(self.cells)

    def samples(self, path: str | Path, geometry: PatchGeometry) -> list[dict]:
        """One MONAI ``PatchWSIDataset`` sample per patch (``location`` being its level-0 top-left corner)."""
        size = [geometry.read_size, geometry.read_size]
        return [
            {"image": str(path), "location": [int(r), int(c)], "size": size, "level": geometry.level}
            for r, c in self.corners
        ]


def check_level(reader: WSIReader, wsi, path: str | Path, level: int, corner0: tuple[int, int], side: int) -> None:
    """Refuse a slide whose ``level`` does not show what level 0 shows: a level written blank, shifted or upside down
    by a broken converter would be scored (or searched for tissue) as if it were the tissue.

    A ``side``-px square at ``level`` from level-0 ``corner0`` and the same area of level 0, averaged down, must
    correlate (grey levels; by mean brightness where level 0 is flat there). Costs one read of that area at each.
    """
    if level == 0:
        return
    downsample = float(reader.get_downsample_ratio(wsi, level))
    height0, width0 = (int(v) for v in reader.get_size(wsi, 0))
    side = min(side, int(min(height0, width0) / downsample))
    side0 = round(side * downsample)
    row0, col0 = int(max(0, min(corner0[0], height0 - side0))), int(max(0, min(corner0[1], width0 - side0)))
    coarse, _ = reader.get_data(wsi, location=(row0, col0), size=(side, side), level=level)
    fine, _ = reader.get_data(wsi, location=(row0, col0), size=(side0, side0), level=0)
    coarse = np.asarray(coarse, dtype=np.float32)[:3].mean(0)
    fine = np.asarray(fine, dtype=np.float32)[:3].mean(0)
    factor = round(downsample)
    if abs(downsample - factor) < 0.01:  # a pyramid's own averaging (box means), which a smoothing resize is not
        fine = downscale_local_mean(fine, (factor, factor))[: coarse.shape[0], : coarse.shape[1]]
    else:
        fine = resize(fine, coarse.shape, anti_aliasing=True)
    if fine.std() < LEVEL_FLAT_STD:
        agree = abs(float(fine.mean() - coarse.mean())) <= LEVEL_MAX_MEAN_DIFFERENCE
        found = f"mean grey {coarse.mean():.0f} where level 0 has {fine.mean():.0f}"
    else:
        with np.errstate(invalid="ignore", divide="ignore"):  # a blank level has no spread: correlation 0
            correlation = float(np.nan_to_num(np.corrcoef(fine.ravel(), coarse.ravel())[0, 1]))
        agree = correlation >= LEVEL_MIN_CORRELATION
        found = f"correlation {correlation:.2f} with level 0"
    if not agree:
        raise SlideUnusableError(
            f"{path}: pyramid level {level} does not show what level 0 shows at level-0 (x {col0}, y {row0}) "
            f"({found}: a blank, shifted or flipped level); re-export the slide's pyramid (e.g. vips tiffsave --tile "
            "--pyramid)."
        )


@dataclass(frozen=True)
class SlideTiling:
    """A slide's tissue patches, the geometry they are read with, and the grid and tissue they were found on."""

    patches: TissuePatches
    geometry: PatchGeometry
    size0: tuple[int, int]  # level-0 height, width
    thumbnail: np.ndarray  # HWC RGB at ``mask_downsample``
    mask: np.ndarray  # tissue mask of the thumbnail
    mask_downsample: float

    @property
    def grid_shape(self) -> tuple[int, int]:
        """Rows and columns of the whole grid, tissue or not."""
        return grid_shape(self.size0, self.geometry)


def slide_tiling(
    path: str | Path,
    reader: WSIReader,
    target_mpp: float,
    patch_size: int,
    stride: int,
    min_tissue: float,
    assume_mpp: float | None = None,
) -> SlideTiling:
    """The tissue patches of one slide on a regular grid, checked against level 0 where they are read."""
    wsi = reader.read(str(path))
    geometry = select_geometry(reader, wsi, path, target_mpp, patch_size, stride, assume_mpp)
    mask_level = thumbnail_level(reader, wsi, geometry.size0 / MASK_PX_PER_PATCH)
    thumbnail, mask_downsample = read_thumbnail(reader, wsi, path, mask_level)
    mask = tissue_mask(thumbnail)
    size0 = tuple(int(s) for s in reader.get_size(wsi, 0))
    found = tissue_grid(mask, mask_downsample, size0, geometry, min_tissue)
    patches = TissuePatches(found[:, :2].astype(np.int64), found[:, 2:4].astype(np.int64), found[:, 4])
    if len(patches):  # the read level must show level 0's tissue around the tissue-richest patch
        richest = patches.corners[int(np.argmax(patches.tissue_fraction))]
        check_level(reader, wsi, path, geometry.level, tuple(richest), 2 * geometry.read_size)
    else:  # no tissue on the thumbnail's level: is it the slide, or a blank level? Its centre against level 0
        centre0 = (size0[0] // 2 - geometry.size0, size0[1] // 2 - geometry.size0)
        check_level(reader, wsi, path, mask_level, centre0, round(2 * geometry.size0 / mask_downsample))
    return SlideTiling(patches, geometry, size0, thumbnail, mask, mask_downsample)


def block_samples(path: str | Path, patches: TissuePatches, geometry: PatchGeometry, block: int) -> list[dict]:
    """Group grid patches into reads of up to ``block`` x ``block`` neighbouring patches, for ``PatchWSIDataset``.

    A slide is stored in compressed tiles, and a reader decodes every tile a region touches: read one 96-px patch at
    a time and each tile is decoded again for every patch on it (cuCIM keeps no tile cache here, and MONAI reopens
    OpenSlide files for every read). One read per block decodes each tile about once. A block sample is the bounding
    box of its tissue patches; ``members`` lists ``[index in patches, row, col]`` of each patch inside it, at the
    read level (``SplitBlockd`` cuts them out). ``block`` 1 reads patch by patch.
    """
    keys = patches.cells // block
    order = np.lexsort((keys[:, 1], keys[:, 0]))  # blocks in row-major order, patches in grid order within each
    starts = np.flatnonzero(np.r_[True, np.any(np.diff(keys[order], axis=0) != 0, axis=1)])
    blocks = []
    for members in np.split(order, starts[1:]):
        corners = patches.corners[members]
        top, left = corners.min(0)
        offsets = np.rint((corners - [top, left]) / geometry.downsample).astype(int)
        height, width = offsets.max(0) + geometry.read_size
        blocks.append(
            {"image": str(path), "location": [int(top), int(left)], "size": [int(height), int(width)],
             "level": geometry.level, "members": np.column_stack([members, offsets]).tolist()}
        )  # fmt: skip
    return blocks
