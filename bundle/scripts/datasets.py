"""Normal-tissue patch sources for training: PCam HDF5, tiles with tumour masks, whole slides and patch folders.

Every source yields ``{"image": CHW uint8}`` patches of normal tissue; ``training_data.normal_tissue_splits`` builds
one by name and splits it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from monai.data import PatchWSIDataset
from monai.transforms import Resized
from skimage import io
from torch.utils.data import Dataset

from .tiling import PATCH_SIZE, TARGET_MPP, slide_tiling
from .tissue import tissue_mask, window_fraction
from .wsi import make_reader

logger = logging.getLogger(__name__)

DATA_SOURCES = ("pcam", "tiles", "wsi", "patches")
# Sources whose patches are taken as they are stored, at PatchCamelyon's scale (tiles, PCam, patch folders)
FIXED_SCALE_SOURCES = ("pcam", "tiles", "patches", "normals_dir")
PATCH_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
# The last 8 tiles by name of the shared CAMELYON16 tile set form the demo slide; they are never trained on.
DEMO_TILES = ("10692", "10693", "10694", "10695", "10696", "10697", "10698", "10699")
PCAM_SPLITS = ("train", "valid")


def check_patch_array(source: str | Path, dtype: np.dtype, shape: tuple[int, ...], patch_size: int, sample) -> None:
    """Refuse training data that is not 8-bit RGB patches of ``patch_size`` (HWC), naming the file.

    uint16 or float [0, 1] patches would train a model on the wrong scale without an error (normalisation means of
    178 or 0.0027), and 64-px patches would train and fail only at inference.
    """
    expected = f"8-bit RGB patches of {patch_size} x {patch_size} x 3 (uint8, 0-255)"
    if np.dtype(dtype) != np.uint8:
        raise ValueError(f"{source}: pixels are {np.dtype(dtype)}, expected {expected}.")
    if tuple(shape[-3:]) != (patch_size, patch_size, 3):
        raise ValueError(f"{source}: patches are {' x '.join(map(str, shape[-3:]))}, expected {expected}.")
    brightest = int(np.max(sample)) if np.size(sample) else 0
    if brightest < 16:
        raise ValueError(
            f"{source}: the brightest pixel is {brightest} (a [0, 1] or label image?), expected {expected}."
        )


def read_tumour_mask(path: str | Path) -> np.ndarray:
    """A tile's tumour mask as booleans: white (> 50 % grey) is tumour, whatever the file's bit depth."""
    mask = io.imread(path, as_gray=True)
    return mask > (0.5 if mask.max() <= 1.0 else 127)


class PCamPatches(Dataset):
    """Patches of the official PatchCamelyon HDF5 files, pooled over ``splits``: the label-0 (normal) ones for the VAE
    (``normals_only``), or all of them with their labels for the supervised head.

    Only the small label files are read up front; images are read one at a time from a handle opened lazily in each
    process, because h5py handles do not survive ``fork`` into DataLoader workers.
    """

    def __init__(
        self,
        dataset_dir: str | Path,
        splits: Sequence[str] = PCAM_SPLITS,
        patch_size: int = PATCH_SIZE,
        normals_only: bool = True,
    ) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.normals_only = normals_only
        self.x_paths = []
        index, kept_labels = [], []
        for k, split in enumerate(splits):
            x_path = self.dataset_dir / f"camelyonpatch_level_2_split_{split}_x.h5"
            y_path = self.dataset_dir / f"camelyonpatch_level_2_split_{split}_y.h5"
            if not x_path.is_file():
                raise FileNotFoundError(
                    f"{x_path} not found: data_source 'pcam' needs the official PCam files in --dataset_dir; "
                    "for tiles with masks use --data_source tiles, for a folder of patch images "
                    "--data_source patches --normals_dir DIR (train_head: --data_source folders)."
                )
            if not y_path.is_file():
                raise FileNotFoundError(
                    f"{y_path.name} not found beside {x_path}: each PCam _x.h5 file needs its _y.h5 labels (both "
                    "come in the official release)."
                )
            with h5py.File(y_path, "r") as f:
                labels = np.asarray(f["y"]).reshape(-1).astype(np.int64)
            with h5py.File(x_path, "r") as f:
                x = f["x"]
                check_patch_array(x_path, x.dtype, x.shape, patch_size, x[: min(len(x), 64)])
                if len(x) != len(labels):
                    raise ValueError(f"{x_path}: {len(x)} patches but {len(labels)} labels in {y_path.name}.")
            kept = np.flatnonzero(labels == 0) if normals_only else np.arange(len(labels))
            index.append(np.stack([np.full_like(kept, k), kept], axis=1))
            kept_labels.append(labels[kept])
            self.x_paths.append(x_path)
        self.index = np.concatenate(index)
        self.labels = np.concatenate(kept_labels)
        self._handles: dict[int, h5py.File] = {}
        self._pid = -1

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        k, row = (int(v) for v in self.index[i])
        if k not in self._handles:
            self._handles[k] = h5py.File(self.x_paths[k], "r")
        image = np.ascontiguousarray(np.moveaxis(self._handles[k]["x"][row], -1, 0))
        # normals carry no label: they are pooled with sources that have none (a normals_dir folder)
        return {"image": image} if self.normals_only else {"image": image, "label": int(self.labels[i])}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": {}, "_pid": -1}


def normal_patch_files(normals_dir: str | Path) -> list[Path]:
    """The normal patch images of a folder, in name order.

    With a ``manifest.csv`` (column ``file``, relative to ``images/`` or the folder; rows whose ``label`` is not 0 are
    left out), its files; else every image in ``images/`` or in the folder itself.
    """
    root = Path(normals_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"normals_dir {root} is not a folder of normal patch images.")
    folder = root / "images" if (root / "images").is_dir() else root
    manifest = root / "manifest.csv"
    if manifest.is_file():
        table = pd.read_csv(manifest, dtype={"file": str})
        if "file" not in table.columns:
            raise ValueError(f"{manifest}: no 'file' column (it has {list(table.columns)}).")
        if "label" in table.columns:
            table = table[table["label"] == 0]
        files = [folder / name for name in table["file"]]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{manifest}: {len(missing)} listed files are missing, e.g. {missing[0]}.")
    else:
        files = [p for p in folder.iterdir() if p.suffix.lower() in PATCH_SUFFIXES]
    if not files:
        raise FileNotFoundError(f"{folder}: no normal patch image ({', '.join(PATCH_SUFFIXES)}).")
    return sorted(files)


def held_out_normals(files: Sequence[Path], fraction: float, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Split patch files into (training, held out) by a seeded draw over their sorted names, so that training and
    the measurements that must not see the held-out part (a tumour-free evaluation slide) agree on it."""
    files = sorted(files)
    order = np.random.default_rng(seed).permutation(len(files))
    n_out = round(len(files) * fraction)
    held_out = {int(i) for i in order[:n_out]}
    return [f for k, f in enumerate(files) if k not in held_out], [f for k, f in enumerate(files) if k in held_out]


class PatchFolderNormals(Dataset):
    """Normal patch images (JPEG/PNG/TIFF files of ``patch_size`` x ``patch_size``), decoded once and kept in memory
    (2,000 PCam patches are 55 MB), each checked as training data must be."""

    def __init__(self, files: Sequence[Path], patch_size: int = PATCH_SIZE) -> None:
        self.patches = []
        for path in files:
            image = io.imread(path)
            if image.ndim != 3 or image.shape[2] < 3:
                raise ValueError(f"{path}: expected an RGB patch image, got shape {image.shape}.")
            image = image[..., :3]
            check_patch_array(path, image.dtype, image.shape, patch_size, image)
            self.patches.append(np.ascontiguousarray(np.moveaxis(image, -1, 0)))

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.patches[i]}


def read_tile(dataset_dir: str | Path, name: str, patch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A tile ``images/<name>`` (HWC uint8 RGB, checked as training data) and its tumour mask ``masks/<name>``."""
    path = Path(dataset_dir) / "images" / name
    image = io.imread(path)
    if image.ndim != 3 or image.shape[2] < 3 or min(image.shape[:2]) < patch_size:
        raise ValueError(f"{path}: a tile must be an RGB image of at least {patch_size} px, got {image.shape}.")
    image = image[..., :3]
    check_patch_array(path, image.dtype, (patch_size, patch_size, 3), patch_size, image)
    tumour = read_tumour_mask(Path(dataset_dir) / "masks" / name)
    if tumour.shape != image.shape[:2]:
        raise ValueError(f"{Path(dataset_dir) / 'masks' / name}: mask is {tumour.shape}, its tile {image.shape[:2]}.")
    return image, tumour


def crop_corners(
    image: np.ndarray, tumour: np.ndarray, patch_size: int, crop_stride: int, min_tissue: float
) -> tuple[np.ndarray, np.ndarray]:
    """Top-left (y, x) of the ``patch_size`` crops on a ``crop_stride`` grid: (those on tissue and wholly outside the
    tumour, those wholly inside it)."""
    tissue = window_fraction(tissue_mask(image), patch_size)[::crop_stride, ::crop_stride]
    in_tumour = window_fraction(tumour, patch_size)[::crop_stride, ::crop_stride]
    normal = np.argwhere((tissue >= min_tissue) & (in_tumour == 0)) * crop_stride
    return normal, np.argwhere(in_tumour >= 0.999) * crop_stride


class TileNormals(Dataset):
    """Crops of ``images/*`` tiles that lie on tissue and wholly outside the tumour in ``masks/*`` (same names).

    Crops sit on a ``crop_stride`` grid of every valid top-left corner; shuffling and flips make them random. Tiles
    are small (about 512 px), so they are decoded once and kept in memory.
    """

    def __init__(
        self,
        dataset_dir: str | Path,
        names: Sequence[str],
        patch_size: int = PATCH_SIZE,
        crop_stride: int = 16,
        min_tissue: float = 0.5,
    ) -> None:
        self.patch_size = patch_size
        self.images: list[np.ndarray] = []
        positions = []
        for name in names:
            image, tumour = read_tile(dataset_dir, name, patch_size)
            corners, _ = crop_corners(image, tumour, patch_size, crop_stride, min_tissue)
            positions.append(np.column_stack([np.full(len(corners), len(self.images)), corners]))
            self.images.append(image)
        self.positions = np.concatenate(positions) if positions else np.zeros((0, 3), dtype=int)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict:
        k, y, x = (int(v) for v in self.positions[i])
        crop = self.images[k][y : y + self.patch_size, x : x + self.patch_size]
        return {"image": np.ascontiguousarray(np.moveaxis(crop, -1, 0))}


def tile_names(dataset_dir: str | Path, exclude: Sequence[str] = ()) -> list[str]:
    """Image names under ``images/`` that have a mask, sorted, without those whose stem is in ``exclude``."""
    images = Path(dataset_dir) / "images"
    if not images.is_dir() or not (Path(dataset_dir) / "masks").is_dir():
        raise FileNotFoundError(
            f"{dataset_dir}: data_source 'tiles' needs images/ and masks/ folders with the same names."
        )
    excluded = {Path(e).stem for e in exclude}
    names = sorted(
        p.name for p in images.iterdir() if (Path(dataset_dir) / "masks" / p.name).is_file() and p.stem not in excluded
    )
    if not names:
        raise FileNotFoundError(f"{images}: no image with a matching mask in masks/.")
    return names


def wsi_normal_patches(
    slides: Sequence[str],
    wsi_reader: str = "cuCIM",
    target_mpp: float = TARGET_MPP,
    patch_size: int = PATCH_SIZE,
    stride: int = PATCH_SIZE,
    min_tissue: float = 0.5,
) -> list[PatchWSIDataset]:
    """One MONAI ``PatchWSIDataset`` per slide over its tissue grid at ``target_mpp``; patches stream from the file."""
    reader = make_reader(wsi_reader)
    datasets: list[PatchWSIDataset] = []
    for slide in slides:
        tiling = slide_tiling(slide, reader, target_mpp, patch_size, stride, min_tissue)
        patches, geometry = tiling.patches, tiling.geometry
        logger.info(
            "%s: %d tissue patches at level %d (%.3f µm/px)", slide, len(patches), geometry.level, geometry.level_mpp
        )
        samples = patches.samples(slide, geometry)
        resize = None
        if geometry.read_size != patch_size:
            resize = Resized(keys="image", spatial_size=(patch_size, patch_size), mode="area")
        datasets.append(
            PatchWSIDataset(samples, center_location=False, include_label=False, reader=reader, transform=resize)
        )
    return datasets
