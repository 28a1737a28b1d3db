"""Region polygons cover exactly the called cells: valid geometry, real holes only, the cells' area to the pixel."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from shapely.geometry import shape

from scripts.annotations import read_annotation
from scripts.regions import clean_mask, to_asap_xml, to_geojson, trace_regions, two_scale_map

PITCH = 96.0


def diagonal_pairs() -> np.ndarray:
    """Two blocks meeting at one corner, and a ring whose inside touches the outside only diagonally."""
    mask = np.zeros((12, 12), bool)
    mask[1:3, 1:3] = True
    mask[3:5, 3:5] = True
    mask[6:11, 6:11] = True
    mask[7:10, 7:10] = False  # a real hole
    mask[10, 10] = False  # the ring's corner cell gone: the ring's parts now meet at corners
    mask[8, 8] = True  # an island in the hole, touching nothing
    return mask


def checkerboard() -> np.ndarray:
    return np.indices((9, 11)).sum(0) % 2 == 0


@pytest.mark.parametrize("mask", [checkerboard(), diagonal_pairs()], ids=["checkerboard", "diagonal"])
def test_polygons_are_valid_and_cover_exactly_the_cells(mask, tmp_path):
    regions = trace_regions(mask, None, PITCH)
    union = shapely.unary_union([r.geometry for r in regions])
    cells = shapely.unary_union(
        [shapely.box(j * PITCH, i * PITCH, (j + 1) * PITCH, (i + 1) * PITCH) for i, j in np.argwhere(mask)]
    )
    assert all(r.geometry.is_valid for r in regions), [shapely.is_valid_reason(r.geometry) for r in regions]
    assert sum(r.area_px() for r in regions) == mask.sum() * PITCH**2
    assert union.symmetric_difference(cells).area == 0
    assert sum(r.n_patches for r in regions) == mask.sum()

    geojson = to_geojson(regions, mpp0=0.25)
    for feature in geojson["features"]:
        geometry = shape(feature["geometry"])
        assert geometry.is_valid, shapely.is_valid_reason(geometry)
        assert feature["properties"]["area_um2"] == pytest.approx(geometry.area * 0.25**2)
    (tmp_path / "r.geojson").write_text(json.dumps(geojson))
    (tmp_path / "r.xml").write_text(to_asap_xml(regions))
    for name in ("r.geojson", "r.xml"):
        read_back = read_annotation(tmp_path / name)
        assert read_back.area_px() == mask.sum() * PITCH**2, name


def test_holes_are_only_real_holes():
    regions = trace_regions(diagonal_pairs(), None, PITCH)
    holes = [len(p.interiors) for r in regions for p in r.polygons]
    assert sum(holes) == 1  # the ring's hole; the corner-touching blocks are separate parts, not holes
    assert len(regions) == 3  # 8-connected: the two blocks, the ring, the island
    parts = sorted(len(r.polygons) for r in regions)
    assert parts == [1, 1, 2]  # the two corner-touching blocks are one region of two polygons


def test_a_call_needs_both_scales():
    """``two_scale_map`` takes out the patches below the score floor; without a floor the z-map is left alone."""
    z_map = np.array([[3.0, 3.0], [0.0, np.nan]])
    cells = np.array([[0, 0], [0, 1], [1, 0]])
    scores = np.array([20.0, 12.0, 30.0])
    assert two_scale_map(z_map, cells, scores, -np.inf) is z_map
    candidates = two_scale_map(z_map, cells, scores, 15.0)
    np.testing.assert_array_equal(np.isnan(candidates), [[False, True], [False, True]])
    np.testing.assert_array_equal(clean_mask(candidates, 2.0, 1), [[True, False], [False, False]])
    assert not np.isnan(z_map[0, 1])  # the slide's own map is not changed


@pytest.mark.parametrize("stride", [48, 32, 72, 128])
def test_a_region_covers_its_called_patches_whole_at_any_stride(stride):
    """With a stride other than the patch side, a called cell stands for its whole patch (it had been drawn as a
    stride-sized square at the patch's corner: a quarter of it at stride 48)."""
    size = 96
    mask = checkerboard() | diagonal_pairs()[:9, :11]
    regions = trace_regions(mask, None, stride, size=size)
    union = shapely.unary_union([r.geometry for r in regions])
    patches = shapely.unary_union(
        [shapely.box(j * stride, i * stride, j * stride + size, i * stride + size) for i, j in np.argwhere(mask)]
    )
    assert union.is_valid and union.symmetric_difference(patches).area == 0
    assert sum(r.n_patches for r in regions) == int(mask.sum())
