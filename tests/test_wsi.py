import pytest

from conftest import requires_shared, write_slide
from scripts.tiling import select_geometry, slide_tiling
from scripts.wsi import make_reader


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
        slide_tiling(slide, reader, 0.972, 96, 96, 0.5)
    geometry = slide_tiling(slide, reader, 0.972, 96, 96, 0.5, assume_mpp=0.5).geometry
    assert geometry.mpp0 == 0.5


def test_unknown_reader_is_refused():
    with pytest.raises(ValueError, match="wsi_reader must be one of"):
        make_reader("bioformats")


def test_real_svs_gives_the_same_grid_with_cucim_and_openslide():
    svs = requires_shared("slides", "CMU-1-Small-Region.svs")
    grids = {}
    for backend in ("cuCIM", "OpenSlide"):
        tiling = slide_tiling(svs, make_reader(backend), 0.972, 96, 96, 0.5)
        grids[backend] = (tiling.patches.corners.tolist(), tiling.geometry)
    assert grids["cuCIM"] == grids["OpenSlide"]
    locations, geometry = grids["cuCIM"]
    assert geometry.mpp0 == pytest.approx(0.499)
    assert len(locations) > 10


@pytest.mark.parametrize("backend", ["cuCIM", "OpenSlide"])
@pytest.mark.parametrize(("slide", "stride"), [("slide_0243", 96), ("slide_0243", 64), ("slide_05", 96)])
@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_block_reads_give_monais_per_patch_reads_byte_for_byte(request, backend, slide, stride, workers):
    """Blocks (3 x 3, so some are partial) read by DataLoader workers, cut into patches and batched, equal reading each
    patch alone through MONAI's ``PatchWSIDataset`` (then resizing it), byte for byte, each under its own index."""
    import numpy as np
    from monai.data import PatchWSIDataset
    from monai.transforms import Resize

    from scripts.patch_stream import PatchLoaders

    path = request.getfixturevalue(slide)
    reader = make_reader(backend)
    tiling = slide_tiling(path, reader, 0.972, 96, stride, 0.5)
    patches, geometry = tiling.patches, tiling.geometry
    single = PatchWSIDataset(patches.samples(path, geometry), reader=reader, center_location=False, include_label=False)
    resize = Resize((96, 96), mode="area")
    expected = [
        np.asarray(resize(item["image"][:3]) if geometry.read_size != 96 else item["image"][:3]) for item in single
    ]
    loader = PatchLoaders(batch_size=7, read_block=3, num_workers=workers, pin_memory=False)(
        reader, path, patches, geometry
    )
    assert len(loader.dataset.blocks) < len(patches)
    batches = list(loader)
    assert len(batches) == loader.dataset.batches(7, workers)
    assert all(len(batch["index"]) == 7 for batch in batches[: -max(1, workers)])  # only each worker's last is short
    indices = np.concatenate([batch["index"].numpy() for batch in batches])
    assert sorted(indices) == list(range(len(patches)))
    images = np.concatenate([batch["image"].numpy() for batch in batches])
    assert images.dtype == expected[0].dtype
    for index, image in zip(indices, images, strict=True):
        assert image.tobytes() == expected[index].tobytes()


def test_a_reader_that_is_not_installed_names_the_install_and_the_other_reader(monkeypatch):
    from monai.utils import OptionalImportError

    import scripts.wsi

    def missing(backend):
        raise OptionalImportError("required package `cucim` is not installed")

    monkeypatch.setattr(scripts.wsi, "WSIReader", missing)
    with pytest.raises(ImportError, match="pip install --no-deps cucim-cu12, or pass --wsi_reader OpenSlide"):
        make_reader("cuCIM")


def test_a_model_without_a_recorded_tiling_gets_the_default_one(tmp_path, tiny_checkpoint):
    """Models trained before the tiling was recorded saw 96-px patches at 0.972 µm/px; a recorded one is held to."""
    import shutil

    import torch

    from scripts.tiling import PATCH_SIZE, TARGET_MPP, require_trained_tiling, trained_tiling

    assert trained_tiling(tiny_checkpoint) == {"target_mpp": 0.972, "patch_size": 96}
    require_trained_tiling(tiny_checkpoint, 0.9720000001, 96)  # a JSON round trip changes nothing
    old = tmp_path / "model.pt"
    shutil.copy(tiny_checkpoint, old)
    stats = torch.load(tiny_checkpoint.with_name("normal_stats.pt"), weights_only=True)
    del stats["tiling"]
    torch.save(stats, old.with_name("normal_stats.pt"))
    assert trained_tiling(old) == {"target_mpp": TARGET_MPP, "patch_size": PATCH_SIZE}
    with pytest.raises(ValueError, match=r"--target_mpp 0.5 is not the 0.972 that .* train a model at 0.5"):
        require_trained_tiling(old, 0.5, 96)
