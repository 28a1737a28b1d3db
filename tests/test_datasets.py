import pickle

import numpy as np
import pytest
from skimage import color, io
from torch.utils.data import DataLoader

from scripts.datasets import PCamPatches, TileNormals, tile_names
from scripts.tissue import hsv_saturation, tissue_mask, window_fraction
from scripts.training_data import normal_tissue_splits
from scripts.transforms import compute_channel_stats
from tests_helpers import write_datalist


def test_pcam_uses_only_normals_and_reads_lazily(pcam_dir):
    ds = PCamPatches(pcam_dir)
    # label 1 on every third patch: 20 of 30 train and 8 of 12 valid patches are normal
    assert len(ds) == 28
    assert ds._handles == {}, "no HDF5 image file may be opened before a patch is asked for"
    ids = sorted((int(k), int(ds[i]["image"][0, 0, 0])) for i, (k, _) in enumerate(ds.index))
    assert all(i % 3 != 0 for _, i in ids)
    assert ds[0]["image"].shape == (3, 96, 96)
    clone = pickle.loads(pickle.dumps(ds))  # DataLoader workers receive a copy without open handles
    assert clone._handles == {}
    batches = list(DataLoader(ds, batch_size=7, num_workers=2))
    assert sum(len(b["image"]) for b in batches) == 28


def test_pcam_missing_files_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="camelyonpatch_level_2_split_train_x.h5"):
        PCamPatches(tmp_path)


def test_tile_crops_lie_on_tissue_and_outside_tumour(tiles_dir):
    ds = TileNormals(tiles_dir, tile_names(tiles_dir), crop_stride=8)
    assert len(ds) > 0
    tumour = {k: io.imread(tiles_dir / "masks" / f"t{k}.png") > 127 for k in range(4)}
    tissue = {k: tissue_mask(io.imread(tiles_dir / "images" / f"t{k}.png")) for k in range(4)}
    for k, y, x in ds.positions:
        assert not tumour[k][y : y + 96, x : x + 96].any()
        assert tissue[k][y : y + 96, x : x + 96].mean() >= 0.5
    # the glass strip (rows >= 200) keeps crops from starting below row 200 - 48
    assert ds.positions[:, 1].max() <= 200 - 48
    assert ds[0]["image"].shape == (3, 96, 96)


def test_tile_exclusion_by_stem(tiles_dir):
    assert tile_names(tiles_dir, exclude=["t0", "t3"]) == ["t1.png", "t2.png"]


@pytest.mark.parametrize("source", ["pcam", "tiles"])
def test_splits_are_seeded_disjoint_and_85_15(source, pcam_dir, tiles_dir):
    root = pcam_dir if source == "pcam" else tiles_dir
    a = normal_tissue_splits(source, root, seed=42)
    b = normal_tissue_splits(source, root, seed=42)
    if source == "pcam":
        assert list(a.train.indices) == list(b.train.indices)
        assert not set(a.train.indices) & set(a.val.indices)
        assert len(a.val) == round(28 * 0.15)
    else:  # split by tile: 4 tiles -> 3 train, 1 validation
        assert len(a.train.images) == 3 and len(a.val.images) == 1
        assert not any(np.array_equal(t, v) for t in a.train.images for v in a.val.images)


def test_wsi_source_streams_patches_at_target_resolution(slide_0243, tmp_path):
    datalist = write_datalist(tmp_path / "normals.json", [slide_0243])
    splits = normal_tissue_splits("wsi", datalist=datalist, wsi_reader="tifffile")
    patch = splits.train[0]["image"]
    assert tuple(patch.shape) == (3, 96, 96)
    # tissue spans rows 768-2304 and cols 1024-3072 of level 0: 4 x 5 whole cells of the 384-px grid
    assert len(splits.train) + len(splits.val) == 20


def test_unknown_source_is_refused():
    with pytest.raises(ValueError, match="data_source must be one of"):
        normal_tissue_splits("imagenet", "/nowhere")


def test_channel_stats_match_numpy(pcam_dir):
    ds = PCamPatches(pcam_dir)
    stats = compute_channel_stats(ds, num_samples=1000)
    pixels = np.stack([ds[i]["image"] for i in range(len(ds))]).astype(np.float64) / 255
    assert np.allclose(stats.mean, pixels.mean(axis=(0, 2, 3)))
    assert np.allclose(stats.std, pixels.std(axis=(0, 2, 3)), atol=1e-5)


def test_window_fraction_matches_brute_force():
    rng = np.random.default_rng(0)
    mask = rng.random((40, 50)) > 0.6
    fractions = window_fraction(mask, 8)
    assert fractions.shape == (33, 43)
    for y, x in [(0, 0), (5, 17), (32, 42)]:
        assert fractions[y, x] == pytest.approx(mask[y : y + 8, x : x + 8].mean(), abs=1e-6)


def test_hsv_saturation_is_scikit_images_bit_for_bit():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    rgb[0, :4] = [[0, 0, 0], [255, 255, 255], [128, 128, 128], [200, 180, 190]]  # black, white, grey, s = 0.1 exactly
    assert np.array_equal(hsv_saturation(rgb), color.rgb2hsv(rgb)[..., 1])


def test_tissue_mask_on_blank_and_white():
    assert not tissue_mask(np.full((64, 64, 3), 255, np.uint8)).any()
    assert not tissue_mask(np.zeros((64, 64, 3), np.uint8)).any()


def test_patch_folder_follows_its_manifest_and_holds_out_a_fixed_part(normals_dir):
    from scripts.datasets import PatchFolderNormals, held_out_normals, normal_patch_files

    files = normal_patch_files(normals_dir)
    assert [f.name for f in files] == [f"p{k:02d}.jpg" for k in range(20)]  # label 1 rows left out
    train, held_out = held_out_normals(files, 0.2)
    assert len(held_out) == 4 and not set(train) & set(held_out)
    assert held_out_normals(list(reversed(files)), 0.2) == (train, held_out)  # same split whatever the order
    dataset = PatchFolderNormals(train)
    assert len(dataset) == 16 and dataset[0]["image"].shape == (3, 96, 96) and dataset[0]["image"].dtype == np.uint8
    (normals_dir / "manifest.csv").unlink()
    assert len(normal_patch_files(normals_dir)) == 22  # no manifest: every image of images/


def test_patch_folder_mixes_into_tiles_without_its_held_out_part(tiles_dir, normals_dir):
    tiles_only = normal_tissue_splits("tiles", tiles_dir)
    mixed = normal_tissue_splits("tiles", tiles_dir, normals_dir=normals_dir, normals_holdout=0.2)
    assert len(mixed.train) + len(mixed.val) == len(tiles_only.train) + len(tiles_only.val) + 16
    alone = normal_tissue_splits("patches", normals_dir=normals_dir)
    assert (len(alone.train), len(alone.val)) == (14, 2)
    with pytest.raises(ValueError, match="needs --normals_dir"):
        normal_tissue_splits("patches")


def test_patch_folder_refuses_patches_of_another_size(normals_dir):
    from scripts.datasets import PatchFolderNormals

    io.imsave(normals_dir / "images" / "small.png", np.full((64, 64, 3), 200, np.uint8), check_contrast=False)
    with pytest.raises(ValueError, match="small.png: patches are 64 x 64 x 3"):
        PatchFolderNormals([normals_dir / "images" / "small.png"])


def test_real_pcam_normals_folder():
    from conftest import requires_shared
    from scripts.datasets import PatchFolderNormals, held_out_normals, normal_patch_files

    files = normal_patch_files(requires_shared("pcam_normals"))
    train, held_out = held_out_normals(files, 0.2)
    assert (len(files), len(train), len(held_out)) == (1967, 1574, 393)
    assert len(PatchFolderNormals(train[:50])) == 50


def test_patches_in_memory_hold_every_patch_of_the_source(pcam_dir, monkeypatch):
    import os

    import torch

    from scripts.training_data import PatchesInMemory

    source = PCamPatches(pcam_dir)
    memory = PatchesInMemory(source, num_workers=2)
    assert len(memory) == len(source) and memory.images.dtype == torch.uint8
    for i in range(len(source)):
        assert np.array_equal(memory[i]["image"].numpy(), source[i]["image"])
    monkeypatch.setattr(os, "sysconf", lambda name: 1 if name == "SC_AVPHYS_PAGES" else 4096)
    with pytest.raises(MemoryError, match="pass --preload False"):
        PatchesInMemory(source)
