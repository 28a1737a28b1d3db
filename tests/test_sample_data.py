"""The stitched slides built from tiles: the demo slide's recipe, and calibration slides from the training tiles."""

from __future__ import annotations

import numpy as np
import tifffile
from skimage import io

from conftest import tissue_like
from scripts.annotations import read_asap_xml
from scripts.datasets import DEMO_TILES
from tools.sample_data import write_calibration_slides


def test_calibration_slides_stitch_every_eight_training_tiles_and_their_masks(tmp_path):
    tiles = tmp_path / "tiles"
    (tiles / "images").mkdir(parents=True)
    (tiles / "masks").mkdir()
    rng = np.random.default_rng(0)
    names = [*DEMO_TILES, *(f"t{k:02d}" for k in range(9))]
    for k, name in enumerate(names):
        mask = np.zeros((64, 64), dtype=np.uint8)
        mask[: 8 * (k % 5)] = 255  # a different tumour band per tile
        io.imsave(tiles / "images" / f"{name}.png", tissue_like(rng, (64, 64)), check_contrast=False)
        io.imsave(tiles / "masks" / f"{name}.png", mask, check_contrast=False)

    assert write_calibration_slides(tiles, tmp_path / "cal") == ["camelyon16_train_0"]  # the 9th tile is left out

    image = tifffile.imread(tmp_path / "cal" / "camelyon16_train_0.tif", level=0)
    assert image.shape == (128, 256, 3)
    first_eight = [io.imread(tiles / "masks" / f"t{k:02d}.png") > 127 for k in range(8)]
    expected = np.block([first_eight[:4], first_eight[4:]])
    annotation = read_asap_xml(tmp_path / "cal" / "camelyon16_train_0.xml").rasterise(expected.shape, 1.0)
    assert (annotation == expected).mean() > 0.99
    assert not (tmp_path / "cal" / "camelyon16_train_1.tif").exists()
