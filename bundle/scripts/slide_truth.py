"""The labels of a cohort's scored slides: each slide's inference outputs joined with its annotation (or its
declaration as tumour-free), its patches labelled as PCam labels patches, and the reference CSV's slide labels."""

from __future__ import annotations

import fnmatch
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from skimage import io

from .annotations import (
    ANNOTATION_SUFFIXES,
    LesionAnnotation,
    MaskAnnotation,
    annotation_names,
    find_annotation,
    read_annotation,
)
from .reference import reference_labels
from .regions import called_map
from .settings import require_number
from .slide_outputs import read_summary
from .wsi import slide_id

logger = logging.getLogger(__name__)

LABEL_RULES = ("centre", "fraction")


@dataclass
class SlideResult:
    """One slide's inference outputs joined with its ground truth."""

    slide_id: str
    patches: pd.DataFrame  # inference patches.csv plus `label`
    z_map: np.ndarray
    map_info: dict  # its score_map.json: the grid on the slide, the z-scores and the decision
    truth: np.ndarray  # tumour raster at thumbnail_downsample
    tissue: np.ndarray  # tissue mask at thumbnail_downsample
    thumbnail: np.ndarray
    annotation: LesionAnnotation | MaskAnnotation | None = None
    score_floor: float = -math.inf  # the decision's second scale (``two_scale_map``), as inference applied it
    min_slide_score: float = -math.inf  # the slide gate, likewise

    @property
    def cells(self) -> tuple[np.ndarray, np.ndarray]:
        stride = self.map_info["stride"]
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
    map_info = json.loads((folder / "score_map.json").read_text())
    tissue = io.imread(folder / "tissue_mask.png") > 0
    if annotation is None:
        patches["label"] = 0
        truth = np.zeros_like(tissue)
    else:
        patches["label"] = patch_labels(annotation, patches, rule, min_fraction)
        truth = annotation.rasterise(tissue.shape, map_info["thumbnail_downsample"])
    thumbnail = io.imread(folder / "thumbnail.jpg")
    z_map = np.load(folder / "score_map.npy")
    return SlideResult(slide_id, patches, z_map, map_info, truth, tissue, thumbnail, annotation)


class CohortLabels:
    """Where a cohort's labels come from (``annotation_dir``, ``tumour_free_slides``, ``reference_csv``) and how patches
    are labelled (``label_rule``); ``start`` checks them all before any slide is scored, ``slides`` joins them with
    the scored slides in ``output_dir``."""

    def __init__(
        self,
        output_dir: str | Path,
        annotation_dir: str | Path | None,
        label_rule: str,
        min_tumour_fraction: float,
        tumour_free_slides: Sequence[str],
        reference_csv: str | Path | None,
    ) -> None:
        if label_rule not in LABEL_RULES:
            raise ValueError(f"label_rule must be one of {list(LABEL_RULES)}, got {label_rule!r}.")
        if annotation_dir and not Path(annotation_dir).is_dir():
            raise FileNotFoundError(f"annotation_dir {annotation_dir} is not a folder.")
        require_number("min_tumour_fraction", min_tumour_fraction, 0, 1, exclusive_minimum=True)
        self.output_dir = Path(output_dir)
        self.annotation_dir = Path(annotation_dir) if annotation_dir else None
        self.label_rule = label_rule
        self.min_tumour_fraction = min_tumour_fraction
        if isinstance(tumour_free_slides, str):
            tumour_free_slides = [tumour_free_slides]
        self.tumour_free_slides = [str(p) for p in tumour_free_slides]
        self.reference_csv = reference_csv
        self.failed: list[str] = []  # slides of the cohort whose inference failed, left out of the numbers

    def declared_tumour_free(self, slide_id: str) -> bool:
        """Whether ``slide_id`` matches an id or shell pattern (``normal_*``) of ``tumour_free_slides``."""
        return any(fnmatch.fnmatchcase(slide_id, pattern) for pattern in self.tumour_free_slides)

    def annotations(self, ids: Sequence[str]) -> dict[str, LesionAnnotation | MaskAnnotation | None]:
        return {s: slide_annotation(s, self.annotation_dir, self.declared_tumour_free(s)) for s in ids}

    def start(self, slides: Sequence[str], cohort_files: Sequence[str]) -> dict:
        """Before the first slide is scored: every slide's labels can be had (its annotation or tumour-free entry,
        its reference row), and the previous run's ``cohort_files`` are gone, so that a run that fails later leaves
        no numbers of other settings beside slide folders it rescored. Returns the annotations by slide id."""
        ids = [slide_id(s) for s in slides]
        annotations = self.annotations(ids)
        if self.reference_csv:
            reference_labels(self.reference_csv, ids, warn=False)
        for name in cohort_files:
            (self.output_dir / name).unlink(missing_ok=True)
        return annotations

    def slides(self) -> list[SlideResult]:
        """Every scored slide with its labels; every one must have an annotation or be declared tumour-free."""
        summary = read_summary(self.output_dir / "summary.csv")
        ok = summary.loc[summary["status"] == "ok", "slide"].tolist()
        if not ok:
            raise RuntimeError(f"no scored slide in {self.output_dir / 'summary.csv'} to evaluate.")
        self.failed = summary.loc[summary["status"] != "ok", "slide"].tolist()
        for slide, error in summary.loc[summary["status"] != "ok", ["slide", "error"]].itertuples(index=False):
            logger.error("slide %s is left out of the metrics: its inference failed (%s).", slide, error)
        annotations = self.annotations(ok)
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

    def refuse_partial_cohort(self, written: str) -> None:
        """Fail the command (after writing) when slides of the cohort are missing from it: numbers over part of a
        cohort must not pass for the cohort's."""
        if self.failed:
            raise RuntimeError(
                f"{written} covers only the slides scored in {self.output_dir / 'summary.csv'}: {len(self.failed)} "
                f"failed inference ({', '.join(self.failed[:5])}{', ...' if len(self.failed) > 5 else ''}); fix them "
                "and rerun inference (finished slides are skipped), or score the cohort without them."
            )
