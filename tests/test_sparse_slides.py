"""Tumour-sparse calibration slides: burden, compact clusters, annotation matching the tumour cells; robust z."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import requires_shared
from scripts.annotations import read_asap_xml
from scripts.inference import slide_reference
from scripts.sparse_slides import BURDENS, CELL, build, cluster_mask
from scripts.wsi import make_reader


@pytest.mark.parametrize(("burden", "clusters"), [(0.02, 1), (0.05, 2), (0.09, 2)])
def test_clusters_cover_the_burden_as_compact_separate_discs(burden, clusters):
    from skimage import measure

    mask = cluster_mask((20, 24), burden, clusters, np.random.default_rng(clusters))
    assert mask.sum() == pytest.approx(burden * 20 * 24, abs=clusters)
    parts = measure.regionprops(measure.label(mask, connectivity=2))
    assert len(parts) == clusters
    assert all(p.solidity > 0.8 for p in parts)  # discs, not scattered cells


def test_builder_writes_slides_whose_annotation_is_the_tumour_cells(tiles_dir, tmp_path):
    ids = build(tmp_path, tiles_dir, ["t0.png", "t1.png"], None, slides=3, grid=(10, 10), seed=1)
    assert ids == ["sparse_00", "sparse_01", "sparse_02", "normal_00"]
    reader = make_reader("tifffile")
    for k, slide in enumerate(ids):
        wsi = reader.read(str(tmp_path / f"{slide}.tif"))
        assert tuple(reader.get_size(wsi, 0)) == (10 * CELL, 10 * CELL)
        annotation = read_asap_xml(tmp_path / f"{slide}.xml")
        expected = 0 if slide.startswith("normal") else round(BURDENS[k] * 100)
        assert annotation.area_px() == expected * CELL**2


def test_real_sparse_slides_from_held_out_tiles_and_pcam_normals(tmp_path):
    tiles = requires_shared("camelyon16_tiles")
    normals = requires_shared("pcam_normals")
    ids = build(tmp_path, tiles, ["10692", "10693"], normals, slides=3, grid=(12, 12), seed=0)
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
