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
        assert np.array_equal(a, b)  # both follow the pixel-centre rule


def test_a_square_covers_exactly_the_pixels_whose_centres_it_holds():
    from scripts.annotations import LesionAnnotation

    square = np.array([[0, 0], [96, 0], [96, 96], [0, 96]], float)
    placements = ((square, 1.0, (0, 0)), (square[::-1] + 10, 1.0, (10, 10)), (square * 4, 4.0, (0, 0)))
    for xy, downsample, origin in placements:
        mask = LesionAnnotation(tumour=[xy]).rasterise((128, 128), downsample, origin)
        assert mask.sum() == 96 * 96 and mask[:96, :96].all()
    # a triangle: exactly the pixels whose centre matplotlib's point-in-polygon test puts inside
    from matplotlib.path import Path

    triangle = np.array([[3.2, 1.7], [80.9, 10.3], [30.4, 70.8]])
    cols, rows = np.meshgrid(np.arange(100) + 0.5, np.arange(100) + 0.5)
    inside = Path(triangle).contains_points(np.c_[cols.ravel(), rows.ravel()]).reshape(100, 100)
    assert np.array_equal(LesionAnnotation(tumour=[triangle]).rasterise((100, 100), 1.0), inside)


def asap_annotation(name: str, group: str, xy: list) -> str:
    points = "".join(f'<Coordinate Order="{k}" X="{x}" Y="{y}"/>' for k, (x, y) in enumerate(xy))
    return f'<Annotation Name="{name}" PartOfGroup="{group}"><Coordinates>{points}</Coordinates></Annotation>'


def test_group_names_as_users_write_them_and_what_is_left_out_is_named(tmp_path, caplog):
    square = [(0, 0), (96, 0), (96, 96), (0, 96)]
    groups = {"a": "tumor", "b": "TUMOR", "c": "_1", "d": "Metastases", "e": "exclusion", "f": "_2", "g": "Stroma"}
    xml = "".join(asap_annotation(name, group, square) for name, group in groups.items())
    xml += asap_annotation("line", "Tumor", [(0, 0), (50, 50)]) + asap_annotation("dot", "_0", [(5, 5)] * 3)
    path = tmp_path / "hostile.xml"
    path.write_text(f"<ASAP_Annotations><Annotations>{xml}</Annotations></ASAP_Annotations>")
    with caplog.at_level("WARNING"):
        annotation = read_asap_xml(path)
    assert (len(annotation.tumour), len(annotation.exclusion)) == (4, 2)
    assert f"{path}: group(s) 'Stroma' (1 polygon) are neither tumour" in caplog.text
    assert "2 polygon(s) with fewer than 3 distinct vertices" in caplog.text and "'line'" in caplog.text

    def feature(classification: str | None, ring: list) -> dict:
        properties = {"classification": {"name": classification}} if classification else {}
        return {"type": "Feature", "properties": properties, "geometry": {"type": "Polygon", "coordinates": [ring]}}

    ring = [list(p) for p in square] + [[0, 0]]
    features = [feature(None, ring), feature("tumor", ring), feature("Ignore*", ring), feature("Necrosis", ring),
                feature("Tumor", [[0, 0], [9, 9], [0, 0]])]  # fmt: skip
    path = tmp_path / "hostile.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    caplog.clear()
    with caplog.at_level("WARNING"):
        annotation = read_geojson(path)
    assert (len(annotation.tumour), len(annotation.exclusion)) == (2, 1)
    assert "'Necrosis' (1 polygon)" in caplog.text and "feature 4, ring 0" in caplog.text
