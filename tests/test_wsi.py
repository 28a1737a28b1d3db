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
