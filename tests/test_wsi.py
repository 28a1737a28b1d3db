import pytest

from conftest import requires_shared, write_slide
from scripts.wsi import make_reader, select_geometry, slide_patches


@pytest.mark.parametrize("backend", ["cuCIM", "OpenSlide", "tifffile"])
def test_cam16_resolution_reads_level_2(slide_0243, backend):
    reader = make_reader(backend)
    geometry = select_geometry(reader, reader.read(str(slide_0243)), slide_0243, 0.972, 96, 96)
    assert (geometry.level, geometry.read_size, geometry.size0, geometry.stride0) == (2, 96, 384, 384)


def test_half_micron_scan_is_read_at_level_1_and_resized(slide_05):
    reader = make_reader("tifffile")
    geometry = select_geometry(reader, reader.read(str(slide_05)), slide_05, 0.972, 96, 96)
    assert geometry.level == 1
    assert geometry.read_size == 93  # 96 px * 0.972 / 1.0 µm/px, resized to 96


def test_no_level_within_tolerance_reads_the_next_finer_level(tmp_path):
    slide = write_slide(tmp_path / "coarse.tif", 0.3, levels=3)  # levels at 0.3, 0.6, 1.2 µm/px
    reader = make_reader("tifffile")
    geometry = select_geometry(reader, reader.read(str(slide)), slide, 0.972, 96, 96)
    assert geometry.level == 1
    assert geometry.read_size == round(96 * 0.972 / 0.6)


@pytest.mark.parametrize("backend", ["cuCIM", "OpenSlide", "tifffile"])
def test_missing_resolution_needs_assume_mpp(tmp_path, backend):
    slide = write_slide(tmp_path / "nompp.tif", None, levels=2)
    reader = make_reader(backend)
    with pytest.raises(ValueError, match="assume_mpp"):
        slide_patches(slide, reader, 0.972, 96, 96, 0.5)
    _, geometry, _ = slide_patches(slide, reader, 0.972, 96, 96, 0.5, assume_mpp=0.5)
    assert geometry.mpp0 == 0.5


def test_unknown_reader_is_refused():
    with pytest.raises(ValueError, match="wsi_reader must be one of"):
        make_reader("bioformats")


def test_real_svs_gives_the_same_grid_with_cucim_and_openslide():
    svs = requires_shared("slides", "CMU-1-Small-Region.svs")
    grids = {}
    for backend in ("cuCIM", "OpenSlide"):
        samples, geometry, _ = slide_patches(svs, make_reader(backend), 0.972, 96, 96, 0.5)
        grids[backend] = ([s["location"] for s in samples], geometry)
    assert grids["cuCIM"] == grids["OpenSlide"]
    locations, geometry = grids["cuCIM"]
    assert geometry.mpp0 == pytest.approx(0.499)
    assert len(locations) > 10


@pytest.mark.parametrize("backend", ["cuCIM", "OpenSlide"])
@pytest.mark.parametrize(("slide", "stride"), [("slide_0243", 96), ("slide_0243", 64), ("slide_05", 96)])
def test_block_reads_give_the_patches_of_per_patch_reads(request, backend, slide, stride):
    """Blocks (3 x 3, so some are partial) cut into patches equal reading each patch alone (then resizing it)."""
    import numpy as np
    from monai.data import PatchWSIDataset
    from monai.transforms import Resize

    from scripts.inference import slide_dataset

    path = request.getfixturevalue(slide)
    reader = make_reader(backend)
    samples, geometry, _ = slide_patches(path, reader, 0.972, 96, stride, 0.5)
    single = PatchWSIDataset(samples, reader=reader, center_location=False, include_label=False)
    expected = [np.asarray(item["image"]) for item in single]
    blocks = slide_dataset(reader, samples, geometry, read_block=3)
    assert len(blocks) < len(samples)
    patches = {item["index"]: np.asarray(item["image"]) for block in blocks for item in block}
    assert sorted(patches) == list(range(len(samples)))
    resize = Resize((96, 96), mode="area")
    for index, patch in patches.items():
        assert patch.shape == (3, 96, 96)
        np.testing.assert_allclose(patch, np.asarray(resize(expected[index][:3])), atol=1e-4)
