"""Evaluation and calibration against lesion annotations, with the test labels never choosing the threshold.

``calibrate`` chooses an operating point, as CAD systems are judged: of every (z threshold, min_region_tiles,
normal_quantile, slide gate) on the calibration slides, the one that finds the most lesions while its false regions on
the tumour-free slides show a rate within ``target_false_regions`` a slide. ``evaluate`` applies a calibration file to
test slides. The per-slide IoU- and F1-optimal thresholds that a label-peeking study would report are computed too,
but only as *oracle* numbers beside the honest ones.
"""

from __future__ import annotations

import dataclasses
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
from .calibration import CALIBRATED_RANGES, write_calibration  # noqa: E402
from .lesions import (  # noqa: E402
    BURDEN_STRATA,
    LesionCells,
    LesionRaster,
    lesion_detection,
    lesion_froc,
    lesion_raster,
    reference_labels,
    slide_level,
)
from .metrics import (  # noqa: E402
    overlap,
    pr_auc,
    proportion_interval,
    rate_interval,
    rate_upper_bound,
    roc_auc,
    slide_resampled_ratio,
    strict_json,
)
from .regions import called_map, clean_mask, slide_score, two_scale_map  # noqa: E402
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
    min_slide_score: float = -math.inf  # the slide gate, likewise

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

    @property
    def is_tumour_free(self) -> bool:
        return not self.truth.any()

    def called_map(self, z_threshold: float, min_region_tiles: int) -> np.ndarray:
        """The grid cells inference calls tumour at these settings (with this slide's floor and gate)."""
        return called_map(self.z_map, np.stack(self.cells, 1), self.patches["score"].to_numpy(), z_threshold,
                          min_region_tiles, self.score_floor, self.min_slide_score)  # fmt: skip

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


RATE_CONFIDENCE = 0.95  # the chosen false-region rate is within the target at this confidence


def allowed_false_regions(target: float, tumour_free_slides: int) -> int | None:
    """The most false regions on ``tumour_free_slides`` whose exact upper bound (``RATE_CONFIDENCE``) is still within
    ``target``: the calibration slides' own rate is optimistic (calibration picks the best of many settings on them),
    so it must be shown, not merely estimated, to be within the target. None: too few slides for even 0 to show it."""
    fits = [k for k in range(int(target * tumour_free_slides) + 1)
            if rate_upper_bound(k, tumour_free_slides, RATE_CONFIDENCE) <= target]  # fmt: skip
    return max(fits) if fits else None


def slides_needed(target: float) -> int:
    """The fewest tumour-free slides on which no false region shows a rate within ``target``."""
    return math.ceil(-math.log(1 - RATE_CONFIDENCE) / target)


def operating_point(
    found: int, n_lesions: int, false_regions: np.ndarray, tp: np.ndarray, fp: np.ndarray, fn: np.ndarray
) -> dict:
    """An operating point as it is stated: lesion sensitivity, false regions per tumour-free slide (``false_regions``
    holds one count per tumour-free slide) and recall and precision of the called patches (``tp``, ``fp``, ``fn``
    per slide), each with its 95 % interval."""
    false_regions, tp, fp, fn = (np.asarray(v, dtype=float) for v in (false_regions, tp, fp, fn))
    n_free, n_false = len(false_regions), int(false_regions.sum())
    return {
        "lesion_sensitivity": {
            "value": found / n_lesions if n_lesions else None,
            "interval": proportion_interval(found, n_lesions),
            "found": found,
            "n_lesions": n_lesions,
        },  # fmt: skip
        "false_regions_per_tumour_free_slide": {
            "value": n_false / n_free if n_free else None,
            "interval": rate_interval(n_false, n_free) if n_free else None,
            "false_regions": n_false,
            "n_slides": n_free,
        },
        "patch_recall": {
            "value": tp.sum() / (tp + fn).sum() if (tp + fn).sum() else None,
            "interval": slide_resampled_ratio(tp, tp + fn),
        },  # fmt: skip
        "patch_precision": {
            "value": tp.sum() / (tp + fp).sum() if (tp + fp).sum() else None,
            "interval": slide_resampled_ratio(tp, tp + fp),
        },  # fmt: skip
        "intervals": "95 %: exact Poisson (false regions), Clopper-Pearson (lesions), slides resampled (patches)",
    }


@dataclass
class Outcomes:
    """Each decision setting's outcome on each calibration slide (rows: ``settings``, columns: slides): lesions
    found, false regions, called patches right (``tp``) and wrong (``fp``). A slide gate only silences whole slides,
    so every gate's totals follow from these without calling again."""

    settings: pd.DataFrame  # normal_quantile, min_region_tiles, z_threshold
    found: np.ndarray
    false_regions: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    lesions: np.ndarray  # per slide: the lesions that can be found (ITC aside)
    positives: np.ndarray  # per slide: the patches labelled tumour

    @classmethod
    def of(
        cls, slides: Sequence[SlideResult], rasters: Sequence[LesionRaster], thresholds: Sequence[float],
        min_region_tiles: Sequence[int], score_floors: dict[float, float],
    ) -> Outcomes:  # fmt: skip
        settings = [(q, m, t) for q in score_floors for m in min_region_tiles for t in thresholds]
        found, false_regions, tp, fp = (np.zeros((len(settings), len(slides)), int) for _ in range(4))
        lesions, positives = np.zeros(len(slides), int), np.zeros(len(slides), int)
        for k, (s, raster) in enumerate(zip(slides, rasters, strict=True)):
            lesion_cells, (rows, cols) = LesionCells.of(raster), s.cells
            labels = s.patches["label"].to_numpy() > 0
            lesions[k], positives[k] = len(lesion_cells.counted), labels.sum()
            floored = {q: two_scale_map(s.z_map, np.stack(s.cells, 1), s.patches["score"].to_numpy(), floor)
                       for q, floor in score_floors.items()}  # fmt: skip
            highest = {q: np.nanmax(m, initial=-np.inf) for q, m in floored.items()}
            for row, (quantile, tiles, threshold) in enumerate(settings):
                if threshold >= highest[quantile]:
                    continue  # nothing called: all zero
                called = clean_mask(floored[quantile], threshold, tiles)
                hits, false_regions[row, k] = lesion_cells.match(called, s.z_map)
                found[row, k] = len(hits)
                predicted = called[rows, cols]
                tp[row, k], fp[row, k] = (predicted & labels).sum(), (predicted & ~labels).sum()
        table = pd.DataFrame(settings, columns=["normal_quantile", "min_region_tiles", "z_threshold"])
        return cls(table, found, false_regions, tp, fp, lesions, positives)


def slide_gates(scores: np.ndarray, tumour_free: np.ndarray) -> np.ndarray:
    """The slide gates worth trying: none (-inf), and one between each two neighbouring slide scores up to just above
    the highest tumour-free slide's (a higher gate silences only tumour slides), within the range a calibration file
    may hold. A slide without a score (no tissue patch) is never gated, as in inference."""
    low, high = CALIBRATED_RANGES["min_slide_score"]
    finite = np.isfinite(scores)
    if not (finite & tumour_free).any():
        return np.array([-np.inf])
    ordered = np.unique(scores[finite])
    ceiling = scores[finite & tumour_free].max()
    above = ordered[ordered > ceiling]
    top = (ceiling + above[0]) / 2 if len(above) else ceiling + 1.0
    between = (ordered[1:] + ordered[:-1]) / 2
    gates = np.append(between[between < top], top)
    return np.concatenate([[-np.inf], gates[(gates >= low) & (gates <= high)]])


def choose_operating_point(
    slides: Sequence[SlideResult], outcomes: Outcomes, target: float
) -> tuple[dict, dict, np.ndarray]:
    """The decision settings that find the most lesions with a false-region rate on the tumour-free slides within
    ``target`` (``allowed_false_regions``; with too few slides to show any, none at all). Ties go to fewer false
    regions on the tumour-free slides, then on all slides, then to the higher mean IoU, then to the lowest gate (none
    first), then to the first setting (no floor, fewest tiles, lowest threshold), so the choice is reproducible.
    Returns the settings, their operating point on these slides and which slides the gate leaves open."""
    free = np.array([s.is_tumour_free for s in slides])
    scores = np.array([slide_score(s.z_map) for s in slides])
    gates = slide_gates(scores, free)
    open_ = ~(scores[None, :] < gates[:, None])  # (gates, slides); as inference gates: a NaN score is never below
    positives = outcomes.positives.astype(float)
    # every total is a sum over the open slides: (settings, slides) @ (slides, gates)
    found = outcomes.found @ open_.T
    false_free = outcomes.false_regions[:, free] @ open_[:, free].T
    false_all = outcomes.false_regions @ open_.T / len(slides)
    union = positives + outcomes.fp
    iou_open = np.where(union > 0, outcomes.tp / np.maximum(union, 1), 1.0)
    iou_closed = (positives == 0).astype(float)  # a silenced slide: perfect if tumour-free, else 0
    mean_iou = (iou_open @ open_.T + iou_closed @ ~open_.T) / len(slides)
    candidates = pd.DataFrame({
        "setting": np.repeat(np.arange(len(outcomes.settings)), len(gates)), "gate": np.tile(np.arange(len(gates)),
        len(outcomes.settings)), "found": found.ravel(), "false": false_free.ravel(), "false_all": false_all.ravel(),
        "iou": mean_iou.ravel(),
    })  # fmt: skip
    allowed = allowed_false_regions(target, int(free.sum()))
    within = candidates[candidates["false"] <= (allowed or 0)]
    order = ["found", "false", "false_all", "iou", "gate"]
    best = within.sort_values(order, ascending=[False, True, True, False, True], kind="stable").iloc[0]
    row, gate = int(best["setting"]), int(best["gate"])
    chosen = outcomes.settings.iloc[row]
    settings = {
        "z_threshold": float(chosen["z_threshold"]),
        "min_region_tiles": int(chosen["min_region_tiles"]),
        "normal_quantile": float(chosen["normal_quantile"]),
        "min_slide_score": None if np.isinf(gates[gate]) else float(gates[gate]),
    }
    gate_open = open_[gate]
    tp, fp = outcomes.tp[row] * gate_open, outcomes.fp[row] * gate_open
    point = operating_point(int(found[row, gate]), int(outcomes.lesions.sum()),
                            outcomes.false_regions[row, free] * gate_open[free], tp, fp, positives - tp)  # fmt: skip
    point["allowed_false_regions"] = allowed
    point["tumour_free_slides_needed"] = slides_needed(target)
    point["mean_iou"] = float(mean_iou[row, gate])
    return settings, point, gate_open


def stated(point: dict, target: float | None = None) -> str:
    """An operating point in one line, as a log states it ('-' for what the slides cannot tell)."""
    false, found = point["false_regions_per_tumour_free_slide"], point["lesion_sensitivity"]

    def value(measure: dict) -> str:
        return "-" if measure["value"] is None else f"{measure['value']:.3f}"

    return (
        f"{value(false)} false regions per tumour-free slide ({false['false_regions']} on {false['n_slides']}"
        + (f", target {target:g}" if target is not None else "")
        + f"), lesion sensitivity {found['found']}/{found['n_lesions']}, patch recall {value(point['patch_recall'])}, "
        f"precision {value(point['patch_precision'])}"
    )


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
        target_false_regions: float = 0.25,
    ) -> None:
        if label_rule not in LABEL_RULES:
            raise ValueError(f"label_rule must be one of {list(LABEL_RULES)}, got {label_rule!r}.")
        if annotation_dir and not Path(annotation_dir).is_dir():
            raise FileNotFoundError(f"annotation_dir {annotation_dir} is not a folder.")
        self.output_dir = Path(output_dir)
        self.annotation_dir = Path(annotation_dir) if annotation_dir else None
        self.label_rule = label_rule
        require_number("min_tumour_fraction", min_tumour_fraction, 0, 1, exclusive_minimum=True)
        require_number("target_false_regions", target_false_regions, 0, exclusive_minimum=True)
        self.target_false_regions = float(target_false_regions)
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

    def declared_tumour_free(self, slide_id: str) -> bool:
        """Whether ``slide_id`` matches an id or shell pattern (``normal_*``) of ``tumour_free_slides``."""
        return any(fnmatch.fnmatchcase(slide_id, pattern) for pattern in self.tumour_free_slides)

    def start(self, slides: Sequence[str], cohort_files: Sequence[str], calibrating: bool = False) -> None:
        """Before the first slide is scored: every slide's labels can be had (its annotation or tumour-free entry,
        its reference row), a calibration set has a tumour-free slide, and the previous run's ``cohort_files`` are
        gone, so that a run that fails later leaves no metrics of other settings beside slide folders it rescored."""
        ids = [slide_id(s) for s in slides]
        annotations = {s: slide_annotation(s, self.annotation_dir, self.declared_tumour_free(s)) for s in ids}
        if calibrating:  # a mask's tumour is known once it is read
            maybe_free = [s for s, a in annotations.items() if not isinstance(a, LesionAnnotation) or not a.tumour]
            self._require_tumour_free(maybe_free, warn_few=False)
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
        annotations = {s: slide_annotation(s, self.annotation_dir, self.declared_tumour_free(s)) for s in ok}
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
                    "not at level 0?); all its patches count as normal", slide.slide_id,
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
        self, z_threshold: float, min_region_tiles: int, calibrated: bool, score_floor: float = -math.inf,
        min_slide_score: float = -math.inf,
    ) -> dict:  # fmt: skip
        with folder_lock(self.output_dir):
            metrics = self._evaluate(z_threshold, min_region_tiles, calibrated, score_floor, min_slide_score)
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

    def _require_tumour_free(self, tumour_free: Sequence[str], warn_few: bool = True) -> None:
        """Refuse a calibration set without a tumour-free slide, and say when it has too few to show a rate within the
        target (``slides_needed``): the rate is what calibration chooses for."""
        where = self.annotation_dir or self.output_dir
        if not tumour_free:
            raise ValueError(
                f"the calibration slides (annotations in {where}) include no tumour-free slide: a false-region rate "
                "cannot be chosen without one; add tumour-free slides (an empty annotation, or --tumour_free_slides)."
            )
        needed = slides_needed(self.target_false_regions)
        if warn_few and len(tumour_free) < needed:
            logger.warning(
                "the calibration slides (annotations in %s) include %d tumour-free slide(s); showing a rate within %g "
                "false regions per slide needs %d (none called on %d bounds it below %g at 95 %%): no false region is "
                "allowed on them; add tumour-free slides.", where, len(tumour_free), self.target_false_regions, needed,
                needed, self.target_false_regions,
            )  # fmt: skip

    def _calibrate(self, weights: str | None, scoring: dict | None) -> dict:
        slides = self.slides()
        if not any(s.patches["label"].any() for s in slides):
            raise ValueError(
                f"none of the {len(slides)} calibration slides in {self.output_dir} has a tumour patch; a threshold "
                "chosen on them would be meaningless: calibrate on slides with annotated tumour."
            )
        self._require_tumour_free([s.slide_id for s in slides if s.is_tumour_free])
        rasters = [lesion_raster(s) for s in slides]
        outcomes = Outcomes.of(slides, rasters, self.thresholds, self.min_region_tiles, self.score_floors)
        settings, point, gate_open = choose_operating_point(slides, outcomes, self.target_false_regions)
        calibration = {
            **settings,
            "operating_point": {
                "objective": "the most lesions found with a false-region rate on the tumour-free calibration slides "
                f"within target_false_regions at {RATE_CONFIDENCE:.0%} (exact Poisson upper bound)",
                "target_false_regions": self.target_false_regions,
                **point,
            },
            "calibration_slides": [s.slide_id for s in slides],
            "tumour_free_slides": [s.slide_id for s in slides if s.is_tumour_free],
            "slides_silenced_by_gate": [s.slide_id for s, open_ in zip(slides, gate_open, strict=True) if not open_],
            "slides_failed_inference": list(self.failed),
            "label_rule": self.label_rule,
            "weights": weights,
            "scoring": scoring,
        }
        write_calibration(self.output_dir, strict_json(calibration))
        logger.info(
            "calibrated on %d slides (%d tumour-free): z_threshold %.3f, min_region_tiles %d, normal_quantile %.3f, "
            "min_slide_score %s; %s", len(slides), len(calibration["tumour_free_slides"]), settings["z_threshold"],
            settings["min_region_tiles"], settings["normal_quantile"], settings["min_slide_score"],
            stated(point, self.target_false_regions),
        )  # fmt: skip
        return calibration

    def _evaluate(
        self, z_threshold: float, min_region_tiles: int, calibrated: bool, score_floor: float, min_slide_score: float
    ) -> dict:
        slides = self.slides()
        for s in slides:
            s.score_floor, s.min_slide_score = score_floor, min_slide_score
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
        free_regions = [lesion_task["false_regions"][s.slide_id] for s in slides if s.is_tumour_free]
        point = operating_point(int(lesion_table["found"].sum()), len(lesion_table), free_regions, table["tp"],
                                table["fp"], table["fn"])  # fmt: skip
        metrics |= {
            "operating_point": point, "slide_level": slide_task, "lesion_detection": lesion_task,
            "froc": lesion_froc(slides, rasters),
        }  # fmt: skip
        with atomic_path(self.output_dir / "heatmap_summary.csv") as tmp:
            table.to_csv(tmp, index=False)
        with atomic_path(self.output_dir / "lesions.csv") as tmp:
            lesion_table.to_csv(tmp, index=False)
        with atomic_path(self.output_dir / "metrics.json") as tmp:
            tmp.write_text(json.dumps(strict_json(metrics), indent=2, allow_nan=False))
        self._save_curves(slides)
        logger.info("pooled patch AUC %.3f, mean IoU %.3f (oracle %.3f); %s", metrics["pooled"]["auc"],
                    metrics["mean_iou"], metrics["oracle"]["mean_iou"], stated(point))  # fmt: skip
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
                cell_mm2 = (s.grid["size"] * s.grid["mpp0"]) ** 2 / 1e6
                fp_area[s.slide_id] = float(s.predict(z_threshold, min_region_tiles).sum() * cell_mm2)
        return {
            "threshold": {
                "z_threshold": z_threshold,
                "min_region_tiles": min_region_tiles,
                "score_floor": None if math.isinf(slides[0].score_floor) else slides[0].score_floor,
                "min_slide_score": None if math.isinf(slides[0].min_slide_score) else slides[0].min_slide_score,
                "calibrated": calibrated,
            },  # fmt: skip
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
