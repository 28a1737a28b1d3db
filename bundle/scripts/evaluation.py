"""Evaluation of scored slides against their labels, with the test labels never choosing the threshold: the
decision a calibration file (or the command line) sets is applied and measured as patch, pixel, lesion and slide
metrics. The per-slide IoU- and F1-optimal thresholds that a label-peeking study would report are computed too, but
only as *oracle* numbers beside the honest ones.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .atomic import atomic_path, folder_lock
from .evaluation_figures import save_curves, save_overlay
from .lesions import BURDEN_STRATA, froc_curve, froc_summary, lesion_detection, lesion_raster, slide_level
from .metrics import overlap, pr_auc, roc_auc, strict_json
from .operating_point import operating_point, shown, stated, sweep_grid
from .regions import cells_on_image, grid_index
from .report import CohortReport, EvaluatedCohort
from .settings import recorded
from .slide_truth import CohortLabels, SlideResult

logger = logging.getLogger(__name__)

# heatmap_summary.csv: one row a slide
SLIDE_METRIC_COLUMNS = [
    "slide", "tumour_fraction", "n_patches", "auc", "pr_auc", "iou", "oracle_iou", "threshold", "tp", "fp", "fn",
    "slide_score", "slide_label", "false_regions",
]  # fmt: skip
# What evaluate writes beside the slide folders (calibrate writes calibration.json)
EVALUATE_FILES = ("metrics.json", "heatmap_summary.csv", "lesions.csv", "roc.png", "pr.png")


def sweep(slides: Sequence[SlideResult], thresholds: Sequence[float], min_region_tiles: Sequence[int]) -> pd.DataFrame:
    """Mean and per-slide IoU for every (z_threshold, min_region_tiles) pair."""
    rows = []
    for tiles in min_region_tiles:
        for threshold in thresholds:
            ious = [overlap(s.predict(threshold, tiles), s.patches["label"].to_numpy())["iou"] for s in slides]
            rows.append(
                {"z_threshold": float(threshold), "min_region_tiles": int(tiles), "mean_iou": float(np.mean(ious))}
            )
    return pd.DataFrame(rows)


def best_of(table: pd.DataFrame, column: str = "mean_iou") -> pd.Series:
    """The best row; ties go to the first (lowest threshold, then fewest tiles) so the choice is reproducible."""
    return table.loc[table[column].idxmax()]


def called_area(slides: Sequence[SlideResult], z_threshold: float, min_region_tiles: int) -> dict:
    """Pixel recall and precision of the called area against the annotations, pooled over the slides' thumbnails:
    how much of the tumour the regions cover, and how much of them is tumour, beside lesion counts that one patch of
    a region satisfies."""
    hit = called_px = tumour_px = 0
    for s in slides:
        called_cells = s.called_map(z_threshold, min_region_tiles)
        called = cells_on_image(called_cells, s.truth.shape, s.map_info["thumbnail_downsample"], s.map_info["stride"])
        hit += int((called & s.truth).sum())
        called_px, tumour_px = called_px + int(called.sum()), tumour_px + int(s.truth.sum())
    return {
        "pixel_recall": hit / tumour_px if tumour_px else None,
        "pixel_precision": hit / called_px if called_px else None,
    }


def pixel_scores(s: SlideResult, tissue_only: bool) -> tuple[np.ndarray, np.ndarray]:
    """Thumbnail pixels scored with their grid cell's z (off-grid pixels lowest), and their tumour labels."""
    ds, stride = s.map_info["thumbnail_downsample"], s.map_info["stride"]
    rows, cols = (grid_index(n, ds, stride, k) for n, k in zip(s.truth.shape, s.z_map.shape, strict=True))
    scores = s.z_map[np.ix_(rows, cols)].astype(np.float64)
    scores = np.where(np.isfinite(scores), scores, np.nanmin(s.z_map) - 1.0)
    keep = s.tissue if tissue_only else np.ones_like(s.tissue)
    return scores[keep], s.truth[keep].astype(int)


def pixel_auc(slides: Sequence[SlideResult], tissue_only: bool) -> float:
    scores, labels = zip(*(pixel_scores(s, tissue_only) for s in slides), strict=True)
    return roc_auc(np.concatenate(scores), np.concatenate(labels))


class Evaluation:
    """``evaluate``: the metrics of the scored slides of ``labels`` at one decision, written with their tables and
    figures, and added to the cohort's ``report``; ``thresholds`` and ``min_region_tiles`` are what the oracle tries."""

    def __init__(
        self,
        labels: CohortLabels,
        report: CohortReport,
        thresholds: Sequence[float],
        min_region_tiles: Sequence[int],
    ) -> None:
        self.labels = labels
        self.report = report
        self.thresholds, self.min_region_tiles = sweep_grid(thresholds, min_region_tiles)

    def start(self, slides: Sequence[str]) -> None:
        """Before the first slide is scored: the labels (``CohortLabels.start``), the last run's files gone."""
        self.labels.start(slides, EVALUATE_FILES)

    def evaluate(
        self, z_threshold: float, min_region_tiles: int, calibrated: bool, score_floor: float, min_slide_score: float
    ) -> dict:
        """The metrics of the decision inference applied: ``z_threshold``, ``min_region_tiles``, ``score_floor`` and
        ``min_slide_score`` (``calibrated``: as the calibration file holds them)."""
        with folder_lock(self.labels.output_dir):
            metrics = self._evaluate(float(z_threshold), int(min_region_tiles), calibrated, score_floor,
                                     min_slide_score)  # fmt: skip
        self.labels.refuse_partial_cohort("metrics.json")
        return metrics

    def _evaluate(
        self, z_threshold: float, min_region_tiles: int, calibrated: bool, score_floor: float, min_slide_score: float
    ) -> dict:
        decision = {"score_floor": score_floor, "min_slide_score": min_slide_score}
        slides = [dataclasses.replace(s, **decision) for s in self.labels.slides()]
        rows, per_slide = [], {}
        for s in slides:
            labels, z = s.patches["label"].to_numpy(), s.patches["z"].to_numpy()
            result = overlap(s.predict(z_threshold, min_region_tiles), labels)
            ungated = dataclasses.replace(s, min_slide_score=-math.inf)  # the oracle opens the gate too
            oracle = best_of(sweep([ungated], self.thresholds, self.min_region_tiles))
            oracle_f1 = max(
                (overlap(ungated.predict(t, m), labels)["dice"], t, m)
                for m in self.min_region_tiles
                for t in self.thresholds
            )
            rows.append(
                {
                    "slide": s.slide_id, "tumour_fraction": round(s.tumour_fraction, 5), "n_patches": len(labels),
                    "auc": roc_auc(z, labels), "pr_auc": pr_auc(z, labels), "iou": result["iou"],
                    "oracle_iou": float(oracle["mean_iou"]), "threshold": z_threshold,
                    "tp": result["tp"], "fp": result["fp"], "fn": result["fn"],
                }
            )  # fmt: skip
            per_slide[s.slide_id] = {
                **result,
                "oracle_iou_threshold": float(oracle["z_threshold"]),
                "oracle_iou_min_region_tiles": int(oracle["min_region_tiles"]),
                "oracle_f1": float(oracle_f1[0]),
                "oracle_f1_threshold": float(oracle_f1[1]),
                "pixel_auc_tissue": pixel_auc([s], tissue_only=True),
                "pixel_auc_all_pixels": pixel_auc([s], tissue_only=False),
            }
            save_overlay(s, z_threshold, min_region_tiles, self.labels.output_dir / s.slide_id)
        rasters = [lesion_raster(s) for s in slides]
        slide_task, slide_table = slide_level(slides, rasters, self.labels.reference_csv)
        lesion_task, lesion_table = lesion_detection(slides, rasters, z_threshold, min_region_tiles)
        table = pd.DataFrame(rows).assign(
            slide_score=slide_table["score"].to_numpy(),
            slide_label=slide_table["tumour"].to_numpy(),
            false_regions=[lesion_task["false_regions"][s.slide_id] for s in slides],
        )[SLIDE_METRIC_COLUMNS]
        metrics = self._pooled(slides, table, lesion_table, per_slide, z_threshold, min_region_tiles, calibrated)
        free_regions = [lesion_task["false_regions"][s.slide_id] for s in slides if s.is_tumour_free]
        point = operating_point(int(lesion_table["found"].sum()), len(lesion_table), free_regions, table["tp"],
                                table["fp"], table["fn"])  # fmt: skip
        area = called_area(slides, z_threshold, min_region_tiles)  # beside every lesion count, so none reads as more
        froc = froc_curve(slides, rasters)
        metrics |= {
            "operating_point": point, "slide_level": slide_task, "called_area": area,
            "lesion_detection": {**lesion_task, **area}, "froc": {**froc_summary(froc), **area},
        }  # fmt: skip
        with atomic_path(self.labels.output_dir / "heatmap_summary.csv") as tmp:
            table.to_csv(tmp, index=False)
        with atomic_path(self.labels.output_dir / "lesions.csv") as tmp:
            lesion_table.to_csv(tmp, index=False)
        with atomic_path(self.labels.output_dir / "metrics.json") as tmp:
            tmp.write_text(json.dumps(strict_json(metrics), indent=2, allow_nan=False))
        save_curves(slides, self.labels.output_dir)
        self.report.write_evaluation(EvaluatedCohort(metrics, table, lesion_table, froc))
        logger.info(
            "pooled patch AUC %.3f, mean IoU %.3f (oracle %.3f); %s; FROC %s; called area: pixel recall %s, "
            "precision %s",
            metrics["pooled"]["auc"], metrics["mean_iou"], metrics["oracle"]["mean_iou"], stated(point),
            *(shown(v) for v in (metrics["froc"]["score"], area["pixel_recall"], area["pixel_precision"])),
        )  # fmt: skip
        return metrics

    def _pooled(self, slides, table, lesion_table, per_slide, z_threshold, min_region_tiles, calibrated) -> dict:
        labels = np.concatenate([s.patches["label"].to_numpy() for s in slides])
        z = np.concatenate([s.patches["z"].to_numpy() for s in slides])
        predicted = np.concatenate([s.predict(z_threshold, min_region_tiles) for s in slides])
        strata = {}
        lesion_burden = lesion_table["slide"].map(dict(zip(table["slide"], table["tumour_fraction"], strict=True)))
        for name, (low, high) in BURDEN_STRATA.items():
            members = table[(table["tumour_fraction"] > low) & (table["tumour_fraction"] <= high)]
            found = lesion_table.loc[(lesion_burden > low) & (lesion_burden <= high), "found"]
            strata[name] = {
                "n_slides": len(members),
                "mean_iou": float(members["iou"].mean()) if len(members) else None,
                "lesion_sensitivity": float(found.mean()) if len(found) else None,
            }
        fp_area = {}
        for s in slides:
            if s.is_tumour_free:
                cell_mm2 = (s.map_info["size"] * s.map_info["mpp0"]) ** 2 / 1e6
                fp_area[s.slide_id] = float(s.predict(z_threshold, min_region_tiles).sum() * cell_mm2)
        return {
            "threshold": {
                "z_threshold": z_threshold,
                "min_region_tiles": min_region_tiles,
                "score_floor": recorded(slides[0].score_floor),
                "min_slide_score": recorded(slides[0].min_slide_score),
                "calibrated": calibrated,
            },  # fmt: skip
            "label_rule": self.labels.label_rule,
            "n_slides": len(slides),
            "slides_failed_inference": list(self.labels.failed),
            "pooled": {
                "auc": roc_auc(z, labels),
                "pr_auc": pr_auc(z, labels),
                **overlap(predicted, labels),
                "pixel_auc_tissue": pixel_auc(slides, tissue_only=True),
                "pixel_auc_all_pixels (background inflates it)": pixel_auc(slides, tissue_only=False),
            },
            "mean_iou": float(table["iou"].mean()),
            "strata": strata,
            "tumour_free_false_positive_mm2": fp_area,
            "oracle": {
                "note": "thresholds chosen on each slide's own labels: an upper bound, not a result",
                "mean_iou": float(table["oracle_iou"].mean()),
                "mean_f1": float(np.mean([v["oracle_f1"] for v in per_slide.values()])),
            },
            "per_slide": per_slide,
        }
