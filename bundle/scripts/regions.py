"""Tumour regions on the patch grid: threshold, clean-up, polygons in level-0 pixels, GeoJSON and ASAP XML."""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree import ElementTree

import numpy as np
from skimage import measure, morphology


def clean_mask(z_map: np.ndarray, z_threshold: float, min_region_tiles: int) -> np.ndarray:
    """Grid cells above ``z_threshold`` (NaN = off tissue = never), without regions smaller than
    ``min_region_tiles`` cells and with holes smaller than that filled."""
    mask = np.nan_to_num(z_map, nan=-np.inf) > z_threshold
    if min_region_tiles > 1:
        mask = morphology.remove_small_objects(mask, max_size=min_region_tiles - 1)
        mask = morphology.remove_small_holes(mask, max_size=min_region_tiles - 1)
    return mask


def shoelace_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


@dataclass
class Region:
    """One connected tumour region: an outer ring and holes, as (x, y) level-0 pixel vertices (closed rings)."""

    outer: np.ndarray
    holes: list[np.ndarray]
    mean_z: float
    n_patches: int

    def area_px(self) -> float:
        return shoelace_area(self.outer) - sum(shoelace_area(h) for h in self.holes)


def trace_regions(mask: np.ndarray, z_map: np.ndarray | None, pitch: float, tolerance: float = 0.0) -> list[Region]:
    """Polygons following the cell edges of each connected region of ``mask``.

    The grid is upsampled 2x so that marching squares runs along cell edges instead of cutting their corners; grid
    coordinates become level-0 pixels by ``pitch`` (the grid stride). ``tolerance`` (level-0 px) simplifies rings.
    """
    regions = []
    labels = measure.label(mask, connectivity=2)
    for label in range(1, labels.max() + 1):
        cells = labels == label
        fine = np.pad(np.kron(cells, np.ones((2, 2), dtype=np.uint8)), 1)
        contours = sorted(measure.find_contours(fine, 0.5), key=len, reverse=True)
        rings = []
        for contour in contours:
            rows = (contour[:, 0] - 1 + 0.5) / 2  # back to grid units, cell edges at integers
            cols = (contour[:, 1] - 1 + 0.5) / 2
            xy = np.clip(np.stack([cols, rows], axis=1) * pitch, 0, None)
            if tolerance > 0:
                xy = measure.approximate_polygon(xy, tolerance=tolerance)
            rings.append(xy.round(1))
        if not rings:
            continue
        outer, holes = rings[0], rings[1:]
        mean_z = float(np.nanmean(z_map[cells])) if z_map is not None else float("nan")
        regions.append(Region(outer, holes, mean_z, int(cells.sum())))
    return regions


def to_geojson(regions: list[Region], mpp0: float) -> dict:
    """A QuPath-importable FeatureCollection of "Tumor" annotations in level-0 pixel coordinates."""
    features = []
    for k, region in enumerate(regions):
        rings = [region.outer, *region.holes]
        features.append(
            {
                "type": "Feature",
                "id": f"region-{k}",
                "geometry": {"type": "Polygon", "coordinates": [ring.tolist() for ring in rings]},
                "properties": {
                    "objectType": "annotation",
                    "name": f"Region {k}",
                    "classification": {"name": "Tumor", "color": [200, 0, 0]},
                    "mean_z": round(region.mean_z, 4),
                    "n_patches": region.n_patches,
                    "area_um2": round(region.area_px() * mpp0**2, 1),
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def to_asap_xml(regions: list[Region]) -> str:
    """ASAP / CAMELYON16 XML: outer rings in group ``Tumor``, holes in group ``Exclusion``."""
    root = ElementTree.Element("ASAP_Annotations")
    annotations = ElementTree.SubElement(root, "Annotations")
    index = 0
    for region in regions:
        for ring, group in [(region.outer, "Tumor")] + [(hole, "Exclusion") for hole in region.holes]:
            annotation = ElementTree.SubElement(
                annotations,
                "Annotation",
                Name=f"Annotation {index}",
                Type="Polygon",
                PartOfGroup=group,
                Color="#F4FA58" if group == "Tumor" else "#64FE2E",
            )
            coordinates = ElementTree.SubElement(annotation, "Coordinates")
            for order, (x, y) in enumerate(ring[:-1]):  # ASAP rings are implicitly closed
                ElementTree.SubElement(coordinates, "Coordinate", Order=str(order), X=f"{x:.1f}", Y=f"{y:.1f}")
            index += 1
    groups = ElementTree.SubElement(root, "AnnotationGroups")
    for group, color in (("Tumor", "#F4FA58"), ("Exclusion", "#64FE2E")):
        element = ElementTree.SubElement(groups, "Group", Name=group, PartOfGroup="None", Color=color)
        ElementTree.SubElement(element, "Attributes")
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="unicode", xml_declaration=True)
