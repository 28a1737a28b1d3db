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
ANNOTATION_SUFFIXES = (".xml", ".geojson", ".json", "_mask.tif", "_Mask.tif")


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
        points = sorted(element.iter("Coordinate"), key=lambda c: int(c.get("Order", 0)))
        xy = np.array([[float(c.get("X")), float(c.get("Y"))] for c in points])
        if len(xy) >= 3:
            target.append(xy)
    return annotation


def read_geojson(path: str | Path) -> LesionAnnotation:
    """QuPath GeoJSON: Polygon / MultiPolygon features; outer rings are tumour unless classified Exclusion or
    Ignore, inner rings (holes) are exclusions."""
    content = json.loads(Path(path).read_text())
    features = content.get("features", []) if isinstance(content, dict) else content
    annotation = LesionAnnotation()
    for feature in features:
        geometry = feature.get("geometry") or {}
        classification = ((feature.get("properties") or {}).get("classification") or {}).get("name", "Tumor")
        excluded = classification.lower().startswith(("exclusion", "ignore"))
        polygons = {"Polygon": [geometry.get("coordinates")], "MultiPolygon": geometry.get("coordinates")}.get(
            geometry.get("type"), []
        )
        for rings in polygons:
            for k, ring in enumerate(rings or []):
                xy = np.asarray(ring, dtype=float)[:, :2]
                if len(xy) >= 3:
                    (annotation.exclusion if excluded or k > 0 else annotation.tumour).append(xy)
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


def find_annotation(annotation_dir: str | Path, slide_id: str) -> Path | None:
    """``<slide_id>`` + ``.xml`` / ``.geojson`` / ``.json`` / ``_mask.tif`` in ``annotation_dir``, or None."""
    for suffix in ANNOTATION_SUFFIXES:
        candidate = Path(annotation_dir) / f"{slide_id}{suffix}"
        if candidate.is_file():
            return candidate
    return None
