"""Lesion annotations: CAMELYON16 ASAP XML, QuPath GeoJSON and binary mask TIFFs, rasterised to any pyramid level.

ASAP groups ``Tumor``, ``_0`` and ``_1`` are tumour; ``Exclusion`` and ``_2`` are non-tumour holes subtracted from it
(both spellings occur in the real CAMELYON16 files). XML is parsed with ``defusedxml``, so entity-expansion bombs are
refused instead of eating the machine's memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeElementTree
from monai.data import WSIReader
from PIL import Image, ImageDraw

from .regions import shoelace_area

TUMOUR_GROUPS = ("Tumor", "_0", "_1")
EXCLUSION_GROUPS = ("Exclusion", "_2")
ANNOTATION_SUFFIXES = (".xml", ".geojson", ".json", "_mask.tif", "_mask.tiff")  # matched case-insensitively
POLYGON_TYPES = ("Polygon", "MultiPolygon", "GeometryCollection")
MAX_COORDINATE = 1e7  # level-0 px; the largest slides are ~2e5 px wide, so beyond this a file is broken


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
        """Tumour area in level-0 px² by the shoelace formula, exclusions subtracted (as CAMELYON16 draws them)."""
        return sum(shoelace_area(p) for p in self.tumour) - sum(shoelace_area(p) for p in self.exclusion)

    def rasterise(self, shape: tuple[int, int], downsample: float, origin: tuple[float, float] = (0, 0)) -> np.ndarray:
        """Boolean mask of ``shape`` whose pixel (i, j) covers level-0 [origin + (i, j) * downsample, + downsample).

        Pillow's scan-line fill does it in milliseconds where per-pixel point-in-polygon tests take minutes for a
        CAMELYON16 lesion; a pixel is tumour when its centre is inside a tumour polygon and not in an exclusion.
        """
        canvas = Image.new("1", (shape[1], shape[0]), 0)
        draw = ImageDraw.Draw(canvas)
        for polygons, value in ((self.tumour, 1), (self.exclusion, 0)):
            for xy in polygons:
                pixels = (xy - np.asarray(origin, dtype=float)) / downsample - 0.5
                draw.polygon([tuple(p) for p in pixels], fill=value)
        return np.asarray(canvas, dtype=bool)


def read_asap_xml(path: str | Path) -> LesionAnnotation:
    """CAMELYON16 / ASAP XML; polygons of other groups are ignored, polygons with fewer than 3 vertices dropped."""
    try:
        root = SafeElementTree.parse(str(path)).getroot()
    except DefusedXmlException as error:
        raise ValueError(
            f"{path}: refused unsafe XML ({type(error).__name__}); annotations never need entities."
        ) from None
    except SafeElementTree.ParseError as error:
        raise ValueError(f"{path}: not valid XML ({error}).") from None
    annotation = LesionAnnotation()
    for element in root.iter("Annotation"):
        group = element.get("PartOfGroup", "")
        target = (
            annotation.tumour if group in TUMOUR_GROUPS else annotation.exclusion if group in EXCLUSION_GROUPS else None
        )
        if target is None:
            continue
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
        if len(xy) >= 3:
            target.append(checked_vertices(path, where, xy))
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
    """QuPath GeoJSON: Polygon / MultiPolygon (or a GeometryCollection of them) features; outer rings are tumour
    unless classified Exclusion or Ignore, inner rings (holes) are exclusions. Points and lines are refused."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error}).") from None
    annotation = LesionAnnotation()
    for n, feature in enumerate(_features(path, content)):
        where = f"feature {n}"
        if not isinstance(feature, dict):
            raise ValueError(f"{path}: {where} is not a GeoJSON Feature.")
        classification = ((feature.get("properties") or {}).get("classification") or {}).get("name", "Tumor")
        excluded = str(classification).lower().startswith(("exclusion", "ignore"))
        for rings in _polygons(path, where, feature.get("geometry")):
            for k, ring in enumerate(rings):
                try:
                    xy = np.asarray(ring, dtype=float).reshape(len(ring), -1)[:, :2]
                except (TypeError, ValueError):
                    raise ValueError(f"{path}: {where}, ring {k} holds coordinates that are not numbers.") from None
                if len(xy) >= 3:
                    target = annotation.exclusion if excluded or k > 0 else annotation.tumour
                    target.append(checked_vertices(path, f"{where}, ring {k}", xy))
    return annotation


class MaskAnnotation:
    """A binary tumour-mask TIFF (non-zero = tumour, level 0 aligned with the slide), rasterised like the polygons.

    The finest pyramid level not finer than the requested downsample is read and resampled by nearest neighbour.
    """

    def __init__(self, path: str | Path, backend: str = "tifffile") -> None:
        self.path = Path(path)
        self.reader = WSIReader(backend=backend)
        self.wsi = self.reader.read(str(self.path))

    def rasterise(self, shape: tuple[int, int], downsample: float, origin: tuple[float, float] = (0, 0)) -> np.ndarray:
        downsamples = [
            self.reader.get_downsample_ratio(self.wsi, lv) for lv in range(self.reader.get_level_count(self.wsi))
        ]
        level = max((lv for lv, d in enumerate(downsamples) if d <= downsample), key=lambda lv: downsamples[lv])
        image, _ = self.reader.get_data(self.wsi, level=level)
        mask = np.asarray(image)[0] > 0
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
