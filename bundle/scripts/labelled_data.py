"""Labelled patch sources for the supervised head (``train_head``): the official PatchCamelyon HDF5 files with their
labels, tiles with tumour masks (each crop labelled by the rule evaluation labels a slide's patches with), and patch
folders with one subfolder a class.

Every source yields ``{"image": CHW uint8, "label": 0 or 1}``. ``labelled_splits`` builds one by name and splits it,
and ``positive_weight`` is how the loss balances the classes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from .datasets import PATCH_SUFFIXES, PatchFolderNormals, PCamPatches, read_tile, tile_names
from .slide_truth import LABEL_RULES
from .tiling import PATCH_SIZE
from .tissue import tissue_mask, window_fraction
from .training_data import split_indices

logger = logging.getLogger(__name__)

LABELLED_SOURCES = ("pcam", "tiles", "folders")
CLASS_FOLDERS = {"normal": 0, "tumour": 1}  # data_source 'folders': the subfolder of each class
ONE_CLASS_REMEDY = {
    "pcam": "use the official files, whose train and valid splits hold both",
    "tiles": "add tiles with tumour, or change --seed or --val_fraction (tiles are split by tile)",
    "folders": "add patches of the missing class (each class is split by --val_fraction)",
}


def crop_labels(tumour: np.ndarray, corners: np.ndarray, patch_size: int, rule: str, min_fraction: float) -> np.ndarray:
    """Each crop's label by evaluation's rule (``slide_truth.patch_labels``): ``centre``, tumour anywhere in the central
    third (the PCam rule); ``fraction``, at least ``min_fraction`` of the crop tumour."""
    if rule not in LABEL_RULES:
        raise ValueError(f"label_rule must be one of {list(LABEL_RULES)}, got {rule!r}.")
    if rule == "centre":
        third = patch_size // 3
        centre = window_fraction(tumour, patch_size - 2 * third)
        return (centre[corners[:, 0] + third, corners[:, 1] + third] > 0).astype(np.int64)
    return (window_fraction(tumour, patch_size)[corners[:, 0], corners[:, 1]] >= min_fraction).astype(np.int64)


class LabelledTiles(Dataset):
    """Crops of ``images/*`` tiles on tissue, on a ``crop_stride`` grid, each labelled from ``masks/*`` by
    ``label_rule`` (``crop_labels``). Tiles are small, so they are decoded once and kept in memory."""

    def __init__(
        self, dataset_dir: str | Path, names: Sequence[str], patch_size: int = PATCH_SIZE, crop_stride: int = 32,
        min_tissue: float = 0.5, label_rule: str = "centre", min_tumour_fraction: float = 0.5,
    ) -> None:  # fmt: skip
        self.patch_size = patch_size
        self.images, positions, labels = [], [], []
        for name in names:
            image, tumour = read_tile(dataset_dir, name, patch_size)
            tissue = window_fraction(tissue_mask(image) | tumour, patch_size)[::crop_stride, ::crop_stride]
            corners = np.argwhere(tissue >= min_tissue) * crop_stride
            positions.append(np.column_stack([np.full(len(corners), len(self.images)), corners]))
            labels.append(crop_labels(tumour, corners, patch_size, label_rule, min_tumour_fraction))
            self.images.append(image)
        self.positions = np.concatenate(positions) if positions else np.zeros((0, 3), dtype=int)
        self.labels = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict:
        k, y, x = (int(v) for v in self.positions[i])
        crop = self.images[k][y : y + self.patch_size, x : x + self.patch_size]
        return {"image": np.ascontiguousarray(np.moveaxis(crop, -1, 0)), "label": int(self.labels[i])}


class ClassFolders(Dataset):
    """Patch images in one subfolder a class (``CLASS_FOLDERS``: ``normal/`` and ``tumour/``), decoded once."""

    def __init__(self, dataset_dir: str | Path, patch_size: int = PATCH_SIZE) -> None:
        root = Path(dataset_dir)
        files = {
            name: sorted(p for p in (root / name).glob("*") if p.suffix.lower() in PATCH_SUFFIXES)
            if (root / name).is_dir() else []
            for name in CLASS_FOLDERS
        }  # fmt: skip
        empty = [name for name, found in files.items() if not found]
        if empty:
            held = ", ".join(f"{name}/: {len(found)} images" for name, found in files.items())
            raise ValueError(
                f"{root}: a head needs patches of both classes, one subfolder each ({held}); add the "
                f"{' and '.join(f'{name}/' for name in empty)} patches."
            )
        self.patches = PatchFolderNormals([f for name in CLASS_FOLDERS for f in files[name]], patch_size)
        self.labels = np.concatenate([np.full(len(files[name]), label) for name, label in CLASS_FOLDERS.items()])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {**self.patches[i], "label": int(self.labels[i])}


@dataclass
class LabelledSplits:
    train: Dataset
    val: Dataset


def labels_of(dataset: Dataset) -> np.ndarray:
    """The labels of a source or of a ``Subset`` of one, without decoding a patch."""
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[np.asarray(dataset.indices)]
    return np.asarray(dataset.labels)


def labelled_splits(
    data_source: str,
    dataset_dir: str | Path,
    val_fraction: float = 0.15,
    seed: int = 42,
    patch_size: int = PATCH_SIZE,
    exclude: Sequence[str] = (),
    min_tissue: float = 0.5,
    label_rule: str = "centre",
    min_tumour_fraction: float = 0.5,
) -> LabelledSplits:
    """The labelled source ``data_source`` split for training and validation: PCam by its official files (train,
    valid), tiles by tile (validation crops never overlap training ones), class folders by patch, stratified; each
    split must hold both classes."""
    if data_source not in LABELLED_SOURCES:
        raise ValueError(f"data_source must be one of {list(LABELLED_SOURCES)} for train_head, got {data_source!r}.")
    if data_source == "pcam":
        splits = LabelledSplits(*(PCamPatches(dataset_dir, [split], patch_size, normals_only=False)
                                  for split in ("train", "valid")))  # fmt: skip
    elif data_source == "tiles":
        names = tile_names(dataset_dir, exclude)
        if len(names) < 2:
            raise ValueError(f"{dataset_dir}: data_source 'tiles' needs at least 2 tiles to split, found {names}.")
        chosen = [[names[i] for i in idx] for idx in split_indices(len(names), val_fraction, seed)]
        splits = LabelledSplits(*(LabelledTiles(dataset_dir, tiles, patch_size, min_tissue=min_tissue,
                                                label_rule=label_rule, min_tumour_fraction=min_tumour_fraction)
                                  for tiles in chosen))  # fmt: skip
    else:
        folders = ClassFolders(dataset_dir, patch_size)
        train, val = zip(*(split_indices(int((folders.labels == c).sum()), val_fraction, seed) for c in (0, 1)),
                         strict=True)  # fmt: skip
        members = [np.flatnonzero(folders.labels == c) for c in (0, 1)]
        splits = LabelledSplits(*(Subset(folders, np.sort(np.concatenate([members[c][part[c]] for c in (0, 1)])))
                                  for part in (train, val)))  # fmt: skip
    for name, split in (("training", splits.train), ("validation", splits.val)):
        labels = labels_of(split)
        logger.info("%s patches: %d tumour, %d normal (%.1f %% tumour)", name, labels.sum(), len(labels) - labels.sum(),
                    100 * labels.mean() if len(labels) else 0.0)  # fmt: skip
        if len(labels) == 0 or labels.min() == labels.max():
            raise ValueError(
                f"{dataset_dir}: the {name} split holds {'no patch' if not len(labels) else 'one class only'} "
                f"({int(labels.sum())} tumour of {len(labels)}); a head needs tumour and normal patches in both "
                f"splits: {ONE_CLASS_REMEDY[data_source]}."
            )
    return splits


def positive_weight(dataset: Dataset, class_balance: str, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """The BCE loss's weight of tumour patches: ``pos_weight`` (normal / tumour patches, so both classes weigh alike
    in the loss, whatever the share of tumour) or ``none`` (None: every patch alike)."""
    if class_balance == "none":
        return None
    if class_balance != "pos_weight":
        raise ValueError(f"class_balance must be 'pos_weight' or 'none', got {class_balance!r}.")
    labels = labels_of(dataset)
    return torch.tensor([(len(labels) - labels.sum()) / max(labels.sum(), 1)], dtype=torch.float32, device=device)
