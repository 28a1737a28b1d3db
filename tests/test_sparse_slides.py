"""Tumour-sparse calibration slides: burden, compact clusters, annotation matching the tumour cells; robust z."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import requires_shared, tissue_like
from scripts.annotations import read_asap_xml
from scripts.scores import slide_reference
from scripts.wsi import make_reader
from tools.sparse_slides import (
    BLOCK,
    BURDENS,
    CELL,
    MIN_REGION_CROPS,
    TileTissue,
    build,
    cluster_mask,
    disjoint_tumour,
    normal_blocks,
)


@pytest.mark.parametrize(("burden", "clusters"), [(0.02, 1), (0.05, 2), (0.09, 2)])
def test_clusters_cover_the_burden_as_compact_separate_discs(burden, clusters):
    from skimage import measure

    mask = cluster_mask((20, 24), burden, clusters, np.random.default_rng(clusters))
    assert mask.sum() == pytest.approx(burden * 20 * 24, abs=clusters)
    parts = measure.regionprops(measure.label(mask, connectivity=2))
    assert len(parts) == clusters
    assert all(p.solidity > 0.8 for p in parts)  # discs, not scattered cells


@pytest.fixture(scope="module")
def large_tiles(tmp_path_factory):
    """Three 512-px tissue tiles, tumour in their top-left 288 x 288 px: 5 normal regions and 9 tumour crops
    sharing no pixels per tile."""
    from skimage import io

    root = tmp_path_factory.mktemp("large_tiles")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(2)
    for k in range(3):
        mask = np.zeros((512, 512), np.uint8)
        mask[:288, :288] = 255
        io.imsave(root / "images" / f"t{k}.png", tissue_like(rng, (512, 512)), check_contrast=False)
        io.imsave(root / "masks" / f"t{k}.png", mask, check_contrast=False)
    return root


def test_builder_writes_slides_whose_annotation_is_the_tumour_cells(large_tiles, tmp_path):
    ids = build(tmp_path, large_tiles, ["t0.png", "t1.png", "t2.png"], None, slides=3, grid=(10, 10), seed=1)
    assert ids == ["sparse_00", "sparse_01", "sparse_02", "normal_00"]
    reader = make_reader("tifffile")
    for k, slide in enumerate(ids):
        wsi = reader.read(str(tmp_path / f"{slide}.tif"))
        assert tuple(reader.get_size(wsi, 0)) == (10 * CELL, 10 * CELL)
        annotation = read_asap_xml(tmp_path / f"{slide}.xml")
        expected = 0 if slide.startswith("normal") else round(BURDENS[k] * 100)
        assert annotation.area_px() == expected * CELL**2


def test_normal_tissue_repeats_only_within_a_block_of_cells():
    # each region's crops are flat images of the region's number, so a cell shows where it was cut from
    regions = [[np.full((CELL, CELL, 3), r, np.uint8) for _ in range(MIN_REGION_CROPS)] for r in range(20)]
    image = normal_blocks((10, 10), regions, np.random.default_rng(0))
    source = image[::CELL, ::CELL, 0]  # one value per cell
    blocks = [np.unique(source[i : i + BLOCK, j : j + BLOCK]) for i in range(0, 10, BLOCK) for j in range(0, 10, BLOCK)]
    assert all(len(b) == 1 for b in blocks)  # one region per block
    assert len({int(b[0]) for b in blocks}) == len(blocks) == 9  # and no region in two blocks
    with pytest.raises(ValueError, match="the tiles give 20 tissue regions .* needs 25 .* smaller --grid"):
        normal_blocks((20, 20), regions, np.random.default_rng(0))


def test_tumour_cells_of_a_slide_share_no_pixels():
    corners = np.array([(0, 0, 0), (0, 0, 48), (0, 0, 96), (0, 96, 0), (1, 0, 0), (0, 48, 48)])
    tissue = TileTissue([], [np.full((CELL, CELL, 3), k, np.uint8) for k in range(6)], corners)
    for seed in range(20):
        picked = [int(c[0, 0, 0]) for c in disjoint_tumour(tissue, 2, np.random.default_rng(seed))]
        for a in picked:
            for b in picked:
                ta, ya, xa = corners[a]
                tb, yb, xb = corners[b]
                assert a == b or ta != tb or abs(ya - yb) >= CELL or abs(xa - xb) >= CELL
    with pytest.raises(ValueError, match="tumour crops that share no pixels, a slide needs 5"):
        disjoint_tumour(tissue, 5, np.random.default_rng(0))


def test_real_sparse_slides_from_held_out_tiles_and_pcam_normals(tmp_path):
    tiles = requires_shared("camelyon16_tiles")
    normals = requires_shared("pcam_normals")
    names = ["10692", "10693", "10694", "10695", "10696", "10697"]
    ids = build(tmp_path, tiles, names, normals, slides=3, grid=(12, 12), seed=0)
    fractions = [read_asap_xml(tmp_path / f"{s}.xml").area_px() / (144 * CELL**2) for s in ids]
    assert fractions == pytest.approx([0.021, 0.049, 0.090, 0.0], abs=0.005)


def test_median_mad_is_not_dragged_by_a_tumour_tail():
    rng = np.random.default_rng(0)
    normal = rng.normal(0, 1, 950)
    scores = np.concatenate([normal, rng.normal(6, 1, 50)])  # 5 % tumour, far out
    mean, std = slide_reference(scores, "mean_std")
    median, spread = slide_reference(scores, "median_mad")
    assert abs(median) < 0.15 and spread == pytest.approx(1.0, abs=0.15)
    assert std > 1.4  # the tail inflates the plain spread, so tumour z falls
    assert (6 - median) / spread > (6 - mean) / std + 1


def test_tumour_free_slides_alternate_sources_and_calibration_and_test_share_no_patch(large_tiles, tmp_path):
    """PCam-like patches, each a flat colour of its own, show which patch every cell of a tumour-free slide is."""
    from skimage import io

    normals = tmp_path / "normals"
    normals.mkdir()
    for k in range(100):  # grey 40 + 2k: patch k
        io.imsave(normals / f"p{k:03d}.png", np.full((CELL, CELL, 3), 40 + 2 * k, np.uint8), check_contrast=False)
    reader = make_reader("tifffile")

    def cells(folder, slide: str) -> np.ndarray:  # the patch each cell shows (its grey, JPEG-compressed)
        image, _ = reader.get_data(reader.read(str(folder / f"{slide}.tif")), level=0)
        grey = np.asarray(image)[0, CELL // 2 :: CELL, CELL // 2 :: CELL].astype(float)
        return np.round((grey - 40) / 2).astype(int)

    names = ["t0.png", "t1.png", "t2.png"]
    kept = {}
    for part in ("held_out", "rest"):
        out = tmp_path / part
        ids = build(out, large_tiles, names, normals, slides=1, grid=(4, 5), seed=0, normal_slides=3, normals_part=part)
        assert ids == ["sparse_00", "normal_00", "normal_01", "normal_02"]
        sources = pd.read_csv(out / "sources.csv")
        assert list(sources["slide"]) == ids and list(sources["tissue"]) == ["tiles", "patches", "tiles", "patches"]
        assert all(read_asap_xml(out / f"{s}.xml").area_px() == 0 for s in ids[1:])
        kept[part] = [cells(out, "normal_00"), cells(out, "normal_02")]  # normal_01 is the tiles' tissue
        assert len(np.unique(cells(out, "normal_01"))) > 3
    # each slide's 20 cells are 20 patches; the held-out fifth (20) is used once before any repeats, the rest (80)
    # fills both slides without repeating
    for part in ("held_out", "rest"):
        assert all(len(np.unique(c)) == 20 for c in kept[part])
    assert len(np.unique(np.concatenate([c.ravel() for c in kept["rest"]]))) == 40
    held_out, rest = (set(np.concatenate([c.ravel() for c in kept[p]]).tolist()) for p in ("held_out", "rest"))
    assert not held_out & rest
    with pytest.raises(ValueError, match="normals_part must be one of"):
        build(tmp_path / "x", large_tiles, names, normals, slides=1, grid=(4, 5), normals_part="training")
