"""Evaluation and calibration against lesion annotations, with the test labels never choosing the threshold.

``calibrate`` sweeps (z threshold, min_region_tiles) on calibration slides and keeps the pair with the best mean IoU;
``evaluate`` applies a calibration file to test slides. The per-slide IoU- and F1-optimal thresholds that a
label-peeking study would report are computed too, but only as *oracle* numbers beside the honest ones.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from skimage import io  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from .annotations import (  # noqa: E402
    ANNOTATION_SUFFIXES,
    LesionAnnotation,
    MaskAnnotation,
    annotation_names,
    find_annotation,
    read_annotation,
)
from .atomic import atomic_path, folder_lock  # noqa: E402
from .calibration import write_calibration  # noqa: E402
from .lesions import (  # noqa: E402
    BURDEN_STRATA,
    lesion_detection,
    lesion_froc,
    lesion_raster,
    reference_labels,
    slide_level,
)
from .metrics import overlap, pr_auc, roc_auc, strict_json  # noqa: E402
from .regions import clean_mask, two_scale_map  # noqa: E402
from .settings import require_number  # noqa: E402
from .slide_outputs import read_summary  # noqa: E402
from .wsi import slide_id  # noqa: E402

logger = logging.getLogger(__name__)

LABEL_RULES = ("centre", "fraction")
SWEEP_THRESHOLDS = tuple(np.linspace(-3, 5, 100))
SUMMARY_COLUMNS = [
    "slide", "tumour_fraction", "n_patches", "auc", "pr_auc", "iou", "oracle_iou", "threshold", "tp", "fp", "fn",
    "slide_score", "slide_label", "false_regions",
]  # fmt: skip


@dataclass
class SlideResult:
    """One slide's inference outputs joined with its ground truth."""

    slide_id: str
    patches: pd.DataFrame  # inference patches.csv plus `label`
    z_map: np.ndarray
    grid: dict
    truth: np.ndarray  # tumour raster at thumbnail_downsample
    tissue: np.ndarray  # tissue mask at thumbnail_downsample
    thumbnail: np.ndarray
    annotation: LesionAnnotation | MaskAnnotation | None = None
    score_floor: float = -math.inf  # the decision's second scale (``two_scale_map``), as inference applied it

    @property
    def cells(self) -> tuple[np.ndarray, np.ndarray]:
        stride = self.grid["stride"]
        return (self.patches["y"].to_numpy() // stride).astype(int), (self.patches["x"].to_numpy() // stride).astype(
            int
        )

    @property
    def tumour_fraction(self) -> float:
        """Annotated tumour area as a fraction of the tissue area (the burden used for strata)."""
        return float((self.truth & self.tissue).sum() / max(self.tissue.sum(), 1))

    def called_map(self, z_threshold: float, min_region_tiles: int) -> np.ndarray:
        """The grid cells inference calls tumour at these settings (both scales of the decision)."""
        candidates = self.z_map
        if self.score_floor > -math.inf:
            scores = self.patches["score"].to_numpy()
            candidates = two_scale_map(self.z_map, np.stack(self.cells, 1), scores, self.score_floor)
        return clean_mask(candidates, z_threshold, min_region_tiles)

    def predict(self, z_threshold: float, min_region_tiles: int) -> np.ndarray:
        rows, cols = self.cells
        return self.called_map(z_threshold, min_region_tiles)[rows, cols]


def patch_labels(
    annotation, patches: pd.DataFrame, rule: str = "centre", min_fraction: float = 0.5, raster_px: int = 12
) -> np.ndarray:
    """Label each patch from the annotation rasterised at ``size0 / raster_px`` level-0 px per pixel.

    ``centre`` (the PCam rule): tumour when any tumour pixel lies in the patch's central third (32 of 96 px).
    ``fraction``: tumour when at least ``min_fraction`` of the patch is tumour.
    """
    if rule not in LABEL_RULES:
        raise ValueError(f"label_rule must be one of {list(LABEL_RULES)}, got {rule!r}.")
    if patches.empty:
        return np.zeros(0, dtype=int)
    size0 = int(patches["size0"].iloc[0])
    downsample = size0 / raster_px
    height = int(np.ceil((patches["y"].max() + size0) / downsample))
    width = int(np.ceil((patches["x"].max() + size0) / downsample))
    mask = annotation.rasterise((height, width), downsample)
    rows = (patches["y"].to_numpy() / downsample).round().astype(int)
    cols = (patches["x"].to_numpy() / downsample).round().astype(int)
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(mask, ((0, raster_px), (0, raster_px))), (raster_px,) * 2)
    per_patch = windows[rows, cols]
    if rule == "centre":
        third = raster_px // 3
        return per_patch[:, third : raster_px - third, third : raster_px - third].any(axis=(1, 2)).astype(int)
    return (per_patch.mean(axis=(1, 2)) >= min_fraction).astype(int)


def slide_annotation(
    slide_id: str, annotation_dir: Path | None, tumour_free: bool
) -> LesionAnnotation | MaskAnnotation | None:
    """The slide's annotation, or None for a slide declared tumour-free; a slide with neither is an error.

    A missing annotation must not pass as "no tumour": a misnamed file would score every called patch as a false
    positive, and a tumour slide would count as perfectly clean when nothing is called.
    """
    path = find_annotation(annotation_dir, slide_id) if annotation_dir else None
    if path is not None and tumour_free:
        raise ValueError(f"slide {slide_id} is listed in tumour_free_slides but has the annotation {path}; keep one.")
    if path is not None:
        return read_annotation(path)
    if tumour_free:
        return None
    raise FileNotFoundError(
        f"slide {slide_id}: no annotation in {annotation_dir} (looked for {' / '.join(annotation_names(slide_id))}, "
        "any letter case); add it, add an empty annotation file, or list the slide in --tumour_free_slides."
    )


def load_slide(
    output_dir: Path,
    slide_id: str,
    annotation: LesionAnnotation | MaskAnnotation | None,
    rule: str,
    min_fraction: float,
) -> SlideResult:
    """Read a slide's inference outputs and label its patches from ``annotation`` (None: tumour-free)."""
    folder = output_dir / slide_id
    patches = pd.read_csv(folder / "patches.csv")
    grid = json.loads((folder / "score_map.json").read_text())
    tissue = io.imread(folder / "tissue_mask.png") > 0
    if annotation is None:
        patches["label"] = 0
        truth = np.zeros_like(tissue)
    else:
        patches["label"] = patch_labels(annotation, patches, rule, min_fraction)
        truth = annotation.rasterise(tissue.shape, grid["thumbnail_downsample"])
    thumbnail = io.imread(folder / "thumbnail.jpg")
    return SlideResult(slide_id, patches, np.load(folder / "score_map.npy"), grid, truth, tissue, thumbnail, annotation)


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


# What evaluate writes beside the slide folders (calibrate writes calibration.json)
EVALUATE_FILES = ("metrics.json", "heatmap_summary.csv", "lesions.csv", "roc.png", "pr.png")


class Evaluation:
    """Calibrate on one set of scored slides, evaluate another, and write metrics, tables and figures."""

    def __init__(
        self,
        output_dir: str | Path,
        annotation_dir: str | Path | None,
        label_rule: str = "centre",
        min_tumour_fraction: float = 0.5,
        thresholds: Sequence[float] = SWEEP_THRESHOLDS,
        min_region_tiles: Sequence[int] = (1, 2, 3, 5, 8),
        tumour_free_slides: Sequence[str] = (),
        reference_csv: str | Path | None = None,
        score_floors: dict[float, float] | None = None,
    ) -> None:
        if label_rule not in LABEL_RULES:
            raise ValueError(f"label_rule must be one of {list(LABEL_RULES)}, got {label_rule!r}.")
        if annotation_dir and not Path(annotation_dir).is_dir():
            raise FileNotFoundError(f"annotation_dir {annotation_dir} is not a folder.")
        self.output_dir = Path(output_dir)
        self.annotation_dir = Path(annotation_dir) if annotation_dir else None
        self.label_rule = label_rule
        require_number("min_tumour_fraction", min_tumour_fraction, 0, 1, exclusive_minimum=True)
        for name, values, low, integer in (("sweep_thresholds", thresholds, -20, False),
                                           ("sweep_min_region_tiles", min_region_tiles, 1, True)):  # fmt: skip
            if isinstance(values, str) or not len(values):
                raise ValueError(f"--{name} must be a non-empty list (JSON), got {values!r}.")
            for value in values:
                require_number(name, value, low, 20 if not integer else None, integer)
        self.min_tumour_fraction = min_tumour_fraction
        self.thresholds = [float(t) for t in thresholds]
        self.min_region_tiles = [int(m) for m in min_region_tiles]
        if isinstance(tumour_free_slides, str):
            tumour_free_slides = [tumour_free_slides]
        self.tumour_free_slides = [str(p) for p in tumour_free_slides]
        self.reference_csv = reference_csv
        self.score_floors = score_floors or {0.0: -math.inf}  # normal_quantile -> the score floor it sets
        self.failed: list[str] = []  # slides of the cohort whose inference failed, left out of the numbers

    def is_tumour_free(self, slide_id: str) -> bool:
        """Whether ``slide_id`` matches an id or shell pattern (``normal_*``) of ``tumour_free_slides``."""
        return any(fnmatch.fnmatchcase(slide_id, pattern) for pattern in self.tumour_free_slides)

    def start(self, slides: Sequence[str], cohort_files: Sequence[str]) -> None:
        """Before the first slide is scored: every slide's labels can be had (its annotation or tumour-free entry,
        its reference row), and the previous run's ``cohort_files`` are gone, so that a run that fails later leaves
        no metrics of other settings beside slide folders it rescored."""
        ids = [slide_id(s) for s in slides]
        for s in ids:
            slide_annotation(s, self.annotation_dir, self.is_tumour_free(s))
        if self.reference_csv:
            reference_labels(self.reference_csv, ids, warn=False)
        for name in cohort_files:
            (self.output_dir / name).unlink(missing_ok=True)

    def slides(self) -> list[SlideResult]:
        """Every scored slide with its labels; every one must have an annotation or be declared tumour-free."""
        summary = read_summary(self.output_dir / "summary.csv")
        ok = summary.loc[summary["status"] == "ok", "slide"].tolist()
        if not ok:
            raise RuntimeError(f"no scored slide in {self.output_dir / 'summary.csv'} to evaluate.")
        self.failed = summary.loc[summary["status"] != "ok", "slide"].tolist()
        for slide, error in summary.loc[summary["status"] != "ok", ["slide", "error"]].itertuples(index=False):
            logger.error("slide %s is left out of the metrics: its inference failed (%s).", slide, error)
        annotations = {s: slide_annotation(s, self.annotation_dir, self.is_tumour_free(s)) for s in ok}
        if self.annotation_dir:
            matched = {n.casefold() for s in ok + self.failed for n in annotation_names(s)}
            unused = sorted(
                p.name for p in self.annotation_dir.iterdir()
                if p.name.casefold().endswith(ANNOTATION_SUFFIXES) and p.name.casefold() not in matched
            )  # fmt: skip
            if unused:
                logger.warning("annotations matching no scored slide in %s: %s", self.annotation_dir, unused)
        slides = [load_slide(self.output_dir, s, annotations[s], self.label_rule, self.min_tumour_fraction) for s in ok]
        for slide in slides:
            drawn = isinstance(slide.annotation, LesionAnnotation) and slide.annotation.tumour
            if drawn and not slide.patches["label"].any():
                logger.warning(
                    "slide %s: its annotation draws tumour but labels no scored patch (off the tissue, or coordinates "
                    "not at level 0?); it counts as tumour-free", slide.slide_id,
                )  # fmt: skip
        return slides

    def calibrate(self, weights: str | None = None, scoring: dict | None = None) -> dict:
        """Choose the threshold on these slides; ``weights`` (the model's ``weights_digest``) and the ``scoring``
        settings the z-scores were made with are recorded with it, so that inference can refuse the file for another
        model or another score."""
        with folder_lock(self.output_dir):
            calibration = self._calibrate(weights, scoring)
        self._refuse_partial_cohort("calibration.json")
        return calibration

    def evaluate(
        self, z_threshold: float, min_region_tiles: int, calibrated: bool, score_floor: float = -math.inf
    ) -> dict:
        with folder_lock(self.output_dir):
            metrics = self._evaluate(z_threshold, min_region_tiles, calibrated, score_floor)
        self._refuse_partial_cohort("metrics.json")
        return metrics

    def _refuse_partial_cohort(self, written: str) -> None:
        """Fail the command (after writing) when slides of the cohort are missing from it: numbers over part of a
        cohort must not pass for the cohort's."""
        if self.failed:
            raise RuntimeError(
                f"{written} covers only the slides scored in {self.output_dir / 'summary.csv'}: {len(self.failed)} "
                f"failed inference ({', '.join(self.failed[:5])}{', ...' if len(self.failed) > 5 else ''}); fix them "
                "and rerun inference (finished slides are skipped), or score the cohort without them."
            )

    def _calibrate(self, weights: str | None, scoring: dict | None) -> dict:
        slides = self.slides()
        if not any(s.patches["label"].any() for s in slides):
            raise ValueError(
                f"none of the {len(slides)} calibration slides in {self.output_dir} has a tumour patch; a threshold "
                "chosen on them would be meaningless: calibrate on slides with annotated tumour."
            )
        tables = []
        for quantile, floor in self.score_floors.items():
            for s in slides:
                s.score_floor = floor
            tables.append(sweep(slides, self.thresholds, self.min_region_tiles).assign(normal_quantile=quantile))
        table = pd.concat(tables, ignore_index=True)
        best = best_of(table)
        calibration = {
            "z_threshold": float(best["z_threshold"]),
            "min_region_tiles": int(best["min_region_tiles"]),
            "normal_quantile": float(best["normal_quantile"]),
            "mean_iou": float(best["mean_iou"]),
            "calibration_slides": [s.slide_id for s in slides],
            "slides_failed_inference": list(self.failed),
            "label_rule": self.label_rule,
            "weights": weights,
            "scoring": scoring,
        }
        write_calibration(self.output_dir, calibration)
        logger.info(
            "calibrated on %d slides: z_threshold %.3f, min_region_tiles %d, normal_quantile %.3f (mean IoU %.3f)",
            len(slides), calibration["z_threshold"], calibration["min_region_tiles"], calibration["normal_quantile"],
            calibration["mean_iou"],
        )  # fmt: skip
        return calibration

    def _evaluate(self, z_threshold: float, min_region_tiles: int, calibrated: bool, score_floor: float) -> dict:
        slides = self.slides()
        for s in slides:
            s.score_floor = score_floor
        rows, per_slide = [], {}
        for s in slides:
            labels, z = s.patches["label"].to_numpy(), s.patches["z"].to_numpy()
            result = overlap(s.predict(z_threshold, min_region_tiles), labels)
            oracle = best_of(sweep([s], self.thresholds, self.min_region_tiles))
            oracle_f1 = max(
                (overlap(s.predict(t, m), labels)["dice"], t, m) for m in self.min_region_tiles for t in self.thresholds
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
                "pixel_auc_tissue": self._pixel_auc([s], tissue_only=True),
                "pixel_auc_all_pixels": self._pixel_auc([s], tissue_only=False),
            }
            self._save_errors(s, z_threshold, min_region_tiles)
        rasters = [lesion_raster(s) for s in slides]
        slide_task, slide_table = slide_level(slides, rasters, self.reference_csv)
        lesion_task, lesion_table = lesion_detection(slides, rasters, z_threshold, min_region_tiles)
        table = pd.DataFrame(rows).assign(
            slide_score=slide_table["score"].to_numpy(),
            slide_label=slide_table["tumour"].to_numpy(),
            false_regions=[lesion_task["false_regions"][s.slide_id] for s in slides],
        )[SUMMARY_COLUMNS]
        metrics = self._pooled(slides, table, lesion_table, per_slide, z_threshold, min_region_tiles, calibrated)
        metrics |= {"slide_level": slide_task, "lesion_detection": lesion_task, "froc": lesion_froc(slides, rasters)}
        with atomic_path(self.output_dir / "heatmap_summary.csv") as tmp:
            table.to_csv(tmp, index=False)
        with atomic_path(self.output_dir / "lesions.csv") as tmp:
            lesion_table.to_csv(tmp, index=False)
        with atomic_path(self.output_dir / "metrics.json") as tmp:
            tmp.write_text(json.dumps(strict_json(metrics), indent=2, allow_nan=False))
        self._save_curves(slides)
        logger.info("pooled patch AUC %.3f, mean IoU %.3f (oracle %.3f)", metrics["pooled"]["auc"],
                    metrics["mean_iou"], metrics["oracle"]["mean_iou"])  # fmt: skip
        return metrics

    def _pooled(self, slides, table, lesion_table, per_slide, z_threshold, min_region_tiles, calibrated) -> dict:
        labels = np.concatenate([s.patches["label"].to_numpy() for s in slides])
        z = np.concatenate([s.patches["z"].to_numpy() for s in slides])
        predicted = np.concatenate([s.predict(z_threshold, min_region_tiles) for s in slides])
        tumour_free = table[table["tumour_fraction"] == 0]
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
            if s.slide_id in set(tumour_free["slide"]):
                cell_mm2 = (s.grid["size"] * s.grid["mpp0"]) ** 2 / 1e6
                fp_area[s.slide_id] = float(s.predict(z_threshold, min_region_tiles).sum() * cell_mm2)
        return {
            "threshold": {"z_threshold": z_threshold, "min_region_tiles": min_region_tiles, "calibrated": calibrated},
            "label_rule": self.label_rule,
            "n_slides": len(slides),
            "slides_failed_inference": list(self.failed),
            "pooled": {
                "auc": roc_auc(z, labels),
                "pr_auc": pr_auc(z, labels),
                **overlap(predicted, labels),
                "pixel_auc_tissue": self._pixel_auc(slides, tissue_only=True),
                "pixel_auc_all_pixels (background inflates it)": self._pixel_auc(slides, tissue_only=False),
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

    @staticmethod
    def _pixel_scores(s: SlideResult, tissue_only: bool) -> tuple[np.ndarray, np.ndarray]:
        """Thumbnail pixels scored with their grid cell's z (off-grid pixels lowest), and their tumour labels."""
        ds = s.grid["thumbnail_downsample"]
        rows = np.minimum((np.arange(s.truth.shape[0]) * ds / s.grid["stride"]).astype(int), s.z_map.shape[0] - 1)
        cols = np.minimum((np.arange(s.truth.shape[1]) * ds / s.grid["stride"]).astype(int), s.z_map.shape[1] - 1)
        scores = s.z_map[np.ix_(rows, cols)].astype(np.float64)
        scores = np.where(np.isfinite(scores), scores, np.nanmin(s.z_map) - 1.0)
        keep = s.tissue if tissue_only else np.ones_like(s.tissue)
        return scores[keep], s.truth[keep].astype(int)

    def _pixel_auc(self, slides: Sequence[SlideResult], tissue_only: bool) -> float:
        scores, labels = zip(*(self._pixel_scores(s, tissue_only) for s in slides), strict=True)
        return roc_auc(np.concatenate(scores), np.concatenate(labels))

    def _save_errors(self, s: SlideResult, z_threshold: float, min_region_tiles: int) -> None:
        """TP (green), FP (red) and FN (blue) patches over the slide thumbnail."""
        predicted, labels = s.predict(z_threshold, min_region_tiles).astype(bool), s.patches["label"].to_numpy() > 0
        scale = s.grid["thumbnail_downsample"]
        figure, axis = plt.subplots(figsize=(10, 10 * s.thumbnail.shape[0] / s.thumbnail.shape[1] + 0.6), dpi=100)
        axis.imshow(s.thumbnail)
        for kind, select, color in (("TP", predicted & labels, "lime"), ("FP", predicted & ~labels, "red"),
                                    ("FN", ~predicted & labels, "blue")):  # fmt: skip
            for _, row in s.patches[select].iterrows():
                size = row["size0"] / scale
                axis.add_patch(plt.Rectangle((row["x"] / scale, row["y"] / scale), size, size, color=color, alpha=0.35))
            axis.plot([], [], "s", color=color, label=f"{kind}: {int(select.sum())}")
        axis.legend(loc="upper right", fontsize=8)
        axis.set_axis_off()
        axis.set_title(f"{s.slide_id}: z > {z_threshold:.2f}, regions >= {min_region_tiles} patches", fontsize=10)
        figure.tight_layout()
        with atomic_path(self.output_dir / s.slide_id / "errors.png") as tmp:
            figure.savefig(tmp, format="png")
        plt.close(figure)

    def _save_curves(self, slides: Sequence[SlideResult]) -> None:
        labels = np.concatenate([s.patches["label"].to_numpy() for s in slides])
        z = np.concatenate([s.patches["z"].to_numpy() for s in slides])
        if labels.min() == labels.max():
            logger.warning("ROC/PR curves skipped: the evaluated patches hold only one class.")
            return
        for name, (xs, ys, xlabel, ylabel, value) in {
            "roc": (*roc_curve(labels, z)[:2], "false positive rate", "true positive rate", roc_auc(z, labels)),
            "pr": (*precision_recall_curve(labels, z)[1::-1], "recall", "precision", pr_auc(z, labels)),
        }.items():
            figure, axis = plt.subplots(figsize=(5, 5), dpi=100)
            axis.plot(xs, ys)
            axis.set_xlabel(xlabel)
            axis.set_ylabel(ylabel)
            axis.set_title(f"pooled patches ({len(labels)}): {name.upper()}-AUC {value:.3f}")
            figure.tight_layout()
            with atomic_path(self.output_dir / f"{name}.png") as tmp:
                figure.savefig(tmp, format="png")
            plt.close(figure)
