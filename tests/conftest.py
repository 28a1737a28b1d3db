"""Fixtures built on the fly: PCam-layout HDF5, tiles with tumour masks, pyramidal TIFFs; and the real shared data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from skimage import io

from scripts.pyramid import write_pyramid

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
SHARED_DATA = Path(os.environ.get("SKIP96_SHARED_DATA", REPO.parent / "shared" / "data"))
TINY_NET = {"channels": [8, 8, 16, 16, 16, 16], "latent_channels": 8}


def tissue_like(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Pink-purple speckle with H&E-like saturation, so tissue detection sees it as tissue."""
    base = np.array([200, 120, 180], dtype=np.float64)
    noise = rng.normal(0, 25, (*shape, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def requires_shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data {path} is absent (set SKIP96_SHARED_DATA to the shared data folder)")
    return path


@pytest.fixture(scope="session")
def pcam_dir(tmp_path_factory) -> Path:
    """Both official splits; pixel value 0 of image i is i % 256, label is 1 for every third patch."""
    root = tmp_path_factory.mktemp("pcam")
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("valid", 12)):
        x = tissue_like(rng, (n * 96, 96)).reshape(n, 96, 96, 3)
        x[:, 0, 0, 0] = np.arange(n) % 256
        y = (np.arange(n) % 3 == 0).astype(np.uint8).reshape(n, 1, 1, 1)
        with h5py.File(root / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as f:
            f.create_dataset("x", data=x, chunks=(1, 96, 96, 3))
        with h5py.File(root / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
            f.create_dataset("y", data=y)
    return root


@pytest.fixture(scope="session")
def tiles_dir(tmp_path_factory) -> Path:
    """Four 256-px tiles: tissue with a white glass strip at the bottom and a tumour square at the top left."""
    root = tmp_path_factory.mktemp("tiles")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    for k in range(4):
        image = tissue_like(rng, (256, 256))
        image[200:] = 245
        mask = np.zeros((256, 256), dtype=np.uint8)
        mask[:100, :100] = 255
        io.imsave(root / "images" / f"t{k}.png", image, check_contrast=False)
        io.imsave(root / "masks" / f"t{k}.png", mask, check_contrast=False)
    return root


def write_calibration_tissue(root: Path, rng: np.random.Generator) -> tuple[Path, Path]:
    """What ``tools/sparse_slides.py`` builds calibration slides from: six 512-px tiles (``images/``, ``masks/``) and
    60 normal patches, enough tissue for 6 sparse and 12 tumour-free slides of 16 x 16 cells."""
    tiles = root / "calibration_tiles"
    for folder in ("images", "masks"):
        (tiles / folder).mkdir(parents=True)
    for k in range(6):  # 5 normal regions a tile, and tumour crops enough for 23 that share no pixels
        mask = np.zeros((512, 512), np.uint8)
        mask[:288, :288] = 255
        io.imsave(tiles / "images" / f"t{k}.png", tissue_like(rng, (512, 512)), check_contrast=False)
        io.imsave(tiles / "masks" / f"t{k}.png", mask, check_contrast=False)
    normals = root / "normal_patches"
    normals.mkdir()
    for k in range(60):
        io.imsave(normals / f"p{k:02d}.png", tissue_like(rng, (96, 96)), check_contrast=False)
    return tiles, normals


@pytest.fixture
def normals_dir(tmp_path):
    """A PCam-like folder: images/ of 96-px JPEGs and a manifest whose last two rows are not normal."""
    rng = np.random.default_rng(5)
    (tmp_path / "images").mkdir()
    rows = ["file,kaggle_id,label"]
    for k in range(22):
        io.imsave(tmp_path / "images" / f"p{k:02d}.jpg", tissue_like(rng, (96, 96)), check_contrast=False)
        rows.append(f"p{k:02d}.jpg,p{k:02d},{int(k >= 20)}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def write_slide(path: Path, mpp: float | None, size: tuple[int, int] = (1536, 2048), levels: int = 3) -> Path:
    """A pyramidal TIFF: white glass with a tissue block in the middle half."""
    rng = np.random.default_rng(2)
    image = np.full((*size, 3), 245, dtype=np.uint8)
    h, w = size
    image[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = tissue_like(rng, (h // 2, w // 2))
    return write_pyramid(path, image, mpp, levels=levels)


@pytest.fixture(scope="session")
def slide_0243(tmp_path_factory) -> Path:
    return write_slide(tmp_path_factory.mktemp("slides") / "cam16_like.tif", 0.243, size=(3072, 4096), levels=4)


@pytest.fixture(scope="session")
def slide_05(tmp_path_factory) -> Path:
    return write_slide(tmp_path_factory.mktemp("slides") / "scan_05.tif", 0.5)


def write_json(path: Path, content) -> Path:
    path.write_text(json.dumps(content))
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """Random tiny-network weights (``model.pt``) with the ``normal_stats.pt`` that training writes beside them."""
    import torch

    from scripts.model_files import save_normal_stats
    from tests_helpers import tiny_net

    torch.manual_seed(0)
    net = tiny_net()
    dim = TINY_NET["latent_channels"] * 9
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(net.state_dict(), path)
    norm_stats = {"mean": [0.7, 0.5, 0.7], "std": [0.15, 0.2, 0.15]}
    latent_stats = {"mean": torch.zeros(dim), "precision": torch.eye(dim), "num_samples": 1}
    save_normal_stats(path, net, norm_stats, latent_stats, tiling={"target_mpp": 0.972, "patch_size": 96})
    return path
