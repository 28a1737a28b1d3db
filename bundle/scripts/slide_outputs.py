"""The last stage of a slide: the writers of its files, which ``inference.json`` lists (``writers``), written as one
unit with ``complete.json``; and the cohort's ``summary.csv``."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import OutputWriteError, atomic_folder, recover_folder, remove_stale_temp_files, write_failure
from .heatmap import CALLED_COLOUR, Outlined, save_heatmap, save_image
from .regions import TUMOUR_CLASS, area_mm2, to_asap_xml, to_geojson
from .slide_scorer import ScoredSlide
from .wsi import slide_fingerprint

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "complete.json"
PATCH_COLUMNS = ["x", "y", "size0", "level", "score", "z", "tissue_fraction", "stain_fallback", "tumour"]
SUMMARY_COLUMNS = [
    "slide", "path", "status", "error", "n_patches", "tissue_mm2", "score_mean", "score_std", "tumour_mm2",
    "n_regions", "slide_score", "stain_fallbacks", "domain_distance", "out_of_domain", "seconds",
]  # fmt: skip


def read_summary(path: str | Path) -> pd.DataFrame:
    """A ``summary.csv`` with slide ids kept as written (``001`` stays ``001``, ``NA`` stays ``NA``)."""
    return pd.read_csv(
        path, dtype={"slide": str, "path": str, "error": str}, keep_default_na=False, na_values=[""],
        float_precision="round_trip",
    )  # fmt: skip


def file_record(path: Path) -> dict:
    """A written file's size and SHA-256, which ``complete.json`` keeps so a later run can tell the set is intact."""
    return {"size": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def intact(folder: Path, files: object) -> str:
    """'' when every file ``complete.json`` lists in ``files`` is in ``folder`` as written, else what is not."""
    if not isinstance(files, dict) or not files:
        return "it lists no files"
    for name, record in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if file_record(path) != record:
            return f"{name} was changed"
    return ""


def component_record(component: object, depth: int = 2) -> object:
    """A pipeline component as a settings record holds it: its class and public settings (numbers, strings, flags,
    and lists and dicts of them; the components it holds, to ``depth``), so that outputs made by another step, or by
    the same step with other settings (a ``#`` override), are made again rather than reused."""
    if component is None or isinstance(component, bool | int | str):
        return component
    if isinstance(component, float):
        return component if math.isfinite(component) else str(component)
    if isinstance(component, list | tuple):
        return [component_record(item, depth) for item in component]
    if isinstance(component, dict):
        return {str(key): component_record(value, depth) for key, value in component.items()}
    kind = f"{type(component).__module__}.{type(component).__qualname__}"
    fields = getattr(component, "__dict__", None)
    if depth == 0 or not fields:
        return kind
    public = {key: component_record(value, depth - 1) for key, value in fields.items() if not key.startswith("_")}
    return {"class": kind, **public}


def completed_summary(folder: Path, slide: str, settings: dict, overwrite: bool = False) -> dict | None:
    """The summary of ``slide`` that an earlier run with the same ``settings`` finished in ``folder``, or None.

    A swap of the folder that a kill interrupted is completed first, and temp files are removed; a ``complete.json``
    that cannot be read (truncated, edited) means the slide is redone, never a stopped cohort.
    """
    recover_folder(folder)
    remove_stale_temp_files(folder)
    marker = folder / COMPLETE_MARKER
    if overwrite or not marker.is_file():
        return None
    try:
        done = json.loads(marker.read_text())
        if done["slide"] != str(Path(slide).resolve()) or done["settings"] != settings:
            return None
        if done.get("fingerprint") != slide_fingerprint(slide):
            logger.info("%s: the file changed since its outputs were made; scored again.", slide)
            return None
        if problem := intact(folder, done.get("files")):
            logger.warning("%s: its finished outputs are not intact (%s); scored again.", slide, problem)
            return None
        summary = done["summary"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("%s cannot be read (%s); %s is scored again.", marker, error, slide)
        return None
    return summary if isinstance(summary, dict) else None


def summary_row(result: ScoredSlide) -> dict:
    """The slide's row of ``summary.csv`` (the runner adds its path, status and time)."""
    tiling, distance = result.slide.tiling, result.slide.domain.distance
    mm2_per_mask_px = (tiling.mask_downsample * tiling.geometry.mpp0) ** 2 / 1e6
    return {
        "n_patches": len(result.scores),
        "tissue_mm2": round(float(tiling.mask.sum()) * mm2_per_mask_px, 4),
        "score_mean": float(result.scores.mean()),
        "score_std": float(result.scores.std()),
        "tumour_mm2": round(area_mm2(result.regions, tiling.geometry.mpp0), 4),
        "n_regions": len(result.regions),
        "slide_score": round(result.z.slide_score, 4) if math.isfinite(result.z.slide_score) else None,
        "stain_fallbacks": int(result.stain_fallback.sum()),
        "domain_distance": None if math.isnan(distance) else round(distance, 3),
        "out_of_domain": result.slide.domain.out_of_domain,
    }


class PatchTable:
    """``patches.csv``: each tissue patch's level-0 corner and size, its score and z, and whether it was called."""

    def __call__(self, result: ScoredSlide, folder: Path) -> None:
        patches, geometry = result.slide.tiling.patches, result.slide.tiling.geometry
        cells = patches.cells
        table = pd.DataFrame(
            {
                "x": patches.corners[:, 1], "y": patches.corners[:, 0], "size0": geometry.size0,
                "level": geometry.level, "score": result.scores, "z": result.z.values,
                "tissue_fraction": [round(float(f), 4) for f in patches.tissue_fraction],
                "stain_fallback": result.stain_fallback.astype(int),
                "tumour": result.tumour[cells[:, 0], cells[:, 1]].astype(int),
            },
            columns=PATCH_COLUMNS,
        )  # fmt: skip
        table.to_csv(folder / "patches.csv", index=False)


class ScoreMap:
    """``score_map.npy`` (the z map on the slide's grid, NaN off tissue) and ``score_map.json``: where the grid lies
    on the slide and what the z-scores and the decision were made with."""

    def __call__(self, result: ScoredSlide, folder: Path) -> None:
        tiling, z, decision = result.slide.tiling, result.z, result.decision
        geometry, distance = tiling.geometry, result.slide.domain.distance
        info = {
            "origin": [0, 0], "stride": geometry.stride0, "size": geometry.size0, "shape": list(z.map.shape),
            "units": "level-0 px; cell (i, j) spans x in [j*stride, j*stride+size), y in [i*stride, i*stride+size)",
            "level": geometry.level, "mpp0": geometry.mpp0, "score": result.score_name,
            "score_mean": float(result.scores.mean()), "score_std": float(result.scores.std()),
            "z_statistics": z.statistics, "z_centre": z.centre, "z_spread": z.spread,
            "z_threshold": decision.z_threshold, "min_region_tiles": decision.min_region_tiles,
            "score_floor": result.score_floor, "slide_score": z.slide_score,
            "min_slide_score": decision.min_slide_score, "thumbnail_downsample": tiling.mask_downsample,
            "domain_distance": None if math.isnan(distance) else distance,  # JSON holds no NaN
            "out_of_domain": result.slide.domain.out_of_domain,
        }  # fmt: skip
        np.save(folder / "score_map.npy", z.map)
        (folder / "score_map.json").write_text(json.dumps(info, indent=2))


class RegionsGeoJSON:
    """``regions.geojson``: the called regions as QuPath annotations."""

    def __call__(self, result: ScoredSlide, folder: Path) -> None:
        properties = {"out_of_domain": result.slide.domain.out_of_domain}
        geojson = to_geojson(result.regions, result.slide.tiling.geometry.mpp0, properties)
        (folder / "regions.geojson").write_text(json.dumps(geojson))


class RegionsAsapXml:
    """``regions.xml``: the called regions as ASAP / CAMELYON16 annotations."""

    def __call__(self, result: ScoredSlide, folder: Path) -> None:
        (folder / "regions.xml").write_text(to_asap_xml(result.regions, result.slide.domain.out_of_domain))


class TissueImages:
    """``thumbnail.jpg`` and ``tissue_mask.png`` at ``thumbnail_downsample``: what evaluation draws on."""

    def __call__(self, result: ScoredSlide, folder: Path) -> None:
        tiling = result.slide.tiling
        save_image(folder / "thumbnail.jpg", tiling.thumbnail)
        save_image(folder / "tissue_mask.png", (tiling.mask * 255).astype(np.uint8))


class PatchDetections:
    """``patches.geojson``, with ``enabled``: every scored patch as a QuPath detection whose measurements are its
    ``z`` and raw ``score``, called patches classified Tumor, in the GeoJSON QuPath itself writes (0.4 and later:
    ``PathObjectTypeAdapters``), so that QuPath's Measurement Maps colour the slide by z and its tools count and
    filter patches. Off unless asked for: a CAMELYON16 slide has some 45,000 patches."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, result: ScoredSlide, folder: Path) -> None:
        if not self.enabled:
            return
        patches, size = result.slide.tiling.patches, result.slide.tiling.geometry.size0
        called = result.tumour[patches.cells[:, 0], patches.cells[:, 1]]
        namespace = uuid.uuid5(uuid.NAMESPACE_URL, f"skip96:{result.slide.id}")  # the same ids on every run
        rows = zip(patches.corners.tolist(), result.z.values, result.scores, called, strict=True)
        features = []
        for k, ((y, x), z, score, tumour) in enumerate(rows):
            properties = {"objectType": "detection", "measurements": {"z": float(z), "score": float(score)}}
            if tumour:
                properties["classification"] = TUMOUR_CLASS
            ring = [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]
            geometry = {"type": "Polygon", "coordinates": [ring]}
            features.append({"type": "Feature", "id": str(uuid.uuid5(namespace, str(k))), "geometry": geometry,
                             "properties": properties})  # fmt: skip
        (folder / "patches.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))


class Heatmap:
    """``heatmap.png``: the z map over the thumbnail, the called regions outlined; its title says what was called."""

    def __call__(self, result: ScoredSlide, folder: Path) -> None:
        tiling, slide = result.slide.tiling, result.slide
        geometry = tiling.geometry
        what = f"{len(result.regions)} region(s), {area_mm2(result.regions, geometry.mpp0):.3f} mm² called"
        flag = ", OUT OF DOMAIN: not to be read as metastases" if slide.domain.out_of_domain else ""
        called = Outlined(result.tumour, geometry.stride0, CALLED_COLOUR, "called region")
        title = f"{slide.id}: {result.score_name} score, {what}{flag}"
        save_heatmap(
            folder / "heatmap.png", tiling.thumbnail, tiling.mask_downsample, result.z.map, geometry.stride0,
            geometry.mpp0, result.decision.z_threshold, [called], title,
        )  # fmt: skip


SlideWriter = Callable[[ScoredSlide, Path], None]


def write_slide(result: ScoredSlide, writers: Sequence[SlideWriter], folder: Path, settings: dict, summary: dict):
    """Write a slide's files with ``writers`` as one unit, ``complete.json`` last, replacing an earlier run's only
    once all are written, so that a kill leaves the old set or the new one."""
    try:
        with atomic_folder(folder) as out:
            for writer in writers:
                writer(result, out)
            marker = {
                "slide": str(Path(result.slide.path).resolve()), "fingerprint": result.slide.fingerprint,
                "settings": settings, "summary": summary,
                "files": {p.name: file_record(p) for p in sorted(out.iterdir())},
            }  # fmt: skip
            (out / COMPLETE_MARKER).write_text(json.dumps(marker))
    except OSError as error:
        raise OutputWriteError(f"cannot write its outputs to {folder}: {write_failure(error)}") from error
