"""Tumour regions on the patch grid: the decision (slide gate, threshold, clean-up), polygons in level-0 pixels,
GeoJSON and ASAP XML."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from xml.etree import ElementTree

import numpy as np
import shapely
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon, mapping
from shapely.geometry.polygon import orient
from skimage import measure, morphology


def clean_mask(z_map: np.ndarray, z_threshold: float, min_region_tiles: int) -> np.ndarray:
    """Grid cells above ``z_threshold`` (NaN = off tissue = never), without regions smaller than
    ``min_region_tiles`` cells and with holes smaller than that filled."""
    mask = np.nan_to_num(z_map, nan=-np.inf) > z_threshold
    if min_region_tiles > 1:
        mask = morphology.remove_small_objects(mask, max_size=min_region_tiles - 1)
        mask = morphology.remove_small_holes(mask, max_size=min_region_tiles - 1)
    return mask


def two_scale_map(z_map: np.ndarray, cells: np.ndarray, scores: np.ndarray, score_floor: float) -> np.ndarray:
    """``z_map`` with the patches scoring below ``score_floor`` taken out (NaN): the map a call is made on, where a
    patch needs both a high z (unusual for its slide) and a score above the floor (unusual against the training
    normals)."""
    if math.isinf(score_floor) and score_floor < 0:
        return z_map
    candidates = z_map.copy()
    below = np.asarray(scores) < score_floor
    candidates[cells[below, 0], cells[below, 1]] = np.nan
    return candidates


SLIDE_SCORE_WINDOW = 3  # patches: a slide's score is its highest mean z over a window of this side


def slide_score(z_map: np.ndarray) -> float:
    """A slide's tumour score (CAMELYON16 Task 1): its highest mean z over any ``SLIDE_SCORE_WINDOW``² window of tissue
    patches (NaN = off tissue), so one unusual patch counts less than a cluster of them."""
    tissue = np.isfinite(z_map)
    if not tissue.any():
        return float("nan")
    total = ndimage.uniform_filter(np.where(tissue, z_map, 0.0), SLIDE_SCORE_WINDOW, mode="constant")
    count = ndimage.uniform_filter(tissue.astype(float), SLIDE_SCORE_WINDOW, mode="constant")
    mean = np.where(count > 0.5 / SLIDE_SCORE_WINDOW**2, total / np.maximum(count, 1e-12), -np.inf)
    return float(mean[tissue].max())


def gated_clean_mask(
    candidates: np.ndarray, slide_score: float, z_threshold: float, min_region_tiles: int, min_slide_score: float
) -> np.ndarray:
    """``clean_mask`` of ``candidates``, or no cell on a slide whose ``slide_score`` is below ``min_slide_score`` (most
    slides a user scores are tumour-free, and every region on them is a false alarm)."""
    if slide_score < min_slide_score:
        return np.zeros(candidates.shape, bool)
    return clean_mask(candidates, z_threshold, min_region_tiles)


def called_map(
    z_map: np.ndarray, cells: np.ndarray, scores: np.ndarray, z_threshold: float, min_region_tiles: int,
    score_floor: float = -math.inf, min_slide_score: float = -math.inf,
) -> np.ndarray:  # fmt: skip
    """The grid cells called tumour, as inference's post-processing calls them: ``gated_clean_mask`` of the cells that
    pass both scales of ``two_scale_map``."""
    score = slide_score(z_map) if min_slide_score > -math.inf else math.nan  # no gate: not needed
    candidates = two_scale_map(z_map, cells, scores, score_floor)
    return gated_clean_mask(candidates, score, z_threshold, min_region_tiles, min_slide_score)


def grid_index(pixels: int, downsample: float, stride: float, cells: int) -> np.ndarray:
    """The grid cell of each of ``pixels`` image pixels (of ``downsample`` level-0 px) on a grid of ``stride`` level-0
    px; pixels beyond the grid get its last cell."""
    return np.minimum((np.arange(pixels) * downsample / stride).astype(int), cells - 1)


def cells_on_image(cells: np.ndarray, shape: tuple[int, int], downsample: float, stride: float) -> np.ndarray:
    """A grid mask (``cells``) drawn on an image of ``shape`` whose pixels are ``downsample`` level-0 px; nothing
    beyond the grid."""
    rows, cols = (grid_index(n, downsample, stride, k) for n, k in zip(shape, cells.shape, strict=True))
    inside = [np.arange(n) * downsample < k * stride for n, k in zip(shape, cells.shape, strict=True)]
    return cells[np.ix_(rows, cols)] & np.outer(*inside)


def area_mm2(regions: Sequence[Region], mpp0: float) -> float:
    """The regions' area in mm², from level-0 pixels of ``mpp0`` µm."""
    return sum(r.area_px() for r in regions) * mpp0**2 / 1e6


def cells_to_polygons(cells: np.ndarray, pitch: float, origin: tuple[int, int] = (0, 0)) -> list[Polygon]:
    """The exact outline of the ``True`` cells of a grid whose cell (i, j) is grid cell ``origin + (i, j)``, spanning
    x in [j, j + 1) * pitch, y likewise.

    Each row's runs of cells become rectangles whose union GEOS computes, so the result is valid by construction:
    parts touching only at a corner are separate polygons, holes are only the real holes, and the area is exactly
    the cells' area (marching squares cuts corners and nests a diagonal neighbour's outline as a hole).
    """
    edges = np.diff(np.pad(cells, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    rows, starts = np.nonzero(edges == 1)
    _, stops = np.nonzero(edges == -1)  # row-major order pairs each run's start with its stop
    rows, starts, stops = rows + origin[0], starts + origin[1], stops + origin[1]
    boxes = shapely.box(starts * pitch, rows * pitch, stops * pitch, (rows + 1) * pitch)
    union = shapely.unary_union(boxes)
    parts = union.geoms if isinstance(union, MultiPolygon) else [union] if not union.is_empty else []
    # merge the collinear vertices the row seams leave, and orient as GeoJSON wants (outer counter-clockwise)
    return [orient(shapely.simplify(part, 0), 1.0) for part in parts]


@dataclass
class Region:
    """One 8-connected tumour region: polygons (several where parts touch only at a corner) in level-0 pixels."""

    polygons: list[Polygon]
    mean_z: float
    n_patches: int

    def area_px(self) -> float:
        return float(sum(p.area for p in self.polygons))

    @property
    def geometry(self) -> Polygon | MultiPolygon:
        return self.polygons[0] if len(self.polygons) == 1 else MultiPolygon(self.polygons)


def patch_union(cells: np.ndarray, stride: int, size: int) -> tuple[np.ndarray, int]:
    """The union of the patches of the ``True`` cells of a grid of ``stride`` whose patches are ``size`` wide, as a
    finer grid of pitch gcd(stride, size) (returned with it): with a stride other than the patch size a called cell
    stands for a whole patch, not for a stride-sized square at its corner."""
    unit = math.gcd(int(stride), int(size))
    step, span = int(stride) // unit, int(size) // unit
    rows, cols = np.nonzero(cells)
    fine = np.zeros(((cells.shape[0] - 1) * step + span, (cells.shape[1] - 1) * step + span), dtype=bool)
    for di in range(span):
        for dj in range(span):
            fine[rows * step + di, cols * step + dj] = True
    return fine, unit


def trace_regions(
    mask: np.ndarray, z_map: np.ndarray | None, pitch: float, tolerance: float = 0.0, size: int | None = None
) -> list[Region]:
    """One region per 8-connected component of ``mask``, outlined along cell edges (``cells_to_polygons``).

    Grid coordinates become level-0 pixels by ``pitch`` (the grid stride). Cells tile the plane unless ``size`` (the
    patch side, level-0 px) differs from the pitch: then each region is the union of its cells' patches. ``tolerance``
    (level-0 px) simplifies the outlines without breaking their topology.
    """
    regions = []
    labels = measure.label(mask, connectivity=2)
    for label, (rows, cols) in enumerate(ndimage.find_objects(labels), 1):
        cells = labels[rows, cols] == label
        if size is None or size == pitch:
            polygons = cells_to_polygons(cells, pitch, (rows.start, cols.start))
        else:
            fine, unit = patch_union(cells, int(pitch), int(size))
            step = int(pitch) // unit
            polygons = cells_to_polygons(fine, unit, (rows.start * step, cols.start * step))
        if tolerance > 0:
            polygons = [orient(p.simplify(tolerance, preserve_topology=True), 1.0) for p in polygons]
        mean_z = float(np.nanmean(z_map[rows, cols][cells])) if z_map is not None else float("nan")
        regions.append(Region(polygons, mean_z, int(cells.sum())))
    return regions


TUMOUR_CLASS = {"name": "Tumor", "color": [200, 0, 0]}  # QuPath's class and its colour


def to_geojson(regions: list[Region], mpp0: float, properties: dict | None = None) -> dict:
    """A QuPath-importable FeatureCollection of "Tumor" annotations in level-0 pixel coordinates; ``properties`` (the
    slide's, e.g. ``out_of_domain``) are given to every region."""
    features = []
    for k, region in enumerate(regions):
        features.append(
            {
                "type": "Feature",
                "id": f"region-{k}",
                "geometry": mapping(shapely.set_precision(region.geometry, 0.1)),
                "properties": {
                    "objectType": "annotation",
                    "name": f"Region {k}",
                    "classification": TUMOUR_CLASS,
                    "mean_z": round(region.mean_z, 4),
                    "n_patches": region.n_patches,
                    "area_um2": round(region.area_px() * mpp0**2, 1),
                    **(properties or {}),
                },
            }
        )
    return json_ready({"type": "FeatureCollection", "features": features})


def json_ready(content):
    """Shapely's ``mapping`` gives tuples; JSON and the tests compare lists."""
    if isinstance(content, dict):
        return {key: json_ready(value) for key, value in content.items()}
    if isinstance(content, list | tuple):
        return [json_ready(value) for value in content]
    return content


OUT_OF_DOMAIN_COLOUR = "#A0A0A0"
OUT_OF_DOMAIN_NOTE = " (out of domain: not to be read as metastasis)"


def to_asap_xml(regions: list[Region], out_of_domain: bool = False) -> str:
    """ASAP / CAMELYON16 XML: outer rings in group ``Tumor``, holes in group ``Exclusion``; a slide flagged
    ``out_of_domain`` has each annotation named so and drawn grey, since ASAP shows no other property."""
    root = ElementTree.Element("ASAP_Annotations")
    annotations = ElementTree.SubElement(root, "Annotations")
    index = 0
    for region in regions:
        for polygon in region.polygons:
            rings = [(polygon.exterior, "Tumor")] + [(hole, "Exclusion") for hole in polygon.interiors]
            for ring, group in rings:
                annotation = ElementTree.SubElement(
                    annotations,
                    "Annotation",
                    Name=f"Annotation {index}{OUT_OF_DOMAIN_NOTE if out_of_domain else ''}",
                    Type="Polygon",
                    PartOfGroup=group,
                    Color=OUT_OF_DOMAIN_COLOUR if out_of_domain else "#F4FA58" if group == "Tumor" else "#64FE2E",
                )
                coordinates = ElementTree.SubElement(annotation, "Coordinates")
                for order, (x, y) in enumerate(ring.coords[:-1]):  # ASAP rings are implicitly closed
                    ElementTree.SubElement(coordinates, "Coordinate", Order=str(order), X=f"{x:.1f}", Y=f"{y:.1f}")
                index += 1
    groups = ElementTree.SubElement(root, "AnnotationGroups")
    for group, color in (("Tumor", "#F4FA58"), ("Exclusion", "#64FE2E")):
        element = ElementTree.SubElement(groups, "Group", Name=group, PartOfGroup="None", Color=color)
        ElementTree.SubElement(element, "Attributes")
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
