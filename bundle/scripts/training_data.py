"""A training workflow's patches: the named source's normals split into train and validation parts with a fixed
seed (optionally with a folder of normal patch images mixed in), and held in memory once decoded."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.data import DataLoader
from torch.utils.data import ConcatDataset, Dataset, Subset

from .datasets import (
    DATA_SOURCES,
    FIXED_SCALE_SOURCES,
    PatchFolderNormals,
    PCamPatches,
    TileNormals,
    held_out_normals,
    normal_patch_files,
    tile_names,
    wsi_normal_patches,
)
from .tiling import PATCH_SIZE, TARGET_MPP
from .wsi import find_slides

logger = logging.getLogger(__name__)


class PatchesInMemory(Dataset):
    """Every patch of ``source`` decoded once, by ``num_workers`` DataLoader workers, and held as one uint8 tensor:
    an epoch then only indexes memory and needs no workers (PCam's 147k normal patches are 4 GB, decoded from HDF5
    once instead of once an epoch). Refused, naming ``--preload False``, when they would take more than half of the
    memory available."""

    def __init__(self, source: Dataset, num_workers: int = 0, name: str = "training patches") -> None:
        if len(source) == 0:
            raise ValueError(f"no {name} to hold in memory: the source is empty.")
        shape = tuple(torch.as_tensor(np.asarray(source[0]["image"])).shape)
        needed = len(source) * int(np.prod(shape))
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        if needed > available / 2:
            raise MemoryError(
                f"{len(source)} {name} take {needed / 2**30:.1f} GB, more than half of the {available / 2**30:.1f} GB "
                "of memory available; pass --preload False to read them from their files every epoch."
            )
        self.images = torch.empty((len(source), *shape), dtype=torch.uint8)
        start = time.perf_counter()
        loader = DataLoader(source, batch_size=256, num_workers=num_workers)
        filled = 0
        for batch in loader:
            images = torch.as_tensor(batch["image"])
            if images.is_floating_point():  # resized on the way (a slide scanned at another µm/px)
                images = images.round().clamp(0, 255)
            self.images[filled : filled + len(images)] = images
            filled += len(images)
        logger.info("%s: %d patches (%.2f GB) decoded into memory in %.1f s", name, filled, needed / 2**30,
                    time.perf_counter() - start)  # fmt: skip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i]}


@dataclass
class NormalTissueSplits:
    train: Dataset
    val: Dataset


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded (training, validation) split of ``n`` items, each part non-empty."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def normal_tissue_splits(
    data_source: str,
    dataset_dir: str | Path | None = None,
    datalist: str | Path | None = None,
    val_fraction: float = 0.15,
    seed: int = 42,
    patch_size: int = PATCH_SIZE,
    exclude: Sequence[str] = (),
    wsi_reader: str = "cuCIM",
    target_mpp: float = TARGET_MPP,
    min_tissue: float = 0.5,
    normals_dir: str | Path | None = None,
    normals_holdout: float = 0.2,
) -> NormalTissueSplits:
    """Build the normal-tissue source named ``data_source``, mix in the patch folder ``normals_dir`` when given, and
    split each 85/15 (by default) with ``seed``.

    PCam and patch folders split by patch. Tiles and slides split by tile or slide when there are at least two, so
    validation patches never overlap training ones; a single slide is split by patch. ``normals_holdout`` of the
    folder's patches (``held_out_normals``) are never trained on, for measurements on tissue the model has not seen.
    ``data_source: patches`` trains on the folder alone.
    """
    if data_source not in DATA_SOURCES:
        raise ValueError(f"data_source must be one of {list(DATA_SOURCES)}, got {data_source!r}.")
    if data_source == "patches" and normals_dir is None:
        raise ValueError("data_source 'patches' needs --normals_dir, a folder of normal patch images.")
    fixed_scale = [name for name in (data_source, "normals_dir" if normals_dir else "") if name in FIXED_SCALE_SOURCES]
    if fixed_scale and not math.isclose(target_mpp, TARGET_MPP, rel_tol=1e-6):
        raise ValueError(
            f"--target_mpp {target_mpp}: {' and '.join(fixed_scale)} patches are PatchCamelyon-scale "
            f"({TARGET_MPP} µm/px) and are not resampled, so the model would be recorded at a resolution it never "
            "saw; drop --target_mpp, or train on whole slides (--data_source wsi), which are read at it."
        )
    splits = [] if data_source == "patches" else [
        _source_splits(data_source, dataset_dir, datalist, val_fraction, seed, patch_size, exclude, wsi_reader,
                       target_mpp, min_tissue)
    ]  # fmt: skip
    if normals_dir is not None:
        files, held_out = held_out_normals(normal_patch_files(normals_dir), normals_holdout)
        folder = PatchFolderNormals(files, patch_size)
        train_idx, val_idx = split_indices(len(folder), val_fraction, seed)
        splits.append(NormalTissueSplits(Subset(folder, train_idx), Subset(folder, val_idx)))
        logger.info("normals_dir %s: %d patches (%d held out of training)", normals_dir, len(folder), len(held_out))
    if len(splits) == 1:
        return splits[0]
    return NormalTissueSplits(ConcatDataset([s.train for s in splits]), ConcatDataset([s.val for s in splits]))


def _source_splits(
    data_source: str, dataset_dir, datalist, val_fraction: float, seed: int, patch_size: int, exclude: Sequence[str],
    wsi_reader: str, target_mpp: float, min_tissue: float,
) -> NormalTissueSplits:  # fmt: skip
    if data_source == "pcam":
        full = PCamPatches(dataset_dir, patch_size=patch_size)
        train_idx, val_idx = split_indices(len(full), val_fraction, seed)
        return NormalTissueSplits(Subset(full, train_idx), Subset(full, val_idx))
    if data_source == "tiles":
        names = tile_names(dataset_dir, exclude)
        if len(names) < 2:
            raise ValueError(f"{dataset_dir}: data_source 'tiles' needs at least 2 tiles to split, found {names}.")
        train_idx, val_idx = split_indices(len(names), val_fraction, seed)
        tiles = [[names[i] for i in idx] for idx in (train_idx, val_idx)]
        return NormalTissueSplits(*(TileNormals(dataset_dir, t, patch_size, min_tissue=min_tissue) for t in tiles))
    per_slide = wsi_normal_patches(
        find_slides(dataset_dir, datalist), wsi_reader, target_mpp, patch_size, patch_size, min_tissue
    )
    if len(per_slide) >= 2:
        train_idx, val_idx = split_indices(len(per_slide), val_fraction, seed)
        return NormalTissueSplits(
            ConcatDataset([per_slide[i] for i in train_idx]), ConcatDataset([per_slide[i] for i in val_idx])
        )
    full = ConcatDataset(per_slide)
    train_idx, val_idx = split_indices(len(full), val_fraction, seed)
    return NormalTissueSplits(Subset(full, train_idx), Subset(full, val_idx))
