"""Lesion annotations: CAMELYON16 ASAP XML, QuPath GeoJSON and binary mask TIFFs, rasterised to any pyramid level.

ASAP groups ``Tumor``, ``_0``, ``_1`` and ``Metastases`` are tumour; ``Exclusion`` and ``_2`` are non-tumour holes
subtracted from it (both spellings occur in the real CAMELYON16 files), in any letter case. A group that is neither
is named in a warning and left out, and so is a polygon with fewer than three distinct vertices: neither may pass
unnoticed as "no tumour". XML is parsed with ``defusedxml``, so entity-expansion bombs are
refused instead of eating the machine's memory.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeElementTree
from shapely.geometry import Polygon

logger = logging.getLogger(__name__)

# Group (ASAP) and class (QuPath) names as CAMELYON16 files and users write them, compared case-insensitively.
TUMOUR_GROUPS = ("tumor", "tumour", "_0", "_1", "metastasis", "metastases")
EXCLUSION_GROUPS = ("exclusion", "_2", "ignore", "ignore*")
ANNOTATION_SUFFIXES = (".xml", ".geojson", ".json", "_mask.tif", "_mask.tiff")  # matched case-insensitively
POLYGON_TYPES = ("Polygon", "MultiPolygon", "GeometryCollection")
MAX_COORDINATE = 1e7  # level-0 px; the largest slides are ~2e5 px wide, so beyond this a file is broken


def group_kind(name: str) -> str | None:
    """``"tumour"``, ``"exclusion"`` or None for an ASAP group or a QuPath class name."""
    key = name.strip().casefold()
    return "tumour" if key in TUMOUR_GROUPS else "exclusion" if key in EXCLUSION_GROUPS else None


def warn_left_out(path: str | Path, unknown: Counter, degenerate: list[str]) -> None:
    """Say which polygons an annotation file holds that count as neither tumour nor exclusion."""
    if unknown:
        names = ", ".join(f"{name!r} ({n} polygon{'s' * (n > 1)})" for name, n in sorted(unknown.items()))
        logger.warning(
            "%s: group(s) %s are neither tumour (%s) nor exclusion (%s) and are left out; rename them if they are.",
            path, names, "/".join(TUMOUR_GROUPS), "/".join(EXCLUSION_GROUPS),
        )  # fmt: skip
    if degenerate:
        logger.warning(
            "%s: %d polygon(s) with fewer than 3 distinct vertices enclose no area and are left out: %s.",
            path, len(degenerate), ", ".join(degenerate[:5]) + (", ..." if len(degenerate) > 5 else ""),
        )  # fmt: skip


def is_area(xy: np.ndarray) -> bool:
    return len(np.unique(xy, axis=0)) >= 3


def checked_vertices(path: str | Path, where: str, xy: np.ndarray) -> np.ndarray:
    """``xy`` if every vertex is a finite, plausible level-0 coordinate; else an error naming the file and vertex."""
    bad = ~np.isfinite(xy).all(axis=1) | (np.abs(xy) > MAX_COORDINATE).any(axis=1)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{path}: {where}, vertex {k} is ({xy[k, 0]}, {xy[k, 1]}): coordinates must be finite level-0 pixels "
            f"within +-{MAX_COORDINATE:.0e}."
        )
    return xy


@dataclass
class LesionAnnotation:
    """Tumour polygons and exclusion polygons as (x, y) level-0 pixel vertex arrays."""

    tumour: list[np.ndarray] = field(default_factory=list)
    exclusion: list[np.ndarray] = field(default_factory=list)

    def area_px(self) -> float:
        """Tumour area in level-0 px², exclusions subtracted (as CAMELYON16 draws them)."""
        return sum(Polygon(p).area for p in self.tumour) - sum(Polygon(p).area for p in self.exclusion)

    def rasterise(self, shape: tuple[int, int], downsample: float, origin: tuple[float, float] = (0, 0)) -> np.ndarray:
        """Boolean mask of ``shape`` whose pixel (i, j) covers level-0 [origin + (i, j) * downsample, + downsample).

        A pixel is tumour when its centre is inside a tumour polygon (even-odd rule; a centre on a left or top edge is
        inside, on a right or bottom edge outside, so a 96 x 96 px square covers exactly 9,216 px) and not inside an
        exclusion. Pillow and OpenCV fill the outline too (a 96-px square grows to 97 x 97), and per-pixel
        point-in-polygon tests (skimage) take minutes for a CAMELYON16 lesion: each polygon is scan-converted here
        from its edge crossings, in its bounding box.
        """
        canvas = np.zeros(shape, dtype=bool)
        for polygons, value in ((self.tumour, True), (self.exclusion, False)):
            for xy in polygons:
                pixels = (np.asarray(xy, dtype=float) - np.asarray(origin, dtype=float)) / downsample
                _fill_polygon(canvas, pixels, value)
        return canvas


def _fill_polygon(canvas: np.ndarray, xy: np.ndarray, value: bool) -> None:
    """Set the pixels of ``canvas`` whose centres (j + 0.5, i + 0.5) lie inside the polygon ``xy`` (in pixels)."""
    x0, y0 = xy[:, 0], xy[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    low, high = np.minimum(y0, y1), np.maximum(y0, y1)
    # rows whose centre i + 0.5 an edge crosses, half-open in y so that a vertex is counted once
    first = np.clip(np.ceil(low - 0.5), 0, canvas.shape[0]).astype(int)
    last = np.clip(np.ceil(high - 0.5), 0, canvas.shape[0]).astype(int)
    counts = last - first
    if counts.sum() == 0:
        return
    edge = np.repeat(np.arange(len(xy)), counts)
    rows = np.repeat(first, counts) + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    centre = rows + 0.5
    crossing = x0[edge] + (centre - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
    order = np.lexsort((crossing, rows))
    rows, crossing = rows[order], crossing[order]
    # crossings pair up per row (each row of a closed polygon has an even number): inside between 1st-2nd, 3rd-4th
    starts = np.clip(np.ceil(crossing[0::2] - 0.5), 0, canvas.shape[1]).astype(int)
    ends = np.clip(np.ceil(crossing[1::2] - 0.5), 0, canvas.shape[1]).astype(int)
    left, right = int(starts.min()), int(ends.max())
    edges = np.zeros((rows[-1] + 1 - rows[0], right - left + 1), dtype=np.int32)
    np.add.at(edges, (rows[0::2] - rows[0], starts - left), 1)
    np.add.at(edges, (rows[0::2] - rows[0], ends - left), -1)
    inside = np.cumsum(edges, axis=1)[:, :-1] > 0
    canvas[rows[0] : rows[-1] + 1, left:right][inside] = value


def read_asap_xml(path: str | Path) -> LesionAnnotation:
    """CAMELYON16 / ASAP XML; polygons of other groups, and those with fewer than 3 vertices, are left out with a
    warning."""
    try:
        root = SafeElementTree.parse(str(path)).getroot()
    except DefusedXmlException as error:
        raise ValueError(
            f"{path}: refused unsafe XML ({type(error).__name__}); annotations never need entities."
        ) from None
    except SafeElementTree.ParseError as error:
        raise ValueError(f"{path}: not valid XML ({error}).") from None
    annotation, unknown, degenerate = LesionAnnotation(), Counter(), []
    for element in root.iter("Annotation"):
        group = element.get("PartOfGroup", "")
        kind = group_kind(group)
        if kind is None:
            unknown[group] += 1
            continue
        target = annotation.tumour if kind == "tumour" else annotation.exclusion
        where = f"Annotation {element.get('Name', '?')!r}"
        try:
            points = sorted(element.iter("Coordinate"), key=lambda c: int(c.get("Order", 0)))
        except ValueError:
            raise ValueError(f"{path}: {where} has a Coordinate whose Order is not an integer.") from None
        xy = np.zeros((len(points), 2))
        for k, point in enumerate(points):
            for axis, name in enumerate("XY"):
                value = point.get(name)
                try:
                    xy[k, axis] = float(value)
                except (TypeError, ValueError):
                    raise ValueError(
                        f"{path}: {where}, Coordinate Order {point.get('Order')}: {name} is {value!r}, not a number "
                        "(decimal point, not comma)."
                    ) from None
        if is_area(xy):
            target.append(checked_vertices(path, where, xy))
        else:
            degenerate.append(where)
    warn_left_out(path, unknown, degenerate)
    return annotation


def _features(path: Path, content: object) -> list[dict]:
    """The features of any GeoJSON layout QuPath or a script writes: a FeatureCollection, a list of features, one
    Feature, or a bare geometry (read as one unclassified feature)."""
    if isinstance(content, list):
        return content
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a GeoJSON object, got {type(content).__name__}.")
    kind = content.get("type")
    if kind == "FeatureCollection":
        return content.get("features") or []
    if kind == "Feature":
        return [content]
    if kind in POLYGON_TYPES or "coordinates" in content:
        return [{"type": "Feature", "geometry": content}]
    raise ValueError(f"{path}: GeoJSON type {kind!r} is not a FeatureCollection, Feature or geometry.")


def _polygons(path: Path, where: str, geometry: object) -> list[list]:
    """The polygons (lists of rings) of a Polygon, MultiPolygon or GeometryCollection of them."""
    if not isinstance(geometry, dict):
        raise ValueError(f"{path}: {where} has no geometry.")
    kind = geometry.get("type")
    if kind == "Polygon":
        return [geometry.get("coordinates") or []]
    if kind == "MultiPolygon":
        return list(geometry.get("coordinates") or [])
    if kind == "GeometryCollection":
        return [p for g in geometry.get("geometries") or [] for p in _polygons(path, where, g)]
    raise ValueError(
        f"{path}: {where} is a {kind}; lesions must be areas ({', '.join(POLYGON_TYPES)}): convert or remove it."
    )


def read_geojson(path: str | Path) -> LesionAnnotation:
    """QuPath GeoJSON: Polygon / MultiPolygon (or a GeometryCollection of them) features; outer rings are tumour when
    unclassified or classified as a tumour group, exclusions when classified Exclusion or Ignore*, and inner rings
    (holes) are exclusions; other classes are left out with a warning. Points and lines are refused."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error}).") from None
    annotation, unknown, degenerate = LesionAnnotation(), Counter(), []
    for n, feature in enumerate(_features(path, content)):
        where = f"feature {n}"
        if not isinstance(feature, dict):
            raise ValueError(f"{path}: {where} is not a GeoJSON Feature.")
        named = (feature.get("properties") or {}).get("classification") or {}
        # QuPath writes {"name": ...}; other tools write the class name itself
        classification = str(named.get("name", "Tumor") if isinstance(named, dict) else named)
        kind = group_kind(classification)
        if kind is None:
            unknown[classification] += 1
            continue
        excluded = kind == "exclusion"
        for rings in _polygons(path, where, feature.get("geometry")):
            for k, ring in enumerate(rings):
                try:
                    xy = np.asarray(ring, dtype=float).reshape(len(ring), -1)[:, :2]
                except (TypeError, ValueError):
                    raise ValueError(f"{path}: {where}, ring {k} holds coordinates that are not numbers.") from None
                if is_area(xy):
                    target = annotation.exclusion if excluded or k > 0 else annotation.tumour
                    target.append(checked_vertices(path, f"{where}, ring {k}", xy))
                else:
                    degenerate.append(f"{where}, ring {k}")
    warn_left_out(path, unknown, degenerate)
    return annotation


class MaskAnnotation:
    """A binary tumour-mask TIFF (non-zero = tumour, level 0 aligned with the slide), rasterised like the polygons.

    Read with tifffile itself: masks are single-channel, which the slide readers refuse. The finest pyramid level not
    finer than the requested downsample is read and resampled by nearest neighbour.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with tifffile.TiffFile(self.path) as tif:
                self.level_shapes = [tuple(level.shape[:2]) for level in tif.series[0].levels]
        except (tifffile.TiffFileError, OSError, IndexError) as error:
            raise ValueError(f"{self.path}: not a readable mask TIFF ({error}); write it as a tiled TIFF.") from None

    def rasterise(self, shape: tuple[int, int], downsample: float, origin: tuple[float, float] = (0, 0)) -> np.ndarray:
        downsamples = [self.level_shapes[0][1] / width for _, width in self.level_shapes]
        level = max((lv for lv, d in enumerate(downsamples) if d <= downsample), key=lambda lv: downsamples[lv])
        image = tifffile.imread(self.path, series=0, level=level)
        mask = (image if image.ndim == 2 else image[..., 0]) > 0
        scale = downsamples[level]
        rows = ((origin[1] + (np.arange(shape[0]) + 0.5) * downsample) / scale).astype(int)
        cols = ((origin[0] + (np.arange(shape[1]) + 0.5) * downsample) / scale).astype(int)
        inside = (rows[:, None] < mask.shape[0]) & (cols[None, :] < mask.shape[1])
        return mask[np.minimum(rows, mask.shape[0] - 1)][:, np.minimum(cols, mask.shape[1] - 1)] & inside


def read_annotation(path: str | Path) -> LesionAnnotation | MaskAnnotation:
    """Polygons from ASAP XML or QuPath GeoJSON, or a binary mask TIFF."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        return MaskAnnotation(path)
    if path.suffix.lower() == ".xml":
        return read_asap_xml(path)
    if path.suffix.lower() in (".geojson", ".json"):
        return read_geojson(path)
    raise ValueError(f"{path}: unsupported annotation format; use ASAP .xml, QuPath .geojson or a mask .tif.")


def annotation_names(slide_id: str) -> list[str]:
    return [f"{slide_id}{suffix}" for suffix in ANNOTATION_SUFFIXES]


def find_annotation(annotation_dir: str | Path, slide_id: str) -> Path | None:
    """``<slide_id>`` + ``.xml`` / ``.geojson`` / ``.json`` / ``_mask.tif(f)`` in ``annotation_dir``, in any letter
    case (``Tumor_001.XML`` for ``tumor_001.tif``), or None; two candidates are an error, never a silent pick."""
    wanted = {name.casefold() for name in annotation_names(slide_id)}
    matches = sorted(p for p in Path(annotation_dir).iterdir() if p.is_file() and p.name.casefold() in wanted)
    if len(matches) > 1:
        raise ValueError(
            f"slide {slide_id}: {len(matches)} annotation files match in {annotation_dir} "
            f"({', '.join(p.name for p in matches)}); keep one."
        )
    return matches[0] if matches else None
