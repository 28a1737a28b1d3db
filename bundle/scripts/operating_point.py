"""Calibration to an operating point, as CAD systems are judged: of every decision setting (z threshold,
min_region_tiles, normal_quantile, slide gate) on the calibration slides, the one that finds the most lesions while its
false regions on the tumour-free slides show a rate within ``target_false_regions`` a slide; and an operating point
stated with its intervals, as calibrate and evaluate both report it."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .annotations import LesionAnnotation
from .atomic import folder_lock
from .calibration import write_calibration
from .lesions import LesionCells, LesionRaster, lesion_raster
from .metrics import proportion_interval, rate_interval, rate_upper_bound, slide_resampled_ratio, strict_json
from .regions import clean_mask, slide_score, two_scale_map
from .settings import DECISION_RANGES, require_number
from .slide_truth import CohortLabels, SlideResult

logger = logging.getLogger(__name__)


def sweep_grid(thresholds: Sequence[float], min_region_tiles: Sequence[int]) -> tuple[list[float], list[int]]:
    """The thresholds and region sizes a sweep tries, checked: non-empty lists of numbers in range."""
    for name, values, setting in (("sweep_thresholds", thresholds, "z_threshold"),
                                  ("sweep_min_region_tiles", min_region_tiles, "min_region_tiles")):  # fmt: skip
        if isinstance(values, str) or not len(values):
            raise ValueError(f"--{name} must be a non-empty list (JSON), got {values!r}.")
        for value in values:
            require_number(name, value, *DECISION_RANGES[setting], integer=setting == "min_region_tiles")
    return [float(t) for t in thresholds], [int(m) for m in min_region_tiles]


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
    low, high = DECISION_RANGES["min_slide_score"]
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


def shown(value: float | None) -> str:
    """A measure in a log line: three decimals, or '-' for what the slides cannot tell."""
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"


def stated(point: dict, target: float | None = None) -> str:
    """An operating point in one line, as a log states it ('-' for what the slides cannot tell)."""
    false, found = point["false_regions_per_tumour_free_slide"], point["lesion_sensitivity"]

    def value(measure: dict) -> str:
        return shown(measure["value"])

    return (
        f"{value(false)} false regions per tumour-free slide ({false['false_regions']} on {false['n_slides']}"
        + (f", target {target:g}" if target is not None else "")
        + f"), lesion sensitivity {found['found']}/{found['n_lesions']}, patch recall {value(point['patch_recall'])}, "
        f"precision {value(point['patch_precision'])}"
    )


class CalibrationSweep:
    """``calibrate``: the operating point of the scored calibration slides of ``labels``, written to
    ``calibration.json`` with the weights and scoring settings it was chosen for."""

    def __init__(
        self,
        labels: CohortLabels,
        thresholds: Sequence[float],
        min_region_tiles: Sequence[int],
        score_floors: dict[float, float],
        target_false_regions: float,
    ) -> None:
        require_number("target_false_regions", target_false_regions, 0, exclusive_minimum=True)
        self.labels = labels
        self.thresholds, self.min_region_tiles = sweep_grid(thresholds, min_region_tiles)
        self.score_floors = score_floors  # normal_quantile -> the score floor it sets
        self.target_false_regions = float(target_false_regions)

    def start(self, slides: Sequence[str]) -> None:
        """Before the first slide is scored: the labels (``CohortLabels.start``), and a tumour-free slide among them."""
        annotations = self.labels.start(slides, ["calibration.json"])
        # a mask's tumour is known once it is read
        maybe_free = [s for s, a in annotations.items() if not isinstance(a, LesionAnnotation) or not a.tumour]
        self._require_tumour_free(maybe_free, warn_few=False)

    def calibrate(self, weights: str | None = None, scoring: dict | None = None) -> dict:
        """Choose the threshold on these slides; ``weights`` (the model's ``weights_digest``) and the ``scoring``
        settings the z-scores were made with are recorded with it, so that inference can refuse the file for another
        model or another score."""
        with folder_lock(self.labels.output_dir):
            calibration = self._calibrate(weights, scoring)
        self.labels.refuse_partial_cohort("calibration.json")
        return calibration

    def _require_tumour_free(self, tumour_free: Sequence[str], warn_few: bool = True) -> None:
        """Refuse a calibration set without a tumour-free slide, and say when it has too few to show a rate within the
        target (``slides_needed``): the rate is what calibration chooses for."""
        where = self.labels.annotation_dir or self.labels.output_dir
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
        slides = self.labels.slides()
        if not any(s.patches["label"].any() for s in slides):
            raise ValueError(
                f"none of the {len(slides)} calibration slides in {self.labels.output_dir} has a tumour patch; a "
                "threshold chosen on them would be meaningless: calibrate on slides with annotated tumour."
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
            "slides_failed_inference": list(self.labels.failed),
            "label_rule": self.labels.label_rule,
            "weights": weights,
            "scoring": scoring,
        }
        write_calibration(self.labels.output_dir, strict_json(calibration))
        logger.info(
            "calibrated on %d slides (%d tumour-free): z_threshold %.3f, min_region_tiles %d, normal_quantile %.3f, "
            "min_slide_score %s; %s", len(slides), len(calibration["tumour_free_slides"]), settings["z_threshold"],
            settings["min_region_tiles"], settings["normal_quantile"], settings["min_slide_score"],
            stated(point, self.target_false_regions),
        )  # fmt: skip
        return calibration
