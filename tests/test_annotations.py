import json

import numpy as np
import pytest

from conftest import requires_shared
from scripts.annotations import read_annotation, read_asap_xml, read_geojson
from scripts.regions import to_asap_xml, to_geojson, trace_regions


def rasterised_area(annotation, downsample: float = 4.0) -> float:
    xy = np.concatenate(annotation.tumour)
    origin = xy.min(0) - downsample
    shape = tuple((np.ceil((xy.max(0) - origin) / downsample) + 2).astype(int)[::-1])
    return annotation.rasterise(shape, downsample, tuple(origin)).sum() * downsample**2


@pytest.mark.parametrize(("name", "n_tumour", "n_exclusion"), [("tumor_001", 2, 0), ("tumor_016", 7, 2)])
def test_real_camelyon16_xml_groups_and_area(name, n_tumour, n_exclusion):
    annotation = read_asap_xml(requires_shared("annotations", f"{name}.xml"))
    assert (len(annotation.tumour), len(annotation.exclusion)) == (n_tumour, n_exclusion)
    assert rasterised_area(annotation) == pytest.approx(annotation.area_px(), rel=0.01)


def test_exclusions_are_subtracted():
    annotation = read_asap_xml(requires_shared("annotations", "tumor_016.xml"))
    with_holes = rasterised_area(annotation)
    annotation.exclusion = []
    assert rasterised_area(annotation) > with_holes


def test_real_excerpt_layout_parses():
    annotation = read_asap_xml(requires_shared("annotations", "tumor_001_excerpt.xml"))
    assert len(annotation.tumour) >= 1 and all(p.shape[1] == 2 for p in annotation.tumour)


def test_our_geojson_and_xml_read_back_with_the_same_area(tmp_path):
    mask = np.zeros((12, 12), bool)
    mask[2:9, 3:10] = True
    mask[4:6, 5:7] = False  # a hole
    regions = trace_regions(mask, None, pitch=100.0)
    (tmp_path / "r.geojson").write_text(json.dumps(to_geojson(regions, 0.25)))
    (tmp_path / "r.xml").write_text(to_asap_xml(regions))
    areas = [read_annotation(tmp_path / f).area_px() for f in ("r.geojson", "r.xml")]
    assert areas[0] == pytest.approx(areas[1])
    assert areas[0] == pytest.approx(45 * 100**2, rel=0.02)  # 49 cells minus the 4-cell hole


def test_xml_bomb_is_refused(tmp_path):
    bomb = tmp_path / "bomb.xml"
    bomb.write_text(
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
        "<ASAP_Annotations>&lol2;</ASAP_Annotations>"
    )
    with pytest.raises(ValueError, match="refused unsafe XML"):
        read_asap_xml(bomb)


def test_empty_self_intersecting_and_out_of_bounds_polygons(tmp_path):
    empty = tmp_path / "empty.xml"
    empty.write_text("<ASAP_Annotations><Annotations/></ASAP_Annotations>")
    assert read_asap_xml(empty).tumour == []
    bowtie = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [40, 40], [40, 0], [0, 40], [0, 0]]]},
    }
    outside = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [[[-50, -50], [900, -50], [900, 900], [-50, 900]]]},
    }
    path = tmp_path / "odd.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [bowtie, outside]}))
    mask = read_geojson(path).rasterise((10, 10), 10.0)
    assert mask.all()  # the out-of-bounds square covers everything and is clipped, not an error


def test_mask_tiff_rasterises_like_the_polygon(tmp_path):
    from scripts.annotations import LesionAnnotation, find_annotation
    from scripts.pyramid import write_pyramid

    mask = np.zeros((512, 768, 3), np.uint8)
    mask[128:384, 256:640] = 255
    write_pyramid(tmp_path / "s1_mask.tif", mask, 0.25, levels=3, compression="zlib")
    from_tiff = read_annotation(find_annotation(tmp_path, "s1"))
    polygon = LesionAnnotation(tumour=[np.array([[256, 128], [640, 128], [640, 384], [256, 384]], float)])
    for downsample in (1.0, 4.0, 8.0):
        shape = (int(512 / downsample), int(768 / downsample))
        a, b = from_tiff.rasterise(shape, downsample), polygon.rasterise(shape, downsample)
        assert a.sum() * downsample**2 == 256 * 384  # the mask's own pixels, exactly
        assert (a & b).sum() / (a | b).sum() > 0.94  # the polygon fill adds its boundary pixels at coarse levels
