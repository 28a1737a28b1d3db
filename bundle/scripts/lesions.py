"""CAMELYON16's own evaluation of a cohort: Task 1, is there tumour on the slide (a slide score and its ROC AUC), and
Task 2, where is it (lesion FROC as the challenge computes it, with plain lesion sensitivity and false regions per
slide at the called regions beside it, so that a slide with two large lesions found among many false calls does not
read as perfect), each split by lesion size (macro- / micro-metastases) and by tumour burden.

Slide labels come from the challenge's ``reference.csv`` when given (``test_001,Tumor,Macro``; ``Normal`` rows have
no size), else from the annotations (a slide with drawn tumour is a tumour slide).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from monai.apps.pathology.utils import PathologyProbNMS, compute_isolated_tumor_cells, compute_multi_instance_mask
from monai.metrics import compute_fp_tp_probs, compute_froc_curve_data, compute_froc_score
from scipy import ndimage
from skimage import measure

from .metrics import roc_auc
from .reference import reference_labels
from .regions import slide_score
from .slide_truth import SlideResult

logger = logging.getLogger(__name__)

# CAMELYON16/17: a macro-metastasis is larger than 2 mm, a micro-metastasis larger than 0.2 mm; smaller clusters are
# isolated tumour cells (ITC), which the challenge's FROC neither rewards nor counts as false positives.
MACRO_MIN_UM = 2000.0
ITC_MAX_UM = 200.0
GROW_UM = 75.0  # the challenge grows each lesion by 75 µm (5 tumour cells) before matching detections
FROC_FP_RATES = (0.25, 0.5, 1, 2, 4, 8)
BURDEN_STRATA = {"large (>2%)": (0.02, np.inf), "medium (0.5-2%)": (0.005, 0.02), "small (<0.5%)": (0.0, 0.005)}


@dataclass
class LesionRaster:
    """One slide on the raster the lesion metrics use (level ``L = log2(size0 / raster_px)``, as the challenge works
    at one power-of-two level): z-scores, lesions grown and labelled, which labels are ITC, and where each grid cell's
    centre lies."""

    level: int
    z: np.ndarray
    centre_rows: np.ndarray  # the raster row of each grid row's centre
    centre_cols: np.ndarray
    instances: np.ndarray  # 0 background, k lesion k (grown by GROW_UM)
    itc: list[int]
    diameters_um: dict[int, float]  # longest axis of each lesion's own (ungrown) tumour pixels


def lesion_raster(s: SlideResult, raster_px: int = 12) -> LesionRaster:
    level = max(0, round(np.log2(s.map_info["size"] / raster_px)))
    scale = 2**level
    shape = tuple(int(np.ceil(n * s.map_info["stride"] / scale)) for n in s.z_map.shape)
    rows = np.minimum((np.arange(shape[0]) * scale) // s.map_info["stride"], s.z_map.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) * scale) // s.map_info["stride"], s.z_map.shape[1] - 1)
    truth = s.annotation.rasterise(shape, scale) if s.annotation is not None else np.zeros(shape, bool)
    spacing = s.map_info["mpp0"] * scale
    instances = compute_multi_instance_mask(truth.astype(np.uint8), GROW_UM / (spacing * 2))
    itc = compute_isolated_tumor_cells(instances, (ITC_MAX_UM + GROW_UM) / spacing)
    diameters = {
        region.label: region.axis_major_length * spacing
        for region in measure.regionprops(np.where(truth, instances, 0).astype(np.int32))
    }
    z = s.z_map[np.ix_(rows, cols)].astype(np.float64)
    centre_rows, centre_cols = (
        np.minimum(((np.arange(n) * s.map_info["stride"] + s.map_info["size"] / 2) / scale).astype(int), side - 1)
        for n, side in zip(s.z_map.shape, shape, strict=True)
    )
    return LesionRaster(level, z, centre_rows, centre_cols, instances, list(itc), diameters)


def size_class(diameter_um: float) -> str:
    return "macro" if diameter_um > MACRO_MIN_UM else "micro" if diameter_um > ITC_MAX_UM else "itc"


@dataclass(frozen=True)
class FrocCurve:
    """The cohort's lesion FROC curve: sensitivity against the mean false positives per slide, as thresholds on the
    detections fall."""

    fp_per_slide: np.ndarray
    sensitivity: np.ndarray
    n_lesions: int

    def sensitivity_at(self, fp_per_slide: Sequence[float]) -> list[float]:
        """The curve's sensitivity at each rate, interpolated as ``compute_froc_score`` does."""
        return np.interp(fp_per_slide, self.fp_per_slide[::-1], self.sensitivity[::-1]).tolist()


def froc_curve(slides: Sequence[SlideResult], rasters: Sequence[LesionRaster]) -> FrocCurve | None:
    """CAMELYON16's lesion FROC curve from MONAI's LesionFROC parts; None without a lesion to find.

    LesionFROC itself reads 0/1 mask TIFFs and probability maps from files; here the same steps run on the
    annotation rasterised at the lesion raster's level and a detection map ``sigmoid(z)`` on its pixels (0 off
    tissue): NMS keeps local maxima above the slide mean (z > 0), lesions are grown by 75 µm and isolated tumour cells
    are excluded, as in the challenge.
    """
    fp_probs, tp_probs, num_targets = [], [], 0
    for raster in rasters:
        probability = np.where(np.isfinite(raster.z), 1 / (1 + np.exp(-np.nan_to_num(raster.z))), 0.0)
        nms = PathologyProbNMS(sigma=0.0, prob_threshold=0.5, box_size=48)
        detections = nms(probability, resolution_level=raster.level)
        probs, y_coord, x_coord = (
            (np.array(v) for v in zip(*detections, strict=True)) if detections else (np.zeros(0),) * 3
        )
        fp, tp, targets = compute_fp_tp_probs(
            probs, y_coord, x_coord, raster.instances, raster.itc, resolution_level=raster.level
        )
        fp_probs.extend(fp)
        tp_probs.extend(tp)
        num_targets += targets
    if num_targets == 0:
        return None
    fps, sensitivity = compute_froc_curve_data(np.array(fp_probs), np.array(tp_probs), num_targets, len(slides))
    return FrocCurve(np.asarray(fps, dtype=float), np.asarray(sensitivity, dtype=float), int(num_targets))


def froc_summary(curve: FrocCurve | None) -> dict:
    """The FROC score (mean sensitivity at 1/4 ... 8 false positives per slide) and the sensitivity at each rate."""
    if curve is None:
        return {"score": None, "note": "no lesion larger than an isolated tumour cell in the evaluated slides"}
    return {
        "score": float(compute_froc_score(curve.fp_per_slide, curve.sensitivity, FROC_FP_RATES)),
        "fp_per_slide_thresholds": list(FROC_FP_RATES),
        "sensitivity_at_thresholds": curve.sensitivity_at(FROC_FP_RATES),
        "n_lesions": curve.n_lesions,
    }


@dataclass
class LesionCells:
    """Where a slide's lesions (grown by ``GROW_UM``) lie on the patch grid: all that matching called regions to
    lesions needs, so that a sweep over thresholds matches on the grid, not on the raster."""

    at_centre: np.ndarray  # per grid cell: the lesion its centre lies in (0: none; ITC included)
    counted: frozenset[int]  # the lesions found or missed: all but isolated tumour cells

    @classmethod
    def of(cls, raster: LesionRaster) -> LesionCells:
        counted = frozenset(label for label in raster.diameters_um if label not in raster.itc)
        return cls(raster.instances[np.ix_(raster.centre_rows, raster.centre_cols)], counted)

    def match(self, called: np.ndarray, z_map: np.ndarray) -> tuple[set[int], int]:
        """The counted lesions found, and the number of false regions. Each called region is one detection, at its
        highest-z patch, as the challenge's FROC takes one point per detection: it finds the lesion that patch's
        centre lies in, and is false where that is no lesion (in an isolated tumour cell cluster it is neither). A
        region spilling far past a lesion still finds it; its precision says how far (``operating_point``)."""
        regions, n_regions = ndimage.label(called, structure=np.ones((3, 3)))
        if not n_regions:
            return set(), 0
        peaks = ndimage.maximum_position(np.nan_to_num(z_map, nan=-np.inf), regions, np.arange(1, n_regions + 1))
        hit = self.at_centre[tuple(np.array(peaks).T)]
        return set(hit[hit > 0].tolist()) & self.counted, int((hit == 0).sum())


def lesion_detection(
    slides: Sequence[SlideResult], rasters: Sequence[LesionRaster], z_threshold: float, min_region_tiles: int
) -> tuple[dict, pd.DataFrame]:
    """What the called regions find (``LesionCells.match``): each lesion (ITC aside) is found when a called region's
    highest-z patch lies in it (lesions grown by 75 µm, as the FROC matches them), and a region whose highest patch
    lies in no lesion is a false one.

    Returns the totals (lesion sensitivity by size class, false regions per slide, overall and on tumour-free slides)
    and one row per lesion.
    """
    lesions, false_regions = [], {}
    for s, raster in zip(slides, rasters, strict=True):
        lesion_cells = LesionCells.of(raster)
        found, false_regions[s.slide_id] = lesion_cells.match(s.called_map(z_threshold, min_region_tiles), s.z_map)
        for label, diameter in sorted(raster.diameters_um.items()):
            if label in lesion_cells.counted:
                lesions.append({"slide": s.slide_id, "lesion": label, "diameter_um": round(diameter, 1),
                                "size": size_class(diameter), "found": label in found})  # fmt: skip
    table = pd.DataFrame(lesions, columns=["slide", "lesion", "diameter_um", "size", "found"])
    tumour_free = [k for k, s in enumerate(slides) if s.is_tumour_free]
    totals = {
        "note": "at the calibrated threshold and minimum region size; ITC (< 0.2 mm) neither found nor missed",
        "n_lesions": len(table),
        "lesion_sensitivity": float(table["found"].mean()) if len(table) else None,
        "by_size": {
            size: {
                "n_lesions": int((table["size"] == size).sum()),
                "sensitivity": float(table.loc[table["size"] == size, "found"].mean())
                if (table["size"] == size).any()
                else None,
            }
            for size in ("macro", "micro")
        },  # fmt: skip
        "false_regions_per_slide": float(np.mean(list(false_regions.values()))),
        "false_regions_per_tumour_free_slide": (
            float(np.mean([false_regions[slides[k].slide_id] for k in tumour_free])) if tumour_free else None
        ),
        "false_regions": false_regions,
    }
    return totals, table


def slide_labels(
    slides: Sequence[SlideResult], rasters: Sequence[LesionRaster], reference_csv: str | Path | None
) -> pd.DataFrame:
    """Each evaluated slide's Task 1 label and size class (of its largest lesion), from ``reference_csv`` or else
    from its annotation."""
    if not reference_csv:
        rows = []
        for s, raster in zip(slides, rasters, strict=True):
            largest = max(raster.diameters_um.values(), default=0.0)
            rows.append(
                {"slide": s.slide_id, "tumour": int(largest > 0), "size": size_class(largest) if largest else ""}
            )
        return pd.DataFrame(rows, columns=["slide", "tumour", "size"])
    listed = reference_labels(reference_csv, [s.slide_id for s in slides])
    for s, raster in zip(slides, rasters, strict=True):
        drawn = max(raster.diameters_um.values(), default=0.0) > 0
        if drawn != bool(listed[s.slide_id]["tumour"]):
            logger.warning(
                "reference_csv %s lists %s as %s, but its annotation %s tumour; check which is right.", reference_csv,
                s.slide_id, "Tumor" if not drawn else "Normal", "draws" if drawn else "draws no",
            )  # fmt: skip
    return pd.DataFrame([{**listed[s.slide_id], "slide": s.slide_id} for s in slides])


def slide_level(
    slides: Sequence[SlideResult], rasters: Sequence[LesionRaster], reference_csv: str | Path | None
) -> tuple[dict, pd.DataFrame]:
    """Task 1: each slide's score and label, and the slide-level ROC AUC overall and of macro- and of
    micro-metastasis slides each against the normal slides."""
    table = slide_labels(slides, rasters, reference_csv)
    table["score"] = [slide_score(s.z_map) for s in slides]
    normal = table[table["tumour"] == 0]

    def auc(tumour: pd.DataFrame) -> float | None:
        both = pd.concat([tumour, normal])
        return roc_auc(both["score"].to_numpy(), both["tumour"].to_numpy()) if len(tumour) and len(normal) else None

    n_tumour = int(table["tumour"].sum())
    missing = "no normal slide" if not len(normal) else "no tumour slide" if not n_tumour else ""
    totals = {
        "note": "slide score: the highest mean z over a 3 x 3-patch window; labels from "
        + ("the reference CSV" if reference_csv else "the annotations (drawn tumour = tumour slide)"),
        "n_tumour": n_tumour,
        "n_normal": len(normal),
        "auc": auc(table[table["tumour"] == 1]),
        **({"auc_undefined": f"the cohort has {missing}: a slide-level AUC needs both"} if missing else {}),
        "by_size": {size: auc(table[(table["tumour"] == 1) & (table["size"] == size)]) for size in ("macro", "micro")},
    }
    return totals, table
