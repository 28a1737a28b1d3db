"""``report.html``: the cohort at a glance, one file that a browser opens offline (no server, no CDN).

A sortable table of the slides (status, patches, called area, slide score, regions, domain distance, time, each
failed slide's error), each slide's overlay as a thumbnail that opens the full image, and after evaluation the
cohort's figures and numbers. Inference rewrites it as each slide completes; evaluation adds its part at the end.
The page is rendered by Jinja2 (autoescaped) and its figures drawn by matplotlib; thumbnails and figures are embedded
as data URIs, so the file holds all it shows except the full-size overlays it links to beside it.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from .atomic import atomic_path, write_failure
from .evaluation_figures import froc_figure, lesion_size_figure, slide_iou_figure, slide_roc_figure
from .lesions import FROC_FP_RATES, FrocCurve
from .operating_point import shown

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"
THUMBNAIL_WIDTH_PX = 320
THUMBNAIL_QUALITY = 80
# The slide table: summary.csv's columns as the report heads them, then evaluation's (heatmap_summary.csv)
SLIDE_COLUMNS = {
    "slide": "slide", "status": "status", "n_patches": "patches", "tissue_mm2": "tissue mm²",
    "tumour_mm2": "called mm²", "n_regions": "regions", "slide_score": "slide score",
    "domain_distance": "domain distance", "out_of_domain": "out of domain", "seconds": "time (s)",
}  # fmt: skip
EVALUATED_COLUMNS = {"slide_label": "tumour slide", "tumour_fraction": "tumour fraction", "iou": "IoU"}
# The decision a run applied, from its settings record, as the report lists it
DECISION_SETTINGS = ("score", "z_threshold", "min_region_tiles", "score_floor", "min_slide_score", "domain_limit")


@dataclass(frozen=True)
class EvaluatedCohort:
    """What evaluation adds to the report: ``metrics.json``, the per-slide table (``heatmap_summary.csv``), the
    lesions (``lesions.csv``) and the FROC curve (None without a lesion to find)."""

    metrics: dict
    slides: pd.DataFrame
    lesions: pd.DataFrame
    froc: FrocCurve | None


def data_uri(payload: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def figure_uri(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return data_uri(buffer.getvalue(), "image/png")


def thumbnail_uri(path: Path, width: int = THUMBNAIL_WIDTH_PX) -> str:
    """A small JPEG of an overlay, embedded: 130 slides' thumbnails come to a few MB."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((width, width * image.height // max(image.width, 1)))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY)
    return data_uri(buffer.getvalue(), "image/jpeg")


def cell(value: object) -> tuple[str, object]:
    """A table cell's text and its sort key (numbers sort as numbers, missing values last)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "", ""
    if isinstance(value, bool | np.bool_):
        return ("yes" if value else "no"), int(value)
    if isinstance(value, int | np.integer):
        return str(int(value)), int(value)
    if isinstance(value, float | np.floating):  # a count in a column with missing values is a float too
        return (f"{int(value)}" if float(value).is_integer() else f"{float(value):.4g}"), float(value)
    return str(value), str(value)


class CohortReport:
    """Writes ``output_dir/report.html`` (``report.shard-<i>-of-<n>.html`` for a shard's own rows): ``write`` after
    each slide of an inference run, ``write_evaluation`` once evaluation has its metrics.

    Thumbnails are made once per overlay file (kept while its modification time holds), so rewriting the page after
    every slide costs the table, not 130 images. A page that cannot be written is logged once and never fails a slide.
    """

    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)
        self.template = jinja2.Environment(
            loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True, undefined=jinja2.StrictUndefined
        ).get_template("report.html.j2")
        self._thumbnails: dict[Path, tuple[int, str]] = {}
        self._last: tuple[pd.DataFrame, dict, str] | None = None
        self._failed = False

    def write(self, summary: pd.DataFrame, settings: dict, name: str = REPORT_FILE) -> None:
        """The page of ``summary`` (one row a slide; ``status`` ``pending`` for those still to score) under the run's
        ``settings``."""
        self._last = (summary, settings, name)
        self._render(summary, settings, None, name)

    def write_evaluation(self, evaluated: EvaluatedCohort) -> None:
        """The last page written, with the evaluation's figures, numbers and per-slide measures added."""
        if self._last is None:
            raise RuntimeError("the report's evaluation comes after its slides: write() was never called.")
        summary, settings, name = self._last
        by_slide = evaluated.slides.set_index("slide")[list(EVALUATED_COLUMNS)].astype({"slide_label": bool})
        self._render(summary.join(by_slide, on="slide"), settings, evaluated, name)

    def _render(self, table: pd.DataFrame, settings: dict, evaluated: EvaluatedCohort | None, name: str) -> None:
        """Render and write the page; whatever goes wrong is logged once and costs the run nothing else."""
        start = time.perf_counter()
        try:
            columns = {**SLIDE_COLUMNS, **(EVALUATED_COLUMNS if evaluated is not None else {})}
            page = self.template.render(
                title=f"Skip96 report: {self.output_dir.resolve().name}",
                written=time.strftime("%Y-%m-%d %H:%M:%S"),
                counts=cohort_counts(table),
                decision={key: cell(settings[key])[0] or "off" for key in DECISION_SETTINGS if key in settings},
                columns=columns,
                rows=[self._row(row, columns) for row in table.to_dict("records")],
                evaluation=evaluation_section(evaluated) if evaluated is not None else None,
            )
            with atomic_path(self.output_dir / name) as tmp:
                tmp.write_text(page, encoding="utf-8")
        except Exception as error:  # noqa: BLE001  (the page is a view of the results, never a reason to lose them)
            if not self._failed:
                reason = write_failure(error) if isinstance(error, OSError) else f"{type(error).__name__}: {error}"
                logger.warning("cannot write %s: %s", self.output_dir / name, reason)
                logger.debug("report failure", exc_info=error)
            self._failed = True
            return
        logger.debug("%s written in %.2f s", self.output_dir / name, time.perf_counter() - start)

    def _row(self, row: dict, columns: dict[str, str]) -> dict:
        """A slide's row; its thumbnail only once it is scored (a failed or pending slide's folder holds an earlier
        run's images, or is none of its own)."""
        folder = self.output_dir / str(row["slide"])
        images = ("overlay.png", "heatmap.png") if row["status"] == "ok" else ()
        image = next((folder / f for f in images if (folder / f).is_file()), None)
        return {
            "cells": [cell(row.get(key)) for key in columns],
            "status": row["status"],
            "called": bool(row.get("tumour_mm2") or 0) and row["status"] == "ok",
            "error": row.get("error") if isinstance(row.get("error"), str) else "",
            "thumbnail": self._thumbnail(image) if image is not None else None,
            "href": f"{urllib.parse.quote(str(row['slide']))}/{image.name}" if image is not None else None,
        }

    def _thumbnail(self, path: Path) -> str | None:
        try:
            modified = path.stat().st_mtime_ns
            if self._thumbnails.get(path, (None,))[0] != modified:
                self._thumbnails[path] = (modified, thumbnail_uri(path))
        except OSError as error:  # a slide being rewritten: its thumbnail comes with the next page
            logger.debug("no thumbnail of %s yet: %s", path, error)
            return None
        return self._thumbnails[path][1]


def cohort_counts(table: pd.DataFrame) -> dict[str, int]:
    status = table["status"]
    ok = status == "ok"
    return {
        "slides": len(table),
        "scored": int(ok.sum()),
        "failed": int((status == "error").sum()),
        "pending": int((status == "pending").sum()),
        "called": int((ok & (table["tumour_mm2"].fillna(0) > 0)).sum()),
        "out of domain": int((ok & (table["out_of_domain"] == True)).sum()),  # noqa: E712  (object column)
    }


def called_regions(point: dict) -> dict[str, str]:
    """The operating point of the called regions (``operating_point``), each measure with its 95 % interval."""

    def with_interval(measure: dict) -> str:
        interval = measure["interval"]
        return shown(measure["value"]) + (f" ({shown(interval[0])}-{shown(interval[1])})" if interval else "")

    found, false = point["lesion_sensitivity"], point["false_regions_per_tumour_free_slide"]
    return {
        "called regions: lesion sensitivity": f"{found['found']}/{found['n_lesions']}, {with_interval(found)}",
        "called regions: false regions per tumour-free slide": with_interval(false),
        "called patches: recall": with_interval(point["patch_recall"]),
        "called patches: precision": with_interval(point["patch_precision"]),
    }


def evaluation_section(evaluated: EvaluatedCohort) -> dict:
    """The report's evaluation part: its figures and its numbers, each lesion count beside the called area's pixel
    recall and precision, so that a FROC of 1.0 on a slide whose calls cover a twentieth of its tumour does not read as
    a perfect result."""
    metrics = evaluated.metrics
    froc, area, slide_task = metrics["froc"], metrics["called_area"], metrics["slide_level"]
    at_rates = froc.get("sensitivity_at_thresholds", [None] * len(FROC_FP_RATES))  # None: no lesion to find
    tumour = evaluated.slides[evaluated.slides["tumour_fraction"] > 0]
    tumour_iou = float(tumour["iou"].mean()) if len(tumour) else None
    lesion_numbers = {
        "FROC score (mean of the points below)": shown(froc["score"]),
        **{
            f"sensitivity at {rate:g} false positives per slide": shown(value)
            for rate, value in zip(FROC_FP_RATES, at_rates, strict=True)
        },
        **called_regions(metrics["operating_point"]),
        "called area: pixel recall": shown(area["pixel_recall"]),
        "called area: pixel precision": shown(area["pixel_precision"]),
    }
    patch_numbers = {
        "slide-level AUC (Task 1)": shown(slide_task["auc"]),
        "tumour / normal slides": f"{slide_task['n_tumour']} / {slide_task['n_normal']}",
        "pooled patch AUC": shown(metrics["pooled"]["auc"]),
        "pooled patch PR-AUC": shown(metrics["pooled"]["pr_auc"]),
        "mean IoU, tumour slides": shown(tumour_iou),
        "mean IoU, all slides (a tumour-free slide without a call counts 1)": shown(metrics["mean_iou"]),
        "oracle mean IoU (thresholds from each slide's own labels: a bound, not a result)": shown(
            metrics["oracle"]["mean_iou"]
        ),
        "called area: pixel recall": shown(area["pixel_recall"]),
        "called area: pixel precision": shown(area["pixel_precision"]),
    }
    figures = {
        "slide-level ROC": slide_roc_figure(evaluated.slides, slide_task["auc"]),
        "lesion FROC": froc_figure(evaluated.froc),
        "lesions found, by size": lesion_size_figure(evaluated.lesions),
        "per-slide IoU": slide_iou_figure(evaluated.slides),
    }
    return {
        "figures": {title: figure_uri(figure) for title, figure in figures.items()},
        "tables": {"lesions (Task 2)": lesion_numbers, "slides, patches and pixels": patch_numbers},
        "calibration": {key: cell(value)[0] or "off" for key, value in metrics["threshold"].items()},
        "failed": metrics["slides_failed_inference"],
    }
